//! Property tests of the planner over random memberships and join sequences.
//!
//! Failures are replayable: proptest prints the minimal failing input, and
//! saves the seed of every failing case under
//! `firstboot/proptest-regressions/plan_props.txt`, which is replayed first on
//! the next run (commit that file with the fix). The case count is fixed
//! (256) so CI time stays predictable.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use firstboot::cluster::{
    ClusterConfig, ClusterSection, Ipv4Cidr, NetworkSection, Secret, StorageSection,
};
use firstboot::plan::roles::storage_eligible;
use firstboot::plan::{is_bootstrap_token, plan, PlanError};
use firstboot::state::{Member, NodeId, Plan};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn subnet() -> Ipv4Cidr {
    "10.77.0.0/24".parse().unwrap()
}

/// A member's facts before it gets an address.
#[derive(Debug, Clone)]
struct Raw {
    id: NodeId,
    cpus: u32,
    mem_gib: u64,
    zone: Option<u8>,
    rack: Option<u8>,
    disks: u8,
    free_gib: u64,
    healthy: bool,
    /// `kubernetes = false` in the site file's `[[nodes]]` when false.
    kubernetes: bool,
    /// Netbooted live with no usable disk: /var in RAM.
    var_in_ram: bool,
}

fn raw(healthy: impl Strategy<Value = bool>) -> impl Strategy<Value = Raw> {
    (
        1..u64::MAX,
        1u32..=64,
        1u64..=256,
        prop::option::of(0u8..5),
        prop::option::of(0u8..3),
        0u8..=2,
        0u64..=100,
        healthy,
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(id, cpus, mem_gib, zone, rack, disks, free_gib, healthy, kubernetes, var_in_ram)| {
                Raw {
                    id,
                    cpus,
                    mem_gib,
                    zone,
                    rack,
                    disks,
                    free_gib,
                    healthy,
                    kubernetes,
                    var_in_ram,
                }
            },
        )
}

fn member(r: &Raw, host: u8) -> Member {
    let mut labels = BTreeMap::new();
    if let Some(z) = r.zone {
        labels.insert("zone".to_string(), format!("z{z}"));
    }
    if let Some(k) = r.rack {
        labels.insert("rack".to_string(), format!("r{k}"));
    }
    Member {
        id: r.id,
        hostname: format!("node-{:x}", r.id),
        ip: Ipv4Addr::new(10, 77, 0, host),
        prefix: 24,
        port: 7946,
        cpus: r.cpus,
        mem_bytes: r.mem_gib * GIB,
        spare_disks: (0..r.disks)
            .map(|i| format!("/dev/vd{}", char::from(b'b' + i)))
            .collect(),
        data_free_bytes: r.free_gib * GIB,
        labels,
        kubernetes: r.kubernetes,
        var_in_ram: r.var_in_ram,
        healthy: r.healthy,
    }
}

fn config() -> impl Strategy<Value = ClusterConfig> {
    (
        prop::sample::select(vec![1u32, 3, 5]),
        1u32..=3,
        any::<bool>(),
    )
        .prop_map(|(cp, replica, enabled)| ClusterConfig {
            cluster: ClusterSection {
                name: "props".into(),
                secret: Secret([3; 32]),
                bootstrap_expect: 1,
                control_plane_size: cp,
            },
            network: NetworkSection::default(),
            storage: StorageSection {
                enabled,
                replica,
                ..StorageSection::default()
            },
            kubernetes: Default::default(),
            nodes: Vec::new(),
        })
}

/// Host parts of 10.77.0.0/24 in the order members take them: either spread
/// over the whole subnet or packed into its lower part (which leaves room
/// for an "auto" MetalLB block more often).
fn ip_pool() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just((1..=254).collect::<Vec<u8>>()).prop_shuffle(),
        Just((1..=160).collect::<Vec<u8>>()).prop_shuffle(),
    ]
}

#[derive(Debug, Clone)]
struct Scenario {
    cfg: ClusterConfig,
    seed: [u8; 32],
    pool: Vec<u8>,
    initial: Vec<Raw>,
    joins: Vec<Vec<Raw>>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        config(),
        any::<[u8; 32]>(),
        ip_pool(),
        prop::collection::vec(raw(prop::bool::weighted(0.9)), 1..=60),
        prop::collection::vec(prop::collection::vec(raw(Just(true)), 1..=6), 0..=4),
    )
        .prop_map(|(cfg, seed, pool, initial, joins)| Scenario {
            cfg,
            seed,
            pool,
            initial,
            joins,
        })
}

fn host_range() -> (u32, u32) {
    let s = subnet();
    (s.network() + 1, s.network() + 254)
}

