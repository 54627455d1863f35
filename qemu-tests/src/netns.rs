//! A private network namespace per test: `lo`, a bridge `br0` with one
//! address, and tap devices for VMs on that bridge. No veth, no default
//! route, no link to the root namespace: traffic stays inside.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::tools;

/// The bridge every tap joins.
pub const BRIDGE: &str = "br0";
/// The bridge's address unless [`TestNet::create_with`] says otherwise.
pub const DEFAULT_BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The bridge's prefix length unless [`TestNet::create_with`] says otherwise.
pub const DEFAULT_PREFIX_LEN: u8 = 24;
/// Longest interface name Linux accepts (IFNAMSIZ - 1); namespace names are
/// held to it too.
pub const MAX_NAME_LEN: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace created by this process, named
/// `<prefix><pid>-<counter>` (at most 15 characters: keep `prefix` to 4).
///
/// Cloning shares it; when the last clone drops (including during a panic),
/// every process inside gets SIGTERM then SIGKILL, the taps are deleted and
/// the namespace is removed. [`crate::Vm`] and [`crate::Dhcp`] hold a clone,
/// so the namespace outlives them.
#[derive(Clone, Debug)]
pub struct TestNet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    ip: PathBuf,
    bridge_addr: Ipv4Addr,
    prefix_len: u8,
    taps: Mutex<Vec<String>>,
}

impl TestNet {
    /// Creates a namespace with `br0` at 10.77.0.1/24.
    pub fn create(prefix: &str) -> Result<TestNet> {
        TestNet::create_with(prefix, DEFAULT_BRIDGE_ADDR, DEFAULT_PREFIX_LEN)
    }

    /// Creates a namespace with `br0` at `bridge_addr/prefix_len`. First
    /// removes stale namespaces with the same prefix (see [`sweep_stale`]).
    pub fn create_with(prefix: &str, bridge_addr: Ipv4Addr, prefix_len: u8) -> Result<TestNet> {
        check_prefix(prefix)?;
        if !(8..=30).contains(&prefix_len) {
            bail!("bridge prefix length /{prefix_len} out of range 8..=30");
        }
        let ip = tools::require("ip")?;
        if let Err(e) = sweep_stale(prefix) {
            tracing::warn!("sweeping stale namespaces {prefix}*: {e:#}");
        }
        let name = add_unique_namespace(&ip, prefix)?;
        // From here on, Drop removes the namespace if a later step fails.
        let net = TestNet {
            inner: Arc::new(Inner {
                name,
                ip,
                bridge_addr,
                prefix_len,
                taps: Mutex::new(Vec::new()),
            }),
        };
        net.ip_n(&["link", "set", "lo", "up"])?;
        net.ip_n(&["link", "add", BRIDGE, "type", "bridge"])?;
        let cidr = format!("{bridge_addr}/{prefix_len}");
        net.ip_n(&["addr", "add", &cidr, "dev", BRIDGE])?;
        net.ip_n(&["link", "set", BRIDGE, "up"])?;
        tracing::info!("netns {} with {BRIDGE} {cidr}", net.name());
        Ok(net)
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The bridge's name, `br0`.
    pub fn bridge(&self) -> &str {
        BRIDGE
    }

    /// The bridge's address, e.g. 10.77.0.1.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.inner.bridge_addr
    }

    /// The bridge's prefix length, e.g. 24.
    pub fn prefix_len(&self) -> u8 {
        self.inner.prefix_len
    }

