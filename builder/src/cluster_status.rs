//! `habuild cluster status`: what the running agents of a cluster say about
//! themselves.
//!
//! [`query`] is the only side-effecting part: it listens to mDNS for a while
//! *without announcing anything* ([`discovery::browse`], which verifies every
//! announcement's MAC exactly as the agents do and counts the rejected ones),
//! then asks each verified agent for its status document over the
//! authenticated transport (`Wire::Status` → `WireResponse::Status`), all
//! agents at once, each within a timeout. Agents that do not answer are
//! listed as unreachable, not fatal.
//!
//! Everything else is pure: [`Report::from_answers`] sorts the answers,
//! [`render_table`] and [`summary_line`] ([`Report::render`] for the whole
//! text) and [`Report::to_json`] present them.
//!
//! The status documents are the agents' own (`publish_status` in
//! `firstboot::agent`); they never contain the cluster secret, keys or the
//! bootstrap token, and nothing here adds any.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use firstboot::agent::rpc::{Wire, WireResponse};
use firstboot::cluster::ClusterConfig;
use firstboot::discovery::{
    self, DiscoveryConfig, DiscoveryError, Interfaces, MdnsKey, Peer, Rejected,
};
use firstboot::transport::{self, Keys, TransportError};
use serde::Serialize;
use serde_json::{json, Value};

/// Longest `waiting_for` shown in the table.
const WAITING_WIDTH: usize = 48;

#[derive(Debug, Clone)]
pub struct Options {
    /// How long to listen to mDNS announcements.
    pub listen: Duration,
    /// How long each agent has to answer (per address tried).
    pub answer_timeout: Duration,
    /// Run mDNS only on this interface (default: every interface).
    pub interface: Option<String>,
    /// UDP port of mDNS: 5353 except in special tests.
    pub mdns_port: u16,
}

impl Options {
    /// Listen for `timeout`, give each agent `timeout` to answer, standard mDNS port.
    pub fn new(timeout: Duration, interface: Option<String>) -> Self {
        Self {
            listen: timeout,
            answer_timeout: timeout,
            interface,
            mdns_port: mdns_sd::MDNS_PORT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("mDNS browse failed: {0}")]
    Discovery(#[from] DiscoveryError),
    #[error("making a transport key: {0}")]
    Keys(#[from] TransportError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// An agent that announced itself (verified) but gave no status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreachable {
    pub node_id: String,
    pub addresses: Vec<String>,
    pub error: String,
}

/// Everything one `habuild cluster status` learned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Status documents, ordered by node id, one per node.
    pub agents: Vec<Value>,
    pub unreachable: Vec<Unreachable>,
    /// Announcements that failed verification while listening.
    pub rejected: Rejected,
}

/// Browses, then asks every verified agent for its status (see the module docs).
pub fn query(cluster: &ClusterConfig, opts: &Options) -> Result<Report, StatusError> {
    let c = &cluster.cluster;
    let dcfg = DiscoveryConfig {
        key: MdnsKey::derive(&c.secret),
        interfaces: match &opts.interface {
            Some(i) => Interfaces::Only(vec![i.clone()]),
            None => Interfaces::All,
        },
        mdns_port: opts.mdns_port,
    };
    let (peers, rejected) = discovery::browse(&dcfg, &c.name, opts.listen)?;
    tracing::debug!(peers = peers.len(), ?rejected, "mdns browse done");
    // a throwaway static key: the PSK (from the secret) is what admits us
    let keys = Arc::new(Keys::derive(&c.secret, Keys::generate_static()?));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StatusError::Runtime)?;
    let answers = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, peer) in peers.iter().enumerate() {
            let (peer, keys, t) = (peer.clone(), keys.clone(), opts.answer_timeout);
            set.spawn(async move { (i, ask(&peer, &keys, t).await) });
        }
        let mut answers: Vec<Option<Result<Value, String>>> = vec![None; peers.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, a)) = r {
                answers[i] = Some(a);
            }
        }
        answers
    });
    let answers = peers
        .into_iter()
        .zip(answers)
        .map(|(p, a)| (p, a.unwrap_or_else(|| Err("status task failed".into()))))
        .collect();
    Ok(Report::from_answers(answers, rejected))
}

