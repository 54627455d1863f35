//! The running agent (`habuild-agent run`): transport, consensus, discovery,
//! the bootstrap decision and the planner wired into one tokio loop.
//!
//! [`run`] reads like the steps: load or make the node's Noise static key →
//! listen on the agent port → open the Raft node (state in
//! `<state dir>/raft`) with RPCs over the transport ([`rpc`]) → serve RPCs
//! and the status socket ([`status`]) → announce over mDNS → loop over peer
//! events and a short tick ([`Agent::step`]): while not in a group, run
//! [`bootstrap::decide`] and act on it; once in a group, make sure this
//! node's facts are in the replicated state (a join request to the leader),
//! and, on the leader, commit the plan when it changes. Each phase change
//! prints one human line and one `HABUILD-PHASE {json}` line ([`phase`]).

pub mod advert;
pub mod converge;
pub mod phase;
pub mod rpc;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::ServerState;
use serde_json::json;

use self::phase::Phase;
use self::rpc::{AddrBook, TransportRpc};
use crate::cluster::{ClusterConfig, Ipv4Cidr};
use crate::consensus::bootstrap::{self, Advert, BootstrapState, Decision, WaitReason};
use crate::consensus::router::JoinResponse;
use crate::consensus::{ConsensusConfig, ConsensusNode};
use crate::discovery::{
    Announcement, Discovery, DiscoveryConfig, Interfaces, MdnsKey, Peer, PeerEvent, RaftState,
};
use crate::secretbox::SecretBox;
use crate::state::{Command, Member, NodeId};
use crate::transport::{self, Keys};

/// The agent's TCP port (Raft RPCs, joins, status), on every node.
pub const AGENT_PORT: u16 = 7946;
/// Default state directory (on the data partition).
pub const STATE_DIR: &str = "/var/lib/habuild";
/// The node's Noise static private key, in the state directory (mode 0600).
const KEY_FILE: &str = "transport.key";
/// How often the loop re-evaluates without a peer event.
const TICK: Duration = Duration::from_millis(300);
/// At most one join request in flight, and at most one per this interval.
const JOIN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct AgentConfig {
    pub cluster: ClusterConfig,
    pub state_dir: PathBuf,
    /// Where the transport listens (port: [`AGENT_PORT`]).
    pub listen: SocketAddr,
    pub node_id: NodeId,
    pub hostname: String,
    /// This node's address on the cluster network and its prefix.
    pub advertise: Ipv4Cidr,
    /// Restrict mDNS to this interface.
    pub interface: Option<String>,
    pub status_socket: PathBuf,
    pub consensus: ConsensusConfig,
    /// Host root the converge steps write under (`/` on a node).
    pub root: PathBuf,
    /// How the steps run services.
    pub services: converge::ServiceMode,
}

