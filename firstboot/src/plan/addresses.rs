//! The API VIP and the MetalLB address range.
//!
//! The *node subnets* are `network.subnet` when given, else the distinct
//! subnets of the members (`ip/prefix` of each). A given VIP or range must lie
//! within the host addresses (not the network or broadcast address) of one of
//! them and must not hold any member's address; the range must not hold the VIP.
//!
//! "auto" picks keep the previous plan's value while it is still valid (so the
//! VIP of a running cluster does not move), else:
//! - VIP: the highest host address of the subnet (`network.subnet`, else the
//!   subnet of the first control-plane member, where keepalived runs) that no
//!   member uses and that is outside a given MetalLB range;
//! - MetalLB: the highest block of [`METALLB_AUTO_SIZE`] consecutive host
//!   addresses below the VIP holding no member address (so a member inside the
//!   block pushes it further down), else the highest such block above the VIP.
//!
//! The planner only knows the members: an "auto" address can still be used by
//! a host that is not a member (a router, a printer, a DHCP lease). The vip
//! step ARP-checks the VIP before claiming it; give `network.vip` and
//! `network.metallb_range` explicitly on networks with other hosts in the
//! high end of the subnet.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::PlanError;
use crate::cluster::{Auto, Ipv4Cidr, Ipv4Range, NetworkSection};
use crate::state::{Member, NodeId, Plan};

/// How many addresses an "auto" MetalLB range holds.
pub const METALLB_AUTO_SIZE: u32 = 16;

/// `ip/prefix` with the host bits cleared.
pub fn subnet_of(ip: Ipv4Addr, prefix: u8) -> Ipv4Cidr {
    let c = Ipv4Cidr { addr: ip, prefix };
    Ipv4Cidr {
        addr: Ipv4Addr::from(c.network()),
        prefix,
    }
}

fn broadcast(c: &Ipv4Cidr) -> u32 {
    c.network() | !c.mask()
}

/// The usable host addresses of `c` as an inclusive `u32` range (all of it
/// for /31 and /32, which have no network or broadcast address).
fn hosts(c: &Ipv4Cidr) -> (u32, u32) {
    if c.prefix >= 31 {
        (c.network(), broadcast(c))
    } else {
        (c.network() + 1, broadcast(c) - 1)
    }
}

fn is_host(c: &Ipv4Cidr, ip: Ipv4Addr) -> bool {
    let (lo, hi) = hosts(c);
    (lo..=hi).contains(&u32::from(ip))
}

/// Where the VIP and the MetalLB range may live, and how to name it in errors.
struct Scope {
    subnets: Vec<Ipv4Cidr>,
    /// `network.subnet` was given.
    configured: bool,
}

impl Scope {
    fn new(members: &BTreeMap<NodeId, Member>, net: &NetworkSection) -> Self {
        match net.subnet {
            Auto::Value(s) => Scope {
                subnets: vec![subnet_of(s.addr, s.prefix)],
                configured: true,
            },
            Auto::Auto => {
                let mut subnets: Vec<Ipv4Cidr> = members
                    .values()
                    .map(|m| subnet_of(m.ip, m.prefix))
                    .collect();
                subnets.sort_by_key(|c| (c.network(), c.prefix));
                subnets.dedup();
                Scope {
                    subnets,
                    configured: false,
                }
            }
        }
    }

    fn list(&self) -> String {
        let v: Vec<String> = self.subnets.iter().map(ToString::to_string).collect();
        v.join(", ")
    }

    /// The first subnet holding `ip` as a host address.
    fn host_subnet(&self, ip: Ipv4Addr) -> Option<Ipv4Cidr> {
        self.subnets.iter().copied().find(|c| is_host(c, ip))
    }

    fn range_inside(&self, r: &Ipv4Range) -> bool {
        r.first <= r.last
            && self
                .subnets
                .iter()
                .any(|c| is_host(c, r.first) && is_host(c, r.last))
    }
}

/// Member addresses, for "is this address taken, and by whom".
struct Taken<'a>(BTreeMap<u32, &'a Member>);

impl<'a> Taken<'a> {
    fn new(members: &'a BTreeMap<NodeId, Member>) -> Self {
        Taken(members.values().map(|m| (u32::from(m.ip), m)).collect())
    }
    fn by(&self, ip: Ipv4Addr) -> Option<&'a Member> {
        self.0.get(&u32::from(ip)).copied()
    }
    fn in_range(&self, r: &Ipv4Range) -> Option<&'a Member> {
        if r.first > r.last {
            return None;
        }
        self.0
            .range(u32::from(r.first)..=u32::from(r.last))
            .next()
            .map(|(_, m)| *m)
    }
}

