//! Raft RPCs over an abstract transport ([`RpcTransport`]), the openraft
//! network ([`Network`]) on top of it, and an in-memory transport with
//! seeded fault injection ([`MemRouter`]) for in-process cluster tests.
//!
//! The real agent plugs its authenticated TCP transport in by implementing
//! [`RpcTransport`] (requests and responses are serde types) and feeding
//! received requests to [`super::ConsensusNode::handle_rpc`].

// openraft's error types (fixed by its traits) are large; boxing them buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::types::{Node, TypeConfig};
use crate::state::{Member, NodeId};

/// A boxed `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A request from one agent's consensus layer to another's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Ask the group to add the sender (learner, then voter while there is room).
    Join(JoinRequest),
    /// A follower's proposal, forwarded to the leader (only
    /// `Command::RecordStep` for the sender's own steps is accepted).
    Propose {
        from: NodeId,
        command: crate::state::Command,
    },
}

/// The answer to an [`RpcRequest`] of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Join(JoinResponse),
    /// `Ok` with the state machine's answer, `NotLeader` to redirect, or a refusal.
    Propose(ProposeResponse),
}

/// The leader's answer to a forwarded proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeResponse {
    Applied(crate::state::Response),
    NotLeader { leader: Option<NodeId> },
    Refused(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: NodeId,
    /// The joiner's agent address (stored as its Raft node).
    pub addr: String,
    /// Facts to store with `Command::UpsertMember` once it is in.
    pub member: Option<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// The joiner is in the group (`voter` tells whether as a voter).
    Joined { voter: bool },
    /// Ask the leader instead (`None`: no leader known right now).
    NotLeader { leader: Option<NodeId> },
    /// Transient failure (membership change in progress, ...); retry later.
    Retry(String),
}

/// The transport could not deliver a request or did not get a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {target:016x} unreachable: {reason}")]
pub struct Unreachable {
    pub target: NodeId,
    pub reason: String,
}

/// Delivers consensus RPCs to other agents.
pub trait RpcTransport: Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        rpc: RpcRequest,
    ) -> BoxFuture<'_, Result<RpcResponse, Unreachable>>;
}

/// Handles consensus RPCs addressed to this node.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(&self, rpc: RpcRequest) -> BoxFuture<'_, RpcResponse>;
}

/// openraft's network factory over an [`RpcTransport`].
#[derive(Clone)]
pub struct Network {
    transport: Arc<dyn RpcTransport>,
    acks: Acks,
}

impl Network {
    pub fn new(transport: Arc<dyn RpcTransport>) -> Self {
        Network {
            transport,
            acks: Acks::default(),
        }
    }

    /// When each target last answered an AppendEntries (heartbeats
    /// included), shared with the clients this factory makes.
    pub fn acks(&self) -> Acks {
        self.acks.clone()
    }
}

/// When each node last answered this node's AppendEntries (a heartbeat or
/// replication): how a leader tells a member that stopped answering.
#[derive(Debug, Clone, Default)]
pub struct Acks(Arc<Mutex<BTreeMap<NodeId, Instant>>>);

impl Acks {
    fn record(&self, id: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
    }

