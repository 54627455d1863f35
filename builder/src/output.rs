//! Safe output: everything is built under temporary names next to the final
//! paths and renamed into place only when the whole build succeeded. A failed
//! build removes its temporaries; an interrupted one leaves only dot-files that
//! the next build sweeps.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{BuildError, IoContext, Result};

#[derive(Debug)]
pub struct Output {
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    pub manifest: PathBuf,
    pub raw_tmp: PathBuf,
    pub qcow2_tmp: PathBuf,
    pub manifest_tmp: PathBuf,
    /// Scratch directory (rootfs, staging, root image).
    pub work: PathBuf,
    keep_work: bool,
    committed: bool,
}

impl Output {
    pub fn prepare(dir: &Path, name: &str, keep_work: bool) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| unwritable(dir, e))?;
        let probe = dir.join(format!(".habuild-probe-{}", std::process::id()));
        fs::write(&probe, b"").map_err(|e| unwritable(dir, e))?;
        let _ = fs::remove_file(&probe);
        sweep_stale(dir);
        let pid = std::process::id();
        let tmp = |ext: &str| dir.join(format!(".{name}.{ext}.partial-{pid}"));
        let work = dir.join(format!(".habuild-work-{name}-{pid}"));
        fs::create_dir_all(&work).at(&work)?;
        Ok(Self {
            raw: dir.join(format!("{name}.raw")),
            qcow2: dir.join(format!("{name}.qcow2")),
            manifest: dir.join("manifest.json"),
            raw_tmp: tmp("raw"),
            qcow2_tmp: tmp("qcow2"),
            manifest_tmp: tmp("manifest.json"),
            work,
            keep_work,
            committed: false,
        })
    }

    /// Move every artifact into place.
    pub fn commit(mut self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        for (tmp, fin) in [
            (&self.raw_tmp, &self.raw),
            (&self.qcow2_tmp, &self.qcow2),
            (&self.manifest_tmp, &self.manifest),
        ] {
            fs::rename(tmp, fin).at(fin)?;
        }
        self.committed = true;
        Ok((self.raw.clone(), self.qcow2.clone(), self.manifest.clone()))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.committed {
            for p in [&self.raw_tmp, &self.qcow2_tmp, &self.manifest_tmp] {
                let _ = fs::remove_file(p);
            }
        }
        if self.keep_work {
            tracing::info!("work directory kept at {}", self.work.display());
        } else {
            let _ = fs::remove_dir_all(&self.work);
        }
    }
}

fn unwritable(dir: &Path, e: std::io::Error) -> BuildError {
    BuildError::Invalid(format!(
        "output directory {} is not writable: {e}",
        dir.display()
    ))
}

/// Remove leftovers of builds whose process is gone (pid suffix).
fn sweep_stale(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(".habuild-work-") || name.contains(".partial-")) {
            continue;
        }
        let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                tracing::info!("removing leftover {}", e.path().display());
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_build_leaves_nothing_and_commit_renames() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("out");
        {
            let o = Output::prepare(&dir, "img", false).unwrap();
            fs::write(&o.raw_tmp, b"half").unwrap();
        }
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let o = Output::prepare(&dir, "img", false).unwrap();
        for p in [&o.raw_tmp, &o.qcow2_tmp, &o.manifest_tmp] {
            fs::write(p, b"x").unwrap();
        }
        let (raw, _, _) = o.commit().unwrap();
        assert!(raw.ends_with("img.raw") && raw.is_file());
    }

    #[test]
    fn unwritable_output_is_named() {
        let e = Output::prepare(Path::new("/proc/habuild-out"), "img", false).unwrap_err();
        assert!(
            e.to_string().contains("/proc/habuild-out is not writable"),
            "{e}"
        );
    }
}
