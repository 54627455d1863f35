//! The running agent (`habuild-agent run`): transport, consensus, discovery,
//! the bootstrap driver and the planner wired into one tokio loop.
//!
//! [`run`] reads like the steps: load or make the node's Noise static key →
//! listen on the agent port → open the Raft node (state in
//! `<state dir>/raft`) with RPCs over the transport ([`rpc`]) → serve RPCs
//! and the status socket ([`status`]) → start the converge loop
//! ([`converge`]) → announce over mDNS → loop over peer events and a short
//! tick, running one [`driver::Driver::step`] per wake-up (bootstrap
//! decision, joins, leader duties: see [`driver`], the same component the
//! fault simulation and the bench run) over [`MdnsView`] and the console
//! reporter, then publishing the typed status document
//! ([`crate::protocol::StatusDoc`]).

pub mod advert;
pub mod converge;
pub mod driver;
pub mod kubeconfig;
pub mod phase;
pub mod rpc;
pub mod sim;
pub mod status;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::ServerState;

use self::driver::{ConsoleReporter, Driver, DriverConfig, PeerView};
use self::rpc::{AddrBook, TransportRpc};
use crate::cluster::{ClusterConfig, Ipv4Cidr};
use crate::consensus::bootstrap::BootstrapState;
use crate::consensus::{ConsensusConfig, ConsensusNode};
use crate::discovery::{
    Announcement, Discovery, DiscoveryConfig, Interfaces, MdnsKey, Peer, PeerEvent, RaftState,
};
use crate::host::real::HostExec;
use crate::host::{Cmd, Exec};
use crate::protocol::{self, hex, hex_list, StatusDoc, STATUS_VERSION};
use crate::secretbox::SecretBox;
use crate::state::{Member, NodeId};
use crate::transport::{self, Keys};

/// The agent's TCP port (Raft RPCs, joins, status), on every node.
pub const AGENT_PORT: u16 = 7946;
/// Default state directory (on the data partition).
pub const STATE_DIR: &str = "/var/lib/habuild";
/// The node's Noise static private key, in the state directory (mode 0600).
const KEY_FILE: &str = "transport.key";
/// How often the loop re-evaluates without a peer event.
const TICK: Duration = Duration::from_millis(300);
/// How long a fresh node listens for an existing group before it forms one
/// ([`DriverConfig::listen_first`]): several mDNS query rounds, with room
/// for a starved peer's answer.
pub const LISTEN_FIRST: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct AgentConfig {
    pub cluster: ClusterConfig,
    pub state_dir: PathBuf,
    /// Where the transport listens (port: [`AGENT_PORT`]).
    pub listen: SocketAddr,
    pub node_id: NodeId,
    /// `--hostname`: overrides `network.hostname` (see [`crate::hostname`]).
    pub hostname: Option<String>,
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
    /// Whether this CPU is emulated ([`crate::facts::emulated_cpu`]).
    pub emulated: bool,
}

