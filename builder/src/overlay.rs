//! Staging the overlay tree that every image gets: `images/common`, the
//! distro family's directory, the profile's own overlay directories (in that
//! order, later ones win), and the agent binary.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{BuildError, IoContext, Result};

/// Where the agent lives inside the image.
pub const AGENT_PATH: &str = "usr/lib/habuild/habuild-agent";

/// Build the staging directory `dest` from the overlay sources.
pub fn stage(
    images: &Path,
    family_dir: &str,
    extra: &[PathBuf],
    agent: &Path,
    dest: &Path,
) -> Result<()> {
    let common = images.join("common");
    if !common.is_dir() {
        return Err(BuildError::Invalid(format!(
            "{}: not found; pass --images pointing at habuild's images/ directory",
            common.display()
        )));
    }
    fs::create_dir_all(dest).at(dest)?;
    copy_tree(&common, dest)?;
    let fam = images.join(family_dir);
    if fam.is_dir() {
        copy_tree(&fam, dest)?;
    }
    for dir in extra {
        if !dir.is_dir() {
            return Err(BuildError::Invalid(format!(
                "overlay directory {} (from the profile's `overlays`) does not exist",
                dir.display()
            )));
        }
        copy_tree(dir, dest)?;
    }
    let to = dest.join(AGENT_PATH);
    fs::create_dir_all(to.parent().expect("has parent")).at(&to)?;
    fs::copy(agent, &to).map_err(|source| BuildError::Io {
        path: agent.to_path_buf(),
        source,
    })?;
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).at(&to)?;
    Ok(())
}

/// Recursive copy keeping modes and symlinks; entries visited in sorted order.
pub fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .at(src)?
        .collect::<std::io::Result<Vec<_>>>()
        .at(src)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let from = e.path();
        let to = dest.join(e.file_name());
        let meta = fs::symlink_metadata(&from).at(&from)?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&from).at(&from)?;
            let _ = fs::remove_file(&to);
            symlink(&target, &to).at(&to)?;
        } else if meta.is_dir() {
            fs::create_dir_all(&to).at(&to)?;
            fs::set_permissions(&to, meta.permissions()).at(&to)?;
            copy_tree(&from, &to)?;
        } else {
            fs::copy(&from, &to).at(&from)?;
            fs::set_permissions(&to, meta.permissions()).at(&to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_common_family_extra_and_agent() {
        let t = tempfile::tempdir().unwrap();
        let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images");
        let extra = t.path().join("extra/etc");
        fs::create_dir_all(&extra).unwrap();
        fs::write(extra.join("motd"), "hi\n").unwrap();
        let agent = t.path().join("agent");
        fs::write(&agent, "#!/bin/sh\n").unwrap();
        let dest = t.path().join("staging");
        stage(&images, "debian", &[t.path().join("extra")], &agent, &dest).unwrap();
        for f in [
            "usr/lib/systemd/system/habuild-agent.service",
            "usr/lib/systemd/system/habuild-gluster-loop.service",
            "etc/modules-load.d/habuild.conf",
            "etc/sysctl.d/90-habuild.conf",
            "etc/containerd/config.toml",
            "etc/initramfs-tools/scripts/local-bottom/habuild-overlay",
            "etc/motd",
            AGENT_PATH,
        ] {
            assert!(dest.join(f).is_file(), "{f} missing");
        }
        let mode = fs::metadata(dest.join("usr/lib/habuild/finalize-image"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "finalize-image must stay executable");
        let e = stage(&images, "debian", &[t.path().join("nope")], &agent, &dest).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
