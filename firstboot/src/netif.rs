//! The cluster network interface: which NIC, and which IPv4 address on it,
//! this node uses for the cluster (the address it advertises over mDNS and
//! Raft, the NIC keepalived holds the VIP on).
//!
//! Precedence: the agent's `--interface` flag, else `network.interface` in
//! cluster.toml, else "auto". A named interface must exist and have an IPv4
//! address; "auto" takes the first non-loopback IPv4 address. When
//! `network.subnet` is given, only an address inside it qualifies, in both
//! cases.
//!
//! The choice ([`choose`]) and the reading of `ip -j addr` ([`parse_ip_addr`])
//! are pure and tested on fixtures; [`links`] only runs `ip` through the
//! host's [`Exec`]. Failures say what was asked for, where it was set and
//! what the host has, so the operator can fix cluster.toml from the console;
//! the agent keeps retrying (an interface or a DHCP lease can come late).

use std::fmt;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::cluster::{Auto, Ipv4Cidr, NetworkSection};
use crate::host::{Cmd, Exec, HostError};

/// One network interface and its IPv4 addresses, in the kernel's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub loopback: bool,
    pub addrs: Vec<Ipv4Cidr>,
}

/// Which interface the operator asked for, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wish {
    /// `--interface NAME` on the agent's command line.
    Flag(String),
    /// `network.interface = "NAME"` in cluster.toml (at `line`, when known).
    ClusterToml { name: String, line: Option<usize> },
    /// Nothing named: the first non-loopback IPv4 address.
    Auto,
}

impl Wish {
    /// The flag wins over cluster.toml; `"auto"` in cluster.toml is [`Wish::Auto`].
    /// `line` is where `network.interface` is written in cluster.toml.
    pub fn new(flag: Option<&str>, net: &NetworkSection, line: Option<usize>) -> Self {
        match flag {
            Some(f) => Wish::Flag(f.to_string()),
            None if net.interface == "auto" => Wish::Auto,
            None => Wish::ClusterToml {
                name: net.interface.clone(),
                line,
            },
        }
    }

    /// The interface named, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Wish::Flag(n) | Wish::ClusterToml { name: n, .. } => Some(n),
            Wish::Auto => None,
        }
    }
}

impl fmt::Display for Wish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wish::Flag(n) => write!(f, "--interface {n}"),
            Wish::ClusterToml {
                name,
                line: Some(l),
            } => write!(f, "network.interface = {name:?} (cluster.toml line {l})"),
            Wish::ClusterToml { name, line: None } => {
                write!(f, "network.interface = {name:?} (cluster.toml)")
            }
            Wish::Auto => f.write_str("network.interface = \"auto\""),
        }
    }
}

/// The interface and address chosen for the cluster network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub interface: String,
    pub addr: Ipv4Cidr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetifError {
    #[error("reading the interfaces: {0}")]
    Exec(#[from] HostError),
    #[error("reading the interfaces: `ip -j addr` printed no JSON array: {0}")]
    Parse(String),
    #[error("{wish}: no such interface; interfaces here: {here}")]
    NoSuchInterface { wish: Wish, here: String },
    #[error("{wish}: {name} has no IPv4 address yet")]
    NoIpv4 { wish: Wish, name: String },
    #[error("{wish}: {name} has no IPv4 address in network.subnet {subnet} (it has {has})")]
    NotInSubnet {
        wish: Wish,
        name: String,
        subnet: Ipv4Cidr,
        has: String,
    },
    #[error(
        "{wish}: no interface has an IPv4 address in network.subnet {subnet} (addresses here: {here})"
    )]
    NoneInSubnet {
        wish: Wish,
        subnet: Ipv4Cidr,
        here: String,
    },
    #[error(
        "{wish}: no non-loopback IPv4 address on any interface (interfaces here: {here}); \
         name one in network.interface or pass --advertise ADDR/PREFIX"
    )]
    NoAddress { wish: Wish, here: String },
    #[error("no interface carries {0}; pass --interface")]
    NotCarried(Ipv4Addr),
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    #[serde(default)]
    family: String,
    local: Option<String>,
    prefixlen: Option<u8>,
}

/// Every interface with its IPv4 addresses, from the output of `ip -j addr`
/// (all families: `-4` would leave out the interfaces without an IPv4
/// address, and a named one of those must be told apart from a typo).
pub fn parse_ip_addr(json: &str) -> Result<Vec<Link>, NetifError> {
    let raw: Vec<IpLink> =
        serde_json::from_str(json).map_err(|e| NetifError::Parse(e.to_string()))?;
    Ok(raw
        .into_iter()
        .map(|l| Link {
            loopback: l.flags.iter().any(|f| f == "LOOPBACK"),
            addrs: l
                .addr_info
                .iter()
                .filter(|a| a.family == "inet")
                .filter_map(|a| {
                    let addr = a.local.as_deref()?.parse().ok()?;
                    let prefix = a.prefixlen.filter(|p| *p <= 32)?;
                    Some(Ipv4Cidr { addr, prefix })
                })
                .collect(),
            name: l.ifname,
        })
        .collect())
}