/// Runs the agent until an unrecoverable error.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let mut milestones = phase::Milestones::at_start();
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
    let transport_rpc = Arc::new(TransportRpc::new(keys.clone(), addrs.clone()));
    let node = ConsensusNode::open(
        cfg.node_id,
        &cfg.state_dir.join("raft"),
        &cfg.consensus,
        transport_rpc,
    )
    .await
    .context("opening the Raft state")?;

    let status = status::Shared::default();
    let sbox = Arc::new(SecretBox::derive(&cfg.cluster.cluster.secret));
    let handshakes = Arc::new(transport::HandshakeCounters::default());
    tokio::spawn(transport::serve(listener, keys, handshakes.clone(), {
        let served = rpc::Served {
            node: node.clone(),
            status: status.clone(),
            cluster: Arc::new(cfg.cluster.clone()),
            sbox: sbox.clone(),
        };
        move |req: transport::Request| rpc::handle(served.clone(), req.body)
    }));
    tokio::spawn(status::serve(
        status::bind(&cfg.status_socket)?,
        status.clone(),
    ));

    let step_views = converge::StepViews::default();
    let interface = match &cfg.interface {
        Some(i) => i.clone(),
        None => crate::netif::links(&crate::host::real::HostExec)
            .and_then(|links| crate::netif::interface_of(&links, cfg.advertise.addr))?,
    };
    let owns_host = matches!(cfg.services, converge::ServiceMode::Systemd);
    let hostname = crate::hostname::for_agent(
        &cfg.state_dir,
        cfg.hostname.as_deref(),
        &cfg.cluster,
        cfg.node_id,
        &interface,
        &cfg.root,
        owns_host,
    )
    .context("naming this host")?;
    println!(
        "habuild-agent: hostname {} ({})",
        hostname.name, hostname.source
    );
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
            emulated: cfg.emulated,
        },
        sbox.clone(),
        step_views.clone(),
    ));

    let boot = BootstrapState::load(&cfg.state_dir).context("loading bootstrap state")?;
    let me = member_facts(&cfg, &hostname.name);
    let announced = driver::first_announcement(&node, &boot, &me);
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

    let view = MdnsView {
        discovery,
        cluster: cfg.cluster.cluster.name.clone(),
        me: cfg.node_id,
        port: my_addr.port(),
        peers: BTreeMap::new(),
        addrs,
    };
    let driver_cfg = DriverConfig {
        me,
        addr: my_addr.to_string(),
        cluster: cfg.cluster.clone(),
        state_dir: cfg.state_dir.clone(),
        token_seed: token_seed(&cfg.cluster),
        sbox,
        down_after: Duration::from_millis(cfg.consensus.down_after_ms),
        listen_first: LISTEN_FIRST,
    };
    let mut driver = Driver::new(
        driver_cfg,
        node,
        boot,
        announced,
        view,
        ConsoleReporter::default(),
    );
    let facts = crate::facts::collect(Path::new("/"));
    if let Some(why) = facts.var_in_ram() {
        println!(
            "habuild-agent: /var is in RAM ({why}): this node is a worker only (never etcd, control plane, a brick or a Raft voter); after a reboot it {}",
            if why.contains("identity from the SMBIOS UUID") {
                "rejoins as the same node with its state gone"
            } else {
                "is a new node"
            }
        );
    }
    let live_var = facts.live_var;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(PeerEvent::Seen(p)) => driver.view_mut().seen(p),
                Some(PeerEvent::Gone(id)) => { driver.view_mut().peers.remove(&id); }
                None => anyhow::bail!("discovery stopped"),
            },
            _ = tick.tick() => {}
        }
        driver.step().await?;
        let mut doc = status_doc(&driver, &step_views, &handshakes);
        milestones.observe(&doc, phase::unix_secs(std::time::SystemTime::now()));
        doc.timeline = Some(milestones.timeline(converge::step_times(&step_views)));
        doc.live_var = live_var.clone();
        *status.write().unwrap_or_else(|e| e.into_inner()) = doc;
    }
}

/// The driver's [`PeerView`] over mDNS [`Discovery`]: verified peers from
/// its events, addresses into the transport's [`AddrBook`].
pub struct MdnsView {
    discovery: Discovery,
    cluster: String,
    me: NodeId,
    port: u16,
    peers: BTreeMap<NodeId, Peer>,
    addrs: AddrBook,
}

impl MdnsView {
    /// A peer appeared or changed: remember it and its address (a hint).
    fn seen(&mut self, p: Peer) {
        let ip = p
            .addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| p.addrs.first());
        if let Some(ip) = ip {
            self.addrs.set(p.id, SocketAddr::new(*ip, p.port));
        }
        self.peers.insert(p.id, p);
    }
}

impl PeerView for MdnsView {
    fn peers(&self) -> Vec<Peer> {
        self.peers.values().cloned().collect()
    }

    fn announce(&mut self, state: RaftState) -> Result<(), String> {
        self.discovery
            .update(Announcement {
                cluster: self.cluster.clone(),
                node: self.me,
                port: self.port,
                state,
            })
            .map_err(|e| e.to_string())
    }

    fn duplicate_id(&self) -> Option<IpAddr> {
        self.discovery.stats().duplicate_id_addr
    }

    fn addr_of(&self, id: NodeId) -> Option<String> {
        self.addrs.get(id).map(|a| a.to_string())
    }

    fn learn(&mut self, id: NodeId, addr: &str) {
        if let Ok(a) = addr.parse() {
            self.addrs.set(id, a);
        }
    }
}

