//! `habuild cluster status`: what the running agents of a cluster say about
//! themselves.
//!
//! - [`query()`] (query.rs) is the only side-effecting part: it browses mDNS
//!   without announcing, then asks every verified agent for its status
//!   document over the authenticated transport and parses each answer into
//!   a [`StatusDoc`] (`firstboot::protocol`, the type the agent writes).
//! - [`Report::from_answers`] (this file) merges the answers: one document
//!   per node, ordered by node id; a wrong or failed answer is unreachable.
//! - agreement.rs: whether the agents agree (leader, plan) and which members
//!   are down ([`member_health`], [`summary_line`]).
//! - table.rs: the human output ([`render_table`], [`Report::render`]).
//! - json.rs: the `--json` documents ([`Report::to_json`] → [`StatusOutput`],
//!   [`GlusterOutput`]).
//! - gluster.rs: the `--gluster` view ([`Report::gluster`],
//!   [`Report::render_gluster`]).
//! - kube.rs: Kubernetes from the `kube-control-plane` and `kubelet` step
//!   records ([`kube_view`]): the table's KUBE column, the `kubernetes:`
//!   summary line (apiservers healthy of planned, nodes Ready, cluster
//!   DNS) and the `kubernetes` field of `--json`.
//! - timeline.rs: the `--timeline` view ([`render_timeline`],
//!   [`Report::render_timeline`]): per node, power-on, agent start,
//!   discovery, Raft group, plan and each step's start and done, in seconds
//!   since that node's power-on.
//!
//! The status documents are the agents' own; they never contain the
//! cluster secret, keys or the bootstrap token, and nothing here adds any.
//! A newer `habuild` reads an older agent: every field of [`StatusDoc`] has
//! a default, and version 0 documents (no `version`, no `member_health`,
//! one `rejected.transport_handshakes` counter for every failed handshake)
//! are shown with what they carry (`?` for member health, `handshake=N`).
//!
//! # `--json` output, version 2
//!
//! Stable: fields are only ever added, never renamed or given another
//! meaning; `version` ([`OUTPUT_VERSION`]) counts the additions (1:
//! `version`, `member_health`; 2: `kubernetes`).
//!
//! ```text
//! {
//!   "version": 2,
//!   "agents": [ <StatusDoc>, ... ],       // each answering agent's document
//!                                         // (firstboot::protocol::StatusDoc:
//!                                         // version, node_id, hostname,
//!                                         // address, phase, role, raft{...},
//!                                         // members, member_health[{id,
//!                                         // hostname, ip, healthy,
//!                                         // last_ack_secs}], plan, peers,
//!                                         // steps, gluster, cluster_steps,
//!                                         // rejected{other_cluster, bad_mac,
//!                                         // malformed, unauthenticated,
//!                                         // handshake_timeouts,
//!                                         // handshake_aborted,
//!                                         // transport_handshakes (v0),
//!                                         // duplicate_node_id},
//!                                         // timeline{power_on,
//!                                         // agent_start, discovered,
//!                                         // raft_group, plan, steps[{step,
//!                                         // first_wait, first_start, done,
//!                                         // last_end, rounds}]} in unix
//!                                         // seconds, absent in older
//!                                         // agents, ...),
//!                                         // ordered by node_id
//!   "unreachable": [ {"node_id", "addresses": ["ip:port"], "error"} ],
//!   "rejected_announcements": {"other_cluster", "bad_mac", "malformed"},
//!                                         // rejected by this command while
//!                                         // it listened to mDNS
//!   "member_health": null | {"from": <node id whose view>, "total", "up",
//!       "down": [ {"id", "hostname", "ip", "last_ack_secs",
//!                  "reported_by": [<node id>...]} ]},
//!   "kubernetes": null | {                // null: no agent knows a
//!                                         // Kubernetes step (older agents,
//!                                         // or none reached yet); v2
//!       "control_plane": {"planned", "healthy",
//!                         "unhealthy": [<node id>...]},
//!       "nodes_ready",                    // kubelet step done
//!       "nodes": [ {"node_id", "hostname", "control_plane_planned",
//!                   "kube",               // the table's KUBE cell
//!                   "control_plane": null | <step>,
//!                   "kubelet": null | <step>} ],
//!                                         // <step> = {"status": done |
//!                                         // running | waiting | failed |
//!                                         // not-here | backing-off,
//!                                         // "detail", "source": own |
//!                                         // replicated}
//!       "cluster_dns",                    // "absent (no CoreDNS image
//!                                         // seeded)" while nothing deploys it
//!       "disabled"}                       // every kube step not-here
//! }
//! ```
//!
//! `rejected.unauthenticated` is the security counter (a peer without the
//! cluster secret); handshake timeouts and aborted connections are counted
//! apart and are not shown as rejections.
//!
//! `--gluster --json` prints `null` (no agent reported a plan) or
//! `{"gluster": {enabled, volume, type, replica, bricks, waiting, leader,
//! mount_path, topology}, "steps": [{node, step, status, detail,
//! attempts}...]}`.

