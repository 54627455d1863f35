//! mDNS discovery of the other agents of this cluster.
//!
//! Every agent registers one DNS-SD service of type [`SERVICE_TYPE`], instance
//! `<cluster>-<node id as 16 hex digits>`, on the agent port, with these TXT
//! records ([`encode_txt`], in [`txt`]):
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
//! The MAC key is the key schedule's mDNS key ([`MdnsKey`], from
//! [`crate::keys::mdns_mac_key`]: `HKDF-SHA256(cluster secret, info
//! "habuild mdns v1")`); the MAC input is every other record as
//! `key=value`, sorted by key, joined by `\n`. Records whose keys or values contain `\n` (or keys
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
//!
//! # Layout
//!
//! - [`txt`]: the TXT record format, its MAC and verification; pure code,
//!   no sockets;
//! - [`daemon`]: [`Discovery`], the running announcer and browser on an
//!   mdns-sd daemon, including the periodic re-announcement of an unchanged
//!   record set ([`daemon::REANNOUNCE_PERIOD`]);
//! - [`browse()`]: listening without announcing (for `habuild cluster status`).

use std::net::IpAddr;

use crate::state::NodeId;

mod browse;
pub mod daemon;
pub mod txt;

pub use browse::browse;
pub use daemon::Discovery;
pub use txt::{
    encode_txt, instance_name, props_from_mdns, verify_resolved, verify_txt, Announcement, MdnsKey,
    RaftState, Rejection, TXT_VERSION,
};

/// The DNS-SD service type every agent registers and browses.
pub const SERVICE_TYPE: &str = "_habuild._tcp.local.";

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

impl Peer {
    /// The peer a verified announcement describes, with its resolved
    /// addresses sorted and deduplicated (so an unchanged record set gives
    /// an equal peer).
    pub fn from_announcement(a: &Announcement, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut addrs: Vec<IpAddr> = addrs.into_iter().collect();
        addrs.sort_unstable();
        addrs.dedup();
        Peer {
            id: a.node,
            addrs,
            port: a.port,
            state: a.state,
        }
    }
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

impl Rejected {
    /// Counts one rejection under its reason.
    pub fn add(&mut self, r: &Rejection) {
        let c = match r {
            Rejection::OtherCluster(_) => &mut self.other_cluster,
            Rejection::BadMac => &mut self.bad_mac,
            Rejection::Malformed(_) => &mut self.malformed,
        };
        *c += 1;
    }
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
