//! The `images/` overlay tree, compiled into the binary by `build.rs`, so an
//! installed `habuild` (`cargo install --path builder`) builds images without
//! a checkout. `habuild image --images DIR` still reads a directory instead
//! (for editing the overlays without rebuilding habuild).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::error::{IoContext, Result};

/// What an entry of the tree is.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Dir,
    File(&'static [u8]),
    Symlink(&'static str),
}

/// One directory, file or symlink of `images/`.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Relative to `images/`, `/`-separated.
    pub path: &'static str,
    /// Unix permission bits (`0o755` for scripts and directories).
    pub mode: u32,
    pub kind: Kind,
}

/// Every entry of `images/` at compile time, parents before children, sorted.
pub static IMAGES: &[Entry] = include!(concat!(env!("OUT_DIR"), "/embedded_images.rs"));

/// Write the embedded tree into `dest` (created if missing), with each
/// entry's mode; `dest` then serves as an `images/` directory.
pub fn write_to(dest: &Path) -> Result<()> {
    fs::create_dir_all(dest).at(dest)?;
    for e in IMAGES {
        let to = dest.join(e.path);
        match e.kind {
            Kind::Dir => fs::create_dir_all(&to).at(&to)?,
            Kind::File(bytes) => fs::write(&to, bytes).at(&to)?,
            Kind::Symlink(target) => {
                let _ = fs::remove_file(&to);
                symlink(target, &to).at(&to)?;
            }
        }
        if !matches!(e.kind, Kind::Symlink(_)) {
            fs::set_permissions(&to, fs::Permissions::from_mode(e.mode)).at(&to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    /// (mode, contents or link target; None for directories) of every entry under `root`.
    fn read_tree(root: &Path) -> BTreeMap<String, (u32, Option<Vec<u8>>)> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Option<Vec<u8>>)>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                let meta = fs::symlink_metadata(&p).unwrap();
                let mode = meta.permissions().mode() & 0o7777;
                if meta.file_type().is_symlink() {
                    let t = fs::read_link(&p).unwrap();
                    out.insert(rel, (0, Some(t.to_str().unwrap().as_bytes().to_vec())));
                } else if meta.is_dir() {
                    out.insert(rel, (mode, None));
                    walk(root, &p, out);
                } else {
                    out.insert(rel, (mode, Some(fs::read(&p).unwrap())));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    fn checkout_images() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images")
    }

    #[test]
    fn embedded_tree_is_the_checkouts_images_with_modes() {
        let want = read_tree(&checkout_images());
        let got: BTreeMap<String, (u32, Option<Vec<u8>>)> = IMAGES
            .iter()
            .map(|e| {
                let v = match e.kind {
                    Kind::Dir => (e.mode, None),
                    Kind::File(b) => (e.mode, Some(b.to_vec())),
                    Kind::Symlink(t) => (0, Some(t.as_bytes().to_vec())),
                };
                (e.path.to_string(), v)
            })
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (path, w) in &want {
            assert_eq!(&got[path], w, "{path}: mode or contents differ");
        }
        // the scripts the image runs must stay executable
        for script in [
            "common/usr/lib/habuild/finalize-image",
            "common/usr/lib/habuild/gluster-loop",
            "debian/etc/initramfs-tools/hooks/habuild",
        ] {
            assert_eq!(got[script].0 & 0o111, 0o111, "{script} is not executable");
        }
        // parents come before their children (write_to relies on it)
        for (i, e) in IMAGES.iter().enumerate() {
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                assert!(
                    IMAGES[..i].iter().any(|p| p.path == parent),
                    "{} listed before its directory",
                    e.path
                );
            }
        }
    }

    #[test]
    fn written_tree_equals_the_checkouts_images() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("images");
        write_to(&dest).unwrap();
        assert_eq!(read_tree(&dest), read_tree(&checkout_images()));
        // writing again over an existing tree is fine (same result)
        write_to(&dest).unwrap();
        assert_eq!(read_tree(&dest), read_tree(&checkout_images()));
    }
}
