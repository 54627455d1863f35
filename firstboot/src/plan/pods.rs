//! Per-node pod CIDRs for the built-in host-gw networking: one /24 each,
//! carved out of `network.pod_cidr`.
//!
//! Policy: a member keeps the /24 it had in the previous plan (if that is
//! still a /24 inside `network.pod_cidr` and not claimed by a lower id);
//! members without one get the lowest free /24, in id order. The /24s of
//! removed members become free again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::PlanError;
use crate::cluster::Ipv4Cidr;
use crate::state::{Member, NodeId, Plan};

/// Prefix length of every node's pod CIDR.
pub const NODE_POD_PREFIX: u8 = 24;

/// Assign a pod /24 to every member; see the module docs.
pub fn assign(
    members: &BTreeMap<NodeId, Member>,
    pod_cidr: Ipv4Cidr,
    previous: Option<&Plan>,
) -> Result<BTreeMap<NodeId, Ipv4Cidr>, PlanError> {
    if pod_cidr.prefix > NODE_POD_PREFIX {
        return Err(PlanError::PodCidrTooSmall { cidr: pod_cidr });
    }
    let capacity: u64 = 1 << (NODE_POD_PREFIX - pod_cidr.prefix);
    if members.len() as u64 > capacity {
        return Err(PlanError::PodCidrExhausted {
            cidr: pod_cidr,
            capacity,
            members: members.len(),
        });
    }
    let base = pod_cidr.network();
    // Index of a /24 inside pod_cidr, if `c` is one.
    let index_of = |c: &Ipv4Cidr| -> Option<u32> {
        let a = u32::from(c.addr);
        (c.prefix == NODE_POD_PREFIX && a & 0xff == 0 && pod_cidr.contains(c.addr))
            .then(|| (a - base) >> 8)
    };
    let cidr_at = |i: u32| Ipv4Cidr {
        addr: Ipv4Addr::from(base + (i << 8)),
        prefix: NODE_POD_PREFIX,
    };

    let mut out = BTreeMap::new();
    let mut used = BTreeSet::new();
    if let Some(p) = previous {
        for (id, c) in &p.pod_cidrs {
            if !members.contains_key(id) {
                continue;
            }
            if let Some(i) = index_of(c) {
                if used.insert(i) {
                    out.insert(*id, *c);
                }
            }
        }
    }
    let mut next = 0u32;
    for id in members.keys() {
        if out.contains_key(id) {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        // Capacity was checked above, so `next` is inside pod_cidr.
        used.insert(next);
        out.insert(*id, cidr_at(next));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn new_nodes_get_the_lowest_free_24_in_id_order() {
        let got = assign(&n_members(3), c("10.244.0.0/16"), None).unwrap();
        assert_eq!(got[&1], c("10.244.0.0/24"));
        assert_eq!(got[&2], c("10.244.1.0/24"));
        assert_eq!(got[&3], c("10.244.2.0/24"));
    }

    #[test]
    fn nodes_keep_their_cidr_and_removed_ones_are_reused() {
        let pod = c("10.244.0.0/16");
        let p1 = super::super::plan(&n_members(3), &cfg(1), None, &SEED).unwrap();
        let mut ms = n_members(3);
        ms.remove(&2);
        ms.insert(0, member(0, 50)); // lower id than everyone
        ms.insert(7, member(7, 57));
        let got = assign(&ms, pod, Some(&p1)).unwrap();
        assert_eq!(got[&1], c("10.244.0.0/24"));
        assert_eq!(got[&3], c("10.244.2.0/24"));
        assert_eq!(got[&0], c("10.244.1.0/24"));
        assert_eq!(got[&7], c("10.244.3.0/24"));
    }

    #[test]
    fn unaligned_pod_cidr_and_stale_entries() {
        // A pod_cidr written with host bits still carves from its network.
        let got = assign(&n_members(1), c("10.244.9.0/16"), None).unwrap();
        assert_eq!(got[&1], c("10.244.0.0/24"));
        // A previous entry outside the (changed) pod_cidr is replaced.
        let p1 = super::super::plan(&n_members(2), &cfg(1), None, &SEED).unwrap();
        let got = assign(&n_members(2), c("10.32.0.0/16"), Some(&p1)).unwrap();
        assert_eq!(got[&1], c("10.32.0.0/24"));
        assert_eq!(got[&2], c("10.32.1.0/24"));
    }

    #[test]
    fn too_small_or_exhausted() {
        let e = assign(&n_members(1), c("10.244.0.0/25"), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.pod_cidr 10.244.0.0/25 is smaller than one node's /24; use a /24 or larger (e.g. /16)"
        );
        assert!(assign(&n_members(4), c("10.244.0.0/22"), None).is_ok());
        let e = assign(&n_members(5), c("10.244.0.0/22"), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.pod_cidr 10.244.0.0/22 has room for 4 node /24s but there are 5 members; use a larger network.pod_cidr"
        );
    }
}
