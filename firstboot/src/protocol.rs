//! The status protocol: the one document every agent serves (on its unix
//! socket and to `habuild cluster status` over the authenticated channel),
//! and the requests agents and `habuild` send each other ([`Wire`],
//! [`WireResponse`]), typed on both ends. The agent builds a [`StatusDoc`]; readers
//! (`habuild cluster status`, the namespace and QEMU tests) parse it back
//! into the same struct.
//!
//! Compatibility rules, so a newer reader understands an older agent:
//! - [`StatusDoc::version`] says which revision of this document an agent
//!   speaks ([`STATUS_VERSION`]); agents from before the field existed parse
//!   as version 0.
//! - Every field has a default (`#[serde(default)]`), so a field an older
//!   agent does not send reads as empty/absent instead of failing the parse.
//!   Fields are only ever added, never renamed or given another meaning.
//! - Node ids are 16-digit lowercase hex strings (as on the console).
//! - [`Wire`] and [`WireResponse`] only gain variants. An agent older than a
//!   request answers it with [`WireResponse::Invalid`] (serde's "unknown
//!   variant" text): the caller treats that as "this agent does not speak
//!   it" and asks another one. A new response variant is only ever sent in
//!   answer to the new request that introduced it, so an older caller never
//!   sees one.
//!
//! Requests by revision: `Rpc` and `Status` (the first agents);
//! `AdminKubeconfig` → `AdminKubeconfig(Result<..>)` (Kubernetes, issue 10).
//!
//! The document never carries the cluster secret, keys or the bootstrap
//! token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::consensus::router::{RpcRequest, RpcResponse};
use crate::state::{NodeId, Role, StepStatus};

/// A request over the authenticated channel (serde_json in one frame).
#[derive(Debug, Serialize, Deserialize)]
pub enum Wire {
    /// A consensus RPC (Raft, join, a follower's proposal).
    Rpc(RpcRequest),
    /// The agent's status document (what its status socket serves).
    Status,
    /// The cluster's admin kubeconfig (`habuild cluster kubeconfig`), rendered
    /// by the agent from the replicated `kube/admin` certificate and the
    /// cluster CA; server `https://<plan VIP>:6443`. Only peers holding the
    /// cluster secret reach this (the transport's PSK), and they already own
    /// the cluster. Answered with [`WireResponse::AdminKubeconfig`].
    AdminKubeconfig,
}

/// The answer to a [`Wire`] request.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one short-lived value per frame
pub enum WireResponse {
    Rpc(RpcResponse),
    /// The status document. An older agent's document reads too: every
    /// field of [`StatusDoc`] has a default.
    Status(Box<StatusDoc>),
    /// The request could not be decoded (an older agent answers requests
    /// newer than itself with this).
    Invalid(String),
    /// The answer to [`Wire::AdminKubeconfig`].
    AdminKubeconfig(Result<AdminKubeconfig, KubeconfigRefusal>),
}

/// The admin kubeconfig an agent hands out ([`Wire::AdminKubeconfig`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminKubeconfig {
    /// The kubeconfig (YAML, kubeadm's `admin.conf` shape: CA, client
    /// certificate and key embedded). It carries the admin's private key.
    pub kubeconfig: String,
    /// The API server it names: `https://<VIP>:6443`.
    pub server: String,
    /// The cluster's name (`cluster.name`), also the kubeconfig's cluster.
    pub cluster: String,
    /// The plan version whose VIP `server` names.
    pub plan: u64,
}

/// Why an agent cannot hand out the admin kubeconfig (yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
pub enum KubeconfigRefusal {
    /// No plan is committed: there is no VIP and no certificates yet.
    #[error("no plan is committed yet")]
    NoPlan,
    /// The site file turns Kubernetes off (`[kubernetes] enabled = false`).
    #[error("Kubernetes is disabled in the site file ([kubernetes] enabled = false)")]
    KubernetesDisabled,
    /// The leader has not issued these items (yet).
    #[error("not issued yet: {}", missing.join(", "))]
    NotIssued { missing: Vec<String> },
    /// An item is in the state but does not decrypt with this agent's
    /// secret (it cannot come from a node of this cluster).
    #[error("item {item} does not decrypt: {error}")]
    Unreadable { item: String, error: String },
}

