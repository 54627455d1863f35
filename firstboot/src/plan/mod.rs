//! The plan: a pure, deterministic function of the members, the cluster
//! config and the previous plan, run by the Raft leader and committed through
//! Raft as [`Command::SetPlan`](crate::state::Command::SetPlan).
//!
//! [`plan`] decides, in this order:
//!
//! 1. the control plane (etcd + apiserver members), see [`roles`];
//! 2. the workers: every member that is not in the control plane;
//! 3. the Gluster storage nodes and the node that forms the pool, see [`roles`];
//! 4. the API VIP and the MetalLB range, see [`addresses`];
//! 5. one pod /24 per member, see [`pods`];
//! 6. the kubeadm bootstrap token, see [`token`].
//!
//! Stability is the main rule: a member keeps its role, its pod CIDR and the
//! cluster keeps its VIP, MetalLB range and token for as long as they stay
//! valid, so re-running the planner after a join only *adds* things. When
//! nothing changed, the previous plan is returned as is (same version), so the
//! leader can call [`plan`] on every membership change and commit only when
//! `version` moved.
//!
//! Nothing here is random: the only entropy is the `token_seed` the caller
//! passes (derived from the cluster secret, or random once and then kept in
//! the plan).

pub mod addresses;
pub mod pods;
pub mod roles;
pub mod token;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::cluster::{ClusterConfig, Ipv4Cidr, Ipv4Range};
use crate::state::{Member, NodeId, Plan};

pub use token::{bootstrap_token, is_bootstrap_token};

/// Why no plan could be made. Every message names the offending value and,
/// where one is involved, the cluster.toml key to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no members to plan for")]
    NoMembers,
    #[error("no healthy member to place the control plane on ({members} members, all unhealthy)")]
    NoHealthyMembers { members: usize },
    #[error(
        "no member may run the control plane: of {members} members, {opted_out} have kubernetes = false in the site file's [[nodes]], {in_ram} keep /var in RAM (netbooted with no usable disk) and the others are unhealthy; remove kubernetes = false from at least one [[nodes]] entry or give a machine an empty disk"
    )]
    NoControlPlaneCandidates {
        members: usize,
        opted_out: usize,
        in_ram: usize,
    },
    #[error("cluster.control_plane_size {0} is not 1, 3 or 5")]
    BadControlPlaneSize(u32),
    #[error(
        "member {id:016x} ({hostname}) reports prefix length /{prefix} for {ip}; expected 0-32"
    )]
    BadMemberPrefix {
        id: NodeId,
        hostname: String,
        ip: Ipv4Addr,
        prefix: u8,
    },
    #[error("members {a:016x} ({a_host}) and {b:016x} ({b_host}) both use address {ip}")]
    DuplicateMemberIp {
        ip: Ipv4Addr,
        a: NodeId,
        a_host: String,
        b: NodeId,
        b_host: String,
    },
    #[error("network.vip {vip} is outside every member's subnet ({subnets})")]
    VipOutsideMemberSubnets { vip: Ipv4Addr, subnets: String },
    #[error("network.vip {vip} is outside network.subnet {subnet}")]
    VipOutsideSubnet { vip: Ipv4Addr, subnet: Ipv4Cidr },
    #[error("network.vip {vip} is the network or broadcast address of {subnet}")]
    VipNotAHostAddress { vip: Ipv4Addr, subnet: Ipv4Cidr },
    #[error("network.vip {vip} is already the address of member {id:016x} ({hostname})")]
    VipIsMemberAddress {
        vip: Ipv4Addr,
        id: NodeId,
        hostname: String,
    },
    #[error(
        "network.metallb_range {range} is not within the host addresses of any member's subnet ({subnets})"
    )]
    MetallbOutsideMemberSubnets { range: Ipv4Range, subnets: String },
    #[error(
        "network.metallb_range {range} is not within the host addresses of network.subnet {subnet}"
    )]
    MetallbOutsideSubnet { range: Ipv4Range, subnet: Ipv4Cidr },
    #[error(
        "network.metallb_range {range} contains {ip}, the address of member {id:016x} ({hostname})"
    )]
    MetallbContainsMemberAddress {
        range: Ipv4Range,
        ip: Ipv4Addr,
        id: NodeId,
        hostname: String,
    },
    #[error(
        "network.metallb_range {range} contains network.vip {vip}; MetalLB would hand out the API address"
    )]
    MetallbContainsVip { range: Ipv4Range, vip: Ipv4Addr },
    #[error(
        "network.vip is \"auto\" but {subnet} has no address left that no member uses; set network.vip"
    )]
    NoFreeVip { subnet: Ipv4Cidr },
    #[error(
        "network.metallb_range is \"auto\" but {subnet} has no {size} consecutive addresses free of members and the VIP {vip}; set network.metallb_range"
    )]
    NoFreeMetallbRange {
        subnet: Ipv4Cidr,
        vip: Ipv4Addr,
        size: u32,
    },
    #[error("{key} {cidr} overlaps the node subnet {subnet}")]
    CidrOverlapsSubnet {
        key: &'static str,
        cidr: Ipv4Cidr,
        subnet: Ipv4Cidr,
    },
    #[error(
        "network.pod_cidr {cidr} is smaller than one node's /24; use a /24 or larger (e.g. /16)"
    )]
    PodCidrTooSmall { cidr: Ipv4Cidr },
    #[error(
        "network.pod_cidr {cidr} has room for {capacity} node /24s but there are {members} members; use a larger network.pod_cidr"
    )]
    PodCidrExhausted {
        cidr: Ipv4Cidr,
        capacity: u64,
        members: usize,
    },
    #[error(
        "storage.enabled is true but no healthy member has {what}; lower storage.brick_file_size_gib, fix storage.devices or set storage.enabled = false"
    )]
    NoStorageNodes { what: String },
}

