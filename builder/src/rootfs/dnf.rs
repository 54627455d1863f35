//! CentOS Stream and Rocky roots through `dnf --installroot`.
//!
//! dnf runs with a configuration written for this build — a minimal `dnf.conf`
//! and a reposdir holding one `.repo` file made from the profile's repos — in a
//! directory next to the target (`<target>.dnf/`), never the build host's
//! `/etc/dnf` or `/etc/yum.repos.d`.
//!
//! Things that matter when the host is Debian (and are harmless elsewhere):
//! - Debian's rpm keeps its database in `~/.rpmdb` (`%_dbpath` in
//!   /usr/lib/rpm/macros), which inside an installroot means `/root/.rpmdb`, a
//!   place the image's own rpm never looks. dnf runs with `HOME` pointing at
//!   the config directory, whose `.rpmmacros` puts the database at
//!   `/var/lib/rpm`, where EL's rpm expects it.
//! - With `--installroot`, dnf prefixes `cachedir` with the root when it reads
//!   its configuration and then re-applies `--setopt=cachedir` as given: the
//!   repo metadata and the packages go to the real cache, but dnf leaves an
//!   `expired_repos.json` under `<root>/<cache path>`, which is removed again.
//! - A `file://` repository is used in place: dnf copies nothing from it into
//!   the cache. Packages from http(s) repositories are kept (`keepcache`) and a
//!   later build reuses them after checking them against the repo metadata.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use super::{parse_package_list, InstalledPackage, RootfsBackend, RootfsRequest, FINALIZE};
use crate::error::{BuildError, IoContext, Result};
use crate::exec::{Cmd, Exec};
use crate::profile::{Profile, Repo};

#[derive(Debug, Default)]
pub struct Dnf;

/// Where the root's rpm database lives (EL's default).
pub const RPM_DBPATH: &str = "/var/lib/rpm";

/// `~/.rpmmacros` for the dnf run (see the module documentation).
pub const RPMMACROS: &str = "%_dbpath /var/lib/rpm\n";

/// The file name of the repo file inside the reposdir.
pub const REPO_FILE: &str = "habuild.repo";

/// dnf's persistor file, the only thing dnf writes under `<root>/<cache path>`.
const CACHE_STUB_FILE: &str = "expired_repos.json";

/// The architecture name rpm uses for a profile's `distro.arch`.
pub fn rpm_arch(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "ppc64el" => "ppc64le",
        other => other,
    }
}

/// The directory holding dnf's configuration for a build into `target`.
pub fn config_dir(target: &Path) -> PathBuf {
    let mut name = target
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| OsString::from("rootfs"));
    name.push(".dnf");
    target.with_file_name(name)
}

impl Dnf {
    /// The `.repo` file: one section per profile repo, in profile order.
    pub fn render_repo_file(profile: &Profile) -> String {
        let mut s = format!(
            "# Written by habuild for profile {}; used only for this build.\n",
            profile.name
        );
        for r in &profile.repos {
            s.push('\n');
            s.push_str(&format!("[{}]\n", r.id));
            s.push_str(&format!("name={}\n", r.id));
            s.push_str(&format!("baseurl={}\n", r.url));
            s.push_str("enabled=1\n");
            s.push_str(&format!("gpgcheck={}\n", u8::from(r.gpgcheck)));
            if let Some(k) = &r.keyring {
                s.push_str(&format!("gpgkey=file://{}\n", k.display()));
            }
            s.push_str("repo_gpgcheck=0\n");
            s.push_str("skip_if_unavailable=0\n");
            s.push_str("metadata_expire=6h\n");
            s.push_str("countme=0\n");
        }
        s
    }

    /// The minimal `dnf.conf` given with `--config`, so the host's is never read.
    pub fn render_conf(profile: &Profile) -> String {
        let major = profile
            .distro
            .release
            .split('.')
            .next()
            .unwrap_or(&profile.distro.release);
        format!(
            "# Written by habuild for profile {name}; replaces the build host's dnf.conf.\n\
             [main]\n\
             gpgcheck=1\n\
             localpkg_gpgcheck=1\n\
             best=1\n\
             skip_if_unavailable=0\n\
             plugins=0\n\
             module_platform_id=platform:el{major}\n",
            name = profile.name
        )
    }

