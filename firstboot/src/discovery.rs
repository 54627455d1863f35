//! mDNS discovery of the other agents of this cluster.
//!
//! Every agent registers one DNS-SD service of type [`SERVICE_TYPE`], instance
//! `<cluster>-<node id as 16 hex digits>`, on the agent port, with these TXT
//! records ([`encode_txt`]):
//!
//! | key | value |
//! |-----|-------|
//! | `c` | cluster name |
//! | `n` | node id, 16 lowercase hex digits |
//! | `p` | agent port (decimal) |
//! | `s` | Raft state: `forming:<voter-set hash, 32 hex>`, `member` or `leader` |
//! | `v` | TXT format version, `1` |
//! | `m` | hex HMAC-SHA256 over the other records |
//!
//! The MAC key is `HKDF-SHA256(cluster secret, info "habuild mdns v1")`
//! ([`MdnsKey`]); the MAC input is every other record as `key=value`, sorted by
//! key, joined by `\n`. Records whose keys or values contain `\n` (or keys
//! containing `=`) are refused as malformed, so that input is unambiguous.
//! Unknown keys are allowed (a later version may add some) but are covered by
//! the MAC like the known ones.
//!
//! [`verify_txt`] checks, in order: the shape of the records (each key once,
//! `c`, `v`, `m` present) → the cluster name (a different one is
//! [`Rejection::OtherCluster`]: several clusters may share a LAN) → the
//! version → the MAC in constant time ([`Rejection::BadMac`]) → the values
//! ([`Rejection::Malformed`]). The instance name must match `c` and `n`.
//! [`Discovery`] drops rejected announcements and counts them
//! ([`Discovery::stats`]); no input makes it panic.
//!
//! # What an attacker on the LAN can and cannot do
//!
//! Without the cluster secret an attacker:
//! - *can* read every announcement: the cluster name, node ids, agent ports,
//!   Raft states and addresses are in clear (they are not secrets);
//! - cannot forge or alter an announcement (any change breaks the MAC) nor
//!   make one for a node id of its choosing;
//! - *can* replay a genuine announcement, which only re-asserts what that
//!   node once said (for instance an old `forming:` state, or a node that has
//!   since left). Consumers treat announcements as hints: bootstrap agreement
//!   and membership are settled over the authenticated transport and Raft;
//! - *can* answer mDNS with its own A/AAAA records for a genuine instance name
//!   (addresses and SRV are not covered by the MAC), sending peers to the
//!   wrong address; the transport handshake then fails there, so this costs
//!   a connection attempt, never an admission;
//! - can drop or flood multicast traffic (denial of service, out of scope).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::cluster::Secret;
use crate::state::NodeId;

/// The DNS-SD service type every agent registers and browses.
pub const SERVICE_TYPE: &str = "_habuild._tcp.local.";
/// Value of the `v` record this code writes and accepts.
pub const TXT_VERSION: &str = "1";
/// HKDF `info` for the announcement MAC key.
pub const MAC_INFO: &[u8] = b"habuild mdns v1";
/// At most this many TXT records are looked at; more is malformed.
const MAX_RECORDS: usize = 32;
/// Capacity of the [`PeerEvent`] channel; events beyond it are dropped (counted).
const EVENT_CAPACITY: usize = 1024;

/// The key of the announcement MAC, derived from the cluster secret.
#[derive(Clone, PartialEq, Eq)]
pub struct MdnsKey(pub [u8; 32]);

impl fmt::Debug for MdnsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MdnsKey(<redacted>)")
    }
}

impl MdnsKey {
    /// `HKDF-SHA256(cluster secret, info "habuild mdns v1")`.
    pub fn derive(secret: &Secret) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(None, &secret.0);
        let mut out = [0u8; 32];
        hk.expand(MAC_INFO, &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(out)
    }
}

/// A node's Raft state as announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RaftState {
    /// Waiting for `bootstrap_expect` verified peers; carries the hash of the
    /// voter set this node would propose (see [`voter_set_hash`]).
    Forming { voters: [u8; 16] },
    /// Part of a formed Raft group (follower or learner).
    Member,
    /// Leader of the Raft group.
    Leader,
}

/// A stable digest of a voter set: sha256 over the sorted, deduplicated ids
/// (big-endian), truncated to 16 bytes. Nodes agree on a set iff they
/// announce the same hash.
pub fn voter_set_hash(voters: &[NodeId]) -> [u8; 16] {
    let mut ids = voters.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut h = Sha256::new();
    h.update(b"habuild voters v1\n");
    for id in ids {
        h.update(id.to_be_bytes());
    }
    h.finalize()[..16].try_into().expect("16 bytes")
}

impl fmt::Display for RaftState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftState::Forming { voters } => write!(f, "forming:{}", hex::encode(voters)),
            RaftState::Member => f.write_str("member"),
            RaftState::Leader => f.write_str("leader"),
        }
    }
}

