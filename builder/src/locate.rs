//! Finding the `habuild-agent` binary that `habuild image` bakes into the
//! image when no `--agent` is given: next to the running `habuild` first
//! (`target/release/` in a checkout, the same `bin/` after the two
//! `cargo install` commands), then on `PATH`.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{BuildError, Result};

/// The agent's file name.
pub const AGENT: &str = "habuild-agent";

/// `habuild-agent` in `exe_dir`, else in the first directory of `path_var`
/// (a `PATH` value) that has it. Only executable regular files count.
pub fn find_agent(exe_dir: &Path, path_var: Option<&OsStr>) -> Result<PathBuf> {
    let beside = exe_dir.join(AGENT);
    if is_executable(&beside) {
        return Ok(beside);
    }
    let on_path = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(AGENT))
        .find(|p| is_executable(p));
    on_path.ok_or_else(|| {
        BuildError::Invalid(format!(
            "{AGENT} not found next to habuild ({}) or on PATH. Install it beside habuild with \
             `cargo install --locked --path firstboot` (from a checkout: `cargo build --release -p habuild-firstboot`), \
             or pass --agent FILE",
            exe_dir.display()
        ))
    })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn put(dir: &Path, mode: u32) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        let p = dir.join(AGENT);
        fs::write(&p, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn beside_habuild_then_path_then_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let exe_dir = t.path().join("bin");
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir_all(&exe_dir).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();

        let e = find_agent(&exe_dir, Some(&path)).unwrap_err().to_string();
        assert!(e.contains("habuild-agent not found"), "{e}");
        assert!(e.contains("cargo install --locked --path firstboot"), "{e}");
        assert!(e.contains("--agent"), "{e}");
        assert!(find_agent(&exe_dir, None).is_err());

        // not executable: skipped
        put(&a, 0o644);
        assert!(find_agent(&exe_dir, Some(&path)).is_err());
        let on_b = put(&b, 0o755);
        assert_eq!(find_agent(&exe_dir, Some(&path)).unwrap(), on_b);
        let on_a = put(&a, 0o755);
        assert_eq!(find_agent(&exe_dir, Some(&path)).unwrap(), on_a);
        // a directory named habuild-agent is not the agent
        fs::create_dir_all(exe_dir.join(AGENT).join("x")).unwrap();
        assert_eq!(find_agent(&exe_dir, Some(&path)).unwrap(), on_a);
        fs::remove_dir_all(exe_dir.join(AGENT)).unwrap();
        let beside = put(&exe_dir, 0o755);
        assert_eq!(find_agent(&exe_dir, Some(&path)).unwrap(), beside);
    }
}
