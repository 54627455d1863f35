//! Browse-only mode: listen to a cluster's announcements without announcing
//! anything ([`browse`], used by `habuild cluster status`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::daemon::daemon_for;
use super::txt::{clip, props_from_mdns, verify_resolved, without_conflict_suffix};
use super::{DiscoveryConfig, DiscoveryError, MdnsKey, Peer, Rejected, Rejection, SERVICE_TYPE};
use crate::state::NodeId;

/// Listens for `wait` to the announcements of `cluster` *without announcing
/// anything* (for a read-only observer such as `habuild cluster status`) and
/// returns the verified peers, one per node id, ordered by id, and the
/// rejected announcements. Blocks for `wait`.
///
/// Record sets are checked exactly as the agent's event loop checks them:
/// [`verify_resolved`](super::verify_resolved) (MAC included) under the
/// instance's original name (without a conflict suffix ` (N)`); a set without any TXT record is incomplete,
/// neither trusted nor counted; rejections are counted as
/// [`Discovery::stats`](super::Discovery::stats) counts them (one per new or changed record set).
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
                let peer = Peer::from_announcement(&a, addrs);
                self.seq += 1;
                self.peers.insert(fullname, (self.seq, peer));
            }
            Err(r) => {
                tracing::debug!(instance = %clip(&fullname), reason = %r, "mdns: announcement rejected");
                self.rejected.add(&r);
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
    use crate::discovery::txt::malformed;
    use crate::discovery::txt::tests::{ann, key};
    use crate::discovery::{encode_txt, Announcement, RaftState};

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
}