    /// Every node's last answer.
    pub fn snapshot(&self) -> BTreeMap<NodeId, Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A client for one target node.
pub struct Connection {
    target: NodeId,
    transport: Arc<dyn RpcTransport>,
    acks: Acks,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Connection {
        Connection {
            target,
            transport: self.transport.clone(),
            acks: self.acks.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl Connection {
    async fn call(
        &self,
        rpc: RpcRequest,
        option: &RPCOption,
    ) -> Result<RpcResponse, openraft::error::Unreachable> {
        match tokio::time::timeout(option.hard_ttl(), self.transport.call(self.target, rpc)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(openraft::error::Unreachable::new(&e)),
            Err(_) => Err(openraft::error::Unreachable::new(&Unreachable {
                target: self.target,
                reason: "timed out".into(),
            })),
        }
    }

    fn mismatch<E: std::error::Error>(&self) -> RPCError<NodeId, Node, E> {
        RPCError::Network(openraft::error::NetworkError::new(&Unreachable {
            target: self.target,
            reason: "response of the wrong kind".into(),
        }))
    }
}

fn remote<T, E: std::error::Error>(
    target: NodeId,
    r: Result<T, RaftError<NodeId, E>>,
) -> Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>> {
    r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.call(RpcRequest::AppendEntries(rpc), &option).await? {
            RpcResponse::AppendEntries(r) => {
                if r.is_ok() {
                    self.acks.record(self.target);
                }
                remote(self.target, r)
            }
            _ => Err(self.mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.call(RpcRequest::InstallSnapshot(rpc), &option).await? {
            RpcResponse::InstallSnapshot(r) => remote(self.target, r),
            _ => Err(self.mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(RpcRequest::Vote(rpc), &option).await? {
            RpcResponse::Vote(r) => remote(self.target, r),
            _ => Err(self.mismatch()),
        }
    }

    /// After an unreachable target openraft waits these intervals between
    /// replication attempts (reset by the next success): 100 ms doubling to
    /// [`MAX_REPLICATION_BACKOFF`]. A fixed 100 ms made a leader retry a
    /// powered-off peer ten times a second for as long as it was off, each
    /// retry a fast failure and two log lines, which on an emulated node
    /// cost CPU the survivors needed.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(replication_backoff())
    }
}

/// The longest wait between replication attempts to an unreachable peer:
/// a peer that comes back is caught up at most this long after.
pub const MAX_REPLICATION_BACKOFF: Duration = Duration::from_secs(2);

/// 100 ms, 200 ms, 400 ms, … capped at [`MAX_REPLICATION_BACKOFF`].
pub fn replication_backoff() -> impl Iterator<Item = Duration> + Send + 'static {
    std::iter::successors(Some(Duration::from_millis(100)), |d| {
        Some((*d * 2).min(MAX_REPLICATION_BACKOFF))
    })
}

/// Fault settings of a [`MemRouter`].
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Probability that a request is lost (before delivery), and, separately,
    /// that its response is lost (after the target handled it).
    pub drop: f64,
    /// Uniform random delay before delivery.
    pub delay: (Duration, Duration),
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            drop: 0.0,
            delay: (Duration::ZERO, Duration::ZERO),
        }
    }
}

struct RouterInner {
    handlers: BTreeMap<NodeId, Arc<dyn RpcHandler>>,
    /// Unordered pairs (low, high) that cannot talk.
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: Faults,
    rng: StdRng,
    delivered: u64,
    dropped: u64,
}

/// In-memory network between in-process nodes, with seeded faults: random
/// drops and delays, partitions, crashed (unregistered) nodes.
#[derive(Clone)]
pub struct MemRouter {
    inner: Arc<Mutex<RouterInner>>,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

impl MemRouter {
    pub fn new(seed: u64, faults: Faults) -> Self {
        MemRouter {
            inner: Arc::new(Mutex::new(RouterInner {
                handlers: BTreeMap::new(),
                cut: BTreeSet::new(),
                faults,
                rng: StdRng::seed_from_u64(seed),
                delivered: 0,
                dropped: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport node `from` uses.
    pub fn transport(&self, from: NodeId) -> Arc<dyn RpcTransport> {
        Arc::new(MemTransport {
            router: self.clone(),
            from,
        })
    }

    /// Makes `id` reachable, served by `handler` (a start or a restart).
    pub fn register(&self, id: NodeId, handler: Arc<dyn RpcHandler>) {
        self.lock().handlers.insert(id, handler);
    }

    /// Makes `id` unreachable (crashed).
    pub fn unregister(&self, id: NodeId) {
        self.lock().handlers.remove(&id);
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.lock().handlers.contains_key(&id)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Partitions the listed groups from each other (nodes in no group keep
    /// their links). Replaces any earlier partition.
    pub fn partition(&self, groups: &[BTreeSet<NodeId>]) {
        let mut inner = self.lock();
        inner.cut.clear();
        for (i, a) in groups.iter().enumerate() {
            for b in &groups[i + 1..] {
                for &x in a {
                    for &y in b {
                        inner.cut.insert(pair(x, y));
                    }
                }
            }
        }
    }

    /// Removes all partitions.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Whether `a` and `b` can talk (both up, not partitioned).
    pub fn can_talk(&self, a: NodeId, b: NodeId) -> bool {
        let inner = self.lock();
        inner.handlers.contains_key(&a)
            && inner.handlers.contains_key(&b)
            && !inner.cut.contains(&pair(a, b))
    }

    /// (delivered, dropped) counts.
    pub fn stats(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.delivered, inner.dropped)
    }

    async fn send(
        &self,
        from: NodeId,
        target: NodeId,
        rpc: RpcRequest,
    ) -> Result<RpcResponse, Unreachable> {
        let unreachable = |reason: &str| Unreachable {
            target,
            reason: reason.to_string(),
        };
        let (delay, drop_req, drop_resp) = {
            let mut inner = self.lock();
            let f = inner.faults.clone();
            let delay = if f.delay.1 > f.delay.0 {
                inner.rng.gen_range(f.delay.0..=f.delay.1)
            } else {
                f.delay.0
            };
            let drop_req = f.drop > 0.0 && inner.rng.gen_bool(f.drop.min(1.0));
            let drop_resp = f.drop > 0.0 && inner.rng.gen_bool(f.drop.min(1.0));
            (delay, drop_req, drop_resp)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let handler = {
            let mut inner = self.lock();
            if inner.cut.contains(&pair(from, target)) || !inner.handlers.contains_key(&from) {
                inner.dropped += 1;
                return Err(unreachable("partitioned"));
            }
            let Some(h) = inner.handlers.get(&target).cloned() else {
                inner.dropped += 1;
                return Err(unreachable("down"));
            };
            if drop_req {
                inner.dropped += 1;
                return Err(unreachable("request dropped"));
            }
            h
        };
        let resp = handler.handle(rpc).await;
        let mut inner = self.lock();
        if drop_resp || inner.cut.contains(&pair(from, target)) {
            inner.dropped += 1;
            return Err(unreachable("response dropped"));
        }
        inner.delivered += 1;
        Ok(resp)
    }
}

struct MemTransport {
    router: MemRouter,
    from: NodeId,
}

impl RpcTransport for MemTransport {
    fn call(
        &self,
        target: NodeId,
        rpc: RpcRequest,
    ) -> BoxFuture<'_, Result<RpcResponse, Unreachable>> {
        Box::pin(self.router.send(self.from, target, rpc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_to_an_unreachable_peer_backs_off_to_two_seconds() {
        let ms: Vec<u128> = replication_backoff()
            .take(8)
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }
}
