//! Consensus with openraft 0.9 (storage-v2), behind one module.
//!
//! - [`types`]: the openraft type configuration.
//! - [`store`]: the persistent log store and state machine (a directory on
//!   the data partition, e.g. `/var/lib/habuild/raft`).
//! - [`router`]: Raft RPCs over an abstract [`router::RpcTransport`], plus the
//!   in-memory [`router::MemRouter`] with seeded faults for tests.
//! - [`bootstrap`]: the pure `bootstrap_expect` decision (who initializes).
//! - [`ConsensusNode`]: one node's Raft instance with join handling.
//!
//! A node with Raft state in its directory ([`store::has_state`]) just opens
//! it and rejoins its group; only a node without state runs the bootstrap
//! decision loop.

// openraft's error types (fixed by its traits) are large; boxing them buys nothing here.
#![allow(clippy::result_large_err)]

pub mod bootstrap;
pub mod router;
pub mod store;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};

use self::bootstrap::Advert;
use self::router::{
    Acks, BoxFuture, JoinRequest, JoinResponse, Network, ProposeResponse, RpcHandler, RpcRequest,
    RpcResponse, RpcTransport, Unreachable,
};
use self::store::StateMachine;
use self::types::{Raft, RaftMetrics};
use crate::state::{ClusterState, Command, Member, NodeId, Response};

/// Timing and sizing of a node's Raft instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusConfig {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Voters the group grows to as nodes join (the rest stay learners).
    pub max_voters: usize,
    /// Build a snapshot (and purge the log) every this many applied entries.
    pub snapshot_every: u64,
    /// The leader records a member as down (`Command::SetHealth`) once it
    /// has not acknowledged an AppendEntries (heartbeats included) for this
    /// long, and as up again when it answers.
    pub down_after_ms: u64,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        ConsensusConfig {
            heartbeat_ms: 250,
            election_min_ms: 1000,
            election_max_ms: 2000,
            max_voters: 5,
            snapshot_every: 1000,
            down_after_ms: 10_000,
        }
    }
}

impl ConsensusConfig {
    /// The agent's timings for its CPU: [`Default`] on real CPUs (bare
    /// metal, KVM and other hardware-assisted VMs), [`Self::emulated`] on
    /// an emulated one ([`crate::facts::emulated_cpu`]).
    pub fn for_cpu(emulated: bool) -> Self {
        if emulated {
            Self::emulated()
        } else {
            Self::default()
        }
    }

    /// Timings for an emulated CPU (QEMU without KVM): a 1 s heartbeat
    /// (also how long an AppendEntries may take) and elections after 5-10 s
    /// of silence. With the default 250 ms and 1-2 s, three emulated nodes
    /// busy starting etcd and glusterd missed heartbeats by the hundred
    /// ("unreachable: timed out") and held elections while the cluster
    /// assembled, each one holding the steps back. A leader that loses
    /// power is replaced after 5-10 s instead of 1-2 s; etcd and the VIP
    /// have their own timers and are not affected.
    pub fn emulated() -> Self {
        ConsensusConfig {
            heartbeat_ms: 1000,
            election_min_ms: 5000,
            election_max_ms: 10_000,
            ..Self::default()
        }
    }

