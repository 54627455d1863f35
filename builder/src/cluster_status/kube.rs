//! Kubernetes as the agents report it: per node, the `kube-control-plane`
//! and `kubelet` steps (the KUBE column of the table, [`KubeView::nodes`]),
//! how many planned apiservers are healthy, how many nodes are Ready, and
//! whether anything deploys cluster DNS (the `kubernetes:` summary line).
//!
//! Everything is derived from step records (name, status, detail), so it
//! follows whatever the steps report:
//! - a node's own view first (the `steps` of its own status document: it
//!   tells `waiting` from `running` and carries the check's text, e.g.
//!   `node node-ab12 Ready`);
//! - else (the node did not answer, or its step is backing off after a
//!   failure) the replicated record from the freshest answering agent's
//!   `cluster_steps`: `running` (waiting or pending), `done` or `failed`
//!   with the error text.
//!
//! A step that is done counts as healthy (`kube-control-plane`: the
//! apiserver answers `/healthz` on that node; `kubelet`: the node object is
//! Ready). Nothing here parses the detail texts except to tell a refusal
//! (the step will not act: no binaries, version skew) from a failure.

use std::collections::BTreeSet;

use firstboot::protocol::{StatusDoc, StepView};
use firstboot::state::StepStatus;
use serde::{Deserialize, Serialize};

use super::table::{cell, clip};

/// The step that runs the control plane on control-plane nodes.
pub const CONTROL_PLANE_STEP: &str = "kube-control-plane";
/// The step that runs the kubelet on every node.
pub const KUBELET_STEP: &str = "kubelet";
/// Steps that would deploy cluster DNS (none exists yet: no CoreDNS image
/// is seeded).
pub const DNS_STEPS: &[&str] = &["cluster-dns", "coredns"];
/// What the summary says while nothing deploys cluster DNS.
pub const DNS_ABSENT: &str = "absent (no CoreDNS image seeded)";
/// The KUBE cell of a node the site file keeps out of Kubernetes
/// (`[[nodes]] kubernetes = false`): its kubelet step is not-here while
/// Kubernetes runs elsewhere.
pub const OFF_SITE_FILE: &str = "off (site file)";
/// Longest failure text in a KUBE cell.
pub const KUBE_WIDTH: usize = 40;

/// One step's state on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepState {
    /// `done`, `running`, `waiting`, `failed`, `not-here`, `backing-off`.
    pub status: String,
    pub detail: String,
    /// `own` (the node's own status document) or `replicated` (a step
    /// record from the replicated state).
    pub source: String,
}

impl StepState {
    fn is(&self, status: &str) -> bool {
        self.status == status
    }
}

/// One node's Kubernetes state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeNode {
    pub node_id: String,
    pub hostname: String,
    /// Planned as a control-plane node.
    pub control_plane_planned: bool,
    /// The KUBE cell: `cp+Ready`, `Ready`, `NotReady`, `cp+NotReady`,
    /// `cp starting`, `cp`, `waiting`, `cp+waiting`, `retrying`,
    /// `refused: …`, `failed: …`, `cp failed: …`, [`OFF_SITE_FILE`], or
    /// `-` (Kubernetes disabled or not reached).
    pub kube: String,
    /// The `kube-control-plane` step (absent: no record).
    pub control_plane: Option<StepState>,
    /// The `kubelet` step (absent: no record).
    pub kubelet: Option<StepState>,
}

/// The planned apiservers' health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlPlaneHealth {
    /// Control-plane nodes in the plan.
    pub planned: usize,
    /// Those whose `kube-control-plane` step is done (apiserver healthy).
    pub healthy: usize,
    /// Node ids of the planned ones that are not.
    pub unhealthy: Vec<String>,
}

/// Kubernetes across the cluster (the `kubernetes` field of `--json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeView {
    pub control_plane: ControlPlaneHealth,
    /// Nodes whose `kubelet` step is done (node Ready), of `nodes`.
    pub nodes_ready: usize,
    /// Every member (from the freshest agent's view) and every answering
    /// agent, by node id.
    pub nodes: Vec<KubeNode>,
    /// `absent (no CoreDNS image seeded)`, or the DNS step's state.
    pub cluster_dns: String,
    /// Every Kubernetes step reports `not-here` (`[kubernetes] enabled =
    /// false` in the site file).
    pub disabled: bool,
}

/// The answering agent that applied the most of the log (the leader first).
fn freshest(agents: &[StatusDoc]) -> Option<&StatusDoc> {
    agents
        .iter()
        .max_by_key(|d| (d.is_leader(), d.raft.term, d.raft.last_applied))
}

