//! The installed base tree and what goes on top of it.
//!
//! The base is the package manager's output before anything of habuild's
//! is copied in: for apt, mmdebstrap's tree with the profile's packages
//! (and the initramfs configuration its essential hook put in place). It is
//! cached under `<cache>/base/<key>/root`, keyed by everything that
//! determines it ([`BaseInputs`]). A build mounts an overlayfs with the
//! cached base as its read-only lower layer and an upper layer in the
//! build's work directory, copies the staged overlay in and runs
//! `finalize-image` there: the cached tree is never written, nothing is
//! copied out of the cache, and a cold build goes through the very same
//! mount as an incremental one (it stores the base first), so the two
//! cannot differ in bytes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::{InstalledPackage, FINALIZE};
use crate::error::{BuildError, IoContext, Result};
use crate::exec::{Cmd, Exec};

/// Bumped whenever the code that makes a base tree changes what it makes
/// (the rendered mmdebstrap command is part of the key as well).
pub const BASE_FORMAT: u32 = 1;

/// Everything a base tree is a function of.
#[derive(Debug, Clone)]
pub struct BaseInputs<'a> {
    /// The backend's command with placeholder paths: backend, variant,
    /// release, architecture, mirrors, hooks, package list.
    pub command: &'a Cmd,
    /// `mmdebstrap --version` (or the backend tool's).
    pub tool_version: &'a str,
    /// The resolved package set with versions, from the signed index.
    pub packages: &'a [InstalledPackage],
    /// [`hash_tree`] of what the essential hooks copy in (initramfs-tools configuration).
    pub essential_sha256: &'a str,
    pub epoch: u64,
}

/// The cache key of a base tree (64 hex digits).
pub fn base_key(i: &BaseInputs<'_>) -> String {
    let mut h = Sha256::new();
    let mut field = |k: &str, v: &[u8]| {
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    };
    field("format", &BASE_FORMAT.to_le_bytes());
    field("program", i.command.program.as_bytes());
    for a in &i.command.args {
        field("arg", a.as_encoded_bytes());
    }
    for (k, v) in &i.command.env {
        field("env", format!("{k}={v}").as_bytes());
    }
    field("tool", i.tool_version.as_bytes());
    for p in i.packages {
        field("package", format!("{}={}", p.name, p.version).as_bytes());
    }
    field("essential", i.essential_sha256.as_bytes());
    field("epoch", &i.epoch.to_le_bytes());
    hex::encode(h.finalize())
}

/// sha256 over a tree's relative paths, types, modes, contents and link
/// targets, in sorted order (a missing directory hashes as empty).
pub fn hash_tree(dir: &Path) -> Result<String> {
    fn walk(h: &mut Sha256, root: &Path, dir: &Path) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .at(dir)?
            .collect::<std::io::Result<Vec<_>>>()
            .at(dir)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let meta = fs::symlink_metadata(&p).at(&p)?;
            let rel = p.strip_prefix(root).unwrap_or(&p);
            h.update(rel.as_os_str().as_encoded_bytes());
            h.update(meta.mode().to_le_bytes());
            if meta.file_type().is_symlink() {
                h.update(fs::read_link(&p).at(&p)?.as_os_str().as_encoded_bytes());
            } else if meta.is_dir() {
                h.update(b"/");
                walk(h, root, &p)?;
            } else {
                let data = fs::read(&p).at(&p)?;
                h.update((data.len() as u64).to_le_bytes());
                h.update(&data);
            }
        }
        Ok(())
    }
    let mut h = Sha256::new();
    if dir.is_dir() {
        walk(&mut h, dir, dir)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// How a build got its base tree (for the manifest and the log).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BaseUse {
    pub key: String,
    /// true: restored from the cache; false: built now.
    pub reused: bool,
    /// false when the base was built but not stored (see the log).
    pub cached: bool,
}

/// Base trees under `<cache>/base`, at most `keep` of them (least recently used go first).
#[derive(Debug, Clone)]
pub struct BaseCache {
    pub dir: PathBuf,
    pub keep: usize,
}

const LAST_USED: &str = ".last-used";

impl BaseCache {
    pub fn new(cache: &Path, keep: usize) -> Self {
        Self {
            dir: cache.join("base"),
            keep: keep.max(1),
        }
    }