/// Whether an "auto" MetalLB block is impossible: no 16 consecutive host
/// addresses free of members and of the VIP (the top free address).
fn no_room_for_metallb(members: &BTreeMap<NodeId, Member>) -> bool {
    let used: BTreeSet<u32> = members.values().map(|m| u32::from(m.ip)).collect();
    let (lo, hi) = host_range();
    let Some(vip) = (lo..=hi).rev().find(|a| !used.contains(a)) else {
        return true;
    };
    let mut run = 0;
    for a in lo..=hi {
        if a != vip && !used.contains(&a) {
            run += 1;
            if run >= 16 {
                return false;
            }
        } else {
            run = 0;
        }
    }
    true
}

fn zone(m: &Member) -> Option<&String> {
    m.labels.get("zone")
}

/// Invariants every plan satisfies (`fresh`: planned without a previous plan).
fn check(members: &BTreeMap<NodeId, Member>, cfg: &ClusterConfig, p: &Plan, fresh: bool) {
    let healthy = members.values().filter(|m| m.healthy).count();
    let candidates = members
        .values()
        .filter(|m| m.healthy && m.kubernetes && !m.var_in_ram)
        .count();
    let cp: BTreeSet<NodeId> = p.control_plane.iter().copied().collect();
    let workers: BTreeSet<NodeId> = p.workers.iter().copied().collect();
    let all: BTreeSet<NodeId> = members.keys().copied().collect();

    // Roles.
    assert_eq!(
        cp.len(),
        p.control_plane.len(),
        "duplicate control-plane member"
    );
    assert_eq!(
        p.control_plane.len() % 2,
        1,
        "even control plane {:?}",
        p.control_plane
    );
    assert!(
        p.control_plane.len() <= healthy,
        "control plane larger than the healthy count"
    );
    assert!(p.control_plane.len() <= cfg.cluster.control_plane_size as usize);
    assert!(
        p.control_plane.iter().all(|id| members[id].kubernetes),
        "a member with kubernetes = false is control plane"
    );
    assert!(
        p.control_plane.iter().all(|id| !members[id].var_in_ram),
        "a member with /var in RAM is control plane (etcd)"
    );
    assert!(cp.is_subset(&all), "control plane not among members");
    assert!(
        cp.is_disjoint(&workers),
        "a node is both control plane and worker"
    );
    assert_eq!(&cp | &workers, all, "control plane + workers != members");
    assert_eq!(workers.len(), p.workers.len(), "duplicate worker");
    if fresh {
        assert!(p.control_plane.iter().all(|id| members[id].healthy));
        assert!(
            p.control_plane.len() <= candidates,
            "control plane larger than the candidate count"
        );
        let zones: BTreeSet<Option<&String>> = members
            .values()
            .filter(|m| m.healthy && m.kubernetes && !m.var_in_ram)
            .map(zone)
            .collect();
        if zones.len() >= p.control_plane.len() {
            let cp_zones: BTreeSet<Option<&String>> = p
                .control_plane
                .iter()
                .map(|id| zone(&members[id]))
                .collect();
            assert_eq!(
                cp_zones.len(),
                p.control_plane.len(),
                "control plane shares a zone"
            );
        }
    }

    // Storage.
    if cfg.storage.enabled {
        let st: BTreeSet<NodeId> = p.storage.iter().copied().collect();
        assert_eq!(st.len(), p.storage.len(), "duplicate storage node");
        assert!(!st.is_empty() && st.is_subset(&all));
        assert!(p.storage.len() <= cfg.storage.replica as usize);
        assert!(p
            .storage
            .iter()
            .all(|id| storage_eligible(&members[id], &cfg.storage)));
        assert!(
            p.storage.iter().all(|id| !members[id].var_in_ram),
            "a member with /var in RAM carries a brick"
        );
        assert_eq!(p.storage_leader, p.storage.first().copied());
        assert_eq!(
            p.storage_devices.keys().copied().collect::<BTreeSet<_>>(),
            st,
            "every storage node has a brick device"
        );
        let eligible = members
            .values()
            .filter(|m| m.healthy && storage_eligible(m, &cfg.storage))
            .count();
        assert_eq!(p.storage.len(), eligible.min(cfg.storage.replica as usize));
    } else {
        assert!(p.storage.is_empty() && p.storage_leader.is_none());
    }

    // Addresses.
    let (lo, hi) = host_range();
    let inside = |a: Ipv4Addr| (lo..=hi).contains(&u32::from(a));
    assert!(inside(p.vip), "VIP {} outside the subnet's hosts", p.vip);
    assert!(
        inside(p.metallb.first) && inside(p.metallb.last),
        "MetalLB {}",
        p.metallb
    );
    assert!(p.metallb.first <= p.metallb.last);
    assert!(
        !p.metallb.contains(p.vip),
        "MetalLB {} holds the VIP",
        p.metallb
    );
    for m in members.values() {
        assert_ne!(m.ip, p.vip, "VIP is a member address");
        assert!(
            !p.metallb.contains(m.ip),
            "MetalLB {} holds member {}",
            p.metallb,
            m.ip
        );
    }

    // Pod CIDRs.
    let pod = cfg.network.pod_cidr;
    assert_eq!(p.pod_cidrs.keys().copied().collect::<BTreeSet<_>>(), all);
    let cidrs: Vec<&Ipv4Cidr> = p.pod_cidrs.values().collect();
    for (i, a) in cidrs.iter().enumerate() {
        assert_eq!(a.prefix, 24);
        assert!(
            pod.contains(a.addr) && a.network() == u32::from(a.addr),
            "{a} not in {pod}"
        );
        for b in &cidrs[i + 1..] {
            assert!(!a.overlaps(b), "{a} overlaps {b}");
        }
    }

    assert!(
        is_bootstrap_token(&p.bootstrap_token),
        "{}",
        p.bootstrap_token
    );
}

