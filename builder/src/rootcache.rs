//! The root-image cache: `<cache>/root-images/<key>.img`, the filesystem
//! image of the root tree (mkfs.erofs/mksquashfs, the slowest stage of a
//! rebuild), keyed by everything that determines its bytes: the base tree's
//! key (backend, release, resolved packages, hooks), the staged overlay
//! (image files, agent, kube binaries, seeded archives: every file's path,
//! type, mode, owner and bytes), the profile's text and mirror overrides,
//! the filesystem type, its UUID, the epoch, and the builder binary itself
//! (so a changed finalize step or mkfs invocation is never served an old
//! image). A rebuild whose inputs are unchanged copies the image instead of
//! making it again; at most `keep` images are kept, least recently used go
//! first.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};

/// How a build got its root image (the manifest's `root_image`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RootImageUse {
    pub key: String,
    /// true: copied from the cache; false: made now (and stored).
    pub reused: bool,
}

/// What the root image's bytes depend on.
#[derive(Debug, Clone)]
pub struct RootImageInputs<'a> {
    /// The base tree's cache key (`rootfs::base`).
    pub base_key: &'a str,
    /// The staged overlay put on top of the base.
    pub staging: &'a Path,
    pub profile_text: &'a str,
    pub mirrors: &'a [String],
    pub fs_type: &'a str,
    pub uuid: String,
    pub epoch: u64,
    /// sha256 of the builder binary that runs the build.
    pub builder: &'a str,
}

/// The cache key (hex sha256) of `inputs`.
pub fn key(inputs: &RootImageInputs) -> Result<String> {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("base", inputs.base_key.as_bytes());
    field("profile", inputs.profile_text.as_bytes());
    field("mirrors", inputs.mirrors.join("\n").as_bytes());
    field("fs", inputs.fs_type.as_bytes());
    field("uuid", inputs.uuid.as_bytes());
    field("epoch", &inputs.epoch.to_le_bytes());
    field("builder", inputs.builder.as_bytes());
    field("staging", tree_sha256(inputs.staging)?.as_bytes());
    Ok(hex::encode(h.finalize()))
}

/// sha256 of a directory tree: every entry's path (sorted), type, mode,
/// owner, and a file's bytes or a link's target.
pub fn tree_sha256(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    hash_dir(&mut h, dir, Path::new(""))?;
    Ok(hex::encode(h.finalize()))
}

fn hash_dir(h: &mut Sha256, dir: &Path, rel: &Path) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .at(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .at(dir)?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = rel.join(&name);
        let m = fs::symlink_metadata(&path).at(&path)?;
        let path_bytes = rel.as_os_str().as_encoded_bytes();
        h.update((path_bytes.len() as u64).to_le_bytes());
        h.update(path_bytes);
        h.update(m.mode().to_le_bytes());
        h.update(m.uid().to_le_bytes());
        h.update(m.gid().to_le_bytes());
        let ft = m.file_type();
        if ft.is_dir() {
            h.update(b"d");
            hash_dir(h, &path, &rel)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).at(&path)?;
            let t = target.as_os_str().as_encoded_bytes();
            h.update(b"l");
            h.update((t.len() as u64).to_le_bytes());
            h.update(t);
        } else if ft.is_file() {
            h.update(b"f");
            h.update(m.len().to_le_bytes());
            let mut f = fs::File::open(&path).at(&path)?;
            std::io::copy(&mut f, h).at(&path)?;
        } else {
            h.update(b"o");
            h.update(m.rdev().to_le_bytes());
        }
    }
    Ok(())
}

/// Root images under `<cache>/root-images`, at most `keep` of them.
#[derive(Debug, Clone)]
pub struct RootImageCache {
    pub dir: PathBuf,
    pub keep: usize,
}

impl RootImageCache {
    pub fn new(cache: &Path, keep: usize) -> Self {
        Self {
            dir: cache.join("root-images"),
            keep: keep.max(1),
        }
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.img"))
    }

    /// Copies the image cached for `key` to `to` and marks it used now;
    /// false when there is none.
    pub fn restore(&self, key: &str, to: &Path) -> Result<bool> {
        let entry = self.entry(key);
        if !entry.is_file() {
            return Ok(false);
        }
        let tmp = to.with_extension("restoring");
        fs::copy(&entry, &tmp).at(&entry)?;
        fs::rename(&tmp, to).at(to)?;
        if let Ok(f) = fs::File::options().write(true).open(&entry) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(true)
    }

    /// Stores a copy of `image` for `key` (written aside, then renamed into
    /// place), then removes all but the `keep` most recently used. Returns
    /// the keys removed.
    pub fn store(&self, key: &str, image: &Path) -> Result<Vec<String>> {
        fs::create_dir_all(&self.dir).at(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".{key}.partial-{}", std::process::id()));
        fs::copy(image, &tmp).at(&tmp)?;
        let entry = self.entry(key);
        fs::rename(&tmp, &entry).at(&entry)?;
        self.prune(key)
    }

    /// Keeps `current` and the `keep - 1` most recently used other images;
    /// removes the rest and partial copies of builds that are gone.
    pub fn prune(&self, current: &str) -> Result<Vec<String>> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(Vec::new());
        };
        let mut images = Vec::new();
        let mut removed = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix('.') {
                let gone = rest
                    .rsplit("partial-")
                    .next()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if gone {
                    let p = e.path();
                    fs::remove_file(&p).at(&p)?;
                    removed.push(name);
                }
                continue;
            }
            let Some(key) = name.strip_suffix(".img") else {
                continue;
            };
            if key == current {
                continue;
            }
            let used = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            images.push((used, key.to_string()));
        }
        images.sort_by(|a, b| b.cmp(a));
        for (_, key) in images.into_iter().skip(self.keep - 1) {
            let p = self.entry(&key);
            fs::remove_file(&p).at(&p)?;
            removed.push(key);
        }
        Ok(removed)
    }
}