    /// The cached root for `key`, marked as used now.
    pub fn lookup(&self, key: &str) -> Option<PathBuf> {
        let entry = self.dir.join(key);
        let root = entry.join("root");
        if !root.is_dir() || !entry.join("packages.txt").is_file() {
            return None;
        }
        let _ = fs::write(entry.join(LAST_USED), b"");
        Some(root)
    }

    /// A fresh directory to build the base for `key` in; its `root` is the target.
    pub fn partial(&self, key: &str) -> Result<PathBuf> {
        let p = self
            .dir
            .join(format!(".{key}.partial-{}", std::process::id()));
        let _ = remove_tree(&p);
        fs::create_dir_all(&p).at(&p)?;
        Ok(p)
    }

    /// Move a finished partial into place; returns the cached root.
    pub fn commit(
        &self,
        partial: &Path,
        key: &str,
        packages: &[InstalledPackage],
    ) -> Result<PathBuf> {
        let list: String = packages
            .iter()
            .map(|p| format!("{}\t{}\n", p.name, p.version))
            .collect();
        let f = partial.join("packages.txt");
        fs::write(&f, list).at(&f)?;
        fs::write(partial.join(LAST_USED), b"").at(partial)?;
        let entry = self.dir.join(key);
        if entry.join("root").is_dir() {
            // another build stored the same base meanwhile: same inputs, same tree
            remove_tree(partial)?;
        } else {
            fs::rename(partial, &entry).at(&entry)?;
        }
        Ok(entry.join("root"))
    }

    /// Keep `current` and the `keep - 1` most recently used other bases;
    /// remove the rest and partials of builds that are gone. Returns the
    /// names removed.
    pub fn prune(&self, current: &str) -> Result<Vec<String>> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(Vec::new());
        };
        let mut finished = Vec::new();
        let mut removed = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix('.') {
                let pid = rest
                    .rsplit("partial-")
                    .next()
                    .and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    // an interrupted mmdebstrap can leave /proc, /sys, /dev/pts
                    // mounted in its tree: never delete through a mount
                    let mounts = mounts_under(&e.path());
                    if mounts.is_empty() {
                        remove_tree(&e.path())?;
                        removed.push(name);
                    } else {
                        tracing::warn!(
                            "not removing {}: still mounted there: {}",
                            e.path().display(),
                            mounts.join(" ")
                        );
                    }
                }
                continue;
            }
            if name == current {
                continue;
            }
            let used = fs::metadata(e.path().join(LAST_USED))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            finished.push((used, name));
        }
        finished.sort_by(|a, b| b.cmp(a));
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for (_, name) in finished.into_iter().skip(self.keep - 1) {
            let root = self.dir.join(&name).join("root");
            if mounts.contains(&format!("lowerdir={}", root.display())) {
                // another build's overlay stands on it right now
                tracing::info!("base cache: keeping {name} (in use)");
                continue;
            }
            remove_tree(&self.dir.join(&name))?;
            removed.push(name);
        }
        Ok(removed)
    }
}

/// Mount points at or below `dir` (from /proc/self/mounts; octal escapes as the kernel writes them).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| {
            m.strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .map(str::to_string)
        .collect()
}

/// `rm -rf` that also removes read-only directories' contents.
fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            // a package may leave a directory without write permission
            let _ = std::process::Command::new("chmod")
                .args(["-R", "u+w"])
                .arg(p)
                .status();
            fs::remove_dir_all(p).at(p)
        }
    }
}

/// An overlayfs over a read-only base, unmounted (and its upper layer
/// removed) when dropped.
#[derive(Debug)]
pub struct Overlay {
    pub merged: PathBuf,
    scratch: Vec<PathBuf>,
    /// A base that was used but not cached: removed after the unmount.
    remove_lower: Option<PathBuf>,
}