/// Compute the plan for `members` under `cfg`, starting from `previous` (the
/// committed plan, if any).
///
/// Deterministic: the same inputs give the same output. When the result
/// decides the same things as `previous`, `previous` is returned unchanged
/// (same version); otherwise `version` is `previous.version + 1` (1 for the
/// first plan). The bootstrap token is derived from `token_seed` only when
/// there is no previous token.
///
/// The caller should make the *first* plan only once `cluster.bootstrap_expect`
/// members are known: the control plane is capped by the number of healthy
/// members, and a control plane that started small grows only with new
/// members (see [`roles::control_plane`]).
pub fn plan(
    members: &BTreeMap<NodeId, Member>,
    cfg: &ClusterConfig,
    previous: Option<&Plan>,
    token_seed: &[u8; 32],
) -> Result<Plan, PlanError> {
    if members.is_empty() {
        return Err(PlanError::NoMembers);
    }
    check_members(members)?;

    let control_plane = roles::control_plane(members, cfg.cluster.control_plane_size, previous)?;
    let workers: Vec<NodeId> = members
        .keys()
        .copied()
        .filter(|id| !control_plane.contains(id))
        .collect();
    let (storage, storage_leader) = roles::storage(members, &cfg.storage, previous)?;
    let storage_devices = roles::storage_devices(members, &storage, &cfg.storage, previous);
    let (vip, metallb) = addresses::choose(members, &cfg.network, &control_plane, previous)?;
    let pod_cidrs = pods::assign(members, cfg.network.pod_cidr, previous)?;
    let bootstrap_token = match previous {
        Some(p) if is_bootstrap_token(&p.bootstrap_token) => p.bootstrap_token.clone(),
        _ => bootstrap_token(token_seed),
    };

    let next = Plan {
        version: previous.map_or(1, |p| p.version + 1),
        control_plane,
        workers,
        storage,
        storage_leader,
        storage_devices,
        vip,
        metallb,
        pod_cidrs,
        bootstrap_token,
    };
    match previous {
        Some(p) if same_content(p, &next) => Ok(p.clone()),
        _ => Ok(next),
    }
}

/// Whether two plans decide the same things (ignoring `version`).
pub fn same_content(a: &Plan, b: &Plan) -> bool {
    let b = Plan {
        version: a.version,
        ..b.clone()
    };
    *a == b
}

