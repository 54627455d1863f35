//! Scratch directories for images, firmware variables and logs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A temporary directory under `$HABUILD_TEST_TMP`, else `/var/tmp` (not
/// `/tmp`: images are big and `/tmp` may be RAM).
///
/// Removed on drop, unless `HABUILD_KEEP=1`: then it is kept and its path
/// printed to stderr. When dropped during a panic without `HABUILD_KEEP=1`,
/// a hint to set it is printed.
#[derive(Debug)]
pub struct Workdir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Workdir {
    /// Creates `<base>/habuild-<label>-XXXXXX`.
    pub fn new(label: &str) -> Result<Workdir> {
        let base = base_dir();
        let dir = tempfile::Builder::new()
            .prefix(&format!("habuild-{label}-"))
            .tempdir_in(&base)
            .with_context(|| {
                format!("cannot create a temporary directory in {}", base.display())
            })?;
        let path = dir.path().to_path_buf();
        tracing::debug!("workdir {}", path.display());
        Ok(Workdir {
            dir: Some(dir),
            path,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

/// `$HABUILD_TEST_TMP`, else `/var/tmp`.
pub fn base_dir() -> PathBuf {
    std::env::var_os("HABUILD_TEST_TMP")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// True when `HABUILD_KEEP=1`.
pub fn keep_requested() -> bool {
    std::env::var("HABUILD_KEEP").is_ok_and(|v| v == "1")
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if keep_requested() {
            let path = dir.keep();
            eprintln!("HABUILD_KEEP=1: kept {}", path.display());
        } else {
            if std::thread::panicking() {
                eprintln!(
                    "removing {} (set HABUILD_KEEP=1 to keep it)",
                    self.path.display()
                );
            }
            if let Err(e) = dir.close() {
                tracing::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}