/// Node `id`'s state of `step`: its own view, else the replicated record
/// (see the module docs).
fn step_state(agents: &[StatusDoc], id: &str, step: &str) -> Option<StepState> {
    let own = agents
        .iter()
        .find(|d| d.node_id == id)
        .and_then(|d| d.steps.iter().find(|s| s.step == step))
        .map(own_state);
    if let Some(s) = &own {
        if !s.is("backing-off") {
            return own;
        }
    }
    let mut by_freshness: Vec<&StatusDoc> = agents.iter().collect();
    by_freshness
        .sort_by_key(|d| std::cmp::Reverse((d.is_leader(), d.raft.term, d.raft.last_applied)));
    let replicated = by_freshness.iter().find_map(|d| {
        d.cluster_steps
            .iter()
            .find(|r| r.node == id && r.step == step)
            .map(|r| StepState {
                status: match r.status {
                    StepStatus::Running => "running",
                    StepStatus::Done => "done",
                    StepStatus::Failed => "failed",
                }
                .into(),
                detail: r.detail.clone(),
                source: "replicated".into(),
            })
    });
    replicated.or(own)
}

fn own_state(s: &StepView) -> StepState {
    StepState {
        status: s.status.clone(),
        detail: s.detail.clone(),
        source: "own".into(),
    }
}

/// A failure's cell: `refused: …` when the step refused to act (its text
/// says why: no Kubernetes binaries, version skew), else `failed: …`.
fn failure(prefix: &str, s: &StepState) -> String {
    let d = cell(s.detail.lines().next().unwrap_or(""));
    let lower = s.detail.to_ascii_lowercase();
    let refused = s.detail.contains("has no Kubernetes binaries")
        || lower.starts_with("refus")
        || lower.contains("version skew");
    let word = if refused { "refused" } else { "failed" };
    clip(&format!("{prefix}{word}: {d}"), KUBE_WIDTH)
}

/// The KUBE cell from a node's two steps (see [`KubeNode::kube`]).
pub fn kube_cell(cp: Option<&StepState>, kubelet: Option<&StepState>) -> String {
    let cp_done = cp.is_some_and(|s| s.is("done"));
    if let Some(s) = kubelet.filter(|s| s.is("failed")) {
        // the binaries are missing for both: say it once
        return failure("", s);
    }
    if let Some(s) = cp.filter(|s| s.is("failed")) {
        return failure("cp ", s);
    }
    let plus = |what: &str| {
        if cp_done {
            format!("cp+{what}")
        } else {
            what.to_string()
        }
    };
    match kubelet.map(|s| s.status.as_str()) {
        Some("done") => plus("Ready"),
        Some("running") => plus("NotReady"),
        Some("waiting") => match cp.map(|s| s.status.as_str()) {
            Some("running") => "cp starting".into(),
            _ => plus("waiting"),
        },
        Some("backing-off") => "retrying".into(),
        _ => match cp.map(|s| s.status.as_str()) {
            Some("done") => "cp".into(),
            Some("running") => "cp starting".into(),
            Some("waiting") => "waiting".into(),
            Some("backing-off") => "retrying".into(),
            _ => "-".into(),
        },
    }
}

