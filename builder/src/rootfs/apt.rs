//! Debian and Ubuntu roots through mmdebstrap: the base tree (cached when
//! the build is incremental, see [`super::base`]), then the overlay and
//! `finalize-image` on top.

use std::path::Path;

use super::base::{self, BaseInputs, BaseUse};
use super::index::{self, Resolution};
use super::{parse_package_list, InstalledPackage, Root, RootfsBackend, RootfsRequest};
use crate::error::{BuildError, Result};
use crate::exec::{Cmd, Exec};
use crate::profile::Profile;

#[derive(Debug, Default)]
pub struct Apt;

impl Apt {
    /// The exact mmdebstrap command line that installs a request's base
    /// tree (golden-tested): the packages, with the initramfs-tools
    /// configuration of the staged overlay in place before the kernel is
    /// installed. The rest of the overlay and `finalize-image` go on top
    /// afterwards ([`base::apply_top`]).
    pub fn render(req: &RootfsRequest<'_>) -> Cmd {
        let p = req.profile;
        let cache = req.cache.display().to_string();
        let staging = req.staging.display().to_string();
        Cmd::new("mmdebstrap")
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
                "--essential-hook=sync-in {staging}/{ESSENTIAL_TREE} /{ESSENTIAL_TREE}"
            ))
            .arg(format!(
                "--customize-hook=sync-out /var/cache/apt/archives {cache}"
            ))
            .arg(&p.distro.release)
            .arg(&req.target)
            .args(index::sources(p))
    }

    /// The base tree's cache key for a request.
    pub fn base_key(
        exec: &dyn Exec,
        req: &RootfsRequest<'_>,
        resolution: &Resolution,
    ) -> Result<String> {
        // the command without this build's paths
        let placeholder = RootfsRequest {
            target: "/target".into(),
            cache: "/cache".into(),
            staging: "/staging".into(),
            incremental: None,
            ..req.clone()
        };
        let command = Self::render(&placeholder);
        let tool = exec.run(&Cmd::new("mmdebstrap").arg("--version"))?.stdout;
        let essential = base::hash_tree(&req.staging.join(ESSENTIAL_TREE))?;
        Ok(base::base_key(&BaseInputs {
            command: &command,
            tool_version: tool.trim(),
            packages: &resolution.packages,
            essential_sha256: &essential,
            epoch: req.source_date_epoch,
        }))
    }
}