    /// Every command of a build, in order (golden-tested): the dnf install, the
    /// overlay copy, and `finalize-image` in the root (which `build` runs only
    /// when the root has it).
    pub fn render(req: &RootfsRequest<'_>, repo_dir: &Path, conf_path: &Path) -> Vec<Cmd> {
        Self::render_on(req, repo_dir, conf_path, std::env::consts::ARCH)
    }

    fn render_on(
        req: &RootfsRequest<'_>,
        repo_dir: &Path,
        conf_path: &Path,
        host_arch: &str,
    ) -> Vec<Cmd> {
        vec![
            Self::install_cmd(req, repo_dir, conf_path, host_arch),
            Self::overlay_cmd(req),
            Self::finalize_cmd(req),
        ]
    }

    fn install_cmd(
        req: &RootfsRequest<'_>,
        repo_dir: &Path,
        conf_path: &Path,
        host_arch: &str,
    ) -> Cmd {
        let p = req.profile;
        let home = conf_path.parent().unwrap_or(Path::new("/"));
        let mut cmd = Cmd::new("dnf")
            .env("SOURCE_DATE_EPOCH", req.source_date_epoch.to_string())
            // .rpmmacros: the rpm database goes to /var/lib/rpm.
            .env("HOME", home.display().to_string())
            // classify_failure reads dnf's English messages.
            .env("LC_ALL", "C.UTF-8")
            .arg("-y")
            .arg(os_concat("--installroot=", &req.target))
            .arg(format!("--releasever={}", p.distro.release));
        let arch = rpm_arch(&p.distro.arch);
        if arch != host_arch {
            cmd = cmd.arg(format!("--forcearch={arch}"));
        }
        let enabled: Vec<&str> = p.repos.iter().map(|r| r.id.as_str()).collect();
        cmd.arg(os_concat("--setopt=reposdir=", repo_dir))
            .arg(os_concat("--setopt=cachedir=", &req.cache))
            .arg("--setopt=keepcache=True")
            .arg("--setopt=install_weak_deps=False")
            .arg("--setopt=tsflags=nodocs")
            .arg(os_concat("--config=", conf_path))
            .arg("--disablerepo=*")
            .arg(format!("--enablerepo={}", enabled.join(",")))
            .arg("install")
            .args(p.package_list())
    }

    fn overlay_cmd(req: &RootfsRequest<'_>) -> Cmd {
        let mut target = req.target.clone().into_os_string();
        target.push("/");
        Cmd::new("cp")
            .arg("-a")
            .arg(req.staging.join("."))
            .arg(target)
    }

    fn finalize_cmd(req: &RootfsRequest<'_>) -> Cmd {
        Cmd::new("chroot")
            .env("SOURCE_DATE_EPOCH", req.source_date_epoch.to_string())
            .arg(&req.target)
            .arg(FINALIZE)
    }
}