/// Facts the planner relies on: sane prefixes, no two members on one address.
fn check_members(members: &BTreeMap<NodeId, Member>) -> Result<(), PlanError> {
    let mut by_ip: BTreeMap<Ipv4Addr, (NodeId, &Member)> = BTreeMap::new();
    for (&id, m) in members {
        if m.prefix > 32 {
            return Err(PlanError::BadMemberPrefix {
                id,
                hostname: m.hostname.clone(),
                ip: m.ip,
                prefix: m.prefix,
            });
        }
        if let Some((other, o)) = by_ip.insert(m.ip, (id, m)) {
            return Err(PlanError::DuplicateMemberIp {
                ip: m.ip,
                a: other,
                a_host: o.hostname.clone(),
                b: id,
                b_host: m.hostname.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::cluster::{ClusterSection, NetworkSection, Secret, StorageSection};

    pub const GIB: u64 = 1 << 30;
    pub const SEED: [u8; 32] = [7; 32];

    pub fn cfg(cp: u32) -> ClusterConfig {
        ClusterConfig {
            cluster: ClusterSection {
                name: "lab".into(),
                secret: Secret([1; 32]),
                bootstrap_expect: 1,
                control_plane_size: cp,
            },
            network: NetworkSection::default(),
            storage: StorageSection::default(),
            kubernetes: Default::default(),
            nodes: Vec::new(),
        }
    }

    /// A healthy member at 10.77.0.`host`/24 with 8 GiB, 4 cpus, 50 GiB free.
    pub fn member(id: NodeId, host: u8) -> Member {
        Member {
            id,
            hostname: format!("n{id}"),
            ip: Ipv4Addr::new(10, 77, 0, host),
            prefix: 24,
            port: 7946,
            cpus: 4,
            mem_bytes: 8 * GIB,
            spare_disks: vec![],
            data_free_bytes: 50 * GIB,
            labels: BTreeMap::new(),
            kubernetes: true,
            var_in_ram: false,
            healthy: true,
        }
    }

    pub fn members(ms: impl IntoIterator<Item = Member>) -> BTreeMap<NodeId, Member> {
        ms.into_iter().map(|m| (m.id, m)).collect()
    }

    /// Members 1..=n at 10.77.0.1..=n.
    pub fn n_members(n: u8) -> BTreeMap<NodeId, Member> {
        members((1..=n).map(|i| member(i.into(), i)))
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::cluster::Auto;

    #[test]
    fn first_plan_is_version_one_and_complete() {
        let ms = n_members(5);
        let p = plan(&ms, &cfg(3), None, &SEED).unwrap();
        assert_eq!(p.version, 1);
        assert_eq!(p.control_plane.len(), 3);
        assert_eq!(p.workers.len(), 2);
        assert_eq!(p.storage.len(), 3);
        assert_eq!(p.storage_leader, Some(p.storage[0]));
        assert_eq!(p.pod_cidrs.len(), 5);
        assert!(
            is_bootstrap_token(&p.bootstrap_token),
            "{}",
            p.bootstrap_token
        );
    }

    #[test]
    fn same_inputs_same_plan_and_no_change_keeps_the_version() {
        let ms = n_members(7);
        let a = plan(&ms, &cfg(3), None, &SEED).unwrap();
        let b = plan(&ms, &cfg(3), None, &SEED).unwrap();
        assert_eq!(a, b);
        let again = plan(&ms, &cfg(3), Some(&a), &[9; 32]).unwrap();
        assert_eq!(again, a, "nothing changed: same plan, same version");
    }

    #[test]
    fn a_join_bumps_the_version_and_keeps_everything_else() {
        let ms = n_members(3);
        let p1 = plan(&ms, &cfg(3), None, &SEED).unwrap();
        let mut ms2 = ms.clone();
        ms2.insert(4, member(4, 4));
        let p2 = plan(&ms2, &cfg(3), Some(&p1), &[9; 32]).unwrap();
        assert_eq!(p2.version, 2);
        assert_eq!(p2.control_plane, p1.control_plane);
        assert_eq!(p2.workers, vec![4]);
        assert_eq!((p2.vip, p2.metallb), (p1.vip, p1.metallb));
        assert_eq!(p2.bootstrap_token, p1.bootstrap_token);
        for (id, c) in &p1.pod_cidrs {
            assert_eq!(p2.pod_cidrs[id], *c);
        }
    }

    #[test]
    fn token_comes_from_the_seed_only_without_a_previous_one() {
        let ms = n_members(1);
        let a = plan(&ms, &cfg(1), None, &SEED).unwrap();
        let b = plan(&ms, &cfg(1), None, &[8; 32]).unwrap();
        assert_ne!(a.bootstrap_token, b.bootstrap_token);
        assert_eq!(a.bootstrap_token, bootstrap_token(&SEED));
        // A malformed previous token is replaced.
        let bad = Plan {
            bootstrap_token: "nope".into(),
            ..a.clone()
        };
        let c = plan(&ms, &cfg(1), Some(&bad), &[8; 32]).unwrap();
        assert_eq!(c.bootstrap_token, bootstrap_token(&[8; 32]));
        assert_eq!(c.version, a.version + 1);
    }

    #[test]
    fn empty_and_broken_memberships_are_reported() {
        assert_eq!(
            plan(&BTreeMap::new(), &cfg(1), None, &SEED),
            Err(PlanError::NoMembers)
        );
        let mut ms = n_members(2);
        ms.get_mut(&2).unwrap().ip = Ipv4Addr::new(10, 77, 0, 1);
        let e = plan(&ms, &cfg(1), None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "members 0000000000000001 (n1) and 0000000000000002 (n2) both use address 10.77.0.1"
        );
        let mut ms = n_members(1);
        ms.get_mut(&1).unwrap().prefix = 33;
        assert!(matches!(
            plan(&ms, &cfg(1), None, &SEED),
            Err(PlanError::BadMemberPrefix { prefix: 33, .. })
        ));
        assert_eq!(
            plan(&n_members(1), &cfg(2), None, &SEED),
            Err(PlanError::BadControlPlaneSize(2))
        );
    }

    #[test]
    fn error_messages_name_the_key_and_value() {
        let mut c = cfg(1);
        c.network.vip = Auto::Value(Ipv4Addr::new(10, 1, 0, 5));
        let e = plan(&n_members(3), &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.vip 10.1.0.5 is outside every member's subnet (10.77.0.0/24)"
        );
    }
}
