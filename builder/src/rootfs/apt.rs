//! Debian and Ubuntu roots through mmdebstrap.

use std::path::Path;

use super::{parse_package_list, InstalledPackage, RootfsBackend, RootfsRequest, FINALIZE};
use crate::error::{BuildError, Result};
use crate::exec::{Cmd, Exec};

#[derive(Debug, Default)]
pub struct Apt;

impl Apt {
    /// The exact mmdebstrap command line for a request (golden-tested).
    pub fn render(req: &RootfsRequest<'_>) -> Cmd {
        let p = req.profile;
        let cache = req.cache.display().to_string();
        let staging = req.staging.display().to_string();
        let mut cmd = Cmd::new("mmdebstrap")
            .env("SOURCE_DATE_EPOCH", req.source_date_epoch.to_string())
            .args(["--mode=root", "--format=directory", "--variant=minbase"])
            .arg(format!("--architectures={}", p.distro.arch))
            .arg(format!("--include={}", p.package_list().join(",")))
            // Keep downloaded .debs in the cache; apt checks every file's
            // checksum against the signed index before it uses it.
            .arg("--skip=essential/unlink")
            .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
            .arg(format!(
                "--setup-hook=sync-in {cache} /var/cache/apt/archives/"
            ))
            // Our initramfs configuration must be in place before the kernel
            // package builds the initrd.
            .arg("--essential-hook=mkdir -p \"$1\"/etc/initramfs-tools")
            .arg(format!(
                "--essential-hook=sync-in {staging}/etc/initramfs-tools /etc/initramfs-tools"
            ))
            .arg(format!(
                "--customize-hook=sync-out /var/cache/apt/archives {cache}"
            ))
            .arg(format!("--customize-hook=sync-in {staging} /"))
            .arg(format!("--customize-hook=chroot \"$1\" {FINALIZE}"))
            .arg(&p.distro.release)
            .arg(&req.target);
        for r in &p.repos {
            let suites = if r.suites.is_empty() {
                vec![p.distro.release.clone()]
            } else {
                r.suites.clone()
            };
            let signed = r
                .keyring
                .as_ref()
                .map(|k| format!("[signed-by={}] ", k.display()))
                .unwrap_or_default();
            for s in suites {
                cmd = cmd.arg(format!(
                    "deb {signed}{} {s} {}",
                    r.url,
                    r.components.join(" ")
                ));
            }
        }
        cmd
    }
}

/// Turn mmdebstrap's failure output into the error a user can act on.
pub fn classify_failure(err: BuildError) -> BuildError {
    let BuildError::Command { cmd, detail } = err else {
        return err;
    };
    let missing: Vec<&str> = detail
        .lines()
        .filter_map(|l| l.split("Unable to locate package ").nth(1))
        .map(str::trim)
        .collect();
    if !missing.is_empty() {
        return BuildError::MissingPackages {
            packages: missing.join(", "),
            detail: "check [packages] in the profile and the repos' suites/components".into(),
        };
    }
    const NETWORK: [&str; 5] = [
        "Failed to fetch",
        "Could not connect",
        "Could not resolve",
        "Connection failed",
        "404  Not Found",
    ];
    if let Some(problem) = detail
        .lines()
        .find(|l| NETWORK.iter().any(|n| l.contains(n)))
    {
        // apt names the URL on its "Err:" / "Failed to fetch" lines.
        let url = detail
            .lines()
            .filter(|l| {
                l.starts_with("Err:") || l.contains("Failed to fetch") || l.starts_with("Ign:")
            })
            .chain(std::iter::once(problem))
            .flat_map(str::split_whitespace)
            .find(|w| w.contains("://"))
            .unwrap_or("(mirror)")
            .to_string();
        return BuildError::Unreachable {
            url,
            detail: problem.trim().to_string(),
        };
    }
    BuildError::Command { cmd, detail }
}

impl RootfsBackend for Apt {
    fn build(&self, exec: &dyn Exec, req: &RootfsRequest<'_>) -> Result<()> {
        std::fs::create_dir_all(&req.cache).map_err(|source| BuildError::Io {
            path: req.cache.clone(),
            source,
        })?;
        exec.run_streamed(&Self::render(req))
            .map_err(classify_failure)
    }

    fn installed(&self, exec: &dyn Exec, root: &Path) -> Result<Vec<InstalledPackage>> {
        let out = exec.run(
            &Cmd::new("dpkg-query")
                .arg(format!(
                    "--admindir={}",
                    root.join("var/lib/dpkg").display()
                ))
                .args(["-W", "-f", "${Package}\t${Version}\n"]),
        )?;
        Ok(parse_package_list(&out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;
    use std::path::PathBuf;

    fn golden(profile_file: &str, golden_file: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let p = profile::load(&dir.join("../configs").join(profile_file)).unwrap();
        let req = RootfsRequest {
            profile: &p.profile,
            target: "/build/rootfs".into(),
            cache: "/cache/apt".into(),
            staging: "/build/staging".into(),
            source_date_epoch: 1_700_000_000,
        };
        let rendered = Apt::render(&req);
        let text = format!(
            "{}\n{}\n",
            rendered
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            rendered
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        );
        let path = dir.join("tests/golden").join(golden_file);
        if std::env::var_os("HABUILD_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} missing: run with HABUILD_BLESS=1", path.display()));
        assert_eq!(
            text, want,
            "golden {golden_file} differs (HABUILD_BLESS=1 to update)"
        );
    }

    #[test]
    fn ubuntu_noble_mmdebstrap_golden() {
        golden("ubuntu-24.04.toml", "mmdebstrap-ubuntu-24.04.txt");
    }

    #[test]
    fn ubuntu_jammy_mmdebstrap_golden() {
        golden("ubuntu-22.04.toml", "mmdebstrap-ubuntu-22.04.txt");
    }

    #[test]
    fn debian_mmdebstrap_golden() {
        golden("debian-12.toml", "mmdebstrap-debian-12.txt");
    }

    #[test]
    fn classify_missing_and_unreachable() {
        let e = classify_failure(BuildError::Command {
            cmd: "mmdebstrap".into(),
            detail: "E: Unable to locate package nosuchpkg\nE: Unable to locate package other"
                .into(),
        });
        assert_eq!(e.to_string().lines().next().unwrap(), "package(s) not found in the configured repositories: nosuchpkg, other (check [packages] in the profile and the repos' suites/components)");
        let e = classify_failure(BuildError::Command {
            cmd: "mmdebstrap".into(),
            detail: "E: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:9".into(),
        });
        assert!(
            e.to_string().starts_with(
                "repository http://127.0.0.1:9/debian/dists/bookworm/InRelease is unreachable"
            ),
            "{e}"
        );
    }
}
