//! `cluster.toml`: the per-site settings every node reads on first boot.
//!
//! The builder validates this file at build time and writes it onto the ESP as
//! `habuild/cluster.toml`; the agent reads it from there on every boot. The
//! schema lives here, with the agent, because the agent is its real consumer.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::source::{ConfigError, SourceFile};

/// Where the ESP copy of the cluster file lives on a booted node.
pub const ESP_CLUSTER_PATH: &str = "/boot/efi/habuild/cluster.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster: ClusterSection,
    #[serde(default)]
    pub network: NetworkSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub kubernetes: KubernetesSection,
    /// Per-machine settings (`[[nodes]]`), matched by a MAC address of the
    /// machine; see [`NodeEntry`] and [`ClusterConfig::node_entry`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeEntry>,
}

/// One `[[nodes]]` table: settings for the machine that has `mac` on any
/// of its network interfaces.
///
/// ```toml
/// [[nodes]]
/// mac = "52:54:00:aa:bb:cc"
/// kubernetes = false
/// labels = { zone = "a", rack = "r1" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// A MAC address of the machine (any interface; case does not matter).
    pub mac: Mac,
    /// `false`: the agent stays out of Kubernetes on this machine: no
    /// control plane, kubelet, kube-proxy or pod network (it still takes
    /// part in Raft and may carry a Gluster brick); an operator may run
    /// `kubeadm join` on it. Default `true`.
    #[serde(default = "yes")]
    pub kubernetes: bool,
    /// Placement labels (`zone`, `rack`) the planner spreads the control
    /// plane and the Gluster bricks over.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A MAC address, kept as six lowercase hex pairs joined by `:`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(String);