/// Runs the agent until an unrecoverable error.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let keys = Arc::new(Keys::derive(
        &cfg.cluster.cluster.secret,
        load_or_make_static_key(&cfg.state_dir)?,
    ));
    let my_addr = SocketAddr::new(IpAddr::V4(cfg.advertise.addr), cfg.listen.port());
    let addrs = AddrBook::default();
    addrs.set(cfg.node_id, my_addr);

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let transport_rpc = Arc::new(TransportRpc {
        keys: keys.clone(),
        addrs: addrs.clone(),
    });
    let node = ConsensusNode::open(
        cfg.node_id,
        &cfg.state_dir.join("raft"),
        &cfg.consensus,
        transport_rpc,
    )
    .await
    .context("opening the Raft state")?;

    let status = status::Shared::default();
    let handshakes = Arc::new(transport::HandshakeCounters::default());
    tokio::spawn(transport::serve(listener, keys, handshakes.clone(), {
        let (node, status) = (node.clone(), status.clone());
        move |req: transport::Request| rpc::handle(node.clone(), status.clone(), req.body)
    }));
    tokio::spawn(status::serve(
        status::bind(&cfg.status_socket)?,
        status.clone(),
    ));

    let sbox = Arc::new(SecretBox::derive(&cfg.cluster.cluster.secret));
    let step_views = converge::StepViews::default();
    let interface = match &cfg.interface {
        Some(i) => i.clone(),
        None => crate::netif::links(&crate::host::real::HostExec)
            .and_then(|links| crate::netif::interface_of(&links, cfg.advertise.addr))?,
    };
    tokio::spawn(converge::run(
        node.clone(),
        converge::ConvergeConfig {
            me: cfg.node_id,
            cluster: cfg.cluster.clone(),
            root: cfg.root.clone(),
            services: cfg.services.clone(),
            interface,
            agent_exe: std::env::current_exe()
                .context("locating the agent's own executable")?
                .display()
                .to_string(),
        },
        sbox.clone(),
        step_views.clone(),
    ));

    let boot = BootstrapState::load(&cfg.state_dir).context("loading bootstrap state")?;
    let announced = match node.member_advert() {
        Some(_) => RaftState::Member,
        None => match boot.advert() {
            Advert::Booting { proposal, locked } => advert::encode(proposal.as_deref(), locked),
            Advert::Member { .. } => RaftState::Member,
        },
    };
    let (discovery, mut events) = Discovery::start(
        DiscoveryConfig {
            key: MdnsKey::derive(&cfg.cluster.cluster.secret),
            interfaces: match &cfg.interface {
                Some(i) => Interfaces::Only(vec![i.clone()]),
                None => Interfaces::All,
            },
            mdns_port: mdns_sd::MDNS_PORT,
        },
        Announcement {
            cluster: cfg.cluster.cluster.name.clone(),
            node: cfg.node_id,
            port: my_addr.port(),
            state: announced,
        },
        vec![IpAddr::V4(cfg.advertise.addr)],
    )
    .context("starting mDNS discovery")?;

    let mut agent = Agent {
        me: member_facts(&cfg),
        my_addr,
        token_seed: token_seed(&cfg.cluster),
        cfg,
        node,
        discovery,
        announced,
        addrs,
        status,
        handshakes,
        peers: BTreeMap::new(),
        boot,
        phase: None,
        waiting: None,
        joining: Arc::new(AtomicBool::new(false)),
        last_join: None,
        sbox,
        step_views,
        pki_checked: None,
        error: None,
        join_refused: Arc::default(),
        initialized: false,
    };
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(PeerEvent::Seen(p)) => { agent.peers.insert(p.id, p); }
                Some(PeerEvent::Gone(id)) => { agent.peers.remove(&id); }
                None => anyhow::bail!("discovery stopped"),
            },
            _ = tick.tick() => {}
        }
        agent.step().await?;
    }
}

struct Agent {
    cfg: AgentConfig,
    me: Member,
    my_addr: SocketAddr,
    token_seed: [u8; 32],
    node: ConsensusNode,
    discovery: Discovery,
    announced: RaftState,
    addrs: AddrBook,
    status: status::Shared,
    handshakes: Arc<transport::HandshakeCounters>,
    peers: BTreeMap<NodeId, Peer>,
    boot: BootstrapState,
    phase: Option<Phase>,
    waiting: Option<String>,
    joining: Arc<AtomicBool>,
    last_join: Option<Instant>,
    sbox: Arc<SecretBox>,
    step_views: converge::StepViews,
    /// (plan version, secret count) the PKI was last checked against.
    pki_checked: Option<(u64, usize)>,
    /// A condition the operator must fix (shown in status).
    error: Option<String>,
    /// The last reason a join request was refused.
    join_refused: Arc<std::sync::Mutex<Option<String>>>,
    /// This agent initialized the group (it does so at most once).
    initialized: bool,
}