/// The revision of [`StatusDoc`] this build writes. 0 = unversioned (the
/// first agents); 1 = typed document with member health and split
/// handshake counters.
pub const STATUS_VERSION: u32 = 1;

/// A node id as it appears in the document.
pub fn hex(id: NodeId) -> String {
    format!("{id:016x}")
}

/// A list of node ids as they appear in the document.
pub fn hex_list(ids: &[NodeId]) -> Vec<String> {
    ids.iter().map(|i| hex(*i)).collect()
}

/// One agent's view of itself and of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusDoc {
    /// Revision of this document ([`STATUS_VERSION`]; 0 when absent).
    pub version: u32,
    pub node_id: String,
    pub hostname: String,
    /// The agent's `ip:port` on the cluster network.
    pub address: String,
    /// `starting`, `discovering`, `forming`, `joining`, `member`, `planned`.
    pub phase: String,
    /// The phase with its fields (`{"phase": "planned", "role": …, "plan": 3}`).
    pub phase_detail: Option<serde_json::Value>,
    /// What the agent is waiting for, in words.
    pub waiting_for: Option<String>,
    /// A condition an operator must fix.
    pub error: Option<String>,
    /// This node's role in the committed plan.
    pub role: Option<Role>,
    pub raft: RaftView,
    /// Ids of the members in the replicated state.
    pub members: Vec<String>,
    /// Every member's health as this agent sees it (the leader decides
    /// "down" from Raft replication and records it in the replicated state).
    pub member_health: Vec<MemberHealth>,
    pub plan: Option<PlanView>,
    /// Verified peers seen over mDNS.
    pub peers: Vec<PeerView>,
    /// This node's converge steps.
    pub steps: Vec<StepView>,
    pub gluster: Option<GlusterView>,
    /// Every node's step records from the replicated state.
    pub cluster_steps: Vec<ClusterStep>,
    pub rejected: Rejected,
    pub announcements_last_minute: u64,
    /// When this node reached each milestone of its boot (absent in older
    /// agents' documents).
    pub timeline: Option<Timeline>,
    /// How a live-netbooted node keeps /var (`disk /dev/X`, or `ram: <why>`:
    /// it forgets its state on a reboot and is a worker only); absent on
    /// nodes booted from their own disk.
    pub live_var: Option<String>,
}

impl StatusDoc {
    /// Parses a document, naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.state == RaftRole::Leader
    }

    /// Why this node keeps /var in RAM, when it does.
    pub fn var_in_ram(&self) -> Option<&str> {
        crate::facts::ram_reason(self.live_var.as_deref()?)
    }
}

/// openraft's server state, as the agent reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRole {
    #[default]
    Learner,
    Follower,
    Candidate,
    Leader,
    Shutdown,
}