impl Mac {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` (e.g. from `/sys/class/net/*/address`) is this
    /// address, ignoring case.
    pub fn matches(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other.trim())
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let ok = parts.len() == 6
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            return Err(format!(
                "expected a MAC address such as \"52:54:00:aa:bb:cc\" (six hex pairs \
                 joined by ':'), got {s:?}"
            ));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSection {
    /// Assemble Kubernetes (control plane, kubelets, pod network). `false`
    /// leaves a cluster of etcd, the VIP and Gluster only.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Control-plane nodes also run workloads (no `NoSchedule` taint).
    #[serde(default = "yes")]
    pub control_plane_schedulable: bool,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        Self {
            enabled: true,
            control_plane_schedulable: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// DNS-label-like name; also the mDNS instance prefix.
    pub name: String,
    /// 32 random bytes as 64 hex digits (`habuild secret new`).
    pub secret: Secret,
    /// How many verified peers must see each other before the Raft group forms.
    pub bootstrap_expect: u32,
    /// etcd / control-plane members: 1, 3 or 5.
    #[serde(default = "default_cp")]
    pub control_plane_size: u32,
}

fn default_cp() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// The NIC that carries the cluster network: its name (e.g. "enp3s0"), or
    /// "auto" for the first non-loopback IPv4 address. Either way, when
    /// `subnet` is given only an address inside it qualifies. The agent's
    /// `--interface` flag overrides this; a named NIC that does not exist or
    /// has no IPv4 address (yet) is an error on the console and in status,
    /// and the agent retries until it appears (see [`crate::netif`]).
    #[serde(default = "auto_string")]
    pub interface: String,
    /// The nodes' subnet; "auto" takes it from the interface's address. When
    /// given, a node uses its address inside this subnet (see `interface`),
    /// and the VIP and MetalLB range are chosen and checked in it.
    #[serde(default)]
    pub subnet: Auto<Ipv4Cidr>,
    /// The API VIP; "auto" picks a free address in the subnet.
    #[serde(default)]
    pub vip: Auto<Ipv4Addr>,
    /// MetalLB pool "first-last"; "auto" picks a free range in the subnet.
    #[serde(default)]
    pub metallb_range: Auto<Ipv4Range>,
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: Ipv4Cidr,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Cidr,
    /// How a node names itself on first boot (kept afterwards): a pattern
    /// over `{id}` / `{id:N}` (the node id's last N hex digits), `{mac}` (the
    /// cluster interface's MAC) and `{cluster}`; see [`crate::hostname`].
    #[serde(default = "default_hostname")]
    pub hostname: String,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            interface: auto_string(),
            subnet: Auto::Auto,
            vip: Auto::Auto,
            metallb_range: Auto::Auto,
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
            hostname: default_hostname(),
        }
    }
}

fn default_hostname() -> String {
    crate::hostname::DEFAULT_PATTERN.into()
}

fn auto_string() -> String {
    "auto".into()
}
fn default_pod_cidr() -> Ipv4Cidr {
    "10.244.0.0/16".parse().expect("valid default")
}
fn default_service_cidr() -> Ipv4Cidr {
    "10.96.0.0/12".parse().expect("valid default")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Build Gluster bricks on the storage nodes.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Size of the loop-device backing file on the data partition, used when no `devices` are given.
    #[serde(default = "default_brick_gib")]
    pub brick_file_size_gib: u32,
    /// Spare disks to use instead of a backing file (never touched if they hold data).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Replica count of the volume (3 recommended).
    #[serde(default = "default_replica")]
    pub replica: u32,
    /// How many nodes carry a brick (default: `replica`). More than
    /// `replica` makes the volume distributed-replicated, in whole replica
    /// sets (a node beyond the last whole set waits for a partner).
    #[serde(default)]
    pub nodes: Option<u32>,
    /// Where every node mounts the volume.
    #[serde(default = "default_mount")]
    pub mount_path: String,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            enabled: true,
            brick_file_size_gib: default_brick_gib(),
            devices: Vec::new(),
            replica: default_replica(),
            nodes: None,
            mount_path: default_mount(),
        }
    }
}

/// Is `path` somewhere a node can create its mount point: below `/mnt` or
/// `/var` (the writable trees of the read-only image), without `..`?
fn mount_path_is_writable(path: &str) -> bool {
    let p = std::path::Path::new(path);
    let under = |root: &str| p.starts_with(root) && p != std::path::Path::new(root);
    p.is_absolute()
        && (under("/mnt") || under("/var"))
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// Could Linux name a network interface `name` (`dev_valid_name`)?
fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

fn yes() -> bool {
    true
}
fn default_brick_gib() -> u32 {
    10
}
fn default_replica() -> u32 {
    3
}
fn default_mount() -> String {
    "/mnt/gluster".into()
}

/// A value that is either given or chosen by the planner ("auto").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auto<T> {
    #[default]
    Auto,
    Value(T),
}

impl<T: fmt::Display> Serialize for Auto<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Auto::Auto => s.serialize_str("auto"),
            Auto::Value(v) => s.serialize_str(&v.to_string()),
        }
    }
}

impl<'de, T> Deserialize<'de> for Auto<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "auto" {
            return Ok(Auto::Auto);
        }
        T::from_str(&s)
            .map(Auto::Value)
            .map_err(|e| serde::de::Error::custom(format!("{e}, or \"auto\"")))
    }
}

/// The cluster secret: 32 bytes, written as 64 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A fresh secret from the OS's random source.
    pub fn generate() -> std::io::Result<Self> {
        use std::io::Read;
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(Self(b))
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = hex::decode(s.trim()).map_err(|_| {
            "expected 64 hex digits (generate one with `habuild secret new`)".to_string()
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            "expected 64 hex digits, i.e. 32 bytes (generate one with `habuild secret new`)"
                .to_string()
        })?;
        Ok(Secret(arr))
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An IPv4 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn network(&self) -> u32 {
        u32::from(self.addr) & self.mask()
    }
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network()
    }
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let m = self.mask() & other.mask();
        self.network() & m == other.network() & m
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("expected an IPv4 CIDR such as \"10.0.0.0/24\", got {s:?}");
        let (a, p) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let prefix: u8 = p.parse().map_err(|_| err())?;
        if prefix > 32 {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An inclusive IPv4 range "first-last".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Ipv4Range {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for Ipv4Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("expected an IPv4 range such as \"10.0.0.200-10.0.0.220\", got {s:?}");
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let first: Ipv4Addr = a.trim().parse().map_err(|_| err())?;
        let last: Ipv4Addr = b.trim().parse().map_err(|_| err())?;
        if u32::from(first) > u32::from(last) {
            return Err(format!("range {s:?} ends before it starts"));
        }
        Ok(Self { first, last })
    }
}

impl Serialize for Ipv4Range {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Ipv4Range {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl ClusterConfig {
    /// Read, parse and validate a cluster file; every error names file, line and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_source(&SourceFile::read(path)?)
    }

    pub fn from_source(src: &SourceFile) -> Result<Self, ConfigError> {
        let cfg: ClusterConfig = src.parse()?;
        cfg.validate(src)?;
        Ok(cfg)
    }

    /// The `[[nodes]]` entry for the machine whose interfaces have `macs`:
    /// the first entry (in file order) whose `mac` is one of them.
    pub fn node_entry(&self, macs: &[String]) -> Option<&NodeEntry> {
        self.nodes
            .iter()
            .find(|n| macs.iter().any(|m| n.mac.matches(m)))
    }

    /// Semantic checks serde cannot express.
    pub fn validate(&self, src: &SourceFile) -> Result<(), ConfigError> {
        self.validate_nodes(src)?;
        let c = &self.cluster;
        let name_ok = !c.name.is_empty()
            && c.name.len() <= 40
            && c.name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            && !c.name.starts_with('-')
            && !c.name.ends_with('-');
        if !name_ok {
            return Err(src.error_at(
                "cluster.name",
                format!(
                    "expected 1-40 lowercase letters, digits or '-' (not at either end), got {:?}",
                    c.name
                ),
            ));
        }
        if !matches!(c.control_plane_size, 1 | 3 | 5) {
            return Err(src.error_at(
                "cluster.control_plane_size",
                format!("expected 1, 3 or 5, got {}", c.control_plane_size),
            ));
        }
        if c.bootstrap_expect == 0 {
            return Err(src.error_at("cluster.bootstrap_expect", "expected at least 1, got 0"));
        }
        if c.bootstrap_expect < c.control_plane_size {
            return Err(src.error_at(
                "cluster.bootstrap_expect",
                format!(
                    "expected at least control_plane_size ({}) so the first plan can place every control-plane member, got {}",
                    c.control_plane_size, c.bootstrap_expect
                ),
            ));
        }
        let n = &self.network;
        if n.interface != "auto" && !is_interface_name(&n.interface) {
            return Err(src.error_at(
                "network.interface",
                format!(
                    "expected \"auto\" or an interface name (1-15 characters, no '/', ':' \
                     or whitespace), got {:?}",
                    n.interface
                ),
            ));
        }
        if let Err(why) = crate::hostname::check_pattern(&n.hostname, &c.name) {
            return Err(src.error_at("network.hostname", why));
        }
        if n.pod_cidr.overlaps(&n.service_cidr) {
            return Err(src.error_at(
                "network.service_cidr",
                format!("{} overlaps pod_cidr {}", n.service_cidr, n.pod_cidr),
            ));
        }
        if let Auto::Value(subnet) = &n.subnet {
            for (key, cidr) in [
                ("network.pod_cidr", &n.pod_cidr),
                ("network.service_cidr", &n.service_cidr),
            ] {
                if subnet.overlaps(cidr) {
                    return Err(
                        src.error_at(key, format!("{cidr} overlaps the node subnet {subnet}"))
                    );
                }
            }
            if let Auto::Value(vip) = n.vip {
                if !subnet.contains(vip) {
                    return Err(src.error_at(
                        "network.vip",
                        format!("{vip} is outside the node subnet {subnet}"),
                    ));
                }
            }
            if let Auto::Value(r) = n.metallb_range {
                if !subnet.contains(r.first) || !subnet.contains(r.last) {
                    return Err(src.error_at(
                        "network.metallb_range",
                        format!("{r} is not inside the node subnet {subnet}"),
                    ));
                }
            }
        }
        if let (Auto::Value(vip), Auto::Value(r)) = (n.vip, n.metallb_range) {
            if r.contains(vip) {
                return Err(src.error_at(
                    "network.metallb_range",
                    format!("{r} contains the API VIP {vip}; MetalLB would hand it out"),
                ));
            }
        }
        if c.secret.0 == [0u8; 32] {
            return Err(src.error_at(
                "cluster.secret",
                "is the example placeholder (all zeros): anyone could join; generate one with `habuild secret new`",
            ));
        }
        let s = &self.storage;
        if s.enabled {
            if s.replica == 0 {
                return Err(src.error_at("storage.replica", "expected at least 1, got 0"));
            }
            if let Some(n) = s.nodes {
                if n < s.replica {
                    return Err(src.error_at(
                        "storage.nodes",
                        format!("expected at least storage.replica ({}), got {n}", s.replica),
                    ));
                }
            }
            if s.devices.is_empty() && s.brick_file_size_gib == 0 {
                return Err(src.error_at(
                    "storage.brick_file_size_gib",
                    "expected at least 1 GiB when no storage.devices are given",
                ));
            }
            if !mount_path_is_writable(&s.mount_path) {
                return Err(src.error_at(
                    "storage.mount_path",
                    format!(
                        "expected a directory under /mnt/ or /var/ (the root filesystem is \
                         read-only; /mnt is /var/mnt bound in place), got {:?}",
                        s.mount_path
                    ),
                ));
            }
            for d in &s.devices {
                if !d.starts_with("/dev/") {
                    return Err(src.error_at(
                        "storage.devices",
                        format!("expected device paths under /dev/, got {d:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[[nodes]]`: no MAC twice, no empty label name or value.
    fn validate_nodes(&self, src: &SourceFile) -> Result<(), ConfigError> {
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(first) = self.nodes[..i].iter().position(|o| o.mac == n.mac) {
                return Err(node_error(
                    src,
                    i,
                    "mac",
                    format!(
                        "{} is already the mac of [[nodes]] entry {} (one entry per machine)",
                        n.mac,
                        first + 1
                    ),
                ));
            }
            if let Some((k, v)) = n
                .labels
                .iter()
                .find(|(k, v)| k.trim().is_empty() || v.trim().is_empty())
            {
                return Err(node_error(
                    src,
                    i,
                    "labels",
                    format!("expected non-empty label names and values, got {k:?} = {v:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// An error about `field` of the `index`th `[[nodes]]` entry (0-based),
/// located at that entry's value (key `nodes.<field>`).
fn node_error(
    src: &SourceFile,
    index: usize,
    field: &str,
    message: impl Into<String>,
) -> ConfigError {
    let pos = toml_edit::ImDocument::parse(src.text.as_str())
        .ok()
        .and_then(|doc| {
            let entry = doc.get("nodes")?.as_array_of_tables()?.get(index)?;
            entry.get(field)?.span()
        })
        .map(|span| {
            let before = &src.text[..span.start.min(src.text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (line, column)
        });
    ConfigError {
        path: src.path.clone(),
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
        key: Some(format!("nodes.{field}")),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn src(body: &str) -> SourceFile {
        SourceFile::from_text("cluster.toml", body.replace("SECRET", SECRET))
    }

    const GOOD: &str = r#"
[cluster]
name = "lab"
secret = "SECRET"
bootstrap_expect = 3
control_plane_size = 3

[network]
subnet = "10.77.0.0/24"
vip = "10.77.0.10"
metallb_range = "10.77.0.200-10.77.0.220"
"#;

    #[test]
    fn good_file_parses() {
        let c = ClusterConfig::from_source(&src(GOOD)).unwrap();
        assert_eq!(c.cluster.bootstrap_expect, 3);
        assert_eq!(c.network.vip, Auto::Value(Ipv4Addr::new(10, 77, 0, 10)));
        assert!(c.storage.enabled);
        assert!(
            !format!("{c:?}").contains("0011223344"),
            "secret leaked in Debug"
        );
    }

    #[test]
    fn even_control_plane_is_rejected_at_its_line() {
        let e = ClusterConfig::from_source(&src(
            &GOOD.replace("control_plane_size = 3", "control_plane_size = 4")
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(6));
        assert_eq!(e.key.as_deref(), Some("cluster.control_plane_size"));
        assert!(e.message.contains("expected 1, 3 or 5"), "{e}");
    }

    #[test]
    fn bad_secret_names_the_fix() {
        let e = ClusterConfig::from_source(&src(&GOOD.replace("SECRET", "abc"))).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("habuild secret new"), "{e}");
    }

    #[test]
    fn vip_outside_subnet_and_vip_in_pool_are_rejected() {
        let e = ClusterConfig::from_source(&src(&GOOD.replace("10.77.0.10\"", "10.78.0.10\"")))
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("network.vip"));
        assert_eq!(e.line, Some(10));
        let e = ClusterConfig::from_source(&src(&GOOD.replace("10.77.0.200-", "10.77.0.5-")))
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("network.metallb_range"));
        assert!(e.message.contains("contains the API VIP"), "{e}");
    }

    #[test]
    fn unknown_key_and_typo_are_located() {
        let e = ClusterConfig::from_source(&src(
            &GOOD.replace("bootstrap_expect", "bootstrap_expected")
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(
            e.message.contains("unknown field `bootstrap_expected`"),
            "{e}"
        );
        let e = ClusterConfig::from_source(&src(
            &GOOD.replace("bootstrap_expect = 3", "bootstrap_expect = \"3\"")
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn placeholder_secret_is_refused() {
        let zero = "0".repeat(64);
        let e = ClusterConfig::from_source(&src(&GOOD.replace("SECRET", &zero))).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("cluster.secret"));
        assert!(e.message.contains("habuild secret new"), "{e}");
    }

    #[test]
    fn mount_path_must_be_on_a_writable_tree() {
        for bad in [
            "gluster",
            "/srv/gluster",
            "/mnt",
            "/var",
            "/mnt/../etc",
            "/opt/x",
        ] {
            let text = format!("{GOOD}\n[storage]\nmount_path = \"{bad}\"\n");
            let e = ClusterConfig::from_source(&src(&text)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("storage.mount_path"), "{bad}");
            let line = text
                .lines()
                .position(|l| l.starts_with("mount_path"))
                .unwrap()
                + 1;
            assert_eq!(e.line, Some(line), "{bad}");
            assert!(e.message.contains("read-only"), "{e}");
        }
        for good in ["/mnt/gluster", "/var/lib/volumes/habuild"] {
            let text = format!("{GOOD}\n[storage]\nmount_path = \"{good}\"\n");
            let c = ClusterConfig::from_source(&src(&text)).unwrap();
            assert_eq!(c.storage.mount_path, good);
        }
    }

    #[test]
    fn interface_is_auto_or_a_possible_name() {
        for good in ["auto", "eth0", "enp3s0f1", "br-lan", "wlp0s20f3.100"] {
            let text = format!("{GOOD}interface = \"{good}\"\n");
            let c = ClusterConfig::from_source(&src(&text)).unwrap();
            assert_eq!(c.network.interface, good);
        }
        for bad in ["", "eth0 ", "a/b", "eth0:1", "averyveryverylongname", ".."] {
            let text = format!("{GOOD}interface = \"{bad}\"\n");
            let e = ClusterConfig::from_source(&src(&text)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("network.interface"), "{bad:?}");
            assert_eq!(e.line, Some(text.lines().count()), "{bad:?}");
            assert!(e.message.contains("interface name"), "{e}");
        }
    }

    #[test]
    fn hostname_pattern_is_checked_at_its_line() {
        let c = ClusterConfig::from_source(&src(GOOD)).unwrap();
        assert_eq!(c.network.hostname, "node-{id:6}");
        let text = format!("{GOOD}hostname = \"rack1-{{mac}}\"\n");
        let c = ClusterConfig::from_source(&src(&text)).unwrap();
        assert_eq!(c.network.hostname, "rack1-{mac}");
        for bad in ["node", "Node-{id}", "n-{serial}"] {
            let text = format!("{GOOD}hostname = \"{bad}\"\n");
            let e = ClusterConfig::from_source(&src(&text)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("network.hostname"), "{bad}");
            assert_eq!(e.line, Some(text.lines().count()), "{bad}");
        }
    }

    const NODES: &str = r#"
[[nodes]]
mac = "52:54:00:AA:bb:01"
kubernetes = false

[[nodes]]
mac = "52:54:00:aa:bb:02"
labels = { zone = "a", rack = "r1" }
"#;

    #[test]
    fn nodes_parse_match_by_mac_and_default_to_kubernetes() {
        let c = ClusterConfig::from_source(&src(GOOD)).unwrap();
        assert!(c.nodes.is_empty());
        assert_eq!(c.node_entry(&["52:54:00:aa:bb:01".into()]), None);

        let c = ClusterConfig::from_source(&src(&format!("{GOOD}{NODES}"))).unwrap();
        assert_eq!(c.nodes.len(), 2);
        let first = c
            .node_entry(&["02:00:00:00:00:09".into(), "52:54:00:aa:BB:01".into()])
            .expect("matched case-insensitively on any interface");
        assert_eq!(first.mac.as_str(), "52:54:00:aa:bb:01");
        assert!(!first.kubernetes);
        assert!(first.labels.is_empty());
        let second = c.node_entry(&["52:54:00:aa:bb:02".into()]).unwrap();
        assert!(second.kubernetes, "kubernetes defaults to true");
        assert_eq!(second.labels["zone"], "a");
        assert_eq!(second.labels["rack"], "r1");
        assert_eq!(c.node_entry(&["52:54:00:aa:bb:03".into()]), None);
    }

    #[test]
    fn bad_node_entries_are_located() {
        let text = format!("{GOOD}{NODES}");
        let line_of =
            |t: &str, needle: &str| t.lines().position(|l| l.contains(needle)).unwrap() + 1;
        for bad in [
            "52:54:00:aa:bb",
            "52-54-00-aa-bb-01",
            "52:54:00:aa:bb:0g",
            "",
        ] {
            let t = text.replace("52:54:00:aa:bb:02", bad);
            let e = ClusterConfig::from_source(&src(&t)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("nodes.mac"), "{bad}: {e}");
            assert_eq!(
                e.line,
                Some(line_of(&t, &format!("mac = \"{bad}\""))),
                "{e}"
            );
            assert!(e.message.contains("expected a MAC address"), "{e}");
            assert!(e.message.contains(&format!("{bad:?}")), "{e}");
        }
        // The same machine twice (case does not matter): named at the second.
        let t = text.replace("52:54:00:aa:bb:02", "52:54:00:aa:BB:01");
        let e = ClusterConfig::from_source(&src(&t)).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("nodes.mac"));
        assert_eq!(e.line, Some(line_of(&t, "52:54:00:aa:BB:01")), "{e}");
        assert!(
            e.message
                .contains("52:54:00:aa:bb:01 is already the mac of [[nodes]] entry 1"),
            "{e}"
        );
        // Unknown keys and a missing mac are refused.
        let t = text.replace("kubernetes = false", "kubelet = false");
        let e = ClusterConfig::from_source(&src(&t)).unwrap_err();
        assert!(e.message.contains("unknown field `kubelet`"), "{e}");
        assert_eq!(e.line, Some(line_of(&t, "kubelet = false")), "{e}");
        let t = format!("{GOOD}\n[[nodes]]\nkubernetes = false\n");
        let e = ClusterConfig::from_source(&src(&t)).unwrap_err();
        assert!(e.message.contains("missing field `mac`"), "{e}");
        let t = text.replace("zone = \"a\"", "zone = \"\"");
        let e = ClusterConfig::from_source(&src(&t)).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("nodes.labels"));
        assert_eq!(e.line, Some(line_of(&t, "labels = ")), "{e}");
    }

    #[test]
    fn cidr_and_range_parsing() {
        let c: Ipv4Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(!c.contains(Ipv4Addr::new(11, 0, 0, 1)));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.9-10.0.0.1".parse::<Ipv4Range>().is_err());
        let s = Secret::generate().unwrap();
        assert_eq!(s.to_hex().parse::<Secret>().unwrap(), s);
    }
}
