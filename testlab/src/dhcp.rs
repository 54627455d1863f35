//! The test network's DHCP server: dnsmasq inside a [`TestNet`], bound to
//! `br0` only, DNS off.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::bridge::TestNet;
use crate::{cmd, Error, Result};

/// How long dnsmasq may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One line of the lease file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Expiry, seconds since the epoch (0: never).
    pub expiry: u64,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub ip: Ipv4Addr,
    /// The hostname the client sent, if any.
    pub hostname: Option<String>,
}

/// A running dnsmasq serving DHCP on the namespace's bridge. It gives
/// leases in `range_start..=range_end`, with the bridge as router (packets
/// sent there go nowhere: the namespace has no route out) and no DNS
/// server. Killed on drop. Its files (lease file, log, stderr, pid file)
/// live in a directory the caller owns.
#[derive(Debug)]
pub struct Dhcp {
    child: Child,
    dir: PathBuf,
    // Keeps the namespace alive while dnsmasq runs in it.
    _net: TestNet,
}

impl Dhcp {
    /// Starts dnsmasq in `net` with its files in `dir` (which must exist)
    /// and `extra_args` (e.g. `--dhcp-host=52:54:00:77:00:01,10.77.0.11`),
    /// and waits until it is serving.
    pub fn start_in(
        net: &TestNet,
        dir: &Path,
        range_start: Ipv4Addr,
        range_end: Ipv4Addr,
        extra_args: &[&str],
    ) -> Result<Dhcp> {
        if u32::from(range_start) > u32::from(range_end) {
            return Err(Error::Invalid(format!(
                "DHCP range {range_start}..{range_end} is empty"
            )));
        }
        let dnsmasq = cmd::require("dnsmasq")?;
        let dir = dir.to_path_buf();
        let stderr = File::create(dir.join("dnsmasq.stderr"))
            .map_err(Error::io(dir.join("dnsmasq.stderr")))?;
        let mut cmd = net.exec(&dnsmasq);
        cmd.arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--user=root")
            .arg(format!("--interface={}", net.bridge()))
            .arg("--bind-interfaces")
            .arg("--except-interface=lo")
            .arg("--port=0")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--dhcp-authoritative")
            .arg(format!(
                "--dhcp-range={range_start},{range_end},{},1h",
                net.netmask()
            ))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .arg("--log-dhcp")
            .arg(format!(
                "--log-facility={}",
                dir.join("dnsmasq.log").display()
            ))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        tracing::debug!("starting {cmd:?}");
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            cmd: format!("{cmd:?}"),
            source,
        })?;
        let mut dhcp = Dhcp {
            child,
            dir,
            _net: net.clone(),
        };
        dhcp.wait_ready().map_err(|e| {
            Error::Process(format!(
                "starting dnsmasq in netns {}: {cmd:?}: {e}",
                net.name()
            ))
        })?;
        tracing::info!(
            "dnsmasq pid {} serving {range_start}..{range_end} in netns {}",
            dhcp.pid(),
            net.name()
        );
        Ok(dhcp)
    }

    /// Waits for the log line dnsmasq writes once its DHCP socket is bound.
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let exited = self
                .child
                .try_wait()
                .map_err(|e| format!("cannot poll dnsmasq: {e}"))?;
            if let Some(status) = exited {
                return Err(format!(
                    "dnsmasq exited ({status}): {}\n{}",
                    read_lossy(&self.dir.join("dnsmasq.stderr")).trim(),
                    self.log_text().trim()
                ));
            }
            if self.log_text().contains("DHCP, IP range") {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "dnsmasq not ready after {START_TIMEOUT:?}; log:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// dnsmasq's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lease file.
    pub fn lease_file(&self) -> PathBuf {
        self.dir.join("leases")
    }

    /// The log file (`--log-dhcp` detail included).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }

    /// The log so far (empty if none).
    pub fn log_text(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Current leases (empty before the first one).
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let path = self.lease_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(parse_leases(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(path)(e)),
        }
    }

    /// Waits until `mac` (any case) holds a lease.
    pub fn wait_for_lease(&self, mac: &str, deadline: Duration) -> Result<Lease> {
        let mac = mac.to_ascii_lowercase();
        let start = Instant::now();
        loop {
            if let Some(lease) = self.leases()?.into_iter().find(|l| l.mac == mac) {
                return Ok(lease);
            }
            if start.elapsed() >= deadline {
                return Err(Error::Process(format!(
                    "timed out after {:.1?} waiting for a DHCP lease for {mac}; leases: {:?}\n--- {} ---\n{}",
                    start.elapsed(),
                    self.leases()?,
                    self.log_path().display(),
                    tail(&self.log_text(), 30)
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Dhcp {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            tracing::warn!("killing dnsmasq pid {}: {e}", self.child.id());
        }
        if let Err(e) = self.child.wait() {
            tracing::warn!("reaping dnsmasq pid {}: {e}", self.child.id());
        }
    }
}

/// Parses dnsmasq lease lines `expiry mac ip hostname client-id`; skips
/// anything else (IPv6 `duid` lines included).
pub fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let expiry = f.next()?.parse().ok()?;
            let mac = f.next()?.to_ascii_lowercase();
            let ip = f.next()?.parse().ok()?;
            let hostname = f.next().filter(|h| *h != "*").map(str::to_string);
            Some(Lease {
                expiry,
                mac,
                ip,
                hostname,
            })
        })
        .collect()
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lines() {
        let text = "1700000000 52:54:00:77:00:01 10.77.0.50 node1 01:52:54:00:77:00:01\n\
                    1700000001 52:54:00:77:00:02 10.77.0.51 * *\n\
                    duid 00:01:00:01:2c:aa\n\
                    garbage\n";
        let leases = parse_leases(text);
        assert_eq!(
            leases,
            [
                Lease {
                    expiry: 1700000000,
                    mac: "52:54:00:77:00:01".into(),
                    ip: Ipv4Addr::new(10, 77, 0, 50),
                    hostname: Some("node1".into()),
                },
                Lease {
                    expiry: 1700000001,
                    mac: "52:54:00:77:00:02".into(),
                    ip: Ipv4Addr::new(10, 77, 0, 51),
                    hostname: None,
                },
            ]
        );
    }
}
