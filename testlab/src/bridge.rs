//! [`TestNet`]: a namespace holding the bridge `br0` with one address,
//! tap devices on it for VMs, and [`Host`]s on it for processes: each a
//! namespace of its own whose `eth0` is a veth into the bridge. No veth
//! to the root namespace and no default route: traffic stays inside.

use std::net::Ipv4Addr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::netns::Netns;
use crate::{Error, Result};

/// The bridge every tap and host joins.
pub const BRIDGE: &str = "br0";
/// The bridge's address unless [`TestNet::create_with`] says otherwise.
pub const DEFAULT_BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The bridge's prefix length unless [`TestNet::create_with`] says otherwise.
pub const DEFAULT_PREFIX_LEN: u8 = 24;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

/// The bridge's namespace (see the module docs). Cloning shares it; it
/// derefs to its [`Netns`] (`name`, `exec`, `run`, `pids`, …). Hosts,
/// [`crate::Dhcp`] and the QEMU harness's VMs hold a clone, so the bridge
/// outlives them.
#[derive(Clone, Debug)]
pub struct TestNet {
    ns: Netns,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    prefix: String,
    bridge_addr: Ipv4Addr,
    prefix_len: u8,
    hosts: AtomicU32,
}

impl Deref for TestNet {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl TestNet {
    /// A namespace `<prefix><pid>-<n>` with `br0` at 10.77.0.1/24.
    pub fn create(prefix: &str) -> Result<TestNet> {
        TestNet::create_with(prefix, DEFAULT_BRIDGE_ADDR, DEFAULT_PREFIX_LEN)
    }

    /// A namespace with `br0` at `bridge_addr/prefix_len` (multicast
    /// snooping off, so mDNS reaches every port). Stale namespaces of
    /// `prefix` are swept first.
    pub fn create_with(prefix: &str, bridge_addr: Ipv4Addr, prefix_len: u8) -> Result<TestNet> {
        if !(8..=30).contains(&prefix_len) {
            return Err(Error::Invalid(format!(
                "bridge prefix length /{prefix_len} out of range 8..=30"
            )));
        }
        let ns = Netns::create(prefix)?;
        ns.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        let cidr = format!("{bridge_addr}/{prefix_len}");
        ns.ip(&["addr", "add", &cidr, "dev", BRIDGE])?;
        ns.ip(&["link", "set", BRIDGE, "up"])?;
        tracing::info!("netns {} with {BRIDGE} {cidr}", ns.name());
        Ok(TestNet {
            ns,
            shared: Arc::new(Shared {
                prefix: prefix.to_string(),
                bridge_addr,
                prefix_len,
                hosts: AtomicU32::new(0),
            }),
        })
    }

    /// The bridge's name, `br0`.
    pub fn bridge(&self) -> &str {
        BRIDGE
    }

    /// The bridge's address, e.g. 10.77.0.1.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.shared.bridge_addr
    }

    /// The bridge's prefix length, e.g. 24.
    pub fn prefix_len(&self) -> u8 {
        self.shared.prefix_len
    }

    /// The netmask matching [`prefix_len`](Self::prefix_len), e.g. 255.255.255.0.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.shared.prefix_len)))
    }

    /// The bridge's namespace itself.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Creates tap device `name` in the namespace, attached to `br0` and up.
    /// Returns its name. Deleted with the namespace.
    pub fn add_tap(&self, name: &str) -> Result<String> {
        check_ifname(name)?;
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        self.ns.own_link(name);
        self.ip(&["link", "set", name, "master", BRIDGE])?;
        self.ip(&["link", "set", name, "up"])?;
        tracing::debug!("tap {name} on {BRIDGE} in {}", self.name());
        Ok(name.to_string())
    }

    /// A new namespace (same prefix) whose `eth0`, a veth into `br0`, has
    /// `addr` with the bridge's prefix length, and a route for multicast
    /// (mDNS) on it.
    pub fn add_host(&self, addr: Ipv4Addr) -> Result<Host> {
        let ns = Netns::create(&self.shared.prefix)?;
        let veth = format!("v{}", self.shared.hosts.fetch_add(1, Ordering::Relaxed));
        check_ifname(&veth)?;
        self.ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.ip(&["link", "set", &veth, "master", BRIDGE])?;
        self.ip(&["link", "set", &veth, "up"])?;
        let cidr = format!("{addr}/{}", self.shared.prefix_len);
        ns.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        tracing::debug!("host {} at {cidr} on {BRIDGE} by {veth}", ns.name());
        Ok(Host {
            ns,
            addr,
            prefix_len: self.shared.prefix_len,
            _bridge: self.clone(),
        })
    }
}

/// A namespace on a [`TestNet`]'s bridge (see [`TestNet::add_host`]); it
/// derefs to its [`Netns`]. It holds the bridge, so the bridge outlives it.
#[derive(Clone, Debug)]
pub struct Host {
    ns: Netns,
    addr: Ipv4Addr,
    prefix_len: u8,
    _bridge: TestNet,
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl Host {
    /// `eth0`'s address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `eth0`'s address with the prefix length, e.g. `10.89.0.10/24`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.addr, self.prefix_len)
    }
}

fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(Error::Invalid(format!(
            "bad interface name {name:?}: want 1 to {MAX_NAME_LEN} of [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}