/// Runs `ip -j addr` through `exec` and parses it.
pub fn links(exec: &dyn Exec) -> Result<Vec<Link>, NetifError> {
    let out = exec.run(&Cmd::new(["ip", "-j", "addr"]))?;
    parse_ip_addr(&out.stdout)
}

/// The interface and address for the cluster network (see the module docs).
pub fn choose(wish: &Wish, subnet: Auto<Ipv4Cidr>, links: &[Link]) -> Result<Choice, NetifError> {
    let in_subnet = |c: &Ipv4Cidr| match subnet {
        Auto::Value(s) => s.contains(c.addr),
        Auto::Auto => true,
    };
    let Some(name) = wish.name() else {
        return links
            .iter()
            .filter(|l| !l.loopback)
            .flat_map(|l| l.addrs.iter().map(move |a| (l, a)))
            .find(|(_, a)| !a.addr.is_loopback() && in_subnet(a))
            .map(|(l, a)| Choice {
                interface: l.name.clone(),
                addr: *a,
            })
            .ok_or_else(|| match subnet {
                Auto::Value(subnet) => NetifError::NoneInSubnet {
                    wish: wish.clone(),
                    subnet,
                    here: addresses_here(links),
                },
                Auto::Auto => NetifError::NoAddress {
                    wish: wish.clone(),
                    here: names_here(links),
                },
            });
    };
    let Some(link) = links.iter().find(|l| l.name == name) else {
        return Err(NetifError::NoSuchInterface {
            wish: wish.clone(),
            here: names_here(links),
        });
    };
    if link.addrs.is_empty() {
        return Err(NetifError::NoIpv4 {
            wish: wish.clone(),
            name: name.to_string(),
        });
    }
    match (link.addrs.iter().find(|a| in_subnet(a)), subnet) {
        (Some(a), _) => Ok(Choice {
            interface: link.name.clone(),
            addr: *a,
        }),
        (None, Auto::Value(subnet)) => Err(NetifError::NotInSubnet {
            wish: wish.clone(),
            name: name.to_string(),
            subnet,
            has: join(link.addrs.iter().map(ToString::to_string)),
        }),
        (None, Auto::Auto) => unreachable!("without a subnet every address qualifies"),
    }
}

/// The interface that carries `addr` (for an address given with `--advertise`).
pub fn interface_of(links: &[Link], addr: Ipv4Addr) -> Result<String, NetifError> {
    links
        .iter()
        .find(|l| l.addrs.iter().any(|c| c.addr == addr))
        .map(|l| l.name.clone())
        .ok_or(NetifError::NotCarried(addr))
}