/// The status document (never the secret, keys or bootstrap token).
fn status_doc(
    driver: &Driver<MdnsView, ConsoleReporter>,
    step_views: &converge::StepViews,
    handshakes: &transport::HandshakeCounters,
) -> StatusDoc {
    let node = driver.node();
    let me = node.id();
    let m = node.metrics();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let state = node.state();
    let plan = state.plan.as_ref().map(|p| protocol::PlanView {
        version: p.version,
        control_plane: hex_list(&p.control_plane),
        workers: hex_list(&p.workers),
        storage: hex_list(&p.storage),
        storage_leader: p.storage_leader.map(hex),
        vip: p.vip.to_string(),
        metallb: serde_json::Value::String(p.metallb.to_string()),
        pod_cidrs: p
            .pod_cidrs
            .iter()
            .map(|(k, v)| (hex(*k), v.to_string()))
            .collect(),
    });
    // On the leader: how long ago each member last acknowledged it.
    let ages = match (m.state == ServerState::Leader, driver.leader_since()) {
        (true, Some(since)) => driver::member_ack_ages(node, &state, since, Instant::now()),
        _ => BTreeMap::new(),
    };
    let member_health = state
        .members
        .values()
        .map(|mb| protocol::MemberHealth {
            id: hex(mb.id),
            hostname: mb.hostname.clone(),
            ip: mb.ip.to_string(),
            healthy: mb.healthy,
            last_ack_secs: ages.get(&mb.id).map(|d| d.as_secs_f64()),
        })
        .collect();
    let gluster = state.plan.as_ref().and_then(|p| {
        let v = crate::gluster::summary(p, &state.members, &driver.config().cluster.storage);
        serde_json::from_value::<protocol::GlusterView>(v)
            .map_err(|e| tracing::warn!(error = %e, "gluster summary"))
            .ok()
    });
    let st = driver.view().discovery.stats();
    StatusDoc {
        version: STATUS_VERSION,
        node_id: hex(me),
        hostname: driver.config().me.hostname.clone(),
        address: driver.config().addr.clone(),
        phase: driver.phase().map_or("starting", |p| p.name()).to_string(),
        phase_detail: driver.phase().and_then(|p| serde_json::to_value(p).ok()),
        waiting_for: driver.waiting().map(str::to_string),
        error: driver.error().map(str::to_string),
        role: state.plan.as_ref().and_then(|p| p.role_of(me)),
        raft: protocol::RaftView {
            member: membership.get_node(&me).is_some(),
            state: m.state.into(),
            term: m.current_term,
            leader: m.current_leader.map(hex),
            voters: hex_list(&voters),
            learners: hex_list(&learners),
            last_applied: m.last_applied.map(|l| l.index),
        },
        members: state.members.keys().map(|k| hex(*k)).collect(),
        member_health,
        plan,
        peers: driver
            .view()
            .peers
            .values()
            .map(|p| protocol::PeerView {
                id: hex(p.id),
                state: p.state.to_string(),
                addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
                port: p.port,
            })
            .collect(),
        steps: step_views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| protocol::StepView {
                step: s.step.clone(),
                status: s.status.clone(),
                detail: s.detail.clone(),
                attempts: s.attempts,
            })
            .collect(),
        gluster,
        cluster_steps: state
            .steps
            .values()
            .map(|r| protocol::ClusterStep {
                node: hex(r.node),
                step: r.step.clone(),
                status: r.status,
                detail: r.detail.clone(),
                attempts: r.attempts,
            })
            .collect(),
        rejected: protocol::Rejected {
            other_cluster: st.rejected.other_cluster,
            bad_mac: st.rejected.bad_mac,
            malformed: st.rejected.malformed,
            unauthenticated: handshakes.unauthenticated.load(Ordering::Relaxed),
            handshake_timeouts: handshakes.timeouts.load(Ordering::Relaxed),
            handshake_aborted: handshakes.aborted.load(Ordering::Relaxed),
            transport_handshakes: 0,
            duplicate_node_id: st.duplicate_id,
        },
        announcements_last_minute: st.announcements_last_minute,
        timeline: None,
        live_var: None,
    }
}

/// The kubeadm token seed: sha256 of a label and the cluster secret.
fn token_seed(cfg: &ClusterConfig) -> [u8; 32] {
    crate::keys::token_seed(&cfg.cluster.secret)
}

/// This node's facts as stored in the replicated state; `labels` and
/// `kubernetes` come from the site file's `[[nodes]]` entry that names one
/// of this machine's MACs (none: no labels, Kubernetes on).
fn member_facts(cfg: &AgentConfig, hostname: &str) -> Member {
    let facts = crate::facts::collect(Path::new("/"));
    let (labels, kubernetes) = site_entry(&cfg.cluster, &facts.macs);
    Member {
        id: cfg.node_id,
        hostname: hostname.to_string(),
        ip: cfg.advertise.addr,
        prefix: cfg.advertise.prefix,
        port: cfg.listen.port(),
        cpus: facts.cpus as u32,
        mem_bytes: facts.mem_bytes,
        spare_disks: spare_disks(&HostExec),
        // whole GiB, so the record does not change with every write
        data_free_bytes: free_bytes(&HostExec, &cfg.state_dir) >> 30 << 30,
        labels,
        kubernetes,
        var_in_ram: facts.var_in_ram().is_some(),
        healthy: true,
    }
}