/// Kubernetes as the answering agents report it; `None` when no agent
/// knows any Kubernetes step (older agents, or not reached anywhere yet).
pub fn kube_view(agents: &[StatusDoc]) -> Option<KubeView> {
    let is_kube = |step: &str| step == CONTROL_PLANE_STEP || step == KUBELET_STEP;
    let known = agents.iter().any(|d| {
        d.steps.iter().any(|s| is_kube(&s.step)) || d.cluster_steps.iter().any(|r| is_kube(&r.step))
    });
    if !known {
        return None;
    }
    let best = freshest(agents)?;
    let planned_cp: Vec<String> = best
        .plan
        .as_ref()
        .map(|p| p.control_plane.clone())
        .unwrap_or_default();
    let mut ids: BTreeSet<String> = best.members.iter().cloned().collect();
    if let Some(p) = &best.plan {
        ids.extend(p.control_plane.iter().cloned());
        ids.extend(p.workers.iter().cloned());
    }
    ids.extend(agents.iter().map(|d| d.node_id.clone()));
    ids.remove("");
    let hostname = |id: &str| -> String {
        agents
            .iter()
            .find(|d| d.node_id == id)
            .map(|d| d.hostname.clone())
            .filter(|h| !h.is_empty())
            .or_else(|| {
                agents
                    .iter()
                    .flat_map(|d| &d.member_health)
                    .find(|m| m.id == id)
                    .map(|m| m.hostname.clone())
            })
            .unwrap_or_default()
    };
    let mut nodes: Vec<KubeNode> = ids
        .iter()
        .map(|id| {
            let control_plane = step_state(agents, id, CONTROL_PLANE_STEP);
            let kubelet = step_state(agents, id, KUBELET_STEP);
            KubeNode {
                node_id: id.clone(),
                hostname: hostname(id),
                control_plane_planned: planned_cp.contains(id),
                kube: kube_cell(control_plane.as_ref(), kubelet.as_ref()),
                control_plane,
                kubelet,
            }
        })
        .collect();
    let healthy = |n: &KubeNode| n.control_plane.as_ref().is_some_and(|s| s.is("done"));
    let unhealthy: Vec<String> = planned_cp
        .iter()
        .filter(|id| !nodes.iter().any(|n| &n.node_id == *id && healthy(n)))
        .cloned()
        .collect();
    let steps: Vec<&StepState> = nodes
        .iter()
        .flat_map(|n| n.control_plane.iter().chain(n.kubelet.iter()))
        .collect();
    let disabled = !steps.is_empty() && steps.iter().all(|s| s.is("not-here"));
    if !disabled {
        // Kubernetes runs, yet this node's own kubelet step is not-here:
        // its site file entry says `kubernetes = false`.
        for n in &mut nodes {
            if n.kubelet.as_ref().is_some_and(|s| s.is("not-here")) {
                n.kube = OFF_SITE_FILE.into();
            }
        }
    }
    Some(KubeView {
        control_plane: ControlPlaneHealth {
            planned: planned_cp.len(),
            healthy: planned_cp.len() - unhealthy.len(),
            unhealthy,
        },
        nodes_ready: nodes
            .iter()
            .filter(|n| n.kubelet.as_ref().is_some_and(|s| s.is("done")))
            .count(),
        nodes,
        cluster_dns: cluster_dns(agents),
        disabled,
    })
}

/// `absent (…)` while no agent reports a DNS step; else its state on the
/// node that reports it (`done`, `running: …`, `failed: …`).
fn cluster_dns(agents: &[StatusDoc]) -> String {
    let own = agents
        .iter()
        .flat_map(|d| &d.steps)
        .filter(|s| DNS_STEPS.contains(&s.step.as_str()) && s.status != "not-here")
        .map(own_state);
    let replicated = agents
        .iter()
        .flat_map(|d| &d.cluster_steps)
        .filter(|r| DNS_STEPS.contains(&r.step.as_str()))
        .map(|r| StepState {
            status: format!("{:?}", r.status).to_ascii_lowercase(),
            detail: r.detail.clone(),
            source: "replicated".into(),
        });
    let all: Vec<StepState> = own.chain(replicated).collect();
    if all.is_empty() {
        return DNS_ABSENT.into();
    }
    match all.iter().find(|s| s.is("done")) {
        Some(_) => "deployed".into(),
        None => {
            let s = &all[0];
            if s.detail.is_empty() {
                s.status.clone()
            } else {
                clip(&format!("{}: {}", s.status, cell(&s.detail)), 60)
            }
        }
    }
}

/// The `kubernetes:` summary line (without a newline).
pub fn summary(v: &KubeView) -> String {
    if v.disabled {
        return "kubernetes: disabled (every Kubernetes step is not-here; \
                [kubernetes] enabled = false?)"
            .into();
    }
    let cp = &v.control_plane;
    let mut s = format!(
        "kubernetes: control plane {}/{} apiservers healthy",
        cp.healthy, cp.planned
    );
    if !cp.unhealthy.is_empty() {
        let names: Vec<String> = cp
            .unhealthy
            .iter()
            .map(|id| {
                let n = v.nodes.iter().find(|n| &n.node_id == id);
                let label = n
                    .filter(|n| !n.hostname.is_empty())
                    .map_or_else(|| cell(id), |n| cell(&n.hostname));
                format!("{label} {}", n.map_or("-".into(), |n| n.kube.clone()))
            })
            .collect();
        s += &format!(" (not: {})", names.join(", "));
    }
    let off = v.nodes.iter().filter(|n| n.kube == OFF_SITE_FILE).count();
    s += &format!("; {}/{} nodes Ready", v.nodes_ready, v.nodes.len() - off);
    if off > 0 {
        s += &format!(" ({off} kept out by the site file)");
    }
    s += &format!("; cluster DNS: {}", v.cluster_dns);
    s
}
