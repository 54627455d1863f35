//! Network namespaces made by this process, named `<prefix><pid>-<n>`.
//!
//! A [`Netns`] is shared by cloning; when the last clone drops (also while
//! unwinding from a panic) every process inside gets SIGTERM, then SIGKILL,
//! the links registered with [`Netns::own_link`] are deleted and the
//! namespace is removed. Making a namespace first sweeps namespaces of the
//! same prefix whose creating pid is gone (a run that was SIGKILLed skips
//! Drop). Every live namespace is also in a process-wide registry, so a
//! signal handler can remove them all ([`teardown_all`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{cmd, Error, Result};

/// Longest namespace name made here (a file name under /run/netns).
pub const MAX_NETNS_NAME_LEN: usize = 64;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Names of the namespaces this process has made and not yet removed.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<String>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A network namespace of this process, with `lo` up.
#[derive(Clone, Debug)]
pub struct Netns {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    ip: PathBuf,
    /// Links deleted before the namespace (taps: they would otherwise
    /// outlive it while a process holds them open).
    links: Mutex<Vec<String>>,
}

impl Netns {
    /// Sweeps stale namespaces of `prefix` ([`sweep_stale`]), then makes
    /// `<prefix><pid>-<n>` and brings `lo` up. `prefix` is `[A-Za-z0-9_]`,
    /// not ending in a digit.
    pub fn create(prefix: &str) -> Result<Netns> {
        check_prefix(prefix)?;
        let ip = cmd::require("ip")?;
        if let Err(e) = sweep_stale(prefix) {
            tracing::warn!("sweeping stale namespaces {prefix}*: {e}");
        }
        let name = add_unique_namespace(&ip, prefix)?;
        // From here on, Drop removes the namespace if a later step fails.
        let ns = Netns {
            inner: Arc::new(Inner {
                name,
                ip,
                links: Mutex::new(Vec::new()),
            }),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NS program`, which execs `program`: the child's pid is
    /// the program's). Anything it leaves running is killed when the
    /// namespace is dropped.
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(&self.inner.ip);
        c.args(["netns", "exec", &self.inner.name]).arg(program);
        c
    }

    /// Runs `program args...` inside the namespace to completion and
    /// returns its stdout; a non-zero exit is an error quoting stderr.
    pub fn run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Result<String> {
        cmd::run(self.exec(program).args(args))
    }

    /// Runs `ip -n NS args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        cmd::run(
            Command::new(&self.inner.ip)
                .args(["-n", &self.inner.name])
                .args(args),
        )
    }

    /// Pids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<u32>> {
        namespace_pids(&self.inner.ip, &self.inner.name)
    }

    /// SIGKILLs every process in the namespace (a machine losing power).
    pub fn kill_all(&self) {
        kill_pids(
            &self.inner.ip,
            &self.inner.name,
            "-KILL",
            Duration::from_secs(3),
        );
    }

    /// Deletes link `name` before the namespace when it is dropped.
    pub fn own_link(&self, name: &str) {
        self.inner
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let links = std::mem::take(self.links.get_mut().unwrap_or_else(|p| p.into_inner()));
        teardown(&self.ip, &self.name, &links);
    }
}

/// Removes every namespace this process made and has not removed yet
/// (processes inside killed). For a SIGINT/SIGTERM handler that is about to
/// exit: Drop does not run then.
pub fn teardown_all() {
    let names = live().clone();
    let Ok(ip) = cmd::require("ip") else { return };
    for name in names.iter().rev() {
        teardown(&ip, name, &[]);
    }
}

