//! In-process I/O for the [`Driver`](super::driver::Driver): what the fault
//! simulation (`tests/consensus_cluster.rs`) and the bench
//! (`benches/agent/inproc.rs`) plug into it instead of mDNS and the console.
//!
//! - [`MemDiscovery`]: one discovery "network" shared by all nodes of an
//!   in-process cluster: every node's announced [`RaftState`]; a node sees
//!   the peers its [`MemRouter`] lets it talk to (up and not partitioned
//!   away), as mDNS would only show reachable peers.
//! - [`MemView`]: one node's [`PeerView`] on it (agent addresses are
//!   [`mem_addr`], as the router's transport expects nothing else).
//! - [`InitLog`] / [`MemReporter`]: a [`Reporter`] that records every
//!   `initialize()` call (node, voters, success), so a test can check that
//!   exactly one succeeded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::driver::{PeerView, Reporter};
use super::phase::Phase;
use crate::consensus::router::MemRouter;
use crate::consensus::ConsensusError;
use crate::discovery::{Peer, RaftState};
use crate::state::{Member, NodeId};

/// A simulated node's facts: 2 cpus, 4 GiB, 10 GiB free on the data
/// partition, no spare disks, healthy (the simulation and the bench).
pub fn member(id: NodeId, hostname: String, ip: std::net::Ipv4Addr, prefix: u8) -> Member {
    Member {
        id,
        hostname,
        ip,
        prefix,
        port: 7946,
        cpus: 2,
        mem_bytes: 4 << 30,
        spare_disks: vec![],
        data_free_bytes: 10 << 30,
        labels: BTreeMap::new(),
        kubernetes: true,
        var_in_ram: false,
        healthy: true,
    }
}

/// The agent address of an in-process node (what the Raft membership stores).
pub fn mem_addr(id: NodeId) -> String {
    format!("mem://{id:016x}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Announcements of all nodes of an in-process cluster. Cheap to clone.
#[derive(Clone)]
pub struct MemDiscovery {
    router: MemRouter,
    announced: Arc<Mutex<BTreeMap<NodeId, RaftState>>>,
}

impl MemDiscovery {
    pub fn new(router: MemRouter) -> Self {
        MemDiscovery {
            router,
            announced: Arc::default(),
        }
    }

    /// Node `id` starts announcing `state`; its view of the others.
    pub fn view(&self, id: NodeId, state: RaftState) -> MemView {
        lock(&self.announced).insert(id, state);
        MemView {
            id,
            shared: self.clone(),
        }
    }

    /// Node `id` stopped (crashed): its announcement goes away.
    pub fn remove(&self, id: NodeId) {
        lock(&self.announced).remove(&id);
    }

    /// What `id` announces now.
    pub fn announced(&self, id: NodeId) -> Option<RaftState> {
        lock(&self.announced).get(&id).copied()
    }
}

/// One node's [`PeerView`] on a [`MemDiscovery`].
pub struct MemView {
    id: NodeId,
    shared: MemDiscovery,
}

impl PeerView for MemView {
    fn peers(&self) -> Vec<Peer> {
        let announced = lock(&self.shared.announced).clone();
        announced
            .into_iter()
            .filter(|(p, _)| *p != self.id && self.shared.router.can_talk(self.id, *p))
            .map(|(id, state)| Peer {
                id,
                addrs: vec![],
                port: 0,
                state,
            })
            .collect()
    }

    fn announce(&mut self, state: RaftState) -> Result<(), String> {
        lock(&self.shared.announced).insert(self.id, state);
        Ok(())
    }

    fn duplicate_id(&self) -> Option<IpAddr> {
        None
    }

    fn addr_of(&self, id: NodeId) -> Option<String> {
        Some(mem_addr(id))
    }

    fn learn(&mut self, _id: NodeId, _addr: &str) {}
}

/// One `initialize()` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitCall {
    pub node: NodeId,
    pub voters: BTreeSet<NodeId>,
    pub ok: bool,
}

/// Every `initialize()` call of an in-process cluster. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct InitLog(Arc<Mutex<Vec<InitCall>>>);

impl InitLog {
    pub fn calls(&self) -> Vec<InitCall> {
        lock(&self.0).clone()
    }
}

/// A [`Reporter`] that records `initialize()` calls in an [`InitLog`] and
/// logs the rest with `tracing`.
pub struct MemReporter {
    node: NodeId,
    inits: InitLog,
}

impl MemReporter {
    pub fn new(node: NodeId, inits: InitLog) -> Self {
        MemReporter { node, inits }
    }
}

impl Reporter for MemReporter {
    fn phase(&mut self, node: NodeId, phase: &Phase) {
        tracing::debug!(node = format!("{node:016x}"), ?phase, "phase");
    }

    fn initializing(&mut self, voters: &BTreeSet<NodeId>) {
        tracing::debug!(
            node = format!("{:016x}", self.node),
            ?voters,
            "initializing"
        );
    }

    fn initialized(&mut self, voters: &BTreeSet<NodeId>, result: Result<(), &ConsensusError>) {
        lock(&self.inits.0).push(InitCall {
            node: self.node,
            voters: voters.clone(),
            ok: result.is_ok(),
        });
    }

    fn event(&mut self, line: &str) {
        tracing::debug!(node = format!("{:016x}", self.node), "{line}");
    }
}