fn join(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The non-loopback interface names, for error messages.
fn names_here(links: &[Link]) -> String {
    join(links.iter().filter(|l| !l.loopback).map(|l| l.name.clone()))
}

/// The non-loopback interfaces' addresses ("eth0 10.0.0.2/24"), for error messages.
fn addresses_here(links: &[Link]) -> String {
    join(
        links
            .iter()
            .filter(|l| !l.loopback)
            .flat_map(|l| l.addrs.iter().map(move |a| format!("{} {a}", l.name))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::Recording;

    /// `ip -j addr` on a host with a loopback, a NIC without IPv4 (eth1), a
    /// NIC with two addresses (eth0) and one on another network (eth2).
    const IP_ADDR: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[
        {"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo"},
        {"family":"inet6","local":"::1","prefixlen":128,"scope":"host"}]},
      {"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[
        {"family":"inet","local":"192.168.1.20","prefixlen":24,"scope":"global","label":"eth0"},
        {"family":"inet","local":"10.77.0.5","prefixlen":24,"scope":"global","label":"eth0:1"},
        {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
      {"ifindex":3,"ifname":"eth1","flags":["BROADCAST","MULTICAST"],"addr_info":[]},
      {"ifindex":4,"ifname":"eth2","flags":["BROADCAST","MULTICAST","UP"],"addr_info":[
        {"family":"inet","local":"10.88.0.7","prefixlen":16,"scope":"global","label":"eth2"}]}
    ]"#;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn fixture() -> Vec<Link> {
        parse_ip_addr(IP_ADDR).unwrap()
    }

    fn toml(name: &str) -> Wish {
        Wish::ClusterToml {
            name: name.into(),
            line: Some(16),
        }
    }

    #[test]
    fn ip_addr_json_is_read_with_every_interface_and_only_ipv4() {
        let l = fixture();
        let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "eth1", "eth2"]);
        assert!(l[0].loopback && !l[1].loopback);
        assert_eq!(
            l[1].addrs,
            vec![cidr("192.168.1.20/24"), cidr("10.77.0.5/24")]
        );
        assert!(l[2].addrs.is_empty());
        assert!(matches!(
            parse_ip_addr("Object \"addr\" is unknown"),
            Err(NetifError::Parse(_))
        ));
    }

    #[test]
    fn links_runs_ip_through_the_host() {
        let rec = Recording::default();
        rec.answer("ip -j addr", 0, IP_ADDR, "");
        assert_eq!(links(&rec).unwrap(), fixture());
        assert_eq!(rec.commands(), ["ip -j addr"]);
        let rec = Recording::default();
        rec.answer("ip", 1, "", "ip: command failed");
        let e = links(&rec).unwrap_err().to_string();
        assert!(e.contains("ip: command failed"), "{e}");
    }

    #[test]
    fn flag_beats_cluster_toml_beats_auto() {
        let mut net = NetworkSection::default();
        assert_eq!(Wish::new(None, &net, None), Wish::Auto);
        net.interface = "eth2".into();
        assert_eq!(Wish::new(None, &net, Some(16)), toml("eth2"));
        assert_eq!(
            Wish::new(Some("eth0"), &net, Some(16)),
            Wish::Flag("eth0".into())
        );
        let l = fixture();
        let pick = |w: &Wish| choose(w, Auto::Auto, &l).unwrap();
        assert_eq!(
            pick(&Wish::Auto),
            Choice {
                interface: "eth0".into(),
                addr: cidr("192.168.1.20/24")
            }
        );
        assert_eq!(
            pick(&toml("eth2")),
            Choice {
                interface: "eth2".into(),
                addr: cidr("10.88.0.7/16")
            }
        );
        assert_eq!(pick(&Wish::Flag("eth0".into())).interface, "eth0");
    }

    #[test]
    fn a_missing_interface_is_named_with_where_it_was_set_and_what_exists() {
        let l = fixture();
        assert_eq!(
            choose(&toml("eth7"), Auto::Auto, &l)
                .unwrap_err()
                .to_string(),
            "network.interface = \"eth7\" (cluster.toml line 16): no such interface; \
             interfaces here: eth0, eth1, eth2"
        );
        assert_eq!(
            choose(&Wish::Flag("eth7".into()), Auto::Auto, &l)
                .unwrap_err()
                .to_string(),
            "--interface eth7: no such interface; interfaces here: eth0, eth1, eth2"
        );
        assert_eq!(
            choose(&toml("eth1"), Auto::Auto, &l)
                .unwrap_err()
                .to_string(),
            "network.interface = \"eth1\" (cluster.toml line 16): eth1 has no IPv4 address yet"
        );
    }

    #[test]
    fn a_given_subnet_restricts_the_choice() {
        let l = fixture();
        let subnet = Auto::Value(cidr("10.77.0.0/24"));
        let want = Choice {
            interface: "eth0".into(),
            addr: cidr("10.77.0.5/24"),
        };
        assert_eq!(choose(&Wish::Auto, subnet, &l).unwrap(), want);
        assert_eq!(choose(&toml("eth0"), subnet, &l).unwrap(), want);
        assert_eq!(
            choose(&Wish::Auto, Auto::Value(cidr("10.88.0.0/16")), &l)
                .unwrap()
                .interface,
            "eth2"
        );
        assert_eq!(
            choose(&toml("eth2"), subnet, &l).unwrap_err().to_string(),
            "network.interface = \"eth2\" (cluster.toml line 16): eth2 has no IPv4 address \
             in network.subnet 10.77.0.0/24 (it has 10.88.0.7/16)"
        );
        assert_eq!(
            choose(&Wish::Auto, Auto::Value(cidr("10.99.0.0/24")), &l)
                .unwrap_err()
                .to_string(),
            "network.interface = \"auto\": no interface has an IPv4 address in network.subnet \
             10.99.0.0/24 (addresses here: eth0 192.168.1.20/24, eth0 10.77.0.5/24, \
             eth2 10.88.0.7/16)"
        );
    }

    #[test]
    fn auto_without_any_address_says_what_to_do() {
        let l = parse_ip_addr(
            r#"[{"ifname":"lo","flags":["LOOPBACK"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                {"ifname":"eth0","flags":[],"addr_info":[]}]"#,
        )
        .unwrap();
        let e = choose(&Wish::Auto, Auto::Auto, &l).unwrap_err().to_string();
        assert_eq!(
            e,
            "network.interface = \"auto\": no non-loopback IPv4 address on any interface \
             (interfaces here: eth0); name one in network.interface or pass --advertise ADDR/PREFIX"
        );
    }

    #[test]
    fn the_interface_carrying_an_address() {
        let l = fixture();
        assert_eq!(
            interface_of(&l, Ipv4Addr::new(10, 77, 0, 5)).unwrap(),
            "eth0"
        );
        assert_eq!(
            interface_of(&l, Ipv4Addr::new(10, 1, 1, 1))
                .unwrap_err()
                .to_string(),
            "no interface carries 10.1.1.1; pass --interface"
        );
    }
}