impl Agent {
    async fn step(&mut self) -> anyhow::Result<()> {
        self.learn_addresses();
        if let Some(ip) = self.discovery.stats().duplicate_id_addr {
            // Two hosts with one id would corrupt the group: do nothing but say so.
            let msg = format!(
                "a fresh machine-id: {ip} announces this node's id {:016x} too (a cloned disk \
                 that kept /etc/machine-id? empty it on one of them and reboot)",
                self.cfg.node_id
            );
            if self.error.as_deref() != Some(msg.as_str()) {
                println!("habuild-agent: error: duplicate node id; waiting for {msg}");
                self.error = Some(msg.clone());
            }
            // A member keeps serving its group; a node that is not in one
            // yet must not bootstrap or join under a shared id.
            if self.node.member_advert().is_none() {
                self.waiting = Some(msg);
                self.publish_status();
                return Ok(());
            }
        }
        let next = match self.node.member_advert() {
            Some(_) => self.as_member().await,
            None => self.bootstrap().await?,
        };
        phase::report(&mut self.phase, next, self.cfg.node_id);
        self.publish_status();
        Ok(())
    }

    /// Agent addresses from discovery (hints) and from the Raft membership.
    fn learn_addresses(&self) {
        for p in self.peers.values() {
            let ip = p
                .addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| p.addrs.first());
            if let Some(ip) = ip {
                self.addrs.set(p.id, SocketAddr::new(*ip, p.port));
            }
        }
        let m = self.node.metrics();
        for (id, n) in m.membership_config.membership().nodes() {
            if let Ok(a) = n.addr.parse() {
                self.addrs.set(*id, a);
            }
        }
    }

    fn announce(&mut self, state: RaftState) {
        if state == self.announced {
            return;
        }
        let a = Announcement {
            cluster: self.cfg.cluster.cluster.name.clone(),
            node: self.cfg.node_id,
            port: self.my_addr.port(),
            state,
        };
        match self.discovery.update(a) {
            Ok(()) => self.announced = state,
            Err(e) => tracing::warn!(error = %e, "mdns update"),
        }
    }

    /// Not in a group yet: the bootstrap decision.
    async fn bootstrap(&mut self) -> anyhow::Result<Phase> {
        let me = self.cfg.node_id;
        let expect = self.cfg.cluster.cluster.bootstrap_expect as usize;
        let peers = self.bootstrap_peers(expect);
        let decision = bootstrap::decide(me, expect, &self.boot, &peers);
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
            Decision::Propose { .. } | Decision::Lock { .. } => {
                if self.boot.record(&decision) {
                    self.boot
                        .save(&self.cfg.state_dir)
                        .context("saving bootstrap state")?;
                }
                self.waiting = Some("agreement on the initial voter set".into());
                Phase::Forming
            }
            Decision::Initialize(set) => {
                let voters: BTreeMap<NodeId, String> = set
                    .iter()
                    .filter_map(|id| self.addrs.get(*id).map(|a| (*id, a.to_string())))
                    .collect();
                // Once it succeeded, never again: the membership shows up a
                // moment later, and a second call would only be refused.
                if voters.len() == set.len() && !self.initialized {
                    println!(
                        "habuild-agent: initializing the group with {}",
                        hex_ids(set)
                    );
                    match self.node.initialize(voters).await {
                        Ok(()) => self.initialized = true,
                        Err(e) => tracing::warn!(error = %e, "raft initialize"),
                    }
                }
                self.waiting = Some("the new group to elect a leader".into());
                Phase::Forming
            }
            Decision::JoinExisting { via } => {
                self.spawn_join(*via);
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
        };
        if let Advert::Booting { proposal, locked } = self.boot.advert() {
            self.announce(advert::encode(proposal.as_deref(), locked));
        }
        Ok(phase)
    }

    /// Verified peers as the bootstrap decision sees them.
    fn bootstrap_peers(&self, expect: usize) -> Vec<bootstrap::Peer> {
        let leader = self
            .peers
            .values()
            .find(|p| p.state == RaftState::Leader)
            .map(|p| p.id);
        let mut view: BTreeSet<NodeId> = self.peers.keys().copied().collect();
        view.insert(self.cfg.node_id);
        let candidate: BTreeSet<NodeId> = view.into_iter().take(expect.max(1)).collect();
        let known: Vec<String> = self
            .boot
            .proposed
            .iter()
            .chain(self.boot.locked.iter())
            .chain([&candidate])
            .map(bootstrap::voter_set_hash)
            .collect();
        self.peers
            .values()
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
        if self.joining.load(Ordering::Relaxed)
            || self.last_join.is_some_and(|t| t.elapsed() < JOIN_EVERY)
        {
            return;
        }
        self.joining.store(true, Ordering::Relaxed);
        self.last_join = Some(Instant::now());
        let (node, joining) = (self.node.clone(), self.joining.clone());
        let (addr, member) = (self.my_addr.to_string(), self.me.clone());
        let refused = self.join_refused.clone();
        tokio::spawn(async move {
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
            joining.store(false, Ordering::Relaxed);
        });
    }

    /// In the group: our facts in the state; on the leader, the plan.
    async fn as_member(&mut self) -> Phase {
        let m = self.node.metrics();
        let me = self.cfg.node_id;
        self.announce(if m.state == ServerState::Leader {
            RaftState::Leader
        } else {
            RaftState::Member
        });
        let state = self.node.state();
        if state.members.get(&me) != Some(&self.me) {
            if let Some(l) = m.current_leader {
                self.spawn_join(l);
            }
        }
        self.waiting = None;
        if m.current_leader.is_none() {
            self.waiting = Some("a leader to be elected".into());
        }
        if m.state == ServerState::Leader {
            self.plan(&state).await;
            self.issue_pki().await;
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

    /// Leader: commit a new plan when the planner's answer moved.
    async fn plan(&mut self, state: &crate::state::ClusterState) {
        if state.members.len() < self.cfg.cluster.cluster.bootstrap_expect as usize {
            return;
        }
        let prev = state.plan.as_ref();
        match crate::plan::plan(&state.members, &self.cfg.cluster, prev, &self.token_seed) {
            Ok(p) if Some(p.version) != prev.map(|p| p.version) => {
                let v = p.version;
                match self.node.write(Command::SetPlan(p)).await {
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
        match converge::issue_pki(&state, &self.cfg.cluster, &self.sbox) {
            Ok(None) => self.pki_checked = Some(key),
            Ok(Some(cmd)) => match self.node.write(cmd).await {
                Ok(_) => println!(
                    "habuild-agent: issued the cluster PKI for plan v{}",
                    plan.version
                ),
                Err(e) => tracing::warn!(error = %e, "committing the PKI"),
            },
            Err(e) => {
                self.waiting = Some(format!("issuing the PKI: {e}"));
                tracing::warn!(error = %e, "issuing the PKI");
            }
        }
    }

    /// The status document (never the secret, keys or bootstrap token).
    fn publish_status(&self) {
        let m = self.node.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let member = membership.get_node(&self.cfg.node_id).is_some();
        let state = self.node.state();
        let plan = state.plan.as_ref().map(|p| {
            json!({
                "version": p.version,
                "control_plane": hex_list(&p.control_plane),
                "workers": hex_list(&p.workers),
                "storage": hex_list(&p.storage),
                "storage_leader": p.storage_leader.map(hex),
                "vip": p.vip,
                "metallb": p.metallb,
                "pod_cidrs": p.pod_cidrs.iter().map(|(k, v)| (hex(*k), v.to_string())).collect::<BTreeMap<_, _>>(),
            })
        });
        let role = state
            .plan
            .as_ref()
            .and_then(|p| p.role_of(self.cfg.node_id));
        let st = self.discovery.stats();
        let doc = json!({
            "node_id": hex(self.cfg.node_id),
            "hostname": self.me.hostname,
            "address": self.my_addr.to_string(),
            "phase": self.phase.as_ref().map_or("starting", |p| p.name()),
            "phase_detail": self.phase,
            "waiting_for": self.waiting,
            "error": self.error,
            "role": role,
            "raft": {
                "member": member,
                "state": format!("{:?}", m.state),
                "term": m.current_term,
                "leader": m.current_leader.map(hex),
                "voters": hex_list(&voters),
                "learners": hex_list(&learners),
                "last_applied": m.last_applied.map(|l| l.index),
            },
            "members": state.members.keys().map(|k| hex(*k)).collect::<Vec<_>>(),
            "plan": plan,
            "peers": self.peers.values().map(|p| json!({
                "id": hex(p.id),
                "state": p.state.to_string(),
                "addrs": p.addrs,
                "port": p.port,
            })).collect::<Vec<_>>(),
            "steps": *self.step_views.read().unwrap_or_else(|e| e.into_inner()),
            "gluster": state.plan.as_ref().map(|p| crate::gluster::summary(p, &state.members, &self.cfg.cluster.storage)),
            "cluster_steps": state.steps.values().map(|r| json!({
                "node": hex(r.node),
                "step": r.step,
                "status": r.status,
                "detail": r.detail,
                "attempts": r.attempts,
            })).collect::<Vec<_>>(),
            "rejected": {
                "other_cluster": st.rejected.other_cluster,
                "bad_mac": st.rejected.bad_mac,
                "malformed": st.rejected.malformed,
                "unauthenticated": self.handshakes.unauthenticated.load(Ordering::Relaxed),
                "handshake_timeouts": self.handshakes.timeouts.load(Ordering::Relaxed),
                "handshake_aborted": self.handshakes.aborted.load(Ordering::Relaxed),
                "duplicate_node_id": st.duplicate_id,
            },
            "announcements_last_minute": st.announcements_last_minute,
        });
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = doc;
    }
}

fn hex(id: NodeId) -> String {
    format!("{id:016x}")
}

fn hex_list(ids: &[NodeId]) -> Vec<String> {
    ids.iter().map(|i| hex(*i)).collect()
}

fn hex_ids<'a>(ids: impl IntoIterator<Item = &'a NodeId>) -> String {
    ids.into_iter()
        .map(|i| hex(*i))
        .collect::<Vec<_>>()
        .join(",")
}

/// The kubeadm token seed: sha256 of a label and the cluster secret.
fn token_seed(cfg: &ClusterConfig) -> [u8; 32] {
    crate::keys::token_seed(&cfg.cluster.secret)
}

/// This node's facts as stored in the replicated state.
fn member_facts(cfg: &AgentConfig) -> Member {
    let facts = crate::facts::collect(Path::new("/"));
    Member {
        id: cfg.node_id,
        hostname: cfg.hostname.clone(),
        ip: cfg.advertise.addr,
        prefix: cfg.advertise.prefix,
        port: cfg.listen.port(),
        cpus: facts.cpus as u32,
        mem_bytes: facts.mem_bytes,
        spare_disks: spare_disks(),
        // whole GiB, so the record does not change with every write
        data_free_bytes: free_bytes(&cfg.state_dir) >> 30 << 30,
        labels: BTreeMap::new(),
        healthy: true,
    }
}

/// Empty whole disks (no partitions, signatures or mounts), from lsblk.
fn spare_disks() -> Vec<String> {
    std::process::Command::new("lsblk")
        .args([
            "-J",
            "-b",
            "-o",
            "NAME,PATH,TYPE,SIZE,FSTYPE,RO,MOUNTPOINT,PTTYPE",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| crate::gluster::parse_lsblk(&String::from_utf8_lossy(&o.stdout)).ok())
        .map(|ds| crate::gluster::spare_disks(&ds))
        .unwrap_or_default()
}

fn free_bytes(dir: &Path) -> u64 {
    std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Loads the Noise static private key, or makes and persists one (0600).
fn load_or_make_static_key(dir: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => return hex::decode(s.trim()).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("reading {}", path.display()))
        }
        Err(_) => {}
    }
    let key = Keys::generate_static().context("generating the static key")?;
    let tmp = dir.join(format!("{KEY_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(hex::encode(&key).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(key)
}