impl FromStr for RaftState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "member" => Ok(RaftState::Member),
            "leader" => Ok(RaftState::Leader),
            _ => {
                let h = s
                    .strip_prefix("forming:")
                    .ok_or_else(|| format!("unknown raft state {:?}", clip(s)))?;
                let voters = parse_lower_hex::<16>(h)
                    .ok_or_else(|| "voter-set hash is not 32 lowercase hex digits".to_string())?;
                Ok(RaftState::Forming { voters })
            }
        }
    }
}

/// What one agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub cluster: String,
    pub node: NodeId,
    /// Agent (transport) port.
    pub port: u16,
    pub state: RaftState,
}

impl Announcement {
    /// The DNS-SD instance name: `<cluster>-<node id hex>`.
    pub fn instance_name(&self) -> String {
        instance_name(&self.cluster, self.node)
    }
}

pub fn instance_name(cluster: &str, node: NodeId) -> String {
    format!("{cluster}-{node:016x}")
}

/// Why an announcement was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A well-formed announcement of another cluster (not an attack by itself).
    #[error("announcement of another cluster ({0:?})")]
    OtherCluster(String),
    /// Claims our cluster but its MAC does not verify: no secret, or tampered.
    #[error("announcement MAC does not verify")]
    BadMac,
    #[error("malformed announcement: {0}")]
    Malformed(String),
}

fn malformed(s: impl Into<String>) -> Rejection {
    Rejection::Malformed(s.into())
}

/// Attacker-controlled text, shortened for error messages and logs.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// The MAC input: `key=value` for every record except `m`, sorted, `\n`-joined.
fn mac_input<'a>(records: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut sorted: Vec<(&str, &str)> = records.filter(|(k, _)| *k != "m").collect();
    sorted.sort_unstable();
    let mut out = Vec::new();
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn mac(key: &MdnsKey) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes any key length")
}

/// The TXT records announcing `a`, MAC included.
pub fn encode_txt(a: &Announcement, key: &MdnsKey) -> Vec<(String, String)> {
    let mut records = vec![
        ("c".to_string(), a.cluster.clone()),
        ("n".to_string(), format!("{:016x}", a.node)),
        ("p".to_string(), a.port.to_string()),
        ("s".to_string(), a.state.to_string()),
        ("v".to_string(), TXT_VERSION.to_string()),
    ];
    let mut m = mac(key);
    m.update(&mac_input(
        records.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ));
    records.push(("m".to_string(), hex::encode(m.finalize().into_bytes())));
    records
}

/// Checks TXT records received for `cluster` and returns what they announce.
pub fn verify_txt(
    props: &[(String, String)],
    key: &MdnsKey,
    cluster: &str,
) -> Result<Announcement, Rejection> {
    if props.len() > MAX_RECORDS {
        return Err(malformed(format!("{} TXT records", props.len())));
    }
    let mut map: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in props {
        if k.is_empty() || k.contains(['=', '\n']) || v.contains('\n') {
            return Err(malformed(format!("invalid TXT record {:?}", clip(k))));
        }
        if map.insert(k, v).is_some() {
            return Err(malformed(format!("TXT key {:?} repeated", clip(k))));
        }
    }
    let get = |k: &str| {
        map.get(k)
            .copied()
            .ok_or_else(|| malformed(format!("TXT key {k:?} missing")))
    };
    let c = get("c")?;
    if c != cluster {
        return Err(Rejection::OtherCluster(clip(c)));
    }
    let v = get("v")?;
    if v != TXT_VERSION {
        return Err(malformed(format!("TXT version {:?}", clip(v))));
    }
    let tag = parse_lower_hex::<32>(get("m")?).ok_or(Rejection::BadMac)?;
    let mut m = mac(key);
    m.update(&mac_input(map.iter().map(|(k, v)| (*k, *v))));
    m.verify_slice(&tag).map_err(|_| Rejection::BadMac)?;

    let node = parse_lower_hex::<8>(get("n")?)
        .map(u64::from_be_bytes)
        .filter(|id| *id != 0)
        .ok_or_else(|| malformed("node id is not 16 lowercase hex digits, nonzero"))?;
    let p = get("p")?;
    let port = p
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0 && port.to_string() == p)
        .ok_or_else(|| malformed(format!("port {:?}", clip(p))))?;
    let state = get("s")?
        .parse::<RaftState>()
        .map_err(Rejection::Malformed)?;
    Ok(Announcement {
        cluster: c.to_string(),
        node,
        port,
        state,
    })
}