impl From<openraft::ServerState> for RaftRole {
    fn from(s: openraft::ServerState) -> Self {
        match s {
            openraft::ServerState::Learner => RaftRole::Learner,
            openraft::ServerState::Follower => RaftRole::Follower,
            openraft::ServerState::Candidate => RaftRole::Candidate,
            openraft::ServerState::Leader => RaftRole::Leader,
            openraft::ServerState::Shutdown => RaftRole::Shutdown,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftView {
    /// This node is in the group's membership (voter or learner).
    pub member: bool,
    pub state: RaftRole,
    pub term: u64,
    pub leader: Option<String>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub last_applied: Option<u64>,
}

/// A member's health: `healthy` is the replicated flag the leader sets; the
/// leader's own view adds how long ago the member last acknowledged it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberHealth {
    pub id: String,
    pub hostname: String,
    pub ip: String,
    pub healthy: bool,
    /// Seconds since the leader last heard from this member (leader only).
    pub last_ack_secs: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanView {
    pub version: u64,
    pub control_plane: Vec<String>,
    pub workers: Vec<String>,
    pub storage: Vec<String>,
    pub storage_leader: Option<String>,
    pub vip: String,
    /// `first-last` address range.
    pub metallb: serde_json::Value,
    /// node id → pod CIDR.
    pub pod_cidrs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerView {
    pub id: String,
    /// `member`, `leader` or `forming:<hash>`.
    pub state: String,
    pub addrs: Vec<String>,
    pub port: u16,
}

/// One of this node's converge steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepView {
    pub step: String,
    /// `pending`, `waiting`, `running`, `done`, `failed`, `not-here` …
    pub status: String,
    pub detail: String,
    pub attempts: u32,
}

/// A node's step record from the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStep {
    pub node: String,
    pub step: String,
    pub status: StepStatus,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub attempts: u32,
}

/// The Gluster volume as planned, and heketi's topology.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GlusterView {
    pub enabled: bool,
    pub volume: Option<String>,
    /// `Replicate`, `Distribute`, `Distributed-Replicate`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub replica: Option<u32>,
    pub bricks: Vec<String>,
    /// Storage nodes whose brick waits for a whole replica set.
    pub waiting: Vec<String>,
    pub leader: Option<String>,
    pub mount_path: Option<String>,
    /// heketi's `topology.json` (its own format, passed through).
    pub topology: Option<serde_json::Value>,
    /// Each storage node's safety view (filled by `habuild cluster status`
    /// from every answering agent's `gluster-brick` step; empty in an
    /// agent's own document).
    pub health: Vec<GlusterNodeHealth>,
}

/// One storage node's view of the volume's safety (`gluster::health`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GlusterNodeHealth {
    pub node: String,
    pub hostname: String,
    /// `serving`, `untrusted` (after an unclean shutdown, not served),
    /// `rebuilding` (wiped and healing from the other replicas), or the
    /// step's status when it reported no safety view (`pending`, `failed`…).
    pub brick: String,
    /// Bricks gluster reports offline, as this node sees them (None:
    /// unknown, `gluster volume status` did not answer on that node).
    pub bricks_offline: Option<Vec<String>>,
    /// Pending heal entries (None: unknown).
    pub heal_pending: Option<u64>,
    /// Split-brain entries (None: unknown).
    pub split_brain: Option<u64>,
    /// Brick serving, all bricks online, 0 pending heals, 0 split brain.
    pub safe: bool,
}

/// What this agent refused, by cause. Only `unauthenticated` means a peer
/// without the cluster secret; timeouts and aborted connections are
/// counted apart from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rejected {
    /// mDNS announcements of another cluster.
    pub other_cluster: u64,
    /// mDNS announcements whose MAC does not verify (no or another secret).
    pub bad_mac: u64,
    pub malformed: u64,
    /// Transport handshakes that failed authentication: the peer does not
    /// hold the cluster secret.
    pub unauthenticated: u64,
    /// Transport handshakes that did not finish in time.
    pub handshake_timeouts: u64,
    /// Connections closed or reset before the handshake finished.
    pub handshake_aborted: u64,
    /// Version 0 agents: every failed handshake, whatever its cause.
    pub transport_handshakes: u64,
    /// Verified announcements of this node's own id from another address.
    pub duplicate_node_id: u64,
}

/// When this agent reached each milestone of its boot, as wall-clock times
/// in unix seconds (this node's clock). Absent in documents of agents from
/// before the field existed; a milestone not reached yet is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeline {
    /// Kernel start of this boot: the wall clock at agent start minus the
    /// time since boot (`/proc/uptime`, which counts suspend too).
    pub power_on: Option<f64>,
    /// The agent process started (`/proc/self/stat`).
    pub agent_start: Option<f64>,
    /// The first verified peer was seen over mDNS.
    pub discovered: Option<f64>,
    /// This node was first in a Raft group with a known leader.
    pub raft_group: Option<f64>,
    /// A plan was first in the replicated state this node applied.
    pub plan: Option<f64>,
    /// This node's converge steps, in run order.
    pub steps: Vec<StepTimes>,
}

/// When one of this node's converge steps ran (unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepTimes {
    pub step: String,
    /// The first round that found it waiting on its gate (on others).
    pub first_wait: Option<f64>,
    /// The start of the first round that ran it (gate passed).
    pub first_start: Option<f64>,
    /// The end of the round that last made it done (absent while not done).
    pub done: Option<f64>,
    /// The end of the first round that made it done (kept when the step
    /// goes back to pending: what a boot-time benchmark measures).
    pub first_done: Option<f64>,
    /// The end of the latest round that ran it.
    pub last_end: Option<f64>,
    /// How many rounds ran it.
    pub rounds: u64,
}