/// Choose (or check) the API VIP and the MetalLB range; see the module docs.
pub fn choose(
    members: &BTreeMap<NodeId, Member>,
    net: &NetworkSection,
    control_plane: &[NodeId],
    previous: Option<&Plan>,
) -> Result<(Ipv4Addr, Ipv4Range), PlanError> {
    let scope = Scope::new(members, net);
    let taken = Taken::new(members);
    for (key, cidr) in [
        ("network.pod_cidr", net.pod_cidr),
        ("network.service_cidr", net.service_cidr),
    ] {
        if let Some(s) = scope.subnets.iter().find(|s| s.overlaps(&cidr)) {
            return Err(PlanError::CidrOverlapsSubnet {
                key,
                cidr,
                subnet: *s,
            });
        }
    }
    let given_range = match net.metallb_range {
        Auto::Value(r) => Some(r),
        Auto::Auto => None,
    };

    let vip = match net.vip {
        Auto::Value(vip) => {
            check_vip(&scope, &taken, vip)?;
            vip
        }
        Auto::Auto => {
            let usable = |vip: Ipv4Addr| {
                scope.host_subnet(vip).is_some()
                    && taken.by(vip).is_none()
                    && !given_range.is_some_and(|r| r.contains(vip))
            };
            match previous.map(|p| p.vip).filter(|&v| usable(v)) {
                Some(v) => v,
                None => {
                    let subnet = if scope.configured {
                        scope.subnets[0]
                    } else {
                        let first = control_plane
                            .first()
                            .and_then(|id| members.get(id))
                            .or_else(|| members.values().next())
                            .ok_or(PlanError::NoMembers)?;
                        subnet_of(first.ip, first.prefix)
                    };
                    let (lo, hi) = hosts(&subnet);
                    (lo..=hi)
                        .rev()
                        .map(Ipv4Addr::from)
                        .find(|&a| usable(a))
                        .ok_or(PlanError::NoFreeVip { subnet })?
                }
            }
        }
    };

    let range = match given_range {
        Some(r) => {
            check_range(&scope, &taken, r)?;
            if r.contains(vip) {
                return Err(PlanError::MetallbContainsVip { range: r, vip });
            }
            r
        }
        None => {
            let usable = |r: &Ipv4Range| {
                scope.range_inside(r) && taken.in_range(r).is_none() && !r.contains(vip)
            };
            match previous.map(|p| p.metallb).filter(usable) {
                Some(r) => r,
                None => {
                    let subnet = scope
                        .host_subnet(vip)
                        .expect("the VIP was checked to be inside a subnet");
                    auto_range(&subnet, &taken, vip).ok_or(PlanError::NoFreeMetallbRange {
                        subnet,
                        vip,
                        size: METALLB_AUTO_SIZE,
                    })?
                }
            }
        }
    };
    Ok((vip, range))
}

fn check_vip(scope: &Scope, taken: &Taken, vip: Ipv4Addr) -> Result<(), PlanError> {
    if scope.host_subnet(vip).is_none() {
        return Err(
            match scope.subnets.iter().find(|c| c.contains(vip)).copied() {
                Some(subnet) => PlanError::VipNotAHostAddress { vip, subnet },
                None if scope.configured => PlanError::VipOutsideSubnet {
                    vip,
                    subnet: scope.subnets[0],
                },
                None => PlanError::VipOutsideMemberSubnets {
                    vip,
                    subnets: scope.list(),
                },
            },
        );
    }
    if let Some(m) = taken.by(vip) {
        return Err(PlanError::VipIsMemberAddress {
            vip,
            id: m.id,
            hostname: m.hostname.clone(),
        });
    }
    Ok(())
}

fn check_range(scope: &Scope, taken: &Taken, range: Ipv4Range) -> Result<(), PlanError> {
    if !scope.range_inside(&range) {
        return Err(if scope.configured {
            PlanError::MetallbOutsideSubnet {
                range,
                subnet: scope.subnets[0],
            }
        } else {
            PlanError::MetallbOutsideMemberSubnets {
                range,
                subnets: scope.list(),
            }
        });
    }
    if let Some(m) = taken.in_range(&range) {
        return Err(PlanError::MetallbContainsMemberAddress {
            range,
            ip: m.ip,
            id: m.id,
            hostname: m.hostname.clone(),
        });
    }
    Ok(())
}

