//! The test network's DHCP server is `testlab`'s ([`testlab::dhcp`]):
//! dnsmasq inside the namespace, bound to `br0` only, DNS off. Here it
//! keeps its files in a [`Workdir`] (kept with `HABUILD_KEEP=1`).

use std::net::Ipv4Addr;
use std::ops::Deref;

use anyhow::Result;

use crate::netns::TestNet;
use crate::workdir::Workdir;

pub use testlab::dhcp::{parse_leases, Lease};

/// A running dnsmasq (see [`testlab::Dhcp`], which it derefs to for
/// `pid`, `leases`, `wait_for_lease`, `log_text`, …), killed on drop
/// before its work directory goes.
#[derive(Debug)]
pub struct Dhcp {
    server: testlab::Dhcp,
    _dir: Workdir,
}

impl Deref for Dhcp {
    type Target = testlab::Dhcp;
    fn deref(&self) -> &testlab::Dhcp {
        &self.server
    }
}

impl Dhcp {
    /// Starts dnsmasq in `net` and waits until it is serving.
    pub fn start(net: &TestNet, range_start: Ipv4Addr, range_end: Ipv4Addr) -> Result<Dhcp> {
        Dhcp::start_with(net, range_start, range_end, &[])
    }

    /// Like [`start`](Self::start), with extra dnsmasq arguments (e.g.
    /// `--dhcp-host=52:54:00:77:00:01,10.77.0.11`).
    pub fn start_with(
        net: &TestNet,
        range_start: Ipv4Addr,
        range_end: Ipv4Addr,
        extra_args: &[&str],
    ) -> Result<Dhcp> {
        let dir = Workdir::new("dnsmasq")?;
        let server = testlab::Dhcp::start_in(net, dir.path(), range_start, range_end, extra_args)?;
        Ok(Dhcp { server, _dir: dir })
    }
}