impl Overlay {
    /// Mount `lower` read-only under `merged`, the writable layer in
    /// `merged`'s siblings `<name>.upper` and `<name>.ovlwork`.
    pub fn mount(exec: &dyn Exec, lower: &Path, merged: &Path) -> Result<Self> {
        let sibling = |suffix: &str| {
            let mut s = merged.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        let (upper, work) = (sibling(".upper"), sibling(".ovlwork"));
        for d in [merged, &upper, &work] {
            fs::create_dir_all(d).at(d)?;
        }
        let mut opts = String::new();
        for (k, p) in [
            ("lowerdir", lower),
            ("upperdir", &upper),
            ("workdir", &work),
        ] {
            let s = p
                .to_str()
                .filter(|s| !s.contains([',', ':', '\\']))
                .ok_or_else(|| {
                    BuildError::Invalid(format!(
                        "{}: an overlayfs layer path must be UTF-8 without ',' ':' or '\\'",
                        p.display()
                    ))
                })?;
            if !opts.is_empty() {
                opts.push(',');
            }
            opts.push_str(&format!("{k}={s}"));
        }
        let mount = |opts: &str| {
            exec.run(
                &Cmd::new("mount")
                    .args(["-t", "overlay", "overlay", "-o"])
                    .arg(opts)
                    .arg(merged),
            )
        };
        // volatile: the upper layer is scratch, so the unmount need not
        // sync the whole filesystem (seconds after writing the disk image);
        // kernels before 5.10 lack it
        if mount(&format!("{opts},volatile")).is_err() {
            mount(&opts)?;
        }
        Ok(Self {
            merged: merged.to_path_buf(),
            scratch: vec![upper, work],
            remove_lower: None,
        })
    }

    pub fn remove_lower_after(&mut self, lower: PathBuf) {
        self.remove_lower = Some(lower);
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let st = std::process::Command::new("umount")
            .arg(&self.merged)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            tracing::warn!("umount {} failed; unmounting lazily", self.merged.display());
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(&self.merged)
                .status();
        }
        for p in self.scratch.iter().chain(self.remove_lower.iter()) {
            if let Err(e) = remove_tree(p) {
                tracing::warn!("removing {}: {e}", p.display());
            }
        }
    }
}

/// What goes on top of the base, in the root `root`: the staged overlay
/// (ownership, modes and times kept, like mmdebstrap's `sync-in`), then
/// `finalize-image` chrooted in a private mount namespace with /proc,
/// /sys and /dev mounted (gone when it exits).
pub fn apply_top(exec: &dyn Exec, root: &Path, staging: &Path, epoch: u64) -> Result<()> {
    exec.run(
        &Cmd::new("sh")
            .arg("-c")
            .arg(
                "set -e; tar -C \"$1\" --numeric-owner --xattrs --xattrs-include='*' -c . \
                 | tar -C \"$2\" --numeric-owner --xattrs --xattrs-include='*' -x",
            )
            .arg("sync-in")
            .arg(staging)
            .arg(root),
    )?;
    exec.run_streamed(
        &Cmd::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "set -e; mount -t proc proc \"$1/proc\"; mount -t sysfs sysfs \"$1/sys\"; \
                 mount --rbind /dev \"$1/dev\"; exec chroot \"$1\" {FINALIZE}"
            ))
            .arg("finalize")
            .arg(root)
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    )
}

