//! The human output of `habuild cluster status`: one table row per agent,
//! a legend, the members that are down, nodes that keep /var in RAM,
//! agents that did not answer,
//! handshakes that failed without being an authentication failure,
//! rejected announcements, and the summary line
//! ([`super::agreement::summary_line`]).
//!
//! Every cell comes from a typed [`StatusDoc`]; text an agent sent is shown
//! on one line with control characters replaced, absent values as `-`.

use firstboot::discovery::Rejected as Announcements;
use firstboot::protocol::{RaftRole, Rejected, StatusDoc};
use firstboot::state::Role;

use super::agreement::{member_health, summary_line};
use super::kube::{self, kube_view};
use super::Report;

/// What the marks and labels of the table mean.
const LEGEND: &str = "\
(* Raft leader. REJECTED, what each agent refused: mac = mDNS announcements with a bad MAC,
 other = of another cluster, malformed, dup-id = of its own node id from another address,
 auth = transport handshakes of peers without the cluster secret, handshake = any failed
 handshake (agents of version 0 count them together). DOWN: members the agent sees down,
 ? = the agent does not report member health.)
";

/// Longest `waiting_for` shown in the table.
pub const WAITING_WIDTH: usize = 48;

impl Report {
    /// The human output: table, legend, members down, unreachable agents,
    /// unfinished handshakes, rejected announcements, summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.agents.is_empty() {
            out += &render_table(&self.agents);
            out += LEGEND;
        }
        if let Some(h) = member_health(&self.agents) {
            for d in &h.down {
                out += &format!(
                    "down: {}{}{}; reported by {}\n",
                    d.label(),
                    if d.ip.is_empty() {
                        String::new()
                    } else {
                        format!(" at {}", cell(&d.ip))
                    },
                    d.last_ack_secs.map_or(String::new(), |s| format!(
                        ", last heard from {} ago",
                        secs(s)
                    )),
                    d.reported_by.join(", ")
                );
            }
        }
        for doc in &self.agents {
            if let Some(why) = doc.var_in_ram() {
                out += &format!(
                    "var in RAM: {} ({}): {}; a worker only (never etcd, control plane or a brick), and a new node after a reboot\n",
                    cell(&doc.node_id),
                    cell(&doc.hostname),
                    cell(why)
                );
            }
        }
        for u in &self.unreachable {
            out += &format!("unreachable: {}: {}\n", u.node_id, u.error);
        }
        if let Some(l) = unfinished_handshakes(&self.agents) {
            out += &format!(
                "handshakes that timed out or were aborted (not authentication failures): {l}\n"
            );
        }
        if let Some(r) = rejected_line(&self.rejected) {
            out += &format!("rejected announcements while listening: {r}\n");
        }
        if let Some(k) = kube_view(&self.agents) {
            out += &kube::summary(&k);
            out.push('\n');
        }
        out += &summary_line(&self.agents, self.unreachable.len());
        out.push('\n');
        out
    }
}