/// sha256 of the running executable (the builder's identity in the key).
pub fn builder_sha256() -> Result<String> {
    let exe = std::env::current_exe().at(Path::new("/proc/self/exe"))?;
    let mut f = fs::File::open(&exe).at(&exe)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).at(&exe)?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn inputs<'a>(staging: &'a Path, mirrors: &'a [String]) -> RootImageInputs<'a> {
        RootImageInputs {
            base_key: "base1",
            staging,
            profile_text: "[profile]\n",
            mirrors,
            fs_type: "erofs",
            uuid: "0000".into(),
            epoch: 1_700_000_000,
            builder: "b1",
        }
    }

    #[test]
    fn every_input_changes_the_key() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("staging");
        fs::create_dir_all(s.join("etc")).unwrap();
        fs::write(s.join("etc/a.conf"), "a=1\n").unwrap();
        std::os::unix::fs::symlink("a.conf", s.join("etc/link")).unwrap();
        let none: Vec<String> = Vec::new();
        let base = key(&inputs(&s, &none)).unwrap();
        assert_eq!(base, key(&inputs(&s, &none)).unwrap(), "stable");
        let mirrors = vec!["debian=http://m".to_string()];
        let variants: Vec<(&str, RootImageInputs)> = vec![
            (
                "base",
                RootImageInputs {
                    base_key: "base2",
                    ..inputs(&s, &none)
                },
            ),
            (
                "profile",
                RootImageInputs {
                    profile_text: "[profile]\n#\n",
                    ..inputs(&s, &none)
                },
            ),
            ("mirrors", inputs(&s, &mirrors)),
            (
                "fs",
                RootImageInputs {
                    fs_type: "squashfs",
                    ..inputs(&s, &none)
                },
            ),
            (
                "uuid",
                RootImageInputs {
                    uuid: "0001".into(),
                    ..inputs(&s, &none)
                },
            ),
            (
                "epoch",
                RootImageInputs {
                    epoch: 1_700_000_001,
                    ..inputs(&s, &none)
                },
            ),
            (
                "builder",
                RootImageInputs {
                    builder: "b2",
                    ..inputs(&s, &none)
                },
            ),
        ];
        for (what, i) in variants {
            assert_ne!(key(&i).unwrap(), base, "{what}");
        }
        // the staged tree: a file's bytes, its mode, a new file, a link's target
        let staged = |change: &dyn Fn()| {
            change();
            key(&inputs(&s, &none)).unwrap()
        };
        let k1 = staged(&|| fs::write(s.join("etc/a.conf"), "a=2\n").unwrap());
        assert_ne!(k1, base, "file bytes");
        let k2 = staged(&|| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(s.join("etc/a.conf"), fs::Permissions::from_mode(0o600)).unwrap()
        });
        assert_ne!(k2, k1, "file mode");
        let k3 = staged(&|| fs::write(s.join("etc/b.conf"), "").unwrap());
        assert_ne!(k3, k2, "new file");
        let k4 = staged(&|| {
            fs::remove_file(s.join("etc/link")).unwrap();
            std::os::unix::fs::symlink("b.conf", s.join("etc/link")).unwrap()
        });
        assert_ne!(k4, k3, "link target");
        // a file moved to another directory with the same bytes
        let k5 = staged(&|| {
            fs::create_dir_all(s.join("usr")).unwrap();
            fs::rename(s.join("etc/b.conf"), s.join("usr/b.conf")).unwrap()
        });
        assert_ne!(k5, k4, "path");
    }

    #[test]
    fn restores_what_it_stored_and_keeps_the_most_recent() {
        let t = tempfile::tempdir().unwrap();
        let cache = RootImageCache::new(t.path(), 2);
        let img = t.path().join("root.img");
        let out = t.path().join("out.img");
        assert!(!cache.restore("k1", &out).unwrap(), "empty cache");
        for (k, bytes) in [("k1", "one"), ("k2", "two"), ("k3", "three")] {
            fs::write(&img, bytes).unwrap();
            let removed = cache.store(k, &img).unwrap();
            // k1 is the least recently used when k3 arrives
            assert_eq!(removed, if k == "k3" { vec!["k1"] } else { vec![] }, "{k}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!cache.restore("k1", &out).unwrap());
        assert!(cache.restore("k2", &out).unwrap());
        assert_eq!(fs::read_to_string(&out).unwrap(), "two");
        // k2 restored: now k3 is the older one
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&img, "four").unwrap();
        assert_eq!(cache.store("k4", &img).unwrap(), vec!["k3"]);
        assert!(cache.restore("k2", &out).unwrap());
        assert!(cache.restore("k4", &out).unwrap());
        assert_eq!(fs::read_to_string(&out).unwrap(), "four");
        // a partial copy of a build that is gone is swept
        let stale = cache.dir.join(".k9.partial-4000000");
        fs::write(&stale, "x").unwrap();
        cache.prune("k4").unwrap();
        assert!(!stale.exists());
    }
}