/// Deletes namespaces named `<prefix><pid>-<n>` whose creator `pid` is no
/// longer running, after killing whatever runs inside them. Returns the
/// names removed.
pub fn sweep_stale(prefix: &str) -> Result<Vec<String>> {
    check_prefix(prefix)?;
    let ip = cmd::require("ip")?;
    let mut removed = Vec::new();
    for name in list_namespaces(&ip)? {
        let Some(pid) = creator_pid(prefix, &name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!("removing stale netns {name} (creator pid {pid} is gone)");
        let taps =
            cmd::run(Command::new(&ip).args(["-n", &name, "-o", "link", "show", "type", "tun"]))
                .map(|out| parse_link_names(&out))
                .unwrap_or_default();
        teardown(&ip, &name, &taps);
        removed.push(name);
    }
    Ok(removed)
}

/// Names of the namespaces that start with `prefix` (`ip netns list`).
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let ip = cmd::require("ip")?;
    Ok(list_namespaces(&ip)?
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// The creator pid encoded in `name` if it is `<prefix><pid>-<n>`.
fn creator_pid(prefix: &str, name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(prefix)?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !prefix.ends_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(Error::Invalid(format!(
            "bad netns prefix {prefix:?}: want [A-Za-z0-9_], not ending in a digit"
        )));
    }
    Ok(())
}

fn add_unique_namespace(ip: &Path, prefix: &str) -> Result<String> {
    let pid = std::process::id();
    let existing = list_namespaces(ip)?;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{pid}-{n}");
        if name.len() > MAX_NETNS_NAME_LEN {
            return Err(Error::Invalid(format!(
                "netns name {name} is longer than {MAX_NETNS_NAME_LEN} characters"
            )));
        }
        if existing.contains(&name) {
            continue;
        }
        cmd::run(Command::new(ip).args(["netns", "add", &name]))?;
        live().push(name.clone());
        return Ok(name);
    }
}

/// Names from `ip netns list` (lines like `name (id: 3)` or `name`).
fn list_namespaces(ip: &Path) -> Result<Vec<String>> {
    let out = cmd::run(Command::new(ip).args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Names from `ip -o link show` lines like `5: tap0: <...> ...` (a name
/// may carry `@peer`).
fn parse_link_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn namespace_pids(ip: &Path, name: &str) -> Result<Vec<u32>> {
    let out = cmd::run(Command::new(ip).args(["netns", "pids", name]))?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Sends `signal` to every process in the namespace and waits up to
/// `grace` for them to go. False when none were left to signal.
fn kill_pids(ip: &Path, name: &str, signal: &str, grace: Duration) -> bool {
    let pids = match namespace_pids(ip, name) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("listing processes in netns {name}: {e}");
            return false;
        }
    };
    if pids.is_empty() {
        return false;
    }
    tracing::debug!("netns {name}: kill {signal} {pids:?}");
    match cmd::require("kill") {
        // Fails harmlessly for processes that exited meanwhile.
        Ok(kill) => {
            let _ = cmd::output(
                Command::new(kill)
                    .arg(signal)
                    .args(pids.iter().map(u32::to_string)),
            );
        }
        Err(e) => tracing::warn!("{e}"),
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        if namespace_pids(ip, name).map_or(true, |p| p.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Kills every process in the namespace, deletes `links`, deletes the
/// namespace. Logs failures; never panics.
fn teardown(ip: &Path, name: &str, links: &[String]) {
    if kill_pids(ip, name, "-TERM", Duration::from_secs(3)) {
        kill_pids(ip, name, "-KILL", Duration::from_secs(3));
    }
    for link in links {
        if let Err(e) = cmd::run(Command::new(ip).args(["-n", name, "link", "del", link])) {
            tracing::warn!("deleting link {link} in netns {name}: {e}");
        }
    }
    match cmd::run(Command::new(ip).args(["netns", "del", name])) {
        Ok(_) => tracing::info!("netns {name} deleted"),
        Err(e) => tracing::warn!("deleting netns {name}: {e}"),
    }
    live().retain(|n| n != name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_pid_parsing() {
        assert_eq!(creator_pid("hq", "hq1234-0"), Some(1234));
        assert_eq!(creator_pid("hq", "hq1234-17"), Some(1234));
        assert_eq!(creator_pid("hq", "hqx1234-0"), None);
        assert_eq!(creator_pid("hq", "hq1234"), None);
        assert_eq!(creator_pid("hq", "hq-0"), None);
        assert_eq!(creator_pid("hq", "other1-0"), None);
    }

    #[test]
    fn prefix_rules() {
        assert!(check_prefix("hq").is_ok());
        assert!(check_prefix("hq2").is_err());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a-b").is_err());
    }

    #[test]
    fn link_names() {
        let out = "2: tap0: <BROADCAST> mtu 1500\\    link/ether\n7: veth1@if3: <UP> mtu 1500\n";
        assert_eq!(parse_link_names(out), ["tap0", "veth1"]);
    }
}