fn os_concat(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

/// Repo ids and urls end up in an ini file: refuse what would break it.
fn check_repos(profile: &Profile) -> Result<()> {
    for r in &profile.repos {
        let id_ok = !r.id.is_empty()
            && r.id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !id_ok {
            return Err(BuildError::Invalid(format!(
                "profile {}: repo id {:?} is not a valid dnf repo id (letters, digits, '-', '_', '.', ':')",
                profile.name, r.id
            )));
        }
        if r.url.chars().any(char::is_whitespace) {
            return Err(BuildError::Invalid(format!(
                "profile {}: repo {}: url {:?} contains whitespace",
                profile.name, r.id, r.url
            )));
        }
    }
    Ok(())
}

/// Turn dnf's failure output into the error a user can act on.
pub fn classify_failure(err: BuildError, repos: &[Repo]) -> BuildError {
    let BuildError::Command { cmd, detail } = err else {
        return err;
    };
    let mut missing: Vec<String> = Vec::new();
    let mut add = |name: String| {
        if !missing.contains(&name) {
            missing.push(name);
        }
    };
    for l in detail.lines() {
        if let Some(rest) =
            after(l, "No match for argument: ").or_else(|| after(l, "Unable to find a match: "))
        {
            rest.split_whitespace().for_each(|w| add(w.to_string()));
        } else if let Some(rest) = after(l, "nothing provides ") {
            // "nothing provides libfoo.so.1()(64bit) needed by bar-1.0-1.el9.x86_64 from baseos"
            let dep = rest.split(" needed by ").next().unwrap_or(rest).trim();
            let by = rest
                .split(" needed by ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next());
            add(match by {
                Some(by) => format!("{dep} (needed by {by})"),
                None => dep.to_string(),
            });
        }
    }
    if !missing.is_empty() {
        let ids: Vec<&str> = repos.iter().map(|r| r.id.as_str()).collect();
        return BuildError::MissingPackages {
            packages: missing.join(", "),
            detail: format!(
                "check [packages] in the profile and that the repos ({}) carry them",
                ids.join(", ")
            ),
        };
    }
    // A repo whose metadata could not be fetched: dnf names its id.
    let failed_repo = detail.lines().find_map(|l| {
        let rest = after(l, "Failed to download metadata for repo '")
            .or_else(|| after(l, "Errors during downloading metadata for repository '"))?;
        rest.split('\'').next()
    });
    let curl = detail
        .lines()
        .find(|l| l.contains("Curl error") || l.contains("Cannot download repomd.xml"))
        .map(|l| l.trim().trim_start_matches("- "));
    if failed_repo.is_some() || curl.is_some() {
        let url_in_text = curl
            .and_then(|l| l.split_whitespace().find(|w| w.contains("://")))
            .map(|w| {
                w.trim_matches(|c| matches!(c, '[' | ']' | '\'' | '"' | ','))
                    .to_string()
            });
        let repo = failed_repo
            .and_then(|id| repos.iter().find(|r| r.id == id))
            .or_else(|| {
                let u = url_in_text.as_deref()?;
                repos
                    .iter()
                    .find(|r| u.starts_with(r.url.trim_end_matches('/')))
            });
        let url = match (repo, &url_in_text, failed_repo) {
            (Some(r), _, _) => r.url.clone(),
            (None, Some(u), _) => u.clone(),
            (None, None, Some(id)) => format!("(repo '{id}')"),
            (None, None, None) => "(mirror)".to_string(),
        };
        let why = curl.or_else(|| {
            detail
                .lines()
                .find(|l| l.contains("Failed to download metadata"))
                .map(str::trim)
        });
        let mut d = why.unwrap_or("dnf could not fetch it").to_string();
        if let Some(r) = repo {
            d = format!("repo '{}': {d}", r.id);
        }
        return BuildError::Unreachable { url, detail: d };
    }
    BuildError::Command { cmd, detail }
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split_once(marker).map(|(_, rest)| rest)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).at(p)
}

/// Write dnf.conf, the reposdir and `.rpmmacros` into a fresh `dir`.
/// Returns (reposdir, dnf.conf).
fn write_config(profile: &Profile, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    if dir.exists() {
        fs::remove_dir_all(dir).at(dir)?;
    }
    let repo_dir = dir.join("repos.d");
    fs::create_dir_all(&repo_dir).at(&repo_dir)?;
    let repo_file = repo_dir.join(REPO_FILE);
    fs::write(&repo_file, Dnf::render_repo_file(profile)).at(&repo_file)?;
    let conf = dir.join("dnf.conf");
    fs::write(&conf, Dnf::render_conf(profile)).at(&conf)?;
    let macros = dir.join(".rpmmacros");
    fs::write(&macros, RPMMACROS).at(&macros)?;
    Ok((repo_dir, conf))
}

/// Does `finalize-image` exist in the root (without following a final symlink out of it)?
fn has_finalize(root: &Path) -> bool {
    root.join(FINALIZE.trim_start_matches('/'))
        .symlink_metadata()
        .is_ok()
}

/// Is `path` (absolute, inside the root) owned by an installed package?
fn owned_by_package(exec: &dyn Exec, root: &Path, path: &Path) -> Result<bool> {
    let q = Cmd::new("rpm")
        .arg("--root")
        .arg(root)
        .args(["--dbpath", RPM_DBPATH, "-qf", "--qf", "%{NAME}\n"])
        .arg(path);
    match exec.run(&q) {
        Ok(_) => Ok(true),
        Err(BuildError::Command { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Remove what dnf leaves at `<root>/<cache path>` (see the module
/// documentation), and the empty directories above it that no package owns.
fn remove_cache_stub(exec: &dyn Exec, root: &Path, cache: &Path) -> Result<()> {
    let Ok(rel) = cache.strip_prefix("/") else {
        return Ok(());
    };
    let stub = root.join(rel);
    let Ok(entries) = fs::read_dir(&stub) else {
        return Ok(());
    };
    let names: Vec<OsString> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    if names.iter().any(|n| n != CACHE_STUB_FILE) {
        tracing::warn!(path = %stub.display(), "dnf cache stub in the root holds more than {CACHE_STUB_FILE}; left in place");
        return Ok(());
    }
    // Never follow a symlink in the root out of it.
    let (Ok(real_root), Ok(real_stub)) = (root.canonicalize(), stub.canonicalize()) else {
        return Ok(());
    };
    if !real_stub.starts_with(&real_root) || real_stub == real_root {
        return Ok(());
    }
    if owned_by_package(exec, root, cache)? {
        return Ok(());
    }
    tracing::debug!(path = %real_stub.display(), "removing dnf's cache stub from the root");
    fs::remove_dir_all(&real_stub).at(&real_stub)?;
    let mut dir = real_stub.parent();
    while let Some(d) = dir {
        if d == real_root || !d.starts_with(&real_root) {
            break;
        }
        let empty = fs::read_dir(d).at(d)?.next().is_none();
        let in_root = Path::new("/").join(d.strip_prefix(&real_root).unwrap_or(d));
        if !empty || owned_by_package(exec, root, &in_root)? {
            break;
        }
        fs::remove_dir(d).at(d)?;
        dir = d.parent();
    }
    Ok(())
}

impl RootfsBackend for Dnf {
    fn build(&self, exec: &dyn Exec, req: &RootfsRequest<'_>) -> Result<super::Root> {
        let p = req.profile;
        check_repos(p)?;
        // dnf resolves relative paths against its own idea of the root.
        let req = RootfsRequest {
            target: absolute(&req.target)?,
            cache: absolute(&req.cache)?,
            staging: absolute(&req.staging)?,
            ..req.clone()
        };
        if let Ok(mut entries) = fs::read_dir(&req.target) {
            if entries.next().is_some() {
                return Err(BuildError::Invalid(format!(
                    "{}: rootfs target exists and is not empty",
                    req.target.display()
                )));
            }
        }
        if !req.staging.is_dir() {
            return Err(BuildError::Invalid(format!(
                "{}: staged overlay directory does not exist",
                req.staging.display()
            )));
        }
        fs::create_dir_all(&req.cache).at(&req.cache)?;
        let (repo_dir, conf) = write_config(p, &config_dir(&req.target))?;

        let packages = p.package_list();
        tracing::info!(
            root = %req.target.display(),
            "dnf: installing {} package(s) from {} repo(s)",
            packages.len(),
            p.repos.len()
        );
        exec.run_streamed(&Self::install_cmd(
            &req,
            &repo_dir,
            &conf,
            std::env::consts::ARCH,
        ))
        .map_err(|e| classify_failure(e, &p.repos))?;
        remove_cache_stub(exec, &req.target, &req.cache)?;

        exec.run(&Self::overlay_cmd(&req))?;
        if has_finalize(&req.target) {
            exec.run_streamed(&Self::finalize_cmd(&req))?;
        } else {
            tracing::warn!(
                root = %req.target.display(),
                "{FINALIZE} not in the root after the overlay; not run"
            );
        }
        Ok(super::Root::plain(req.target.clone()))
    }

    fn installed(&self, exec: &dyn Exec, root: &Path) -> Result<Vec<InstalledPackage>> {
        let out = exec.run(&Cmd::new("rpm").arg("--root").arg(root).args([
            "--dbpath",
            RPM_DBPATH,
            "-qa",
            "--qf",
            "%{NAME}\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n",
        ]))?;
        Ok(parse_package_list(&out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::RecordingExec;
    use crate::profile;

    fn request<'a>(p: &'a Profile) -> RootfsRequest<'a> {
        RootfsRequest {
            profile: p,
            target: "/build/rootfs".into(),
            cache: "/cache/dnf".into(),
            staging: "/build/staging".into(),
            source_date_epoch: 1_700_000_000,
            incremental: None,
        }
    }

    fn render_text(cmds: &[Cmd]) -> String {
        let mut s = String::new();
        for c in cmds {
            s.push_str("env:");
            for (k, v) in &c.env {
                s.push_str(&format!(" {k}={v}"));
            }
            s.push('\n');
            s.push_str(&c.program);
            s.push('\n');
            for a in &c.args {
                s.push_str(&a.to_string_lossy());
                s.push('\n');
            }
            s.push('\n');
        }
        s
    }

    fn golden(profile_file: &str, golden_file: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let p = profile::load(&dir.join("../configs").join(profile_file)).unwrap();
        let req = request(&p.profile);
        let conf_dir = config_dir(&req.target);
        let cmds = Dnf::render_on(
            &req,
            &conf_dir.join("repos.d"),
            &conf_dir.join("dnf.conf"),
            "x86_64",
        );
        let text = format!(
            "### {}/repos.d/{REPO_FILE}\n{}\n### {}/dnf.conf\n{}\n### commands\n{}",
            conf_dir.display(),
            Dnf::render_repo_file(&p.profile),
            conf_dir.display(),
            Dnf::render_conf(&p.profile),
            render_text(&cmds)
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
    fn centos_stream_dnf_golden() {
        golden("centos-stream-9.toml", "dnf-centos-stream-9.txt");
    }

    #[test]
    fn rocky_dnf_golden() {
        golden("rocky-9.toml", "dnf-rocky-9.txt");
    }

    fn centos() -> Profile {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        profile::load(&dir.join("../configs/centos-stream-9.toml"))
            .unwrap()
            .profile
    }

    #[test]
    fn forcearch_only_for_a_foreign_arch() {
        let mut p = centos();
        let has_force = |p: &Profile, host: &str| {
            let req = request(p);
            Dnf::render_on(&req, Path::new("/r"), Path::new("/c/dnf.conf"), host)[0]
                .args
                .iter()
                .any(|a| a.to_string_lossy().starts_with("--forcearch"))
        };
        assert!(!has_force(&p, "x86_64"));
        assert!(has_force(&p, "aarch64"));
        p.distro.arch = "amd64".into();
        assert!(!has_force(&p, "x86_64"), "amd64 is x86_64 to rpm");
        p.distro.arch = "aarch64".into();
        let req = request(&p);
        let cmd = &Dnf::render_on(&req, Path::new("/r"), Path::new("/c/dnf.conf"), "x86_64")[0];
        assert!(
            cmd.display().contains(" --forcearch=aarch64 "),
            "{}",
            cmd.display()
        );
    }

    #[test]
    fn repo_file_follows_gpgcheck_and_keyring() {
        let mut p = centos();
        p.repos.truncate(1);
        p.repos[0].gpgcheck = false;
        p.repos[0].keyring = None;
        let s = Dnf::render_repo_file(&p);
        assert!(s.contains("[baseos]\n"), "{s}");
        assert!(s.contains("\ngpgcheck=0\n"), "{s}");
        assert!(!s.contains("gpgkey="), "{s}");
        let p = centos();
        let s = Dnf::render_repo_file(&p);
        assert_eq!(s.matches("\ngpgcheck=1\n").count(), p.repos.len(), "{s}");
        assert!(
            s.contains("gpgkey=file:///usr/share/distribution-gpg-keys/epel/RPM-GPG-KEY-EPEL-9\n"),
            "{s}"
        );
    }

    #[test]
    fn config_dir_is_a_sibling_of_the_target() {
        assert_eq!(
            config_dir(Path::new("/w/rootfs")),
            PathBuf::from("/w/rootfs.dnf")
        );
    }

    #[test]
    fn bad_repo_id_is_refused() {
        let mut p = centos();
        p.repos[1].id = "app stream".into();
        let e = check_repos(&p).unwrap_err().to_string();
        assert!(e.contains("\"app stream\""), "{e}");
    }

    #[test]
    fn build_runs_install_then_overlay_and_skips_missing_finalize() {
        let p = centos();
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("staging");
        fs::create_dir(&staging).unwrap();
        let req = RootfsRequest {
            profile: &p,
            target: tmp.path().join("rootfs"),
            cache: tmp.path().join("cache"),
            staging: staging.clone(),
            source_date_epoch: 1,
            incremental: None,
        };
        let exec = RecordingExec::default();
        Dnf.build(&exec, &req).unwrap();
        let lines = exec.lines();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].starts_with("dnf -y --installroot="),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with(" ethtool kernel kernel-modules containerd.io containernetworking-plugins etcd keepalived haproxy glusterfs-server glusterfs-fuse lvm2 device-mapper-persistent-data xfsprogs"), "{}", lines[0]);
        assert_eq!(
            lines[1],
            format!(
                "cp -a {}/. {}/",
                staging.display(),
                tmp.path().join("rootfs").display()
            )
        );
        let conf = tmp.path().join("rootfs.dnf");
        assert_eq!(
            fs::read_to_string(conf.join(".rpmmacros")).unwrap(),
            RPMMACROS
        );
        assert_eq!(
            fs::read_to_string(conf.join("repos.d").join(REPO_FILE)).unwrap(),
            Dnf::render_repo_file(&p)
        );
        assert!(tmp.path().join("cache").is_dir());
    }

    #[test]
    fn classify_missing_packages() {
        let repos = centos().repos;
        let e = classify_failure(
            BuildError::Command {
                cmd: "dnf".into(),
                detail: "exit status: 1\nNo match for argument: nosuch\nNo match for argument: other\nError: Unable to find a match: nosuch other".into(),
            },
            &repos,
        );
        assert!(
            matches!(&e, BuildError::MissingPackages { packages, .. } if packages == "nosuch, other"),
            "{e}"
        );
        let e = classify_failure(
            BuildError::Command {
                cmd: "dnf".into(),
                detail: "Error: \n Problem: conflicting requests\n  - nothing provides libfoo.so.1()(64bit) needed by bar-1.0-1.el9.x86_64 from baseos".into(),
            },
            &repos,
        );
        assert!(
            matches!(&e, BuildError::MissingPackages { packages, .. } if packages == "libfoo.so.1()(64bit) (needed by bar-1.0-1.el9.x86_64)"),
            "{e}"
        );
    }

    #[test]
    fn classify_unreachable_names_the_repo_url() {
        let repos = centos().repos;
        let e = classify_failure(
            BuildError::Command {
                cmd: "dnf".into(),
                detail: "Errors during downloading metadata for repository 'appstream':\n  - Curl error (7): Couldn't connect to server for http://mirror.stream.centos.org/9-stream/AppStream/x86_64/os/repodata/repomd.xml [Failed to connect]\nError: Failed to download metadata for repo 'appstream': Cannot download repomd.xml: Cannot download repodata/repomd.xml: All mirrors were tried".into(),
            },
            &repos,
        );
        let BuildError::Unreachable { url, detail } = &e else {
            panic!("{e}")
        };
        assert_eq!(
            url,
            "http://mirror.stream.centos.org/9-stream/AppStream/x86_64/os/"
        );
        assert!(
            detail.starts_with("repo 'appstream': Curl error (7)"),
            "{detail}"
        );
        // A package download failing: only the url is known.
        let e = classify_failure(
            BuildError::Command {
                cmd: "dnf".into(),
                detail: "Error: Error downloading packages:\n  Curl error (6): Couldn't resolve host name for http://elsewhere.example/x.rpm [Could not resolve host]".into(),
            },
            &repos,
        );
        let BuildError::Unreachable { url, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(url, "http://elsewhere.example/x.rpm");
        // Anything else stays a command failure.
        let e = classify_failure(
            BuildError::Command {
                cmd: "dnf".into(),
                detail: "Error: Transaction test error".into(),
            },
            &repos,
        );
        assert!(matches!(e, BuildError::Command { .. }), "{e}");
    }
}
