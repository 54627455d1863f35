//! Embeds the workspace's `images/` tree (the overlays baked into every image)
//! in the `habuild` binary, so an installed `habuild` needs no checkout.
//!
//! Writes `$OUT_DIR/embedded_images.rs`: one `Entry` per directory, file and
//! symlink under `images/`, in sorted path order, with its unix mode (scripts
//! must stay executable) and, for files, its bytes through `include_bytes!`.
//! Cargo reruns this script when any file or directory of the tree changes
//! (a directory's entry covers files added to or removed from it).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../images");
    let root = root
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e} (habuild embeds images/)", root.display()));
    let mut out = String::from("&[\n");
    println!("cargo:rerun-if-changed={}", root.display());
    walk(&root, &root, &mut out);
    out.push_str("]\n");
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"))
        .join("embedded_images.rs");
    fs::write(&dest, out).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}

fn walk(root: &Path, dir: &Path, out: &mut String) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        println!("cargo:rerun-if-changed={}", path.display());
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_str()
            .unwrap_or_else(|| panic!("{}: not UTF-8", path.display()));
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mode = meta.permissions().mode() & 0o7777;
        let kind = if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            format!(
                "Kind::Symlink({:?})",
                target.to_str().expect("UTF-8 link target")
            )
        } else if meta.is_dir() {
            "Kind::Dir".to_string()
        } else {
            format!(
                "Kind::File(include_bytes!({:?}))",
                path.to_str().expect("UTF-8 path")
            )
        };
        writeln!(
            out,
            "    Entry {{ path: {rel:?}, mode: 0o{mode:o}, kind: {kind} }},"
        )
        .expect("writing to a String");
        if meta.is_dir() && !meta.file_type().is_symlink() {
            walk(root, &path, out);
        }
    }
}