/// TXT records as received from mdns-sd; a key without value or a
/// non-UTF-8 value is malformed (our encoder never produces either).
pub fn props_from_mdns(props: &mdns_sd::TxtProperties) -> Result<Vec<(String, String)>, Rejection> {
    let mut out = Vec::with_capacity(props.len());
    for p in props.iter() {
        let v = p
            .val()
            .ok_or_else(|| malformed(format!("TXT key {:?} without value", clip(p.key()))))?;
        let v = std::str::from_utf8(v)
            .map_err(|_| malformed(format!("TXT value of {:?} is not UTF-8", clip(p.key()))))?;
        out.push((p.key().to_string(), v.to_string()));
    }
    Ok(out)
}

/// Verifies a resolved service: its TXT records and that its instance name is
/// the one its records imply.
pub fn verify_resolved(
    fullname: &str,
    props: &[(String, String)],
    key: &MdnsKey,
    cluster: &str,
) -> Result<Announcement, Rejection> {
    let a = verify_txt(props, key, cluster)?;
    let expected = format!("{}.{SERVICE_TYPE}", a.instance_name());
    if !fullname.eq_ignore_ascii_case(&expected) {
        return Err(malformed(format!(
            "instance {:?} does not match its records",
            clip(fullname)
        )));
    }
    Ok(a)
}

/// A verified peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    /// Addresses from mDNS A/AAAA records: unauthenticated hints (see the
    /// module docs); the transport handshake authenticates whoever answers.
    pub addrs: Vec<IpAddr>,
    /// Agent port, from the authenticated TXT records.
    pub port: u16,
    pub state: RaftState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A peer appeared, or its addresses, port or state changed.
    Seen(Peer),
    /// A peer's announcement was withdrawn or expired.
    Gone(NodeId),
}

/// Rejected announcements, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejected {
    pub other_cluster: u64,
    pub bad_mac: u64,
    pub malformed: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    pub rejected: Rejected,
    /// Announcements resolved (verified or not, our own included) since
    /// start: one per new or changed instance record set that mdns-sd
    /// delivers, not one per packet (see [`Discovery::daemon_metrics`]).
    pub announcements_total: u64,
    /// The same over the last 60 seconds.
    pub announcements_last_minute: u64,
    /// Peer events dropped because the receiver fell behind.
    pub dropped_events: u64,
    /// Verified announcements of *this* node's id from an address that is
    /// not ours: another host has the same id (a cloned disk that kept its
    /// machine-id). The last such address.
    pub duplicate_id: u64,
    pub duplicate_id_addr: Option<IpAddr>,
}

