//! The read-only root filesystem image (erofs by default, squashfs optional),
//! made reproducibly from the root directory.

use std::path::Path;

use uuid::Uuid;

use crate::error::Result;
use crate::exec::{Cmd, Exec};
use crate::profile::RootFsType;

/// The exact command that turns `root` into `out` (golden-tested).
pub fn render(fs: RootFsType, root: &Path, out: &Path, uuid: Uuid, epoch: u64) -> Cmd {
    match fs {
        RootFsType::Erofs => Cmd::new("mkfs.erofs")
            .arg("-zlz4")
            .arg(format!("-T{epoch}"))
            .arg(format!("-U{uuid}"))
            .arg("--quiet")
            .arg(out)
            .arg(root),
        RootFsType::Squashfs => Cmd::new("mksquashfs")
            .arg(root)
            .arg(out)
            .args(["-noappend", "-comp", "zstd", "-no-progress", "-quiet"])
            .arg("-mkfs-time")
            .arg(epoch.to_string())
            .arg("-all-time")
            .arg(epoch.to_string())
            .arg("-reproducible"),
    }
}

pub fn make(
    exec: &dyn Exec,
    fs: RootFsType,
    root: &Path,
    out: &Path,
    uuid: Uuid,
    epoch: u64,
) -> Result<()> {
    exec.run(&render(fs, root, out, uuid, epoch).env("SOURCE_DATE_EPOCH", epoch.to_string()))?;
    Ok(())
}

/// The kernel's name for the filesystem (rootfstype=).
pub fn kernel_name(fs: RootFsType) -> &'static str {
    match fs {
        RootFsType::Erofs => "erofs",
        RootFsType::Squashfs => "squashfs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erofs_command_is_reproducible() {
        let c = render(
            RootFsType::Erofs,
            Path::new("/r"),
            Path::new("/o.img"),
            Uuid::nil(),
            42,
        );
        assert_eq!(
            c.display(),
            "mkfs.erofs -zlz4 -T42 -U00000000-0000-0000-0000-000000000000 --quiet /o.img /r"
        );
        let c = render(
            RootFsType::Squashfs,
            Path::new("/r"),
            Path::new("/o.img"),
            Uuid::nil(),
            42,
        );
        assert!(c.display().contains("-all-time 42"));
    }
}