/// Packages that differ between what the index resolved and what a build
/// installed (`-` only resolved, `+` only installed), for the log.
pub fn package_diff(resolved: &[InstalledPackage], installed: &[InstalledPackage]) -> Vec<String> {
    let mut d: Vec<String> = resolved
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|p| format!("-{}={}", p.name, p.version))
        .chain(
            installed
                .iter()
                .filter(|p| !resolved.contains(p))
                .map(|p| format!("+{}={}", p.name, p.version)),
        )
        .collect();
    d.sort();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pkg(name: &str, version: &str) -> InstalledPackage {
        InstalledPackage {
            name: name.into(),
            version: version.into(),
        }
    }

    fn key_with(packages: &[InstalledPackage], essential: &str, epoch: u64, cmd: &Cmd) -> String {
        base_key(&BaseInputs {
            command: cmd,
            tool_version: "mmdebstrap 1.3.5",
            packages,
            essential_sha256: essential,
            epoch,
        })
    }

    #[test]
    fn every_input_changes_the_base_key() {
        let cmd = Cmd::new("mmdebstrap").args(["--variant=minbase", "bookworm"]);
        let pkgs = [pkg("libc6", "2.36-9+deb12u13"), pkg("systemd", "252.38-1")];
        let k = key_with(&pkgs, "e0", 1, &cmd);
        assert_eq!(k, key_with(&pkgs, "e0", 1, &cmd), "the key is a function");
        assert_eq!(k.len(), 64);
        // a new version of one resolved package
        let newer = [pkg("libc6", "2.36-9+deb12u14"), pkg("systemd", "252.38-1")];
        assert_ne!(k, key_with(&newer, "e0", 1, &cmd));
        // one package more
        let more = [pkgs[0].clone(), pkgs[1].clone(), pkg("zstd", "1.5.4")];
        assert_ne!(k, key_with(&more, "e0", 1, &cmd));
        assert_ne!(k, key_with(&pkgs, "e1", 1, &cmd), "essential hook content");
        assert_ne!(k, key_with(&pkgs, "e0", 2, &cmd), "epoch");
        let other_mirror = Cmd::new("mmdebstrap").args(["--variant=minbase", "trixie"]);
        assert_ne!(k, key_with(&pkgs, "e0", 1, &other_mirror), "command");
        // fields are length-prefixed: moving a boundary changes the key
        let a = Cmd::new("x").args(["ab", "c"]);
        let b = Cmd::new("x").args(["a", "bc"]);
        assert_ne!(key_with(&pkgs, "e0", 1, &a), key_with(&pkgs, "e0", 1, &b));
    }

    #[test]
    fn tree_hash_sees_content_modes_and_names() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tree");
        assert_eq!(
            hash_tree(&d).unwrap(),
            hash_tree(t.path().join("x").as_path()).unwrap()
        );
        fs::create_dir_all(d.join("conf.d")).unwrap();
        fs::write(d.join("conf.d/a"), "x").unwrap();
        let h0 = hash_tree(&d).unwrap();
        fs::write(d.join("conf.d/a"), "y").unwrap();
        let h1 = hash_tree(&d).unwrap();
        assert_ne!(h0, h1);
        fs::set_permissions(d.join("conf.d/a"), fs::Permissions::from_mode(0o755)).unwrap();
        let h2 = hash_tree(&d).unwrap();
        assert_ne!(h1, h2);
        fs::rename(d.join("conf.d/a"), d.join("conf.d/b")).unwrap();
        assert_ne!(h2, hash_tree(&d).unwrap());
    }

    #[test]
    fn cache_commits_looks_up_and_keeps_the_most_recent() {
        let t = tempfile::tempdir().unwrap();
        let c = BaseCache::new(t.path(), 2);
        assert!(c.lookup("k1").is_none());
        let pkgs = [pkg("a", "1")];
        for (i, k) in ["k1", "k2", "k3"].iter().enumerate() {
            let p = c.partial(k).unwrap();
            fs::create_dir_all(p.join("root/etc")).unwrap();
            let root = c.commit(&p, k, &pkgs).unwrap();
            assert!(root.join("etc").is_dir());
            // distinct use times, k1 oldest
            let used = c.dir.join(k).join(LAST_USED);
            let f = fs::File::options().write(true).open(&used).unwrap();
            f.set_modified(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64),
            )
            .unwrap();
        }
        assert_eq!(
            fs::read_to_string(c.dir.join("k1/packages.txt")).unwrap(),
            "a\t1\n"
        );
        // a stale partial of a build that is gone
        fs::create_dir_all(c.dir.join(".k9.partial-999999999")).unwrap();
        let mut removed = c.prune("k1").unwrap();
        removed.sort();
        // k1 is current (kept), k3 the most recent other; k2 and the partial go
        assert_eq!(removed, [".k9.partial-999999999", "k2"]);
        assert!(c.lookup("k1").is_some() && c.lookup("k3").is_some());
        assert!(c.lookup("k2").is_none());
    }

    #[test]
    fn mounts_are_seen_below_a_directory_only() {
        // /proc is a mount point on every Linux host
        assert_eq!(
            mounts_under(Path::new("/proc")).first().map(String::as_str),
            Some("/proc")
        );
        assert!(mounts_under(Path::new("/pro")).is_empty());
        let t = tempfile::tempdir().unwrap();
        assert!(mounts_under(t.path()).is_empty());
    }

    #[test]
    fn package_diff_names_both_sides() {
        let r = [pkg("a", "1"), pkg("b", "1")];
        let i = [pkg("a", "1"), pkg("b", "2"), pkg("c", "1")];
        assert_eq!(package_diff(&r, &i), ["+b=2", "+c=1", "-b=1"]);
        assert!(package_diff(&r, &r).is_empty());
    }
}
