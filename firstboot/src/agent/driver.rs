//! The bootstrap driver: one agent's decide → record → initialize → join →
//! leader-duties loop, one round per [`Driver::step`]. This is the only copy
//! of that loop; the agent, the fault simulation and the bench all run it.
//!
//! Its I/O sits behind two small traits and the Raft node's transport:
//!
//! - [`PeerView`]: the discovery view (verified peers with their announced
//!   [`RaftState`]), this node's announcement, agent addresses, and the
//!   duplicate-id alarm;
//! - [`Reporter`]: phase changes and console events (in particular the
//!   "initializing the group" event, so a test can count `initialize()`
//!   calls);
//! - the Raft transport is the [`ConsensusNode`]'s
//!   [`RpcTransport`](crate::consensus::router::RpcTransport) (Noise over
//!   TCP in the agent, [`MemRouter`](crate::consensus::router::MemRouter) in
//!   process).
//!
//! Time is tokio's/std's real clock (join pacing, down detection); nothing
//! here sleeps: the caller decides when the next round runs.
//!
//! Call paths:
//!
//! - agent: `main.rs` → [`agent::run`](crate::agent::run) → builds the
//!   driver over [`MdnsView`](crate::agent::MdnsView) (mDNS
//!   [`Discovery`](crate::discovery::Discovery)) and
//!   [`ConsoleReporter`] → on every peer event or 300 ms tick
//!   [`Driver::step`], then publishes the status document from the driver's
//!   state;
//! - simulation: `tests/consensus_cluster.rs` → `Cluster::start` builds a
//!   driver over an in-memory view (announcements shared between nodes,
//!   honouring `MemRouter::can_talk`) and a counting reporter → a task
//!   calls [`Driver::step`] every 25 ms while holding the node's init gate;
//! - bench: `benches/agent/inproc.rs` → `run` builds the same in-memory
//!   view → a task per node calls [`Driver::step`] every tick.
//!
//! One round ([`Driver::step`]): refuse to act under a duplicate node id
//! (unless already a member); not in a group → [`bootstrap::decide`] and act
//! on it (record and save a proposal or lock, initialize the group once,
//! ask the group to admit this node); in a group → make sure this node's
//! facts are in the replicated state and, on the leader, run the leader
//! duties: commit the plan when the planner's answer moves, issue the PKI
//! the plan needs, and record members that stopped acknowledging the
//! leader as down (and up again when they answer).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::advert;
use super::phase::{self, Phase};
use crate::cluster::ClusterConfig;
use crate::consensus::bootstrap::{self, Advert, BootstrapState, Decision, WaitReason};
use crate::consensus::router::JoinResponse;
use crate::consensus::{ConsensusError, ConsensusNode};
use crate::discovery::{Peer, RaftState};
use crate::secretbox::SecretBox;
use crate::state::{ClusterState, Command, Member, NodeId};

/// At most one join request in flight, and at most one per this interval.
const JOIN_EVERY: Duration = Duration::from_secs(1);
/// A leader-duty write that has not committed by then is given up (and
/// retried next round): a leader cut off from its quorum would otherwise
/// hold the loop (and the status) until the partition heals.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the driver sees of discovery, and how it announces itself.
pub trait PeerView: Send {
    /// Verified peers seen now (not this node), with their announced state.
    fn peers(&self) -> Vec<Peer>;
    /// Announces this node's state; `Err` leaves the old announcement (the
    /// driver retries next round).
    fn announce(&mut self, state: RaftState) -> Result<(), String>;
    /// Another host announcing this node's id (a cloned disk): its address.
    fn duplicate_id(&self) -> Option<IpAddr>;
    /// The agent address of `id` (as stored in the Raft membership).
    fn addr_of(&self, id: NodeId) -> Option<String>;
    /// The Raft membership says `id` listens at `addr`.
    fn learn(&mut self, id: NodeId, addr: &str);
}

/// Where the driver reports what it does.
pub trait Reporter: Send {
    /// The phase changed (called once per change).
    fn phase(&mut self, node: NodeId, phase: &Phase);
    /// This node is about to initialize the group with `voters`.
    fn initializing(&mut self, voters: &BTreeSet<NodeId>);
    /// The `initialize()` call returned.
    fn initialized(&mut self, voters: &BTreeSet<NodeId>, result: Result<(), &ConsensusError>);
    /// One human line for the console.
    fn event(&mut self, line: &str);
}

/// The agent's reporter: phase lines (human and `HABUILD-PHASE {json}`) and
/// events on stdout.
#[derive(Debug, Default)]
pub struct ConsoleReporter {
    printed: Option<Phase>,
}