    /// Short timeouts for in-process tests.
    pub fn fast() -> Self {
        ConsensusConfig {
            heartbeat_ms: 50,
            election_min_ms: 150,
            election_max_ms: 300,
            max_voters: 5,
            snapshot_every: 64,
            down_after_ms: 2_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    #[error("raft storage: {0}")]
    Storage(#[from] types::StorageError),
    #[error("raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft: {0}")]
    Raft(String),
}

struct NodeInner {
    id: NodeId,
    raft: Raft,
    sm: StateMachine,
    transport: Arc<dyn RpcTransport>,
    acks: Acks,
    max_voters: usize,
    had_state: bool,
    /// Serializes membership changes made for joiners.
    join_lock: tokio::sync::Mutex<()>,
}

/// One node's Raft instance, persisted in a directory, talking through an
/// [`RpcTransport`]. Cheap to clone.
#[derive(Clone)]
pub struct ConsensusNode {
    inner: Arc<NodeInner>,
}

const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

impl ConsensusNode {
    /// Opens (or creates) the Raft state in `dir` and starts Raft. With state
    /// from an earlier run the node rejoins its group on its own.
    pub async fn open(
        id: NodeId,
        dir: &Path,
        cfg: &ConsensusConfig,
        transport: Arc<dyn RpcTransport>,
    ) -> Result<Self, ConsensusError> {
        let had_state = store::has_state(dir);
        let (log, sm) = store::open(dir)?;
        let config = Config {
            cluster_name: "habuild".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_min_ms,
            election_timeout_max: cfg.election_max_ms,
            install_snapshot_timeout: (cfg.election_max_ms * 4).max(1000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.snapshot_every / 4,
            ..Default::default()
        }
        .validate()?;
        let network = Network::new(transport.clone());
        let acks = network.acks();
        let raft = Raft::new(id, Arc::new(config), network, log, sm.clone())
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        // Publish the restored membership before anyone asks (a restarted
        // node must advertise itself as a member, never bootstrap again).
        let restored = raft
            .with_raft_state(|st| *st.membership_state.effective().log_id())
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        raft.wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| *m.membership_config.log_id() == restored,
                "restored membership",
            )
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        tokio::spawn(finish_joint_changes(raft.clone()));
        Ok(ConsensusNode {
            inner: Arc::new(NodeInner {
                id,
                raft,
                sm,
                transport,
                acks,
                max_voters: cfg.max_voters.max(1),
                had_state,
                join_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Whether the directory held Raft state when opened (a restart).
    pub fn had_state(&self) -> bool {
        self.inner.had_state
    }

    /// The replicated state as applied on this node.
    pub fn state(&self) -> ClusterState {
        self.inner.sm.state()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.inner.raft.metrics().borrow().clone()
    }

    /// When each node last acknowledged this node's AppendEntries
    /// (heartbeats included): meaningful on the leader.
    pub fn acks(&self) -> BTreeMap<NodeId, Instant> {
        self.inner.acks.snapshot()
    }

    /// `Some(Advert::Member)` once this node is in a group's membership
    /// (voter or learner); `None` while it still has to bootstrap or join.
    pub fn member_advert(&self) -> Option<Advert> {
        let m = self.metrics();
        let in_group = m
            .membership_config
            .membership()
            .get_node(&self.inner.id)
            .is_some();
        in_group.then_some(Advert::Member {
            leader: m.current_leader,
        })
    }

    /// Initializes a new group with `voters` (id -> agent address). Only the
    /// node that [`bootstrap::decide`] told to do so may call this.
    pub async fn initialize(&self, voters: BTreeMap<NodeId, String>) -> Result<(), ConsensusError> {
        let nodes: BTreeMap<NodeId, BasicNode> = voters
            .into_iter()
            .map(|(id, a)| (id, BasicNode::new(a)))
            .collect();
        self.inner
            .raft
            .initialize(nodes)
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))
    }

    /// Asks `via` to add this node (following leader redirects a few hops).
    pub async fn join_via(
        &self,
        via: NodeId,
        addr: &str,
        member: Option<Member>,
    ) -> Result<JoinResponse, Unreachable> {
        let req = JoinRequest {
            id: self.inner.id,
            addr: addr.to_string(),
            member,
        };
        let mut target = via;
        for _ in 0..3 {
            let resp = if target == self.inner.id {
                RpcResponse::Join(self.handle_join(req.clone()).await)
            } else {
                self.inner
                    .transport
                    .call(target, RpcRequest::Join(req.clone()))
                    .await?
            };
            match resp {
                RpcResponse::Join(JoinResponse::NotLeader { leader: Some(l) }) if l != target => {
                    target = l
                }
                RpcResponse::Join(r) => return Ok(r),
                _ => return Ok(JoinResponse::Retry("response of the wrong kind".into())),
            }
        }
        Ok(JoinResponse::Retry("too many redirects".into()))
    }

    /// Proposes `cmd` (on the leader; elsewhere it is refused).
    pub async fn write(&self, cmd: Command) -> Result<Response, ConsensusError> {
        self.inner
            .raft
            .client_write(cmd)
            .await
            .map(|r| r.data)
            .map_err(|e| ConsensusError::Raft(e.to_string()))
    }

    /// Proposes `cmd` wherever this node is: written directly on the leader,
    /// forwarded to the leader (following one redirect) elsewhere. Only
    /// [`Command::RecordStep`] for this node's own steps may be forwarded.
    pub async fn propose(&self, cmd: Command) -> Result<Response, ConsensusError> {
        let mut target = self.metrics().current_leader;
        for _ in 0..3 {
            let Some(leader) = target else {
                return Err(ConsensusError::Raft("no leader known".into()));
            };
            if leader == self.inner.id {
                return self.write(cmd).await;
            }
            let req = RpcRequest::Propose {
                from: self.inner.id,
                command: cmd.clone(),
            };
            match self.inner.transport.call(leader, req).await {
                Ok(RpcResponse::Propose(ProposeResponse::Applied(r))) => return Ok(r),
                Ok(RpcResponse::Propose(ProposeResponse::NotLeader { leader: l })) => target = l,
                Ok(RpcResponse::Propose(ProposeResponse::Refused(why))) => {
                    return Err(ConsensusError::Raft(format!("leader refused: {why}")))
                }
                Ok(_) => return Err(ConsensusError::Raft("answer of the wrong kind".into())),
                Err(e) => return Err(ConsensusError::Raft(e.to_string())),
            }
        }
        Err(ConsensusError::Raft("too many redirects".into()))
    }

    async fn handle_propose(&self, from: NodeId, command: Command) -> ProposeResponse {
        match &command {
            Command::RecordStep(r) if r.node == from => {}
            _ => return ProposeResponse::Refused("only a node's own step records".into()),
        }
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return ProposeResponse::NotLeader {
                leader: m.current_leader.filter(|&l| l != self.inner.id),
            };
        }
        match self.write(command).await {
            Ok(r) => ProposeResponse::Applied(r),
            Err(e) => ProposeResponse::Refused(e.to_string()),
        }
    }

    /// Serves one RPC from another node.
    pub async fn handle_rpc(&self, req: RpcRequest) -> RpcResponse {
        let raft = &self.inner.raft;
        match req {
            RpcRequest::AppendEntries(r) => {
                RpcResponse::AppendEntries(raft.append_entries(r).await)
            }
            RpcRequest::Vote(r) => RpcResponse::Vote(raft.vote(r).await),
            RpcRequest::InstallSnapshot(r) => {
                RpcResponse::InstallSnapshot(raft.install_snapshot(r).await)
            }
            RpcRequest::Join(r) => RpcResponse::Join(self.handle_join(r).await),
            RpcRequest::Propose { from, command } => {
                RpcResponse::Propose(self.handle_propose(from, command).await)
            }
        }
    }

    async fn handle_join(&self, req: JoinRequest) -> JoinResponse {
        let raft = &self.inner.raft;
        let _g = self.inner.join_lock.lock().await;
        let m = self.metrics();
        // A member's id joining from another address: a second host with the
        // same id (a cloned disk). Never let it overwrite the member. Any
        // member answers this, not only the leader: a clone of the leader's
        // disk would otherwise be sent on to "the leader", its own id, which
        // it cannot reach, and never learn why it is not admitted.
        if let Some(n) = m.membership_config.membership().get_node(&req.id) {
            if n.addr != req.addr {
                return JoinResponse::Retry(format!(
                    "node id {:016x} is already the member at {}: duplicate node id (a cloned \
                     disk that kept /etc/machine-id?)",
                    req.id, n.addr
                ));
            }
        }
        if m.state != ServerState::Leader {
            return JoinResponse::NotLeader {
                leader: m.current_leader.filter(|&l| l != self.inner.id),
            };
        }
        let not_leader = |e: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                Some(JoinResponse::NotLeader {
                    leader: f.leader_id,
                })
            }
            _ => None,
        };
        if m.membership_config.membership().get_node(&req.id).is_none() {
            let add = raft.add_learner(req.id, BasicNode::new(req.addr.clone()), true);
            match tokio::time::timeout(JOIN_TIMEOUT, add).await {
                Err(_) => return JoinResponse::Retry("learner did not catch up in time".into()),
                Ok(Err(e)) => {
                    return not_leader(&e).unwrap_or_else(|| JoinResponse::Retry(e.to_string()))
                }
                Ok(Ok(_)) => {}
            }
        }
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut voter = voters.contains(&req.id);
        // Other learners, the one that answered most recently first.
        let acks = self.acks();
        // Never a node that keeps /var in RAM: it forgets its vote and log
        // on a reboot and comes back under the same id (its SMBIOS UUID).
        let state = self.state();
        let in_ram = |id: &NodeId| state.members.get(id).is_some_and(|m| m.var_in_ram);
        let mut others: Vec<NodeId> = membership
            .learner_ids()
            .filter(|l| *l != req.id && !in_ram(l))
            .collect();
        others.sort_by_key(|l| std::cmp::Reverse(acks.get(l).copied()));
        let joiner_in_ram = req.member.as_ref().is_some_and(|m| m.var_in_ram);
        let promote = if joiner_in_ram {
            BTreeSet::new()
        } else {
            promotion(voters.len(), req.id, &others, self.inner.max_voters)
        };
        if !voter && !promote.is_empty() {
            let ch = raft.change_membership(ChangeMembers::AddVoterIds(promote), false);
            match tokio::time::timeout(JOIN_TIMEOUT, ch).await {
                Err(_) => return JoinResponse::Retry("promotion timed out".into()),
                Ok(Err(e)) => {
                    return not_leader(&e).unwrap_or_else(|| JoinResponse::Retry(e.to_string()))
                }
                Ok(Ok(_)) => voter = true,
            }
        }
        if let Some(member) = req.member {
            if self.state().members.get(&member.id) != Some(&member) {
                match tokio::time::timeout(
                    JOIN_TIMEOUT,
                    raft.client_write(Command::UpsertMember(member)),
                )
                .await
                {
                    Err(_) => return JoinResponse::Retry("member write timed out".into()),
                    Ok(Err(e)) => {
                        return not_leader(&e).unwrap_or_else(|| JoinResponse::Retry(e.to_string()))
                    }
                    Ok(Ok(_)) => {}
                }
            }
        }
        JoinResponse::Joined { voter }
    }

    /// Stops Raft (the state stays in the directory).
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// The learners to promote to voters when `joiner` (a learner) asks to
/// join a group of `voters` voters with room for `max_voters`: the voter
/// count stays odd (an even count tolerates no more failures than one
/// voter fewer and needs one more ack per commit). An even count (a group
/// initialized with an even `bootstrap_expect`) grows by the joiner alone;
/// an odd one by two, the joiner and the first of `others` (the other
/// learners, by preference), or not at all while the joiner is the only
/// learner. Empty: the joiner stays a learner.
pub fn promotion(
    voters: usize,
    joiner: NodeId,
    others: &[NodeId],
    max_voters: usize,
) -> BTreeSet<NodeId> {
    let room = max_voters.saturating_sub(voters);
    match others.first() {
        _ if room == 0 => BTreeSet::new(),
        _ if voters.is_multiple_of(2) => BTreeSet::from([joiner]),
        Some(other) if room >= 2 => BTreeSet::from([joiner, *other]),
        _ => BTreeSet::new(),
    }
}

/// A leader that finds the membership in a joint configuration completes
/// the change to its target (the last config). openraft leaves a joint
/// configuration in place when the leader that started the change is gone;
/// without this, a group can stay joint forever (seed 1091 of the fault
/// suite: a promotion cut short by a crash). Ends when Raft stops.
async fn finish_joint_changes(raft: Raft) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = raft.metrics().borrow().clone();
        if m.running_state.is_err() {
            return;
        }
        let configs = m.membership_config.membership().get_joint_config();
        if m.state != ServerState::Leader || configs.len() < 2 {
            continue;
        }
        let target = configs.last().cloned().unwrap_or_default();
        tracing::info!(voters = ?target, "completing a joint membership change");
        let change = raft.change_membership(ChangeMembers::ReplaceAllVoters(target), true);
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), change).await {
            tracing::debug!(error = %e, "completing a joint membership change");
        }
    }
}