/// The highest run of [`METALLB_AUTO_SIZE`] free host addresses of `subnet`
/// below `vip`, else above it.
fn auto_range(subnet: &Ipv4Cidr, taken: &Taken, vip: Ipv4Addr) -> Option<Ipv4Range> {
    let (lo, hi) = hosts(subnet);
    let v = u32::from(vip);
    let free = |a: u32| a != v && !taken.0.contains_key(&a);
    let highest_run = |lo: u32, hi: u32| -> Option<Ipv4Range> {
        let mut run = 0;
        for a in (lo..=hi).rev() {
            if free(a) {
                run += 1;
                if run == METALLB_AUTO_SIZE {
                    return Some(Ipv4Range {
                        first: Ipv4Addr::from(a),
                        last: Ipv4Addr::from(a + METALLB_AUTO_SIZE - 1),
                    });
                }
            } else {
                run = 0;
            }
        }
        None
    };
    let below = (v > lo).then(|| highest_run(lo, v - 1)).flatten();
    below.or_else(|| (v < hi).then(|| highest_run(v + 1, hi)).flatten())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{plan, PlanError};
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, last)
    }
    fn range(a: u8, b: u8) -> Ipv4Range {
        Ipv4Range {
            first: ip(a),
            last: ip(b),
        }
    }

    #[test]
    fn auto_vip_is_the_top_free_address_and_metallb_sits_below_it() {
        let p = plan(&n_members(3), &cfg(1), None, &SEED).unwrap();
        assert_eq!(p.vip, ip(254));
        assert_eq!(p.metallb, range(238, 253));
    }

    #[test]
    fn auto_picks_skip_member_addresses() {
        let ms = members([member(1, 254), member(2, 250), member(3, 1)]);
        let p = plan(&ms, &cfg(1), None, &SEED).unwrap();
        assert_eq!(p.vip, ip(253));
        // 250 is a member: the block shifts below it.
        assert_eq!(p.metallb, range(234, 249));
    }

    #[test]
    fn auto_vip_avoids_a_given_metallb_range() {
        let mut c = cfg(1);
        c.network.metallb_range = Auto::Value(range(240, 254));
        let p = plan(&n_members(3), &c, None, &SEED).unwrap();
        assert_eq!(p.vip, ip(239));
        assert_eq!(p.metallb, range(240, 254));
    }

    #[test]
    fn auto_metallb_goes_above_a_low_given_vip() {
        let mut c = cfg(1);
        c.network.vip = Auto::Value(ip(10));
        let p = plan(&n_members(3), &c, None, &SEED).unwrap();
        assert_eq!(p.vip, ip(10));
        assert_eq!(p.metallb, range(239, 254));
        c.network.vip = Auto::Value(ip(30));
        let p = plan(&n_members(3), &c, None, &SEED).unwrap();
        assert_eq!(p.metallb, range(14, 29));
    }

    #[test]
    fn auto_vip_uses_the_bootstrap_control_plane_subnet() {
        let mut a = member(1, 5);
        a.ip = Ipv4Addr::new(192, 168, 1, 5);
        let mut b = member(2, 6);
        b.mem_bytes = 64 * GIB; // becomes the first control-plane member
        let p = plan(&members([a, b]), &cfg(1), None, &SEED).unwrap();
        assert_eq!(p.control_plane, vec![2]);
        assert_eq!(p.vip, ip(254));
    }

    #[test]
    fn configured_subnet_overrides_member_subnets() {
        let mut c = cfg(1);
        c.network.subnet = Auto::Value("10.77.0.0/25".parse().unwrap());
        let p = plan(&n_members(3), &c, None, &SEED).unwrap();
        assert_eq!(p.vip, ip(126));
        assert_eq!(p.metallb, range(110, 125));
        c.network.vip = Auto::Value(ip(200));
        let e = plan(&n_members(3), &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.vip 10.77.0.200 is outside network.subnet 10.77.0.0/25"
        );
    }

    #[test]
    fn previous_auto_addresses_stay_while_valid() {
        let p1 = plan(&n_members(3), &cfg(1), None, &SEED).unwrap();
        // A member now sits where the first plan would have put the VIP if
        // planned from scratch, but the previous VIP is still free: kept.
        let mut ms = n_members(3);
        ms.insert(9, member(9, 200));
        let p2 = plan(&ms, &cfg(1), Some(&p1), &SEED).unwrap();
        assert_eq!((p2.vip, p2.metallb), (p1.vip, p1.metallb));
        // A member took the VIP address: the VIP moves (it could not work).
        ms.insert(10, member(10, 254));
        let p3 = plan(&ms, &cfg(1), Some(&p2), &SEED).unwrap();
        assert_eq!(p3.vip, ip(253));
        assert_eq!(p3.metallb, range(237, 252));
    }

    #[test]
    fn given_vip_errors() {
        let mut c = cfg(1);
        c.network.vip = Auto::Value(ip(2));
        let e = plan(&n_members(3), &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.vip 10.77.0.2 is already the address of member 0000000000000002 (n2)"
        );
        c.network.vip = Auto::Value(ip(255));
        let e = plan(&n_members(3), &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.vip 10.77.0.255 is the network or broadcast address of 10.77.0.0/24"
        );
        let mut ms = n_members(2);
        ms.get_mut(&2).unwrap().ip = Ipv4Addr::new(10, 78, 0, 2);
        c.network.vip = Auto::Value(Ipv4Addr::new(10, 1, 0, 5));
        let e = plan(&ms, &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.vip 10.1.0.5 is outside every member's subnet (10.77.0.0/24, 10.78.0.0/24)"
        );
        // Inside the subnet of one member is enough.
        c.network.vip = Auto::Value(Ipv4Addr::new(10, 78, 0, 100));
        assert!(plan(&ms, &c, None, &SEED).is_ok());
    }

    #[test]
    fn given_metallb_errors() {
        let mut c = cfg(1);
        c.network.metallb_range = Auto::Value(range(1, 20));
        let e = plan(&n_members(3), &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.metallb_range 10.77.0.1-10.77.0.20 contains 10.77.0.1, the address of member 0000000000000001 (n1)"
        );
        c.network.metallb_range = Auto::Value(range(200, 255));
        let e = plan(&n_members(3), &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.metallb_range 10.77.0.200-10.77.0.255 is not within the host addresses of any member's subnet (10.77.0.0/24)"
        );
        c.network.metallb_range = Auto::Value(range(200, 220));
        c.network.vip = Auto::Value(ip(210));
        let e = plan(&n_members(3), &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.metallb_range 10.77.0.200-10.77.0.220 contains network.vip 10.77.0.210; MetalLB would hand out the API address"
        );
        c.network.vip = Auto::Auto;
        c.network.subnet = Auto::Value("10.77.0.0/24".parse().unwrap());
        c.network.metallb_range = Auto::Value(Ipv4Range {
            first: ip(200),
            last: Ipv4Addr::new(10, 77, 1, 4),
        });
        let e = plan(&n_members(3), &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.metallb_range 10.77.0.200-10.77.1.4 is not within the host addresses of network.subnet 10.77.0.0/24"
        );
    }

    #[test]
    fn full_subnets_are_reported() {
        let mut ms = n_members(2);
        for m in ms.values_mut() {
            m.prefix = 30; // hosts .1 and .2 only
        }
        let e = plan(&ms, &cfg(1), None, &SEED).unwrap_err();
        assert_eq!(
            e,
            PlanError::NoFreeVip {
                subnet: "10.77.0.0/30".parse().unwrap()
            }
        );
        let mut ms = n_members(2);
        for m in ms.values_mut() {
            m.prefix = 28;
        }
        let e = plan(&ms, &cfg(1), None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.metallb_range is \"auto\" but 10.77.0.0/28 has no 16 consecutive addresses free of members and the VIP 10.77.0.14; set network.metallb_range"
        );
    }

    #[test]
    fn pod_cidr_overlapping_the_node_subnet_is_reported() {
        let mut c = cfg(1);
        c.network.pod_cidr = "10.0.0.0/8".parse().unwrap();
        let e = plan(&n_members(1), &c, None, &SEED).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.pod_cidr 10.0.0.0/8 overlaps the node subnet 10.77.0.0/24"
        );
    }

    #[test]
    fn slash_32_members_have_no_room() {
        let mut ms = n_members(1);
        ms.get_mut(&1).unwrap().prefix = 32;
        assert!(matches!(
            plan(&ms, &cfg(1), None, &SEED),
            Err(PlanError::NoFreeVip { .. })
        ));
    }
}