mod agreement;
mod gluster;
mod json;
mod kube;
mod query;
mod table;
mod timeline;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use firstboot::discovery::{Peer, Rejected};
use firstboot::protocol::{hex, StatusDoc};
use serde::{Deserialize, Serialize};

pub use agreement::{member_health, summary_line, DownMember, HealthView};
pub use json::{GlusterOutput, RejectedAnnouncements, StatusOutput, OUTPUT_VERSION};
pub use kube::{
    kube_cell, kube_view, ControlPlaneHealth, KubeNode, KubeView, StepState, CONTROL_PLANE_STEP,
    DNS_ABSENT, KUBELET_STEP, OFF_SITE_FILE,
};
pub use query::{call_addr, call_peer, discover, query, runtime, Discovered, Options, StatusError};
pub use table::{clip, render_table, WAITING_WIDTH};
pub use timeline::render_timeline;

use table::secs;

/// An agent that announced itself (verified) but gave no status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub node_id: String,
    pub addresses: Vec<String>,
    pub error: String,
}

/// Everything one `habuild cluster status` learned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Status documents, ordered by node id, one per node.
    pub agents: Vec<StatusDoc>,
    pub unreachable: Vec<Unreachable>,
    /// Announcements that failed verification while listening.
    pub rejected: Rejected,
}

impl Report {
    /// The report from each verified peer and what asking it gave. A status
    /// whose `node_id` is not the announced one (addresses in mDNS are
    /// unauthenticated hints) counts as unreachable; one document per node.
    pub fn from_answers(
        answers: Vec<(Peer, Result<StatusDoc, String>)>,
        rejected: Rejected,
    ) -> Self {
        let mut agents: BTreeMap<String, StatusDoc> = BTreeMap::new();
        let mut unreachable = Vec::new();
        for (peer, answer) in answers {
            let node_id = hex(peer.id);
            let addresses: Vec<String> = peer
                .addrs
                .iter()
                .map(|a| SocketAddr::new(*a, peer.port).to_string())
                .collect();
            let error = match answer {
                Ok(doc) if doc.node_id == node_id => {
                    agents.insert(node_id, doc);
                    continue;
                }
                Ok(doc) => format!(
                    "{}: answered as node {} (stale or spoofed mDNS address)",
                    addresses.join(", "),
                    table::cell(&doc.node_id)
                ),
                Err(e) => e,
            };
            unreachable.push(Unreachable {
                node_id,
                addresses,
                error,
            });
        }
        unreachable.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Self {
            agents: agents.into_values().collect(),
            unreachable,
            rejected,
        }
    }

    /// Why nobody answered, for the error message when [`Report::agents`] is empty.
    pub fn nobody_answered(&self, cluster: &str, wait: Duration) -> String {
        let mut msg = format!(
            "no agent of cluster {cluster:?} answered (listened {})",
            secs(wait.as_secs_f64())
        );
        if !self.unreachable.is_empty() {
            msg += &format!(
                "; {} announced but unreachable (firewall on port {}? wrong network?)",
                self.unreachable.len(),
                firstboot::agent::AGENT_PORT
            );
        }
        if self.rejected.bad_mac > 0 {
            msg += &format!(
                "; {} announcement(s) named cluster {cluster:?} but failed verification: \
                 the nodes hold another secret than this cluster file",
                self.rejected.bad_mac
            );
        }
        if self.unreachable.is_empty() && self.rejected == Rejected::default() {
            msg += "; no announcement seen: run this on the cluster network \
                    (--interface to pick it) or listen longer (--timeout)";
        }
        msg
    }
}