/// One line of a [`Timeline`]: a milestone (`start` only) or a step
/// (`start`, `end` once first done, `done_now` while done).
#[derive(Debug, Clone, PartialEq)]
pub struct Milestone {
    /// `power-on`, `agent start`, `discovery`, `raft group`, `plan`, or `step NAME`.
    pub what: String,
    pub start: Option<f64>,
    /// Steps: the first time it was done.
    pub end: Option<f64>,
    /// Steps: since when it is done now (None while not done); differs
    /// from `end` when it went back to pending and was done again.
    pub done_now: Option<f64>,
    /// Steps: when the step first waited on others, before `start`.
    pub waited_from: Option<f64>,
}

impl Timeline {
    /// Every milestone in boot order, then the steps in run order; the ones
    /// not reached yet have no `start`.
    pub fn milestones(&self) -> Vec<Milestone> {
        let mark = |what: &str, at: Option<f64>| Milestone {
            what: what.into(),
            start: at,
            end: None,
            done_now: None,
            waited_from: None,
        };
        let mut out = vec![
            mark("power-on", self.power_on),
            mark("agent start", self.agent_start),
            mark("discovery", self.discovered),
            mark("raft group", self.raft_group),
            mark("plan", self.plan),
        ];
        out.extend(self.steps.iter().map(|s| Milestone {
            what: format!("step {}", s.step),
            start: s.first_start,
            // agents older than `first_done` only report `done`
            end: s.first_done.or(s.done),
            done_now: s.done,
            waited_from: s.first_wait,
        }));
        out
    }

    /// `(what, seconds since origin)` of every milestone reached, a step's
    /// end as `step NAME done`: the one-line form tests print.
    pub fn offsets(&self, origin: f64) -> Vec<(String, f64)> {
        let t0 = origin;
        let mut out = Vec::new();
        for m in self.milestones() {
            if let Some(s) = m.start {
                out.push((m.what.clone(), s - t0));
            }
            if let Some(e) = m.end {
                out.push((format!("{} done", m.what), e - t0));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_kubeconfig_request_and_answers_round_trip() {
        let req = serde_json::to_string(&Wire::AdminKubeconfig).unwrap();
        assert_eq!(req, r#""AdminKubeconfig""#);
        assert!(matches!(
            serde_json::from_str::<Wire>(&req).unwrap(),
            Wire::AdminKubeconfig
        ));
        let ok = WireResponse::AdminKubeconfig(Ok(AdminKubeconfig {
            kubeconfig: "apiVersion: v1\n".into(),
            server: "https://10.0.0.10:6443".into(),
            cluster: "lab".into(),
            plan: 3,
        }));
        let text = serde_json::to_string(&ok).unwrap();
        assert_eq!(
            text,
            r#"{"AdminKubeconfig":{"Ok":{"kubeconfig":"apiVersion: v1\n","server":"https://10.0.0.10:6443","cluster":"lab","plan":3}}}"#
        );
        let refused = WireResponse::AdminKubeconfig(Err(KubeconfigRefusal::NotIssued {
            missing: vec!["kube/admin.crt".into()],
        }));
        let text = serde_json::to_string(&refused).unwrap();
        assert_eq!(
            text,
            r#"{"AdminKubeconfig":{"Err":{"not-issued":{"missing":["kube/admin.crt"]}}}}"#
        );
        match serde_json::from_str::<WireResponse>(&text).unwrap() {
            WireResponse::AdminKubeconfig(Err(e)) => {
                assert_eq!(e.to_string(), "not issued yet: kube/admin.crt")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_agent_older_than_a_request_cannot_decode_it() {
        // what an older agent's handler does with a request it does not know:
        // the decode error becomes WireResponse::Invalid
        #[derive(Deserialize)]
        enum OldWire {
            #[allow(dead_code)]
            Rpc(serde_json::Value),
            Status,
        }
        let body = serde_json::to_vec(&Wire::AdminKubeconfig).unwrap();
        let err = serde_json::from_slice::<OldWire>(&body).err().unwrap();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        assert!(matches!(
            serde_json::from_slice::<OldWire>(br#""Status""#),
            Ok(OldWire::Status)
        ));
    }
}
