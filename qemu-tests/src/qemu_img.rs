//! Disk files for VMs: copy-on-write overlays and raw conversion.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::tools;

/// Creates `out`, a qcow2 overlay on `base` (of format `base_fmt`, e.g.
/// `"raw"` or `"qcow2"`), so VMs never write to the built image. `size`
/// in bytes grows the virtual disk beyond the base's size. The base path
/// is stored absolute.
pub fn create_overlay(base: &Path, base_fmt: &str, out: &Path, size: Option<u64>) -> Result<()> {
    let qemu_img = tools::require("qemu-img")?;
    let base = base
        .canonicalize()
        .with_context(|| format!("base image {}", base.display()))?;
    let mut cmd = Command::new(qemu_img);
    cmd.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&base)
        .args(["-F", base_fmt])
        .arg(out);
    if let Some(size) = size {
        cmd.arg(size.to_string());
    }
    tools::run(&mut cmd)
        .with_context(|| format!("creating overlay {} on {}", out.display(), base.display()))?;
    Ok(())
}

/// Converts the qcow2 image `qcow2` into the raw image `raw`.
pub fn convert_to_raw(qcow2: &Path, raw: &Path) -> Result<()> {
    let qemu_img = tools::require("qemu-img")?;
    tools::run(
        Command::new(qemu_img)
            .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
            .arg(qcow2)
            .arg(raw),
    )
    .with_context(|| format!("converting {} to {}", qcow2.display(), raw.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_round_trip() {
        if tools::require("qemu-img").is_err() {
            eprintln!("skipped: qemu-img not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let mut data = vec![0u8; 1 << 20];
        data[..5].copy_from_slice(b"hello");
        std::fs::write(&base, &data).unwrap();
        let overlay = dir.path().join("vm.qcow2");
        create_overlay(&base, "raw", &overlay, Some(4 << 20)).unwrap();
        let raw = dir.path().join("back.raw");
        convert_to_raw(&overlay, &raw).unwrap();
        let back = std::fs::read(&raw).unwrap();
        assert_eq!(back.len(), 4 << 20);
        assert_eq!(&back[..5], b"hello");

        let err = create_overlay(&dir.path().join("nope"), "raw", &overlay, None).unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }
}