/// Where mDNS runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interfaces {
    /// Every interface mdns-sd finds (including loopback).
    All,
    /// Only the named interfaces (IPv4 and IPv6 addresses on them).
    Only(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub key: MdnsKey,
    pub interfaces: Interfaces,
    /// UDP port of mDNS: [`mdns_sd::MDNS_PORT`] (5353) except in special tests.
    pub mdns_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("mdns: {0}")]
    Mdns(#[from] mdns_sd::Error),
    #[error("an update must keep cluster name and node id ({0})")]
    IdentityChanged(String),
    #[error("cannot start the discovery thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Default)]
struct Shared {
    other_cluster: AtomicU64,
    bad_mac: AtomicU64,
    malformed: AtomicU64,
    announcements: AtomicU64,
    dropped: AtomicU64,
    duplicate_id: AtomicU64,
    duplicate_id_addr: Mutex<Option<IpAddr>>,
    recent: Mutex<VecDeque<Instant>>,
    stop: AtomicBool,
}

impl Shared {
    fn note_announcement(&self, now: Instant) {
        self.announcements.fetch_add(1, Ordering::Relaxed);
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        r.push_back(now);
        prune(&mut r, now);
    }

    fn count(&self, r: &Rejection) {
        let c = match r {
            Rejection::OtherCluster(_) => &self.other_cluster,
            Rejection::BadMac => &self.bad_mac,
            Rejection::Malformed(_) => &self.malformed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn prune(r: &mut VecDeque<Instant>, now: Instant) {
    while r
        .front()
        .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
    {
        r.pop_front();
    }
    // bound memory under a flood; the count saturates at this value
    while r.len() > 100_000 {
        r.pop_front();
    }
}

/// The running mDNS announcer and browser.
pub struct Discovery {
    daemon: mdns_sd::ServiceDaemon,
    config: DiscoveryConfig,
    current: Mutex<Announcement>,
    addrs: Vec<IpAddr>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("addrs", &self.addrs)
            .field("interfaces", &self.config.interfaces)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts announcing `announcement` on `addrs` (empty: every address of
    /// the selected interfaces) and browsing for peers of the same cluster.
    pub fn start(
        config: DiscoveryConfig,
        announcement: Announcement,
        addrs: Vec<IpAddr>,
    ) -> Result<(Self, mpsc::Receiver<PeerEvent>), DiscoveryError> {
        let daemon = daemon_for(&config)?;
        let shared = Arc::new(Shared::default());
        // No probing: the instance name carries the node id, so it is ours
        // alone, and probing raced our own TXT updates into endless
        // conflict renames (` (N)`) that lost announcements.
        daemon.register(service(&config, &addrs, &announcement, false)?)?;
        let browse = daemon.browse(SERVICE_TYPE)?;
        let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
        let thread = {
            let (key, me, shared) = (config.key.clone(), announcement.clone(), shared.clone());
            let mine = addrs.clone();
            std::thread::Builder::new()
                .name("habuild-discovery".into())
                .spawn(move || event_loop(browse, tx, key, me, &mine, shared))
                .map_err(DiscoveryError::Thread)?
        };
        Ok((
            Self {
                daemon,
                config,
                current: Mutex::new(announcement),
                addrs,
                shared,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Re-announces with new TXT records (e.g. a Raft state change). The
    /// cluster name and node id, hence the instance name, must not change.
    pub fn update(&self, announcement: Announcement) -> Result<(), DiscoveryError> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.cluster != announcement.cluster || cur.node != announcement.node {
            return Err(DiscoveryError::IdentityChanged(format!(
                "{} -> {}",
                cur.instance_name(),
                announcement.instance_name()
            )));
        }
        // the name was probed when first registered
        self.daemon
            .register(service(&self.config, &self.addrs, &announcement, false)?)?;
        *cur = announcement;
        Ok(())
    }

    pub fn stats(&self) -> DiscoveryStats {
        let s = &self.shared;
        let last_minute = {
            let mut r = s.recent.lock().unwrap_or_else(|e| e.into_inner());
            prune(&mut r, Instant::now());
            r.len() as u64
        };
        DiscoveryStats {
            rejected: Rejected {
                other_cluster: s.other_cluster.load(Ordering::Relaxed),
                bad_mac: s.bad_mac.load(Ordering::Relaxed),
                malformed: s.malformed.load(Ordering::Relaxed),
            },
            announcements_total: s.announcements.load(Ordering::Relaxed),
            announcements_last_minute: last_minute,
            dropped_events: s.dropped.load(Ordering::Relaxed),
            duplicate_id: s.duplicate_id.load(Ordering::Relaxed),
            duplicate_id_addr: *s
                .duplicate_id_addr
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// mdns-sd's own counters (e.g. `respond`, `register-resend`,
    /// `cache-refresh-*`: what this node sent), for packets-per-minute reports.
    pub fn daemon_metrics(&self) -> Result<HashMap<String, i64>, DiscoveryError> {
        let rx = self.daemon.get_metrics()?;
        rx.recv_timeout(Duration::from_secs(2))
            .map_err(|e| DiscoveryError::Mdns(mdns_sd::Error::Msg(e.to_string())))
    }

    /// Withdraws the announcement (goodbye packets) and stops the daemon.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let fullname = format!(
            "{}.{SERVICE_TYPE}",
            self.current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .instance_name()
        );
        if let Ok(rx) = self.daemon.unregister(&fullname) {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// An mdns-sd daemon on the configured port, limited to the configured
/// interfaces (shut down again if that fails).
fn daemon_for(cfg: &DiscoveryConfig) -> Result<mdns_sd::ServiceDaemon, DiscoveryError> {
    let daemon = mdns_sd::ServiceDaemon::new_with_port(cfg.mdns_port)?;
    if let Interfaces::Only(names) = &cfg.interfaces {
        let kinds: Vec<mdns_sd::IfKind> = names
            .iter()
            .map(|n| mdns_sd::IfKind::Name(n.clone()))
            .collect();
        let limited = daemon
            .disable_interface(mdns_sd::IfKind::All)
            .and_then(|_| daemon.enable_interface(kinds));
        if let Err(e) = limited {
            let _ = daemon.shutdown();
            return Err(e.into());
        }
    }
    Ok(daemon)
}

fn service(
    config: &DiscoveryConfig,
    addrs: &[IpAddr],
    a: &Announcement,
    probe: bool,
) -> Result<mdns_sd::ServiceInfo, DiscoveryError> {
    let instance = a.instance_name();
    let host = format!("{instance}.local.");
    let txt = encode_txt(a, &config.key);
    let mut info =
        mdns_sd::ServiceInfo::new(SERVICE_TYPE, &instance, &host, addrs, a.port, &txt[..])?;
    if addrs.is_empty() {
        info = info.enable_addr_auto();
    }
    if let Interfaces::Only(names) = &config.interfaces {
        info.set_interfaces(
            names
                .iter()
                .map(|n| mdns_sd::IfKind::Name(n.clone()))
                .collect(),
        );
    }
    info.set_requires_probe(probe);
    Ok(info)
}

fn event_loop(
    browse: mdns_sd::Receiver<mdns_sd::ServiceEvent>,
    tx: mpsc::Sender<PeerEvent>,
    key: MdnsKey,
    me: Announcement,
    mine: &[IpAddr],
    shared: Arc<Shared>,
) {
    let mut known: HashMap<String, Peer> = HashMap::new();
    let send = |ev: PeerEvent| {
        if tx.try_send(ev).is_err() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let ev = match browse.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(_) if browse.is_disconnected() => break,
            Err(_) => continue,
        };
        match ev {
            mdns_sd::ServiceEvent::ServiceResolved(rs) => {
                shared.note_announcement(Instant::now());
                let fullname = rs.get_fullname().to_ascii_lowercase();
                let props = props_from_mdns(rs.get_properties());
                if matches!(&props, Ok(p) if p.is_empty()) {
                    continue; // resolved before its TXT arrived: incomplete, not counted
                }
                // mdns-sd renames an instance (` (N)`) when a re-announcement
                // with new TXT races its own old records: the same genuine
                // announcement under a new name (the MAC covers the records).
                let original = without_conflict_suffix(&fullname);
                let verified =
                    props.and_then(|props| verify_resolved(&original, &props, &key, &me.cluster));
                let a = match verified {
                    Ok(a) => a,
                    Err(r) => {
                        tracing::debug!(instance = %clip(&fullname), reason = %r, "mdns: announcement rejected");
                        shared.count(&r);
                        continue;
                    }
                };
                if a.node == me.node {
                    // Our own record, unless it carries an address that is
                    // not ours: then another host uses our node id.
                    let foreign = rs
                        .get_addresses()
                        .iter()
                        .map(|a| a.to_ip_addr())
                        .find(|ip| !mine.is_empty() && !mine.contains(ip));
                    if let Some(ip) = foreign {
                        shared.duplicate_id.fetch_add(1, Ordering::Relaxed);
                        *shared
                            .duplicate_id_addr
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(ip);
                        tracing::warn!(%ip, "another host announces this node's id");
                    }
                    continue;
                }
                let mut addrs: Vec<IpAddr> =
                    rs.get_addresses().iter().map(|a| a.to_ip_addr()).collect();
                addrs.sort_unstable();
                addrs.dedup();
                let peer = Peer {
                    id: a.node,
                    addrs,
                    port: a.port,
                    state: a.state,
                };
                if known.get(&fullname) != Some(&peer) {
                    // The newest instance of a node replaces its older names.
                    known.retain(|name, p| p.id != peer.id || *name == fullname);
                    known.insert(fullname, peer.clone());
                    send(PeerEvent::Seen(peer));
                }
            }
            mdns_sd::ServiceEvent::ServiceRemoved(_, fullname) => {
                if let Some(p) = known.remove(&fullname.to_ascii_lowercase()) {
                    if !known.values().any(|o| o.id == p.id) {
                        send(PeerEvent::Gone(p.id));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Listens for `wait` to the announcements of `cluster` *without announcing
/// anything* (for a read-only observer such as `habuild cluster status`) and
/// returns the verified peers, one per node id, ordered by id, and the
/// rejected announcements. Blocks for `wait`.
///
/// Record sets are checked exactly as the agent's event loop checks them:
/// [`verify_resolved`] (MAC included) under the instance's original name
/// ([`without_conflict_suffix`]); a set without any TXT record is incomplete,
/// neither trusted nor counted; rejections are counted as
/// [`Discovery::stats`] counts them (one per new or changed record set).
pub fn browse(
    cfg: &DiscoveryConfig,
    cluster: &str,
    wait: Duration,
) -> Result<(Vec<Peer>, Rejected), DiscoveryError> {
    /// Shuts the daemon down on every path.
    struct Daemon(mdns_sd::ServiceDaemon);
    impl Drop for Daemon {
        fn drop(&mut self) {
            if let Ok(rx) = self.0.shutdown() {
                let _ = rx.recv_timeout(Duration::from_secs(2));
            }
        }
    }
    let daemon = Daemon(daemon_for(cfg)?);
    let events = daemon.0.browse(SERVICE_TYPE)?;
    let mut seen = Browsed::default();
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match events.recv_timeout(left) {
            Ok(mdns_sd::ServiceEvent::ServiceResolved(rs)) => seen.resolved(
                rs.get_fullname(),
                props_from_mdns(rs.get_properties()),
                rs.get_addresses().iter().map(|a| a.to_ip_addr()),
                &cfg.key,
                cluster,
            ),
            Ok(mdns_sd::ServiceEvent::ServiceRemoved(_, fullname)) => seen.removed(&fullname),
            Ok(_) => {}
            Err(_) if events.is_disconnected() => break,
            Err(_) => {}
        }
    }
    Ok(seen.finish())
}

/// What [`browse`] has seen: verified peers by instance name (with the order
/// they were last resolved in), rejections.
#[derive(Debug, Default)]
struct Browsed {
    peers: BTreeMap<String, (u64, Peer)>,
    seq: u64,
    rejected: Rejected,
}

/// `fullname` without the ` (N)` that mDNS conflict resolution (RFC 6762
/// section 9; mdns-sd) appends to an instance label: the same announcement
/// under a new name. The name is not covered by the MAC, so checking the
/// records under the original name admits nothing the MAC does not.
fn without_conflict_suffix(fullname: &str) -> String {
    let suffix = format!(".{SERVICE_TYPE}");
    let renamed = fullname
        .strip_suffix(&suffix)
        .and_then(|inst| inst.strip_suffix(')'))
        .and_then(|inst| inst.rsplit_once(" ("))
        .filter(|(_, n)| (1..=5).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()));
    match renamed {
        Some((base, _)) => format!("{base}{suffix}"),
        None => fullname.to_string(),
    }
}

impl Browsed {
    fn resolved(
        &mut self,
        fullname: &str,
        props: Result<Vec<(String, String)>, Rejection>,
        addrs: impl IntoIterator<Item = IpAddr>,
        key: &MdnsKey,
        cluster: &str,
    ) {
        let fullname = fullname.to_ascii_lowercase();
        if matches!(&props, Ok(p) if p.is_empty()) {
            return;
        }
        let original = without_conflict_suffix(&fullname);
        match props.and_then(|p| verify_resolved(&original, &p, key, cluster)) {
            Ok(a) => {
                let mut addrs: Vec<IpAddr> = addrs.into_iter().collect();
                addrs.sort_unstable();
                addrs.dedup();
                let peer = Peer {
                    id: a.node,
                    addrs,
                    port: a.port,
                    state: a.state,
                };
                self.seq += 1;
                self.peers.insert(fullname, (self.seq, peer));
            }
            Err(r) => {
                tracing::debug!(instance = %clip(&fullname), reason = %r, "mdns: announcement rejected");
                let c = match r {
                    Rejection::OtherCluster(_) => &mut self.rejected.other_cluster,
                    Rejection::BadMac => &mut self.rejected.bad_mac,
                    Rejection::Malformed(_) => &mut self.rejected.malformed,
                };
                *c += 1;
            }
        }
    }

    fn removed(&mut self, fullname: &str) {
        self.peers.remove(&fullname.to_ascii_lowercase());
    }

    /// One peer per node id: the most recently resolved of its instances.
    fn finish(self) -> (Vec<Peer>, Rejected) {
        let mut by_id: BTreeMap<NodeId, (u64, Peer)> = BTreeMap::new();
        for (seq, peer) in self.peers.into_values() {
            match by_id.get(&peer.id) {
                Some((newer, _)) if *newer > seq => {}
                _ => {
                    by_id.insert(peer.id, (seq, peer));
                }
            }
        }
        (by_id.into_values().map(|(_, p)| p).collect(), self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> MdnsKey {
        MdnsKey::derive(&Secret([b; 32]))
    }

    fn ann() -> Announcement {
        Announcement {
            cluster: "lab".into(),
            node: 0x0123_4567_89ab_cdef,
            port: 7443,
            state: RaftState::Forming {
                voters: voter_set_hash(&[3, 1, 2]),
            },
        }
    }

    fn set(props: &mut [(String, String)], k: &str, v: &str) {
        props.iter_mut().find(|(key, _)| key == k).unwrap().1 = v.into();
    }

    #[test]
    fn roundtrip_every_state() {
        let k = key(1);
        for state in [ann().state, RaftState::Member, RaftState::Leader] {
            let a = Announcement { state, ..ann() };
            let txt = encode_txt(&a, &k);
            assert_eq!(verify_txt(&txt, &k, "lab"), Ok(a.clone()));
            // order of records does not matter
            let mut rev = txt.clone();
            rev.reverse();
            assert_eq!(verify_txt(&rev, &k, "lab"), Ok(a.clone()));
            let full = format!("{}.{SERVICE_TYPE}", a.instance_name());
            assert_eq!(verify_resolved(&full, &txt, &k, "lab"), Ok(a));
        }
        let txt = encode_txt(&ann(), &k);
        let keys: Vec<&str> = txt.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["c", "n", "p", "s", "v", "m"]);
        assert_eq!(txt[1].1, "0123456789abcdef");
        assert!(txt[3].1.starts_with("forming:") && txt[3].1.len() == 8 + 32);
        assert_eq!(txt[5].1.len(), 64);
        assert!(txt.iter().all(|(k, v)| k.len() + v.len() < 255));
    }

    #[test]
    fn voter_hash_ignores_order_and_duplicates() {
        assert_eq!(voter_set_hash(&[1, 2, 3]), voter_set_hash(&[3, 2, 1, 2]));
        assert_ne!(voter_set_hash(&[1, 2, 3]), voter_set_hash(&[1, 2, 4]));
    }

    #[test]
    fn tampering_breaks_the_mac() {
        let k = key(1);
        let txt = encode_txt(&ann(), &k);
        for (field, value) in [
            ("n", "0123456789abcdee"),
            ("p", "7444"),
            ("s", "leader"),
            ("m", &"0".repeat(64)),
            ("m", "zz"),
        ] {
            let mut t = txt.clone();
            set(&mut t, field, value);
            assert_eq!(verify_txt(&t, &k, "lab"), Err(Rejection::BadMac), "{field}");
        }
        // an extra record is covered by the MAC too
        let mut t = txt.clone();
        t.push(("x".into(), "1".into()));
        assert_eq!(verify_txt(&t, &k, "lab"), Err(Rejection::BadMac));
        // the right cluster name but another secret
        assert_eq!(verify_txt(&txt, &key(2), "lab"), Err(Rejection::BadMac));
        // a valid record set under another instance name
        let r = verify_resolved("lab-0000000000000001._habuild._tcp.local.", &txt, &k, "lab");
        assert!(matches!(r, Err(Rejection::Malformed(_))), "{r:?}");
    }

    #[test]
    fn other_cluster_is_told_apart() {
        let k = key(1);
        let a = Announcement {
            cluster: "prod".into(),
            ..ann()
        };
        let txt = encode_txt(&a, &key(9));
        assert_eq!(
            verify_txt(&txt, &k, "lab"),
            Err(Rejection::OtherCluster("prod".into()))
        );
    }

    #[test]
    fn missing_repeated_and_bad_fields_are_malformed() {
        let k = key(1);
        let txt = encode_txt(&ann(), &k);
        for drop in ["c", "n", "p", "s", "v", "m"] {
            let t: Vec<_> = txt.iter().filter(|(key, _)| key != drop).cloned().collect();
            let r = verify_txt(&t, &k, "lab");
            if drop == "m" {
                assert!(matches!(r, Err(Rejection::Malformed(_))), "{drop}: {r:?}");
            } else {
                // without the field the MAC no longer matches, or the shape check fails first
                assert!(r.is_err(), "{drop}: {r:?}");
                if matches!(drop, "c" | "v") {
                    assert!(matches!(r, Err(Rejection::Malformed(_))), "{drop}: {r:?}");
                }
            }
        }
        let mut t = txt.clone();
        t.push(("n".into(), "0123456789abcdef".into()));
        assert!(matches!(
            verify_txt(&t, &k, "lab"),
            Err(Rejection::Malformed(_))
        ));
        let mut t = txt.clone();
        set(&mut t, "v", "2");
        assert!(matches!(
            verify_txt(&t, &k, "lab"),
            Err(Rejection::Malformed(_))
        ));
        let mut t = txt.clone();
        set(&mut t, "c", "lab\nx=1");
        assert!(matches!(
            verify_txt(&t, &k, "lab"),
            Err(Rejection::Malformed(_))
        ));

        // correctly MAC'd but unparsable values (a buggy or future sender)
        let sign = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            let mut m = mac(&k);
            m.update(&mac_input(pairs.iter().copied()));
            v.push(("m".into(), hex::encode(m.finalize().into_bytes())));
            v
        };
        for (n, p, s) in [
            ("0000000000000000", "1", "member"),
            ("0123456789ABCDEF", "1", "member"),
            ("12", "1", "member"),
            ("0123456789abcdef", "0", "member"),
            ("0123456789abcdef", "+80", "member"),
            ("0123456789abcdef", "65536", "member"),
            ("0123456789abcdef", "80", "follower"),
            ("0123456789abcdef", "80", "forming:abc"),
        ] {
            let t = sign(&[("c", "lab"), ("n", n), ("p", p), ("s", s), ("v", "1")]);
            let r = verify_txt(&t, &k, "lab");
            assert!(
                matches!(r, Err(Rejection::Malformed(_))),
                "{n} {p} {s}: {r:?}"
            );
        }
        let ok = sign(&[
            ("c", "lab"),
            ("n", "0000000000000002"),
            ("p", "80"),
            ("s", "member"),
            ("v", "1"),
        ]);
        assert_eq!(verify_txt(&ok, &k, "lab").unwrap().node, 2);
    }

    #[test]
    fn too_many_records_are_malformed() {
        let k = key(1);
        let mut t = encode_txt(&ann(), &k);
        for i in 0..40 {
            t.push((format!("x{i}"), String::new()));
        }
        assert!(matches!(
            verify_txt(&t, &k, "lab"),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn browse_keeps_verified_peers_and_counts_the_rest() {
        let k = key(1);
        let full = |a: &Announcement| format!("{}.{SERVICE_TYPE}", a.instance_name());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = ann();
        let b = Announcement {
            node: 2,
            state: RaftState::Leader,
            ..ann()
        };
        let mut seen = Browsed::default();
        // genuine, instance name in another case, duplicate addresses
        seen.resolved(
            &full(&a).to_uppercase(),
            Ok(encode_txt(&a, &k)),
            [ip("10.0.0.2"), ip("fe80::1"), ip("10.0.0.2")],
            &k,
            "lab",
        );
        seen.resolved(&full(&b), Ok(encode_txt(&b, &k)), [], &k, "lab");
        // wrong secret, other cluster, undecodable TXT, records of another instance
        seen.resolved(&full(&a), Ok(encode_txt(&a, &key(2))), [], &k, "lab");
        let other = Announcement {
            cluster: "prod".into(),
            ..ann()
        };
        seen.resolved(&full(&other), Ok(encode_txt(&other, &k)), [], &k, "lab");
        seen.resolved(&full(&a), Err(malformed("x")), [], &k, "lab");
        // mdns-sd resolved it before its TXT arrived: not counted
        seen.resolved(&full(&a), Ok(vec![]), [], &k, "lab");
        seen.resolved(&full(&b), Ok(encode_txt(&a, &k)), [], &k, "lab");
        // a later genuine update replaces the earlier one
        let b2 = Announcement {
            state: RaftState::Member,
            ..b.clone()
        };
        seen.resolved(
            &full(&b2),
            Ok(encode_txt(&b2, &k)),
            [ip("10.0.0.3")],
            &k,
            "lab",
        );
        let (peers, rejected) = seen.finish();
        assert_eq!(
            peers,
            [
                Peer {
                    id: 2,
                    addrs: vec![ip("10.0.0.3")],
                    port: 7443,
                    state: RaftState::Member
                },
                Peer {
                    id: a.node,
                    addrs: vec![ip("10.0.0.2"), ip("fe80::1")],
                    port: 7443,
                    state: a.state
                },
            ]
        );
        assert_eq!(
            rejected,
            Rejected {
                other_cluster: 1,
                bad_mac: 1,
                malformed: 2
            }
        );
        // a withdrawn announcement is gone
        let mut seen = Browsed::default();
        seen.resolved(&full(&b), Ok(encode_txt(&b, &k)), [], &k, "lab");
        seen.removed(&full(&b).to_uppercase());
        assert_eq!(seen.finish(), (vec![], Rejected::default()));

        // renamed by conflict resolution: the same node, the latest record wins
        let renamed = |n: &str| format!("{}{n}.{SERVICE_TYPE}", b.instance_name());
        let mut seen = Browsed::default();
        seen.resolved(&renamed(" (2)"), Ok(encode_txt(&b, &k)), [], &k, "lab");
        seen.resolved(&full(&b2), Ok(encode_txt(&b2, &k)), [], &k, "lab");
        seen.resolved(&renamed(" (13)"), Ok(encode_txt(&b, &k)), [], &k, "lab");
        let (peers, rejected) = seen.finish();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].state, RaftState::Leader);
        assert_eq!(rejected, Rejected::default());
        // only a numeric " (N)" is a rename, and only of the matching instance
        for name in [
            renamed(" (x)"),
            renamed(" (123456)"),
            renamed("(2)"),
            renamed(" ()"),
            format!("lab-0000000000000003 (2).{SERVICE_TYPE}"),
        ] {
            let mut seen = Browsed::default();
            seen.resolved(&name, Ok(encode_txt(&b, &k)), [], &k, "lab");
            let (peers, rejected) = seen.finish();
            assert!(peers.is_empty(), "{name}");
            assert_eq!(rejected.malformed, 1, "{name}");
        }
    }

    #[test]
    fn announcements_per_minute_window() {
        let s = Shared::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            s.note_announcement(t0);
        }
        let mut r = s.recent.lock().unwrap();
        prune(&mut r, t0 + Duration::from_secs(30));
        assert_eq!(r.len(), 5);
        prune(&mut r, t0 + Duration::from_secs(61));
        assert_eq!(r.len(), 0);
        drop(r);
        assert_eq!(s.announcements.load(Ordering::Relaxed), 5);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_records_never_panic(
            props in proptest::collection::vec((".{0,4}", ".{0,80}"), 0..12),
            cluster in "[a-z]{0,5}",
        ) {
            let _ = verify_txt(&props, &key(1), &cluster);
            let _ = verify_resolved("x", &props, &key(1), &cluster);
        }

        #[test]
        fn mutated_genuine_records_never_verify_wrongly(
            idx in 0usize..6,
            bytes in proptest::collection::vec(any::<u8>(), 0..70),
        ) {
            let k = key(1);
            let mut t = encode_txt(&ann(), &k);
            let v = String::from_utf8_lossy(&bytes).into_owned();
            let changed = t[idx].1 != v;
            t[idx].1 = v;
            let r = verify_txt(&t, &k, "lab");
            if changed {
                prop_assert!(r.is_err());
            } else {
                prop_assert_eq!(r, Ok(ann()));
            }
        }

        #[test]
        fn states_roundtrip(voters in proptest::collection::vec(any::<u64>(), 0..8)) {
            let s = RaftState::Forming { voters: voter_set_hash(&voters) };
            prop_assert_eq!(s.to_string().parse::<RaftState>(), Ok(s));
        }
    }
}