/// The placement labels and the Kubernetes switch of the machine with
/// `macs`, from its `[[nodes]]` entry (said on the console when there is
/// one).
fn site_entry(cluster: &ClusterConfig, macs: &[String]) -> (BTreeMap<String, String>, bool) {
    match cluster.node_entry(macs) {
        Some(n) => {
            println!(
                "habuild-agent: site file [[nodes]] mac = {}: kubernetes = {}, labels {:?}",
                n.mac, n.kubernetes, n.labels
            );
            (n.labels.clone(), n.kubernetes)
        }
        None => (BTreeMap::new(), true),
    }
}

/// Empty whole disks (no partitions, signatures or mounts), from lsblk;
/// none when lsblk fails or says something unparsable.
fn spare_disks(exec: &dyn Exec) -> Vec<String> {
    let cmd = Cmd::new([
        "lsblk",
        "-J",
        "-b",
        "-o",
        "NAME,PATH,TYPE,SIZE,FSTYPE,RO,MOUNTPOINT,PTTYPE",
    ]);
    exec.run(&cmd)
        .ok()
        .and_then(|o| crate::gluster::parse_lsblk(&o.stdout).ok())
        .map(|ds| crate::gluster::spare_disks(&ds))
        .unwrap_or_default()
}

/// Bytes available to unprivileged users on the file system of `dir`, from
/// df; 0 when df fails.
fn free_bytes(exec: &dyn Exec, dir: &Path) -> u64 {
    let cmd = Cmd::new([
        "df".to_string(),
        "-B1".into(),
        "--output=avail".into(),
        dir.display().to_string(),
    ]);
    exec.run(&cmd)
        .ok()
        .and_then(|o| o.stdout.lines().nth(1).and_then(|l| l.trim().parse().ok()))
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::Recording;

    #[test]
    fn site_entry_by_mac() {
        let text = format!(
            "[cluster]\nname = \"lab\"\nsecret = \"{}\"\nbootstrap_expect = 1\n\
             control_plane_size = 1\n\n[[nodes]]\nmac = \"52:54:00:AA:BB:CC\"\n\
             kubernetes = false\nlabels = {{ zone = \"a\" }}\n",
            "11".repeat(32)
        );
        let cluster =
            ClusterConfig::from_source(&crate::source::SourceFile::from_text("cluster.toml", text))
                .unwrap();
        let (labels, kubernetes) = site_entry(
            &cluster,
            &["02:00:00:00:00:01".into(), "52:54:00:aa:bb:cc".into()],
        );
        assert!(!kubernetes);
        assert_eq!(labels.get("zone").map(String::as_str), Some("a"));
        let (labels, kubernetes) = site_entry(&cluster, &["52:54:00:aa:bb:cd".into()]);
        assert!(kubernetes && labels.is_empty());
    }

    #[test]
    fn free_bytes_from_df() {
        let r = Recording::default();
        r.answer(
            "df -B1 --output=avail /var/lib/habuild",
            0,
            "   Avail\n 123456\n",
            "",
        );
        let host = r.host();
        assert_eq!(free_bytes(&*host.exec, Path::new(STATE_DIR)), 123456);
        assert_eq!(
            r.commands(),
            vec!["df -B1 --output=avail /var/lib/habuild".to_string()]
        );
        let failing = Recording::default();
        failing.answer("df", 1, "", "df: no such file");
        assert_eq!(free_bytes(&*failing.host().exec, Path::new("/x")), 0);
    }

    #[test]
    fn spare_disks_from_lsblk() {
        let r = Recording::default();
        r.answer(
            "lsblk",
            0,
            r#"{"blockdevices": [
                {"name": "vda", "path": "/dev/vda", "type": "disk", "size": 10737418240,
                 "fstype": null, "ro": false, "mountpoint": null, "pttype": "gpt",
                 "children": [{"name": "vda1", "path": "/dev/vda1", "type": "part",
                   "size": 1048576, "fstype": "vfat", "ro": false, "mountpoint": "/boot",
                   "pttype": "gpt"}]},
                {"name": "vdb", "path": "/dev/vdb", "type": "disk", "size": 10737418240,
                 "fstype": null, "ro": false, "mountpoint": null, "pttype": null}
            ]}"#,
            "",
        );
        assert_eq!(spare_disks(&*r.host().exec), vec!["/dev/vdb".to_string()]);
        assert!(r.commands()[0].starts_with("lsblk -J -b -o "));
        let failing = Recording::default();
        failing.answer("lsblk", 32, "", "lsblk: failed");
        assert!(spare_disks(&*failing.host().exec).is_empty());
    }
}