/// The part of the staged overlay the essential hook copies into the base.
pub const ESSENTIAL_TREE: &str = "etc/initramfs-tools";

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
    fn resolve(&self, exec: &dyn Exec, cache: &Path, p: &Profile) -> Result<Option<Resolution>> {
        index::resolve(exec, cache, p)
            .map(Some)
            .map_err(classify_failure)
    }

    fn build(&self, exec: &dyn Exec, req: &RootfsRequest<'_>) -> Result<Root> {
        std::fs::create_dir_all(&req.cache).map_err(|source| BuildError::Io {
            path: req.cache.clone(),
            source,
        })?;
        let Some(inc) = &req.incremental else {
            exec.run_streamed(&Self::render(req))
                .map_err(classify_failure)?;
            base::apply_top(exec, &req.target, &req.staging, req.source_date_epoch)?;
            return Ok(Root::plain(req.target.clone()));
        };
        let key = Self::base_key(exec, req, inc.resolution)?;
        let short = &key[..16];
        let mut remove_lower = None;
        let cached = if inc.cold {
            None
        } else {
            inc.bases.lookup(&key)
        };
        let (lower, used) = match cached {
            Some(root) => {
                tracing::info!("base tree {short} from the cache ({})", root.display());
                (
                    root,
                    BaseUse {
                        key: key.clone(),
                        reused: true,
                        cached: true,
                    },
                )
            }
            None => {
                tracing::info!("base tree {short} not cached: installing it");
                let partial = inc.bases.partial(&key)?;
                let r = RootfsRequest {
                    target: partial.join("root"),
                    ..req.clone()
                };
                exec.run_streamed(&Self::render(&r))
                    .map_err(classify_failure)?;
                let installed = self.installed(exec, &r.target)?;
                let diff = base::package_diff(&inc.resolution.packages, &installed);
                if diff.is_empty() && inc.bases.lookup(&key).is_some() {
                    // --cold with the key cached: build on the fresh tree, keep the cached one
                    remove_lower = Some(partial);
                    (
                        r.target,
                        BaseUse {
                            key: key.clone(),
                            reused: false,
                            cached: true,
                        },
                    )
                } else if diff.is_empty() {
                    let root = inc.bases.commit(&partial, &key, &installed)?;
                    (
                        root,
                        BaseUse {
                            key: key.clone(),
                            reused: false,
                            cached: true,
                        },
                    )
                } else {
                    // The key would not describe this tree: use it once, never cache it.
                    tracing::warn!(
                        "the installed packages differ from the resolved set ({}); base tree not cached",
                        diff.join(" ")
                    );
                    remove_lower = Some(partial);
                    (
                        r.target,
                        BaseUse {
                            key: key.clone(),
                            reused: false,
                            cached: false,
                        },
                    )
                }
            }
        };
        match inc.bases.prune(&key) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!("base cache: removed the least recently used {removed:?}")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("base cache: pruning failed: {e}"),
        }
        let mut overlay = base::Overlay::mount(exec, &lower, &req.target)?;
        if let Some(p) = remove_lower {
            overlay.remove_lower_after(p);
        }
        base::apply_top(exec, &req.target, &req.staging, req.source_date_epoch)?;
        Ok(Root {
            path: req.target.clone(),
            base: Some(used),
            _overlay: Some(overlay),
        })
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
    use crate::exec::RecordingExec;
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
            incremental: None,
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

    /// Which layer each kind of change invalidates: the base key (the cached
    /// installed tree) changes with a package version, the package list and
    /// the initramfs configuration the essential hook copies in; it stays
    /// the same for other overlay files and profile keys that only the
    /// layers on top read (kernel command line, partitions), which change
    /// the image instead (tested in qemu-tests' debian_image).
    #[test]
    fn changes_invalidate_the_right_layer() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let p = profile::load(&dir.join("../configs/debian-12.toml"))
            .unwrap()
            .profile;
        let t = tempfile::tempdir().unwrap();
        let staging = t.path().join("staging");
        for (f, text) in [
            ("etc/initramfs-tools/modules", "erofs\n"),
            ("etc/sysctl.d/90-habuild.conf", "vm.swappiness = 0\n"),
        ] {
            std::fs::create_dir_all(staging.join(f).parent().unwrap()).unwrap();
            std::fs::write(staging.join(f), text).unwrap();
        }
        let resolution = Resolution {
            packages: vec![
                InstalledPackage {
                    name: "libc6".into(),
                    version: "2.36-9+deb12u13".into(),
                },
                InstalledPackage {
                    name: "systemd".into(),
                    version: "252.38-1~deb12u1".into(),
                },
            ],
            index_date: None,
        };
        let key = |p: &Profile, r: &Resolution| {
            let req = RootfsRequest {
                profile: p,
                target: t.path().join("rootfs"),
                cache: t.path().join("cache"),
                staging: staging.clone(),
                source_date_epoch: 1_700_000_000,
                incremental: None,
            };
            Apt::base_key(&RecordingExec::default(), &req, r).unwrap()
        };
        let k = key(&p, &resolution);
        assert_eq!(k, key(&p, &resolution));

        // a new version of a resolved package: new base
        let mut newer = resolution.clone();
        newer.packages[0].version = "2.36-9+deb12u14".into();
        assert_ne!(k, key(&p, &newer));
        // a package added to the profile: new base
        let mut more = p.clone();
        more.packages.extra.push("htop".into());
        assert_ne!(k, key(&more, &resolution));
        // a mirror: new base
        let mut mirror = p.clone();
        mirror.repos[0].url = "http://127.0.0.1:9/debian".into();
        assert_ne!(k, key(&mirror, &resolution));

        // profile keys only the upper layers read: same base
        let mut cmdline = p.clone();
        cmdline.kernel.cmdline.push_str(" quiet");
        cmdline.partitions.root_mib += 1;
        assert_eq!(k, key(&cmdline, &resolution));
        // an overlay file outside the essential hook's tree: same base
        std::fs::write(
            staging.join("etc/sysctl.d/90-habuild.conf"),
            "vm.swappiness = 1\n",
        )
        .unwrap();
        std::fs::write(staging.join("usr-lib-habuild-agent"), "new agent").unwrap();
        assert_eq!(k, key(&p, &resolution));
        // the initramfs configuration is installed with the kernel: new base
        std::fs::write(
            staging.join("etc/initramfs-tools/modules"),
            "erofs\noverlay\n",
        )
        .unwrap();
        assert_ne!(k, key(&p, &resolution));
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