/// One agent's status, trying its announced addresses in order.
async fn ask(peer: &Peer, keys: &Keys, timeout: Duration) -> Result<Value, String> {
    let body = serde_json::to_vec(&Wire::Status).map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    for ip in &peer.addrs {
        let addr = SocketAddr::new(*ip, peer.port);
        match tokio::time::timeout(timeout, transport::call(addr, keys, &body)).await {
            Err(_) => errors.push(format!(
                "{addr}: no answer within {}",
                secs(timeout.as_secs_f64())
            )),
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Ok(Ok(resp)) => match serde_json::from_slice::<WireResponse>(&resp) {
                Ok(WireResponse::Status(v)) => return Ok(v),
                Ok(WireResponse::Rpc(_)) => errors.push(format!("{addr}: answered with an RPC")),
                Ok(WireResponse::Invalid(m)) => {
                    errors.push(format!("{addr}: request refused: {}", clip(&m, 120)))
                }
                Err(e) => errors.push(format!("{addr}: undecodable answer: {e}")),
            },
        }
    }
    if errors.is_empty() {
        errors.push("announced no address".into());
    }
    Err(errors.join("; "))
}

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

fn secs(s: f64) -> String {
    format!("{} s", (s * 10.0).round() / 10.0)
}

impl Report {
    /// The report from each verified peer and what asking it gave. A status
    /// whose `node_id` is not the announced one (addresses in mDNS are
    /// unauthenticated hints) counts as unreachable; one document per node.
    pub fn from_answers(answers: Vec<(Peer, Result<Value, String>)>, rejected: Rejected) -> Self {
        let mut agents: BTreeMap<String, Value> = BTreeMap::new();
        let mut unreachable = Vec::new();
        for (peer, answer) in answers {
            let node_id = hex(peer.id);
            let addresses: Vec<String> = peer
                .addrs
                .iter()
                .map(|a| SocketAddr::new(*a, peer.port).to_string())
                .collect();
            let error = match answer {
                Ok(doc) if doc["node_id"].as_str() == Some(node_id.as_str()) => {
                    agents.insert(node_id, doc);
                    continue;
                }
                Ok(doc) => format!(
                    "{}: answered as node {} (stale or spoofed mDNS address)",
                    addresses.join(", "),
                    text(&doc, "/node_id")
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

    /// `{"agents": [...], "unreachable": [...], "rejected_announcements": {...}}`
    pub fn to_json(&self) -> Value {
        json!({
            "agents": self.agents,
            "unreachable": self.unreachable,
            "rejected_announcements": {
                "other_cluster": self.rejected.other_cluster,
                "bad_mac": self.rejected.bad_mac,
                "malformed": self.rejected.malformed,
            },
        })
    }

    /// The human output: table, legend, unreachable agents, rejected
    /// announcements, summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.agents.is_empty() {
            out += &render_table(&self.agents);
            out += "(* Raft leader; REJECTED: what each agent refused: mDNS announcements \
                    with a bad MAC, of another cluster, malformed; transport handshakes)\n";
        }
        for u in &self.unreachable {
            out += &format!("unreachable: {}: {}\n", u.node_id, u.error);
        }
        if let Some(r) = rejected_line(&self.rejected) {
            out += &format!("rejected announcements while listening: {r}\n");
        }
        out += &summary_line(&self.agents, self.unreachable.len());
        out.push('\n');
        out
    }

    /// The storage section (`--gluster`) from the agent with the newest plan
    /// (the Raft leader among equals), with every node's gluster step records:
    /// `{"gluster": {volume, type, replica, bricks, waiting, leader,
    /// mount_path, topology}, "steps": [{node, step, status, detail}...]}`.
    pub fn gluster(&self) -> Option<Value> {
        let best = self
            .agents
            .iter()
            .filter(|d| d["gluster"].is_object())
            .max_by_key(|d| (plan_version(d), is_leader(d)))?;
        let steps: Vec<&Value> = best["cluster_steps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| {
                        r["step"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("gluster-"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(json!({ "gluster": best["gluster"], "steps": steps }))
    }

    /// The human output of `--gluster`: the volume, each node's storage
    /// steps, then topology.json as heketi loads it.
    pub fn render_gluster(&self) -> String {
        let Some(g) = self.gluster() else {
            return "no agent reported a plan yet; storage is not known\n".into();
        };
        let v = &g["gluster"];
        if v["enabled"] != true {
            return "storage is disabled in the cluster file (storage.enabled = false)\n".into();
        }
        let list = |p: &str| -> String {
            v[p].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        let mut out = format!(
            "volume {} ({}, replica {}), mounted at {} on every node\nbricks: {}\n",
            text(v, "/volume"),
            text(v, "/type"),
            v["replica"],
            text(v, "/mount_path"),
            list("bricks"),
        );
        if !list("waiting").is_empty() {
            out += &format!("waiting for a whole replica set: {}\n", list("waiting"));
        }
        for r in g["steps"].as_array().into_iter().flatten() {
            out += &format!(
                "  {} {:<15} {:<8} {}\n",
                text(r, "/node"),
                text(r, "/step"),
                text(r, "/status"),
                clip(&text(r, "/detail"), 100)
            );
        }
        out += "topology.json:\n";
        out += &serde_json::to_string_pretty(&v["topology"]).unwrap_or_default();
        out.push('\n');
        out
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

fn rejected_line(r: &Rejected) -> Option<String> {
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

/// The value at JSON pointer `ptr` as one line of text (`-` when absent or
/// null), control characters replaced.
fn text(doc: &Value, ptr: &str) -> String {
    let s = match doc.pointer(ptr) {
        None | Some(Value::Null) => return "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// At most `max` characters, `…` marking a cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn is_leader(doc: &Value) -> bool {
    doc.pointer("/raft/state").and_then(Value::as_str) == Some("Leader")
}

fn raft_state(doc: &Value) -> String {
    if doc.pointer("/raft/member") != Some(&Value::Bool(true)) {
        return "-".into();
    }
    text(doc, "/raft/state").to_lowercase()
}

fn plan_version(doc: &Value) -> Option<u64> {
    doc.pointer("/plan/version").and_then(Value::as_u64)
}

fn rejected_cell(doc: &Value) -> String {
    let parts: Vec<String> = [
        ("bad_mac", "mac"),
        ("other_cluster", "other"),
        ("malformed", "malformed"),
        ("unauthenticated", "handshake"),
    ]
    .iter()
    .filter_map(|(key, label)| {
        let n = doc.pointer(&format!("/rejected/{key}"))?.as_u64()?;
        (n > 0).then(|| format!("{label}={n}"))
    })
    .collect();
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(",")
    }
}

/// One row per status document (in the given order): node id (`*` marks the
/// Raft leader), hostname, address, phase, role, Raft state, term, leader,
/// plan version, rejected counts, what the agent waits for (truncated).
pub fn render_table(agents: &[Value]) -> String {
    let header = [
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
        "WAITING FOR",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for doc in agents {
        rows.push(vec![
            format!(
                "{}{}",
                if is_leader(doc) { "*" } else { " " },
                text(doc, "/node_id")
            ),
            clip(&text(doc, "/hostname"), 32),
            text(doc, "/address"),
            text(doc, "/phase"),
            text(doc, "/role"),
            raft_state(doc),
            text(doc, "/raft/term"),
            text(doc, "/raft/leader"),
            plan_version(doc).map_or("-".into(), |v| format!("v{v}")),
            rejected_cell(doc),
            clip(&text(doc, "/waiting_for"), WAITING_WIDTH),
        ]);
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

/// `N agents answered[, U unreachable]; leader X (term T); plan vP on all N`,
/// saying plainly when leaders or plans disagree.
pub fn summary_line(agents: &[Value], unreachable: usize) -> String {
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

    // the leader as each agent sees it
    let mut leaders: BTreeMap<String, usize> = BTreeMap::new();
    for doc in agents {
        if let Some(l) = doc.pointer("/raft/leader").and_then(Value::as_str) {
            *leaders.entry(l.to_string()).or_default() += 1;
        }
    }
    parts.push(match leaders.len() {
        0 => "no leader".into(),
        1 => {
            let (l, k) = leaders.iter().next().expect("one");
            let term = agents
                .iter()
                .find(|d| is_leader(d) && d["node_id"].as_str() == Some(l))
                .map(|d| text(d, "/raft/term"));
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
    });

    // the plan: whole documents compared, not just versions
    let mut plans: Vec<(&Value, usize)> = Vec::new();
    for doc in agents {
        let p = doc.get("plan").unwrap_or(&Value::Null);
        match plans.iter_mut().find(|(q, _)| *q == p) {
            Some((_, k)) => *k += 1,
            None => plans.push((p, 1)),
        }
    }
    let label = |p: &Value| {
        p.get("version")
            .and_then(Value::as_u64)
            .map_or("none".into(), |v| format!("v{v}"))
    };
    parts.push(match &plans[..] {
        [(p, _)] if p.is_null() => "no plan committed yet".into(),
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
    });
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use firstboot::discovery::RaftState;

    /// A status document shaped like `publish_status` makes.
    fn doc(i: u64, leader: u64, plan: Option<u64>) -> Value {
        let id = hex(0x1000 + i);
        let is_leader = i == leader;
        json!({
            "node_id": id,
            "hostname": format!("node{i}"),
            "address": format!("10.90.0.{}:7946", 10 + i),
            "phase": if plan.is_some() { "planned" } else { "member" },
            "phase_detail": {"phase": "planned", "role": "control-plane", "plan": plan},
            "waiting_for": if plan.is_some() { Value::Null } else {
                json!("the leader to commit the first plan (2 of 3 members known) and then some more text")
            },
            "role": plan.map(|_| if i == 2 { "worker" } else { "control-plane" }),
            "raft": {
                "member": true,
                "state": if is_leader { "Leader" } else { "Follower" },
                "term": 2,
                "leader": hex(0x1000 + leader),
                "voters": [hex(0x1000), hex(0x1001), hex(0x1002)],
                "learners": [],
                "last_applied": 7,
            },
            "members": [hex(0x1000), hex(0x1001), hex(0x1002)],
            "plan": plan.map(|v| json!({
                "version": v,
                "control_plane": [hex(0x1000), hex(0x1001)],
                "workers": [hex(0x1002)],
                "storage": [],
                "storage_leader": null,
                "vip": "10.90.0.250",
                "metallb": null,
                "pod_cidrs": {},
            })),
            "peers": [],
            "rejected": {
                "other_cluster": 0,
                "bad_mac": if i == 1 { 3 } else { 0 },
                "malformed": 0,
                "unauthenticated": if i == 1 { 1 } else { 0 },
            },
            "announcements_last_minute": 12,
        })
    }

    #[test]
    fn gluster_view_comes_from_the_newest_plan() {
        let mut leader = doc(0, 0, Some(2));
        leader["gluster"] = json!({
            "enabled": true, "volume": "habuild", "type": "Replicate", "replica": 3,
            "bricks": ["10.90.0.10:/b/habuild", "10.90.0.11:/b/habuild", "10.90.0.12:/b/habuild"],
            "waiting": [], "leader": hex(0x1000), "mount_path": "/mnt/gluster",
            "topology": {"clusters": [{"nodes": [{"node": {"hostnames": {"manage": ["node0"], "storage": ["10.90.0.10"]}, "zone": 1}, "devices": ["/dev/habuild/gluster-brick"]}]}]},
        });
        leader["cluster_steps"] = json!([
            {"node": hex(0x1000), "step": "etcd", "status": "done", "detail": ""},
            {"node": hex(0x1000), "step": "gluster-volume", "status": "done", "detail": ""},
            {"node": hex(0x1001), "step": "gluster-brick", "status": "failed", "detail": "storage device /dev/vdb: holds a ext4 signature; it is never touched"},
        ]);
        let mut stale = doc(1, 0, Some(1));
        stale["gluster"] = json!({"enabled": true, "volume": "old"});
        let r = Report {
            agents: vec![stale, leader],
            unreachable: vec![],
            rejected: Rejected::default(),
        };
        let g = r.gluster().unwrap();
        assert_eq!(g["gluster"]["volume"], "habuild");
        assert_eq!(
            g["steps"].as_array().unwrap().len(),
            2,
            "only gluster steps"
        );
        let text = r.render_gluster();
        assert!(text.starts_with("volume habuild (Replicate, replica 3), mounted at /mnt/gluster on every node\nbricks: 10.90.0.10:/b/habuild "), "{text}");
        assert!(
            text.contains("gluster-brick   failed   storage device /dev/vdb: holds a ext4"),
            "{text}"
        );
        assert!(text.contains("\"devices\": [\n"), "{text}");
        let none = Report {
            agents: vec![doc(0, 0, None)],
            unreachable: vec![],
            rejected: Rejected::default(),
        };
        assert!(none
            .render_gluster()
            .starts_with("no agent reported a plan yet"));
    }

    #[test]
    fn table_of_a_converged_cluster() {
        let agents: Vec<Value> = (0..3).map(|i| doc(i, 1, Some(1))).collect();
        let t = render_table(&agents);
        let want = [
            " NODE              HOSTNAME  ADDRESS          PHASE    ROLE           RAFT      TERM  LEADER            PLAN  REJECTED           WAITING FOR",
            " 0000000000001000  node0     10.90.0.10:7946  planned  control-plane  follower  2     0000000000001001  v1    0                  -",
            "*0000000000001001  node1     10.90.0.11:7946  planned  control-plane  leader    2     0000000000001001  v1    mac=3,handshake=1  -",
            " 0000000000001002  node2     10.90.0.12:7946  planned  worker         follower  2     0000000000001001  v1    0                  -",
            "",
        ]
        .join("\n");
        assert_eq!(t, want, "\n{t}");
        assert_eq!(
            summary_line(&agents, 0),
            "3 agents answered; leader 0000000000001001 (term 2); plan v1 on all 3, all agree"
        );
    }

    #[test]
    fn table_of_a_forming_cluster_and_odd_documents() {
        let mut fresh = doc(0, 0, None);
        fresh["raft"] = json!({"member": false, "state": "Learner", "term": 0, "leader": null,
            "voters": [], "learners": [], "last_applied": null});
        fresh["phase"] = json!("discovering");
        fresh["hostname"] = json!("bad\nname");
        let t = render_table(&[fresh.clone(), json!({})]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        // cells are separated by at least two spaces
        let cells = |l: &str| -> Vec<String> {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        // not a member: no raft state, leader or plan; waiting_for cut to width
        assert_eq!(
            cells(lines[1]),
            [
                "0000000000001000",
                "bad?name",
                "10.90.0.10:7946",
                "discovering",
                "-",
                "-",
                "0",
                "-",
                "-",
                "0",
                "the leader to commit the first plan (2 of 3 mem…"
            ],
            "{t}"
        );
        assert_eq!(cells(lines[1])[10].chars().count(), WAITING_WIDTH);
        // an empty document renders as dashes, never panics
        assert_eq!(
            cells(lines[2]),
            ["-", "-", "-", "-", "-", "-", "-", "-", "-", "0", "-"]
        );
        assert_eq!(render_table(&[]).lines().count(), 1);
        assert_eq!(
            summary_line(&[fresh], 0),
            "1 agent answered; no leader; no plan committed yet"
        );
    }

    #[test]
    fn summary_says_when_agents_disagree() {
        let agents = vec![doc(0, 0, Some(1)), doc(1, 1, Some(2)), doc(2, 1, None)];
        assert_eq!(
            summary_line(&agents, 1),
            "3 agents answered, 1 unreachable; leaders DISAGREE: 0000000000001000 (1), \
             0000000000001001 (2); plans DISAGREE: v1 on 1, v2 on 1, none on 1"
        );
        let mut other = doc(1, 0, Some(1));
        other["plan"]["vip"] = json!("10.90.0.251");
        let agents = vec![doc(0, 0, Some(1)), other];
        assert_eq!(
            summary_line(&agents, 0),
            "2 agents answered; leader 0000000000001000 (term 2); plans DISAGREE: v1 on 1, \
             v1 on 1 (same version, different content)"
        );
        let mut no_leader = doc(2, 0, Some(1));
        no_leader["raft"]["leader"] = Value::Null;
        let agents = vec![doc(0, 0, Some(1)), no_leader];
        assert_eq!(
            summary_line(&agents, 0),
            "2 agents answered; leader 0000000000001000 (term 2), known to 1 of 2; \
             plan v1 on all 2, all agree"
        );
        assert_eq!(summary_line(&[], 2), "0 agents answered, 2 unreachable");
    }

    fn peer(i: u64) -> Peer {
        Peer {
            id: 0x1000 + i,
            addrs: vec![format!("10.90.0.{}", 10 + i).parse().unwrap()],
            port: 7946,
            state: RaftState::Member,
        }
    }

    #[test]
    fn report_sorts_dedups_and_flags_wrong_answers() {
        let rejected = Rejected {
            other_cluster: 1,
            bad_mac: 2,
            malformed: 0,
        };
        let r = Report::from_answers(
            vec![
                (peer(2), Ok(doc(2, 1, Some(1)))),
                (peer(0), Err("10.90.0.10:7946: no answer within 3 s".into())),
                // an address hint that leads to another agent
                (peer(3), Ok(doc(1, 1, Some(1)))),
                (peer(1), Ok(doc(1, 1, Some(1)))),
            ],
            rejected,
        );
        let ids: Vec<&str> = r
            .agents
            .iter()
            .map(|d| d["node_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["0000000000001001", "0000000000001002"]);
        assert_eq!(r.unreachable.len(), 2);
        assert_eq!(r.unreachable[0].node_id, "0000000000001000");
        assert_eq!(r.unreachable[0].addresses, ["10.90.0.10:7946"]);
        assert_eq!(
            r.unreachable[1].error,
            "10.90.0.13:7946: answered as node 0000000000001001 (stale or spoofed mDNS address)"
        );

        let j = r.to_json();
        assert_eq!(j["agents"].as_array().unwrap().len(), 2);
        assert_eq!(
            j["unreachable"][0]["error"],
            "10.90.0.10:7946: no answer within 3 s"
        );
        assert_eq!(
            j["rejected_announcements"],
            json!({"other_cluster": 1, "bad_mac": 2, "malformed": 0})
        );

        let text = r.render();
        assert!(text.contains("*0000000000001001  node1"), "{text}");
        assert!(
            text.contains("unreachable: 0000000000001000: 10.90.0.10:7946: no answer"),
            "{text}"
        );
        assert!(text.contains(
            "rejected announcements while listening: 2 bad MAC (another secret, or tampered), 1 of another cluster"
        ));
        assert!(text.ends_with(
            "2 agents answered, 2 unreachable; leader 0000000000001001 (term 2); plan v1 on all 2, all agree\n"
        ), "{text}");
    }

    #[test]
    fn nobody_answered_says_why() {
        let wait = Duration::from_secs(3);
        let none = Report::default();
        assert_eq!(none.render(), "0 agents answered\n");
        let m = none.nobody_answered("lab", wait);
        assert!(
            m.contains("listened 3 s") && m.contains("no announcement seen"),
            "{m}"
        );
        let wrong = Report {
            rejected: Rejected {
                bad_mac: 3,
                ..Rejected::default()
            },
            ..Report::default()
        };
        let m = wrong.nobody_answered("lab", wait);
        assert!(m.contains("3 announcement(s) named cluster \"lab\""), "{m}");
        assert!(!m.contains("no announcement seen"), "{m}");
    }

    #[test]
    fn clip_counts_characters() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "ab…");
        assert_eq!(clip("ééééé", 4), "ééé…");
        assert_eq!(secs(1.5), "1.5 s");
        assert_eq!(secs(3.0), "3 s");
    }
}