/// What a join must not change.
fn check_stable(before: &Plan, after: &Plan) {
    assert_eq!(after.version, before.version + 1);
    assert_eq!(
        &after.control_plane[..before.control_plane.len()],
        &before.control_plane[..],
        "control plane reshuffled"
    );
    for w in &before.workers {
        assert!(after.workers.contains(w), "worker {w:x} changed role");
    }
    assert_eq!(&after.storage[..before.storage.len()], &before.storage[..]);
    assert_eq!(after.storage_leader, before.storage_leader);
    for (id, c) in &before.pod_cidrs {
        assert_eq!(after.pod_cidrs[id], *c, "pod CIDR of {id:x} moved");
    }
    assert_eq!(after.vip, before.vip);
    assert_eq!(after.metallb, before.metallb);
    assert_eq!(after.bootstrap_token, before.bootstrap_token);
}

/// An error is only acceptable when the input really leaves no valid plan.
fn check_error(members: &BTreeMap<NodeId, Member>, cfg: &ClusterConfig, e: &PlanError) {
    match e {
        PlanError::NoHealthyMembers { .. } => {
            assert!(members.values().all(|m| !m.healthy))
        }
        PlanError::NoControlPlaneCandidates {
            opted_out, in_ram, ..
        } => {
            assert!(members
                .values()
                .all(|m| !(m.healthy && m.kubernetes && !m.var_in_ram)));
            assert!(members.values().any(|m| m.healthy));
            assert_eq!(
                *opted_out,
                members.values().filter(|m| !m.kubernetes).count()
            );
            assert_eq!(
                *in_ram,
                members
                    .values()
                    .filter(|m| m.kubernetes && m.var_in_ram)
                    .count()
            );
        }
        PlanError::NoStorageNodes { .. } => assert!(
            cfg.storage.enabled
                && !members
                    .values()
                    .any(|m| m.healthy && storage_eligible(m, &cfg.storage))
        ),
        PlanError::NoFreeMetallbRange { .. } => assert!(no_room_for_metallb(members)),
        other => panic!("unexpected error: {other}"),
    }
}

fn run(s: Scenario) {
    let mut pool = s.pool.into_iter();
    let mut members = BTreeMap::new();
    for r in &s.initial {
        members
            .entry(r.id)
            .or_insert_with(|| member(r, pool.next().expect("enough addresses")));
    }

    let first = plan(&members, &s.cfg, None, &s.seed);
    assert_eq!(
        first,
        plan(&members, &s.cfg, None, &s.seed),
        "not deterministic"
    );
    let mut current = match first {
        Ok(p) => p,
        Err(e) => return check_error(&members, &s.cfg, &e),
    };
    assert_eq!(current.version, 1);
    check(&members, &s.cfg, &current, true);
    let same = plan(&members, &s.cfg, Some(&current), &[0; 32]).unwrap();
    assert_eq!(
        same, current,
        "replanning without changes must change nothing"
    );

    for batch in &s.joins {
        let mut added = false;
        for r in batch {
            if members.contains_key(&r.id) {
                continue;
            }
            // Joiners avoid the planned VIP and MetalLB range: a member on the
            // VIP would (rightly) move it, which a unit test covers.
            let host = pool
                .by_ref()
                .find(|h| {
                    let a = Ipv4Addr::new(10, 77, 0, *h);
                    a != current.vip && !current.metallb.contains(a)
                })
                .expect("enough addresses");
            members.insert(r.id, member(r, host));
            added = true;
        }
        if !added {
            continue;
        }
        let next = plan(&members, &s.cfg, Some(&current), &s.seed).unwrap();
        assert_eq!(
            next,
            plan(&members, &s.cfg, Some(&current), &s.seed).unwrap()
        );
        check(&members, &s.cfg, &next, false);
        check_stable(&current, &next);
        current = next;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn plans_hold_their_invariants_over_joins(s in scenario()) {
        run(s);
    }
}
