//! Running host tools: finding them (also in the sbin directories a
//! non-login `PATH` lacks) and running them with errors that name the
//! command and quote its stderr.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{Error, Result};

/// Directories searched after `$PATH`.
const EXTRA_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"];

/// Finds the executable `bin` in `$PATH`, then in the sbin directories;
/// the error reads `"<bin> not found: run scripts/setup"`.
pub fn require(bin: &str) -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(bin))
        .find(|p| is_executable(p))
        .ok_or_else(|| Error::Missing(bin.to_string()))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `cmd` to completion with captured output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    tracing::debug!("running {cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            cmd: format!("{cmd:?}"),
            source,
        })
}

/// Runs `cmd` and returns its stdout (lossy UTF-8); a non-zero exit is an
/// error naming the command and quoting its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(Error::Failed {
            cmd: format!("{cmd:?}"),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_error_text() {
        let err = require("definitely-not-here").unwrap_err();
        assert_eq!(
            err.to_string(),
            "definitely-not-here not found: run scripts/setup"
        );
    }

    #[test]
    fn run_names_failing_command() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"sh\"") && msg.contains("oops"), "{msg}");
        assert!(run(Command::new("sh").args(["-c", "echo hi"])).unwrap() == "hi\n");
    }
}