/// One row per status document (in the given order): node id (`*` marks the
/// Raft leader), hostname, address, phase, role, Raft state, term, leader,
/// plan version, rejected counts, members this agent sees down, its
/// Kubernetes state (the KUBE column, only when some agent knows a
/// Kubernetes step: see [`super::kube`]), what the agent waits for
/// (truncated).
pub fn render_table(agents: &[StatusDoc]) -> String {
    let kube = kube_view(agents);
    let mut header = vec![
        " NODE",
        "HOSTNAME",
        "ADDRESS",
        "PHASE",
        "ROLE",
        "RAFT",
        "TERM",
        "LEADER",
        "PLAN",
        "REJECTED",
        "DOWN",
        "WAITING FOR",
    ];
    if kube.is_some() {
        header.insert(header.len() - 1, "KUBE");
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for doc in agents {
        let mut row = vec![
            format!(
                "{}{}",
                if doc.is_leader() { "*" } else { " " },
                cell(&doc.node_id)
            ),
            clip(&cell(&doc.hostname), 32),
            cell(&doc.address),
            cell(&doc.phase),
            doc.role.map_or("-", role_name).to_string(),
            raft_state(doc),
            doc.raft.term.to_string(),
            doc.raft.leader.as_deref().map_or("-".into(), cell),
            doc.plan
                .as_ref()
                .map_or("-".into(), |p| format!("v{}", p.version)),
            rejected_cell(&doc.rejected),
            down_cell(doc),
            clip(
                &doc.waiting_for.as_deref().map_or("-".into(), cell),
                WAITING_WIDTH,
            ),
        ];
        if let Some(k) = &kube {
            let c = k
                .nodes
                .iter()
                .find(|n| n.node_id == doc.node_id)
                .map_or("-".to_string(), |n| n.kube.clone());
            row.insert(row.len() - 1, c);
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line += "  ";
            }
            // `{:<w$}` pads by characters, as the widths are counted
            line += &format!("{cell:<w$}", w = widths[c]);
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::ControlPlane => "control-plane",
        Role::Worker => "worker",
    }
}

/// The Raft state in lower case, `-` when the agent is not in the group.
fn raft_state(doc: &StatusDoc) -> String {
    if !doc.raft.member {
        return "-".into();
    }
    match doc.raft.state {
        RaftRole::Learner => "learner",
        RaftRole::Follower => "follower",
        RaftRole::Candidate => "candidate",
        RaftRole::Leader => "leader",
        RaftRole::Shutdown => "shutdown",
    }
    .into()
}

/// What the agent refused, security-relevant causes only: `0` when nothing.
/// `auth` counts peers without the cluster secret; `handshake` is the
/// version 0 counter that mixed every cause.
pub fn rejected_cell(r: &Rejected) -> String {
    let parts: Vec<String> = [
        (r.bad_mac, "mac"),
        (r.other_cluster, "other"),
        (r.malformed, "malformed"),
        (r.duplicate_node_id, "dup-id"),
        (r.unauthenticated, "auth"),
        (r.transport_handshakes, "handshake"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, label)| format!("{label}={n}"))
    .collect();
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(",")
    }
}

/// The members this agent marks down (hostname, else node id): `-` when
/// none, `?` when a version 0 agent does not report member health.
fn down_cell(doc: &StatusDoc) -> String {
    if doc.member_health.is_empty() && doc.version == 0 {
        return "?".into();
    }
    let down: Vec<String> = doc
        .member_health
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| {
            if m.hostname.is_empty() {
                cell(&m.id)
            } else {
                cell(&m.hostname)
            }
        })
        .collect();
    if down.is_empty() {
        "-".into()
    } else {
        down.join(",")
    }
}

/// `X timeouts=T aborted=A, …` for the agents that counted any.
fn unfinished_handshakes(agents: &[StatusDoc]) -> Option<String> {
    let parts: Vec<String> = agents
        .iter()
        .filter(|d| d.rejected.handshake_timeouts + d.rejected.handshake_aborted > 0)
        .map(|d| {
            format!(
                "{} timeouts={} aborted={}",
                cell(&d.node_id),
                d.rejected.handshake_timeouts,
                d.rejected.handshake_aborted
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Announcements `habuild cluster status` itself rejected while listening.
pub fn rejected_line(r: &Announcements) -> Option<String> {
    let parts: Vec<String> = [
        (r.bad_mac, "bad MAC (another secret, or tampered)"),
        (r.other_cluster, "of another cluster"),
        (r.malformed, "malformed"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Text an agent sent, as one line: `-` when empty, control characters
/// replaced.
pub fn cell(s: &str) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// At most `max` characters, `…` marking a cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Seconds with one decimal: `1.5 s`, `3 s`.
pub fn secs(s: f64) -> String {
    format!("{} s", (s * 10.0).round() / 10.0)
}