impl Reporter for ConsoleReporter {
    fn phase(&mut self, node: NodeId, p: &Phase) {
        phase::report(&mut self.printed, p.clone(), node);
    }

    fn initializing(&mut self, voters: &BTreeSet<NodeId>) {
        println!(
            "habuild-agent: initializing the group with {}",
            hex_ids(voters)
        );
    }

    fn initialized(&mut self, _voters: &BTreeSet<NodeId>, result: Result<(), &ConsensusError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "raft initialize");
        }
    }

    fn event(&mut self, line: &str) {
        println!("habuild-agent: {line}");
    }
}

/// What the driver needs besides its I/O.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// This node's facts, as they must appear in the replicated state.
    pub me: Member,
    /// This node's agent address (stored as its Raft node).
    pub addr: String,
    pub cluster: ClusterConfig,
    /// Where the bootstrap state is saved.
    pub state_dir: PathBuf,
    /// The planner's kubeadm token seed.
    pub token_seed: [u8; 32],
    pub sbox: Arc<SecretBox>,
    /// A member that has not acknowledged the leader for this long is down.
    pub down_after: Duration,
    /// A fresh node (no Raft state, nothing proposed yet) listens this long
    /// for an existing group before it proposes, locks or initializes one:
    /// discovery's first answers take a moment (mDNS queries, a starved
    /// peer), and a node added later to a cluster with a small
    /// `bootstrap_expect` (1: a one-node cluster) would otherwise form a
    /// group of its own before it saw the cluster it was meant to join.
    /// Joining a group it sees is never delayed.
    pub listen_first: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("saving the bootstrap state in {dir}: {source}")]
    SaveBootstrap {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The announcement a node starts with: member if its Raft state says so,
/// else join-only for a node that keeps `/var` in RAM (`me.var_in_ram`),
/// else its bootstrap advert.
pub fn first_announcement(node: &ConsensusNode, boot: &BootstrapState, me: &Member) -> RaftState {
    match node.member_advert() {
        Some(_) => RaftState::Member,
        None if me.var_in_ram => advert::join_only(),
        None => match boot.advert() {
            Advert::Booting { proposal, locked } => advert::encode(proposal.as_deref(), locked),
            Advert::Member { .. } | Advert::JoinOnly => RaftState::Member,
        },
    }
}

/// One node's bootstrap and leader-duty loop (see the module docs).
pub struct Driver<V: PeerView, R: Reporter> {
    cfg: DriverConfig,
    node: ConsensusNode,
    view: V,
    report: R,
    boot: BootstrapState,
    announced: RaftState,
    phase: Option<Phase>,
    waiting: Option<String>,
    error: Option<String>,
    join: Option<tokio::task::JoinHandle<()>>,
    last_join: Option<Instant>,
    /// The last reason a join request was refused.
    join_refused: Arc<Mutex<Option<String>>>,
    /// This driver initialized the group (it does so at most once).
    initialized: bool,
    /// (plan version, secret count) the PKI was last checked against.
    pki_checked: Option<(u64, usize)>,
    /// When this node last became leader (down detection counts from here).
    leader_since: Option<Instant>,
    /// When the first bootstrap round ran ([`DriverConfig::listen_first`]).
    listening_since: Option<Instant>,
}

impl<V: PeerView, R: Reporter> Drop for Driver<V, R> {
    fn drop(&mut self) {
        // A join request must not outlive its driver (a crashed node).
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

impl<V: PeerView, R: Reporter> Driver<V, R> {
    /// A driver for `node`; `announced` is what the view announces now
    /// (see [`first_announcement`]).
    pub fn new(
        cfg: DriverConfig,
        node: ConsensusNode,
        boot: BootstrapState,
        announced: RaftState,
        view: V,
        report: R,
    ) -> Self {
        Driver {
            cfg,
            node,
            view,
            report,
            boot,
            announced,
            phase: None,
            waiting: None,
            error: None,
            join: None,
            last_join: None,
            join_refused: Arc::default(),
            initialized: false,
            pki_checked: None,
            leader_since: None,
            listening_since: None,
        }
    }

    pub fn node(&self) -> &ConsensusNode {
        &self.node
    }

    pub fn view(&self) -> &V {
        &self.view
    }

    pub fn view_mut(&mut self) -> &mut V {
        &mut self.view
    }

    pub fn reporter(&self) -> &R {
        &self.report
    }

    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// The current phase (`None` before the first round).
    pub fn phase(&self) -> Option<&Phase> {
        self.phase.as_ref()
    }

    /// What this node waits for, in words.
    pub fn waiting(&self) -> Option<&str> {
        self.waiting.as_deref()
    }

    /// A condition the operator must fix.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Since when this node is leader, as the driver saw it (`None`: not
    /// the leader at the last round).
    pub fn leader_since(&self) -> Option<Instant> {
        self.leader_since
    }

    /// One round (see the module docs).
    pub async fn step(&mut self) -> Result<(), DriverError> {
        self.learn_addresses();
        if let Some(ip) = self.view.duplicate_id() {
            // Two hosts with one id would corrupt the group: do nothing but say so.
            let msg = format!(
                "a fresh machine-id: {ip} announces this node's id {:016x} too (a cloned disk \
                 that kept /etc/machine-id? empty it on one of them and reboot)",
                self.cfg.me.id
            );
            if self.error.as_deref() != Some(msg.as_str()) {
                self.report
                    .event(&format!("error: duplicate node id; waiting for {msg}"));
                self.error = Some(msg.clone());
            }
            // A member keeps serving its group; a node that is not in one
            // yet must not bootstrap or join under a shared id.
            if self.node.member_advert().is_none() {
                self.waiting = Some(msg);
                return Ok(());
            }
        }
        let next = match self.node.member_advert() {
            Some(_) => self.as_member().await,
            None => self.bootstrap().await?,
        };
        if self.phase.as_ref() != Some(&next) {
            self.report.phase(self.cfg.me.id, &next);
            self.phase = Some(next);
        }
        Ok(())
    }

    /// Agent addresses from the Raft membership.
    fn learn_addresses(&mut self) {
        let m = self.node.metrics();
        for (id, n) in m.membership_config.membership().nodes() {
            self.view.learn(*id, &n.addr);
        }
    }

    fn announce(&mut self, state: RaftState) {
        if state == self.announced {
            return;
        }
        match self.view.announce(state) {
            Ok(()) => self.announced = state,
            Err(e) => tracing::warn!(error = %e, "announcing the raft state"),
        }
    }

    /// Not in a group yet: the bootstrap decision.
    async fn bootstrap(&mut self) -> Result<Phase, DriverError> {
        let me = self.cfg.me.id;
        let expect = self.cfg.cluster.cluster.bootstrap_expect as usize;
        let peers = self.bootstrap_peers(expect);
        if self.cfg.me.var_in_ram {
            return Ok(self.join_only(&peers));
        }
        let decision = bootstrap::decide(me, expect, &self.boot, &peers);
        let since = *self.listening_since.get_or_insert_with(Instant::now);
        let fresh = self.boot.proposed.is_empty() && self.boot.locked.is_none();
        let forms = matches!(
            decision,
            Decision::Propose { .. } | Decision::Lock { .. } | Decision::Initialize(_)
        );
        let left = self.cfg.listen_first.saturating_sub(since.elapsed());
        if fresh && forms && !left.is_zero() {
            self.waiting = Some(format!(
                "listening {:.0} s more for an existing group before forming one",
                left.as_secs_f64().ceil()
            ));
            // itself and the peers it sees
            return Ok(Phase::Discovering {
                seen: peers.len() + 1,
                expected: expect,
            });
        }
        let phase = match &decision {
            Decision::Wait(WaitReason::NotEnoughPeers { seen, expected }) => {
                self.waiting = Some(format!(
                    "verified peers: sees {seen} of the {expected} nodes needed to form"
                ));
                Phase::Discovering {
                    seen: *seen,
                    expected: *expected,
                }
            }
            Decision::Wait(WaitReason::WaitingForLocks { missing }) => {
                self.waiting = Some(format!("voter-set locks from {}", hex_ids(missing)));
                Phase::Forming
            }
            Decision::Wait(WaitReason::InitializerIs(id)) => {
                self.waiting = Some(format!("{id:016x} to initialize the group"));
                Phase::Forming
            }
            Decision::Wait(WaitReason::NoGroupToJoin) => {
                self.waiting = Some("a group to join".into());
                Phase::Discovering {
                    seen: peers.len() + 1,
                    expected: expect,
                }
            }
            Decision::Propose { .. } | Decision::Lock { .. } => {
                if self.boot.record(&decision) {
                    self.boot.save(&self.cfg.state_dir).map_err(|source| {
                        DriverError::SaveBootstrap {
                            dir: self.cfg.state_dir.clone(),
                            source,
                        }
                    })?;
                }
                self.waiting = Some("agreement on the initial voter set".into());
                Phase::Forming
            }
            Decision::Initialize(set) => {
                let voters: BTreeMap<NodeId, String> = set
                    .iter()
                    .filter_map(|id| self.view.addr_of(*id).map(|a| (*id, a)))
                    .collect();
                // Once it succeeded, never again: the membership shows up a
                // moment later, and a second call would only be refused.
                if voters.len() == set.len() && !self.initialized {
                    self.report.initializing(set);
                    let r = self.node.initialize(voters).await;
                    self.report.initialized(set, r.as_ref().map(|_| ()));
                    self.initialized = r.is_ok();
                }
                self.waiting = Some("the new group to elect a leader".into());
                Phase::Forming
            }
            Decision::JoinExisting { via } => self.join_through(*via),
        };
        if let Advert::Booting { proposal, locked } = self.boot.advert() {
            self.announce(advert::encode(proposal.as_deref(), locked));
        }
        Ok(phase)
    }

    /// A node that keeps `/var` in RAM: it joins a group it sees and never
    /// founds one ([`bootstrap::decide_join_only`]); it announces itself
    /// join-only so that booting nodes leave it out of their voter sets.
    fn join_only(&mut self, peers: &[bootstrap::Peer]) -> Phase {
        self.announce(advert::join_only());
        match bootstrap::decide_join_only(self.cfg.me.id, peers) {
            Decision::JoinExisting { via } => self.join_through(via),
            _ => {
                self.waiting =
                    Some("a group to join (/var is in RAM: this node never founds one)".into());
                Phase::Discovering {
                    seen: peers.len() + 1,
                    expected: self.cfg.cluster.cluster.bootstrap_expect as usize,
                }
            }
        }
    }

    /// Asks `via` for admission (at most every [`JOIN_EVERY`]).
    fn join_through(&mut self, via: NodeId) -> Phase {
        self.spawn_join(via);
        let refused = self
            .join_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.waiting = Some(match refused {
            Some(why) => format!("admission through {via:016x} (last answer: {why})"),
            None => format!("admission through {via:016x}"),
        });
        Phase::Joining
    }

    /// Verified peers as the bootstrap decision sees them.
    fn bootstrap_peers(&self, expect: usize) -> Vec<bootstrap::Peer> {
        let peers = self.view.peers();
        let leader = peers
            .iter()
            .find(|p| p.state == RaftState::Leader)
            .map(|p| p.id);
        let mut view: BTreeSet<NodeId> = peers
            .iter()
            .filter(|p| p.state != advert::join_only())
            .map(|p| p.id)
            .collect();
        view.insert(self.cfg.me.id);
        let candidate: BTreeSet<NodeId> = view.into_iter().take(expect.max(1)).collect();
        let known: Vec<String> = self
            .boot
            .proposed
            .iter()
            .chain(self.boot.locked.iter())
            .chain([&candidate])
            .map(bootstrap::voter_set_hash)
            .collect();
        peers
            .iter()
            .filter(|p| p.id != self.cfg.me.id)
            .map(|p| bootstrap::Peer {
                id: p.id,
                advert: match p.state {
                    RaftState::Leader => Advert::Member { leader: Some(p.id) },
                    RaftState::Member => Advert::Member { leader },
                    RaftState::Forming { voters } => advert::decode(voters, &known),
                },
            })
            .collect()
    }

    /// Asks `via` (following redirects) to add this node with its facts.
    fn spawn_join(&mut self, via: NodeId) {
        if self.join.as_ref().is_some_and(|j| !j.is_finished())
            || self.last_join.is_some_and(|t| t.elapsed() < JOIN_EVERY)
        {
            return;
        }
        self.last_join = Some(Instant::now());
        let node = self.node.clone();
        let (addr, member) = (self.cfg.addr.clone(), self.cfg.me.clone());
        let refused = self.join_refused.clone();
        self.join = Some(tokio::spawn(async move {
            let why = match node.join_via(via, &addr, Some(member)).await {
                Ok(JoinResponse::Retry(why)) => Some(why),
                Ok(r) => {
                    tracing::debug!(?r, "join");
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, "join");
                    None
                }
            };
            *refused.lock().unwrap_or_else(|e| e.into_inner()) = why;
        }));
    }

    /// In the group: our facts in the state; on the leader, its duties.
    async fn as_member(&mut self) -> Phase {
        let m = self.node.metrics();
        let me = self.cfg.me.id;
        let leader = m.state == ServerState::Leader;
        self.announce(if leader {
            RaftState::Leader
        } else {
            RaftState::Member
        });
        let state = self.node.state();
        if state.members.get(&me) != Some(&self.cfg.me) {
            if let Some(l) = m.current_leader {
                self.spawn_join(l);
            }
        }
        self.waiting = None;
        if m.current_leader.is_none() {
            self.waiting = Some("a leader to be elected".into());
        }
        if leader {
            let since = *self.leader_since.get_or_insert_with(Instant::now);
            self.plan(&state).await;
            self.issue_pki().await;
            self.health(since).await;
        } else {
            self.leader_since = None;
        }
        let state = self.node.state();
        match &state.plan {
            Some(p) => Phase::Planned {
                role: p.role_of(me),
                plan: p.version,
            },
            None => {
                if self.waiting.is_none() {
                    self.waiting = Some(format!(
                        "the leader to commit the first plan ({} of {} members known)",
                        state.members.len(),
                        self.cfg.cluster.cluster.bootstrap_expect
                    ));
                }
                Phase::Member {
                    leader: m.current_leader,
                    term: m.current_term,
                }
            }
        }
    }

    /// Proposes `cmd` on this (leader) node, giving up after [`WRITE_TIMEOUT`].
    async fn write(&self, cmd: Command) -> Result<crate::state::Response, String> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.node.write(cmd)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("not committed within {WRITE_TIMEOUT:?}")),
        }
    }

    /// Leader: commit a new plan when the planner's answer moved.
    async fn plan(&mut self, state: &ClusterState) {
        if state.members.len() < self.cfg.cluster.cluster.bootstrap_expect as usize {
            return;
        }
        let prev = state.plan.as_ref();
        match crate::plan::plan(
            &state.members,
            &self.cfg.cluster,
            prev,
            &self.cfg.token_seed,
        ) {
            Ok(p) if Some(p.version) != prev.map(|p| p.version) => {
                let v = p.version;
                match self.write(Command::SetPlan(p)).await {
                    Ok(r) => tracing::info!(version = v, response = ?r, "plan committed"),
                    Err(e) => tracing::warn!(error = %e, "committing the plan"),
                }
            }
            Ok(_) => {}
            Err(e) => self.waiting = Some(format!("a valid plan: {e}")),
        }
    }

    /// Leader: issue the PKI items the committed plan still needs.
    async fn issue_pki(&mut self) {
        let state = self.node.state();
        let Some(plan) = &state.plan else { return };
        let key = (plan.version, state.secrets.len());
        if self.pki_checked == Some(key) {
            return;
        }
        match super::converge::issue_pki(&state, &self.cfg.cluster, &self.cfg.sbox) {
            Ok(None) => self.pki_checked = Some(key),
            Ok(Some(cmd)) => match self.write(cmd).await {
                Ok(_) => self.report.event(&format!(
                    "issued the cluster PKI for plan v{}",
                    plan.version
                )),
                Err(e) => tracing::warn!(error = %e, "committing the PKI"),
            },
            Err(e) => {
                self.waiting = Some(format!("issuing the PKI: {e}"));
                tracing::warn!(error = %e, "issuing the PKI");
            }
        }
    }

    /// Leader: record members that stopped acknowledging as down, and
    /// members that answer again as up (`Command::SetHealth`).
    async fn health(&mut self, leader_since: Instant) {
        let state = self.node.state();
        let now = Instant::now();
        let ages = member_ack_ages(&self.node, &state, leader_since, now);
        for (id, m) in &state.members {
            let down = match ages.get(id) {
                None => false, // this node: the leader answers itself
                Some(age) => *age >= self.cfg.down_after,
            };
            if m.healthy != down {
                continue;
            }
            let healthy = !down;
            match self.write(Command::SetHealth { id: *id, healthy }).await {
                Ok(_) => self.report.event(&format!(
                    "member {id:016x} ({}) is {}",
                    m.hostname,
                    if healthy {
                        "answering again"
                    } else {
                        "down: it stopped acknowledging the leader"
                    }
                )),
                Err(e) => {
                    // Not committing (lost the quorum?): the rest waits for
                    // the next round.
                    tracing::warn!(error = %e, "recording member health");
                    break;
                }
            }
        }
    }
}

/// How long ago each member (but `node` itself) last acknowledged `node`
/// as leader, counting from `leader_since` for members that have not yet.
pub fn member_ack_ages(
    node: &ConsensusNode,
    state: &ClusterState,
    leader_since: Instant,
    now: Instant,
) -> BTreeMap<NodeId, Duration> {
    let acks = node.acks();
    state
        .members
        .keys()
        .filter(|id| **id != node.id())
        .map(|id| {
            let last = acks
                .get(id)
                .copied()
                .filter(|t| *t > leader_since)
                .unwrap_or(leader_since);
            (*id, now.saturating_duration_since(last))
        })
        .collect()
}

fn hex_ids<'a>(ids: impl IntoIterator<Item = &'a NodeId>) -> String {
    ids.into_iter()
        .map(|i| format!("{i:016x}"))
        .collect::<Vec<_>>()
        .join(",")
}
