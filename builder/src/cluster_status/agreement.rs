//! Whether the answering agents agree, and what is down: the summary line
//! (leader, member health, plan) and the cluster's member health as the
//! freshest agent sees it ([`member_health`]).
//!
//! Member health is the replicated flag the Raft leader sets
//! (`member_health[].healthy` in each status document), so every member
//! carries the same list, give or take replication lag. The view shown is
//! the leader's own document when the leader answered, otherwise the one
//! that applied the most of the log; each down member also names every
//! agent that reports it down. Agents of version 0 send no member health:
//! when none of the answers carries any, nothing is said about it.

use std::collections::{BTreeMap, BTreeSet};

use firstboot::protocol::{MemberHealth, StatusDoc};
use serde::{Deserialize, Serialize};

/// The members' health as the freshest answering agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthView {
    /// Node id of the agent whose view this is.
    pub from: String,
    /// Members in that view.
    pub total: usize,
    /// Members marked healthy.
    pub up: usize,
    /// Members marked down, by node id.
    pub down: Vec<DownMember>,
}

/// A member that does not answer the Raft leader.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DownMember {
    pub id: String,
    pub hostname: String,
    pub ip: String,
    /// Seconds since the leader last heard from it (the leader's view only).
    pub last_ack_secs: Option<f64>,
    /// Node ids of the answering agents that report it down.
    pub reported_by: Vec<String>,
}

impl DownMember {
    /// `id (hostname)`, or just the id when the hostname is unknown.
    pub fn label(&self) -> String {
        if self.hostname.is_empty() {
            self.id.clone()
        } else {
            format!("{} ({})", self.id, self.hostname)
        }
    }
}

/// The member health of the leader's document, else of the agent with the
/// highest (term, last applied index); `None` when no answer carries member
/// health (version 0 agents, or agents not in a group yet).
pub fn member_health(agents: &[StatusDoc]) -> Option<HealthView> {
    let best = agents
        .iter()
        .filter(|d| !d.member_health.is_empty())
        .max_by_key(|d| (d.is_leader(), d.raft.term, d.raft.last_applied))?;
    let mut down: Vec<DownMember> = best
        .member_health
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| DownMember {
            id: m.id.clone(),
            hostname: m.hostname.clone(),
            ip: m.ip.clone(),
            last_ack_secs: m.last_ack_secs,
            reported_by: reporters(agents, m),
        })
        .collect();
    down.sort_by(|a, b| a.id.cmp(&b.id));
    Some(HealthView {
        from: best.node_id.clone(),
        total: best.member_health.len(),
        up: best.member_health.iter().filter(|m| m.healthy).count(),
        down,
    })
}

/// The agents whose documents mark `m` down.
fn reporters(agents: &[StatusDoc], m: &MemberHealth) -> Vec<String> {
    agents
        .iter()
        .filter(|d| d.member_health.iter().any(|h| h.id == m.id && !h.healthy))
        .map(|d| d.node_id.clone())
        .collect()
}

/// `N agents answered[, U unreachable]; leader X (term T)[; U/M members up,
/// X down]; plan vP on all N`, saying plainly when leaders or plans
/// disagree. The member part is left out when no agent reports member
/// health.
pub fn summary_line(agents: &[StatusDoc], unreachable: usize) -> String {
    let n = agents.len();
    let mut parts = vec![format!(
        "{n} agent{} answered{}",
        if n == 1 { "" } else { "s" },
        if unreachable > 0 {
            format!(", {unreachable} unreachable")
        } else {
            String::new()
        }
    )];
    if n == 0 {
        return parts.remove(0);
    }
    parts.push(leader_part(agents));
    if let Some(h) = member_health(agents) {
        parts.push(health_part(&h));
    }
    parts.push(plan_part(agents));
    parts.join("; ")
}

/// The leader as each agent sees it.
fn leader_part(agents: &[StatusDoc]) -> String {
    let n = agents.len();
    let mut leaders: BTreeMap<&str, usize> = BTreeMap::new();
    for doc in agents {
        if let Some(l) = &doc.raft.leader {
            *leaders.entry(l.as_str()).or_default() += 1;
        }
    }
    match leaders.len() {
        0 => "no leader".into(),
        1 => {
            let (l, k) = leaders.iter().next().expect("one");
            let term = agents
                .iter()
                .find(|d| d.is_leader() && d.node_id == *l)
                .map(|d| d.raft.term);
            format!(
                "leader {l}{}{}",
                term.map_or(String::new(), |t| format!(" (term {t})")),
                if *k < n {
                    format!(", known to {k} of {n}")
                } else {
                    String::new()
                }
            )
        }
        _ => format!(
            "leaders DISAGREE: {}",
            leaders
                .iter()
                .map(|(l, k)| format!("{l} ({k})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `3/3 members up`, `2/3 members up, X down`, `1/3 members up, X, Y down`.
fn health_part(h: &HealthView) -> String {
    let mut s = format!("{}/{} members up", h.up, h.total);
    if !h.down.is_empty() {
        let names: Vec<String> = h.down.iter().map(DownMember::label).collect();
        s += &format!(", {} down", names.join(", "));
    }
    s
}

/// The plan: whole documents compared, not just versions.
fn plan_part(agents: &[StatusDoc]) -> String {
    let n = agents.len();
    let mut plans: Vec<(&Option<_>, usize)> = Vec::new();
    for doc in agents {
        match plans.iter_mut().find(|(q, _)| *q == &doc.plan) {
            Some((_, k)) => *k += 1,
            None => plans.push((&doc.plan, 1)),
        }
    }
    let label = |p: &Option<firstboot::protocol::PlanView>| {
        p.as_ref()
            .map_or("none".to_string(), |p| format!("v{}", p.version))
    };
    match &plans[..] {
        [(None, _)] => "no plan committed yet".into(),
        [(p, _)] => format!(
            "plan {} on all {n}{}",
            label(p),
            if n > 1 { ", all agree" } else { "" }
        ),
        _ => {
            let versions: BTreeSet<String> = plans.iter().map(|(p, _)| label(p)).collect();
            format!(
                "plans DISAGREE: {}{}",
                plans
                    .iter()
                    .map(|(p, k)| format!("{} on {k}", label(p)))
                    .collect::<Vec<_>>()
                    .join(", "),
                if versions.len() < plans.len() {
                    " (same version, different content)"
                } else {
                    ""
                }
            )
        }
    }
}