impl RpcHandler for ConsensusNode {
    fn handle(&self, rpc: RpcRequest) -> BoxFuture<'_, RpcResponse> {
        Box::pin(self.handle_rpc(rpc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotions_keep_the_voter_count_odd() {
        // 3 voters, the joiner the only learner: it waits (4 nodes = 3 + 1).
        assert!(promotion(3, 4, &[], 5).is_empty());
        // The fifth node joins: it and the waiting learner become voters.
        assert_eq!(promotion(3, 5, &[4], 5), BTreeSet::from([4, 5]));
        // Full: learners stay learners.
        assert!(promotion(5, 6, &[7], 5).is_empty());
        assert!(promotion(7, 8, &[9], 5).is_empty());
        // One slot left: never an even count.
        assert!(promotion(5, 6, &[7], 6).is_empty());
        // An even group (bootstrap_expect 4) grows by one to odd.
        assert_eq!(promotion(4, 5, &[], 5), BTreeSet::from([5]));
        // A single-voter group grows to 3.
        assert_eq!(promotion(1, 2, &[3], 5), BTreeSet::from([2, 3]));
        for voters in 1..9 {
            for max in 1..9 {
                for others in [&[][..], &[100][..], &[100, 101][..]] {
                    let p = promotion(voters, 99, others, max);
                    let after = voters + p.len();
                    assert!(p.is_empty() || (!after.is_multiple_of(2) && after <= max));
                }
            }
        }
    }
}