    /// The netmask matching [`prefix_len`](Self::prefix_len), e.g. 255.255.255.0.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.inner.prefix_len)))
    }

    /// Creates tap device `name` in the namespace, attached to `br0` and up.
    /// Returns its name. Deleted with the namespace.
    pub fn add_tap(&self, name: &str) -> Result<String> {
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("bad tap name {name:?}: want 1 to {MAX_NAME_LEN} of [A-Za-z0-9_-]");
        }
        self.ip_n(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        self.lock_taps().push(name.to_string());
        self.ip_n(&["link", "set", name, "master", BRIDGE])?;
        self.ip_n(&["link", "set", name, "up"])?;
        tracing::debug!("tap {name} on {BRIDGE} in {}", self.name());
        Ok(name.to_string())
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NS program`); add arguments and run it as usual.
    /// Anything it leaves running is killed when the namespace is dropped.
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&self.inner.ip);
        cmd.args(["netns", "exec", &self.inner.name]).arg(program);
        cmd
    }

    /// Runs `program args...` inside the namespace to completion and returns
    /// its stdout; fails, quoting stderr, on a non-zero exit.
    pub fn run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Result<String> {
        tools::run(self.exec(program).args(args))
    }

    /// Pids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<u32>> {
        namespace_pids(&self.inner.ip, &self.inner.name)
    }

    /// Runs `ip -n NS args...`.
    fn ip_n(&self, args: &[&str]) -> Result<String> {
        tools::run(
            Command::new(&self.inner.ip)
                .args(["-n", &self.inner.name])
                .args(args),
        )
    }

    fn lock_taps(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.inner.taps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let taps = std::mem::take(self.taps.get_mut().unwrap_or_else(|p| p.into_inner()));
        teardown(&self.ip, &self.name, &taps);
    }
}

/// Deletes namespaces named `<prefix><pid>-<n>` whose creator `pid` is no
/// longer running (left by a test that was killed), after killing whatever
/// runs inside them. Returns the names removed.
pub fn sweep_stale(prefix: &str) -> Result<Vec<String>> {
    check_prefix(prefix)?;
    let ip = tools::require("ip")?;
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
            tools::run(Command::new(&ip).args(["-n", &name, "-o", "link", "show", "type", "tun"]))
                .map(|out| parse_link_names(&out))
                .unwrap_or_default();
        teardown(&ip, &name, &taps);
        removed.push(name);
    }
    Ok(removed)
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
        bail!("bad netns prefix {prefix:?}: want [A-Za-z0-9_], not ending in a digit");
    }
    Ok(())
}

fn add_unique_namespace(ip: &Path, prefix: &str) -> Result<String> {
    let pid = std::process::id();
    let existing = list_namespaces(ip)?;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{pid}-{n}");
        if name.len() > MAX_NAME_LEN {
            bail!("netns name {name} is longer than {MAX_NAME_LEN} characters: shorten the prefix {prefix:?}");
        }
        if existing.contains(&name) {
            continue;
        }
        tools::run(Command::new(ip).args(["netns", "add", &name]))?;
        return Ok(name);
    }
}

/// Names from `ip netns list` (lines like `name (id: 3)` or `name`).
fn list_namespaces(ip: &Path) -> Result<Vec<String>> {
    let out = tools::run(Command::new(ip).args(["netns", "list"]))?;
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
    let out = tools::run(Command::new(ip).args(["netns", "pids", name]))?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Kills every process in the namespace, deletes `taps`, deletes the
/// namespace. Logs failures; never panics.
fn teardown(ip: &Path, name: &str, taps: &[String]) {
    for (signal, grace) in [
        ("-TERM", Duration::from_secs(3)),
        ("-KILL", Duration::from_secs(3)),
    ] {
        let pids = match namespace_pids(ip, name) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("listing processes in netns {name}: {e:#}");
                break;
            }
        };
        if pids.is_empty() {
            break;
        }
        tracing::debug!("netns {name}: kill {signal} {pids:?}");
        match tools::require("kill") {
            Ok(kill) => {
                // Fails harmlessly for processes that exited meanwhile.
                let _ = tools::output(
                    Command::new(kill)
                        .arg(signal)
                        .args(pids.iter().map(u32::to_string)),
                );
            }
            Err(e) => tracing::warn!("{e:#}"),
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if namespace_pids(ip, name)
                .map(|p| p.is_empty())
                .unwrap_or(true)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for tap in taps {
        if let Err(e) = tools::run(Command::new(ip).args(["-n", name, "link", "del", tap])) {
            tracing::warn!("deleting tap {tap} in netns {name}: {e:#}");
        }
    }
    match tools::run(Command::new(ip).args(["netns", "del", name])) {
        Ok(_) => tracing::info!("netns {name} deleted"),
        Err(e) => tracing::warn!("deleting netns {name}: {e:#}"),
    }
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
