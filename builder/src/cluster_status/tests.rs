//! Unit tests of the pure parts: merging, agreement, table, JSON, gluster
//! view; reading version 0 and version 1 agents.

use std::collections::BTreeSet;
use std::time::Duration;

use firstboot::discovery::{Peer, RaftState, Rejected as Announcements};
use firstboot::protocol::{
    hex, ClusterStep, GlusterView, PlanView, RaftRole, RaftView, Rejected, StatusDoc,
};
use firstboot::state::{Role, StepStatus};
use serde_json::json;

use super::table::{clip, secs};
use super::*;

/// A status document as an agent of this revision makes it, without
/// member health (an agent that reports none yet).
fn doc(i: u64, leader: u64, plan: Option<u64>) -> StatusDoc {
    let id = hex(0x1000 + i);
    let ids = vec![hex(0x1000), hex(0x1001), hex(0x1002)];
    StatusDoc {
        version: 1,
        node_id: id,
        hostname: format!("node{i}"),
        address: format!("10.90.0.{}:7946", 10 + i),
        phase: if plan.is_some() { "planned" } else { "member" }.into(),
        phase_detail: Some(json!({"phase": "planned", "role": "control-plane", "plan": plan})),
        waiting_for: match plan {
            Some(_) => None,
            None => Some(
                "the leader to commit the first plan (2 of 3 members known) and then some more text"
                    .into(),
            ),
        },
        role: plan.map(|_| if i == 2 { Role::Worker } else { Role::ControlPlane }),
        raft: RaftView {
            member: true,
            state: if i == leader {
                RaftRole::Leader
            } else {
                RaftRole::Follower
            },
            term: 2,
            leader: Some(hex(0x1000 + leader)),
            voters: ids.clone(),
            learners: vec![],
            last_applied: Some(7),
        },
        members: ids,
        plan: plan.map(|v| PlanView {
            version: v,
            control_plane: vec![hex(0x1000), hex(0x1001)],
            workers: vec![hex(0x1002)],
            vip: "10.90.0.250".into(),
            ..PlanView::default()
        }),
        rejected: Rejected {
            bad_mac: if i == 1 { 3 } else { 0 },
            unauthenticated: if i == 1 { 1 } else { 0 },
            ..Rejected::default()
        },
        announcements_last_minute: 12,
        ..StatusDoc::default()
    }
}

/// A version 0 document, shaped exactly as the agent wrote it (with `json!`) before
/// the typed protocol: no `version`, no `member_health`, one
/// `transport_handshakes` counter for every failed handshake.
const V0: &str = r#"{
  "node_id": "0000000000001000",
  "hostname": "node0",
  "address": "10.90.0.10:7946",
  "phase": "planned",
  "phase_detail": {"phase": "planned", "role": "control-plane", "plan": 1},
  "waiting_for": null,
  "error": null,
  "role": "control-plane",
  "raft": {
    "member": true,
    "state": "Leader",
    "term": 2,
    "leader": "0000000000001000",
    "voters": ["0000000000001000", "0000000000001001", "0000000000001002"],
    "learners": [],
    "last_applied": 7
  },
  "members": ["0000000000001000", "0000000000001001", "0000000000001002"],
  "plan": {
    "version": 1,
    "control_plane": ["0000000000001000", "0000000000001001", "0000000000001002"],
    "workers": [],
    "storage": ["0000000000001000", "0000000000001001", "0000000000001002"],
    "storage_leader": "0000000000001000",
    "vip": "10.90.0.250",
    "metallb": "10.90.0.200-10.90.0.210",
    "pod_cidrs": {"0000000000001000": "10.244.0.0/24"}
  },
  "peers": [{"id": "0000000000001001", "state": "member", "addrs": ["10.90.0.11"], "port": 7946}],
  "steps": [{"step": "etcd", "status": "done", "detail": "member a cluster b: 3/3 members healthy", "attempts": 1}],
  "gluster": {"enabled": false},
  "cluster_steps": [{"node": "0000000000001000", "step": "etcd", "status": "done", "detail": "", "attempts": 1}],
  "rejected": {
    "other_cluster": 0,
    "bad_mac": 1,
    "malformed": 0,
    "transport_handshakes": 7,
    "duplicate_node_id": 0
  },
  "announcements_last_minute": 12
}"#;

/// A version 1 document of the leader of three, one member (node2) down,
/// handshake failures by cause.
const V1: &str = r#"{
  "version": 1,
  "node_id": "0000000000001000",
  "hostname": "node0",
  "address": "10.90.0.10:7946",
  "phase": "planned",
  "phase_detail": {"phase": "planned", "role": "control-plane", "plan": 1},
  "role": "control-plane",
  "raft": {
    "member": true, "state": "Leader", "term": 3, "leader": "0000000000001000",
    "voters": ["0000000000001000", "0000000000001001", "0000000000001002"],
    "learners": [], "last_applied": 40
  },
  "members": ["0000000000001000", "0000000000001001", "0000000000001002"],
  "member_health": [
    {"id": "0000000000001000", "hostname": "node0", "ip": "10.90.0.10", "healthy": true, "last_ack_secs": 0.0},
    {"id": "0000000000001001", "hostname": "node1", "ip": "10.90.0.11", "healthy": true, "last_ack_secs": 0.3},
    {"id": "0000000000001002", "hostname": "node2", "ip": "10.90.0.12", "healthy": false, "last_ack_secs": 42.46}
  ],
  "plan": {
    "version": 1,
    "control_plane": ["0000000000001000", "0000000000001001", "0000000000001002"],
    "workers": [], "storage": [], "storage_leader": null, "vip": "10.90.0.250",
    "metallb": "10.90.0.200-10.90.0.210", "pod_cidrs": {}
  },
  "steps": [{"step": "etcd", "status": "done", "detail": "member a cluster b: 2/3 members healthy, 0000000000001002 does not answer", "attempts": 4}],
  "rejected": {
    "other_cluster": 0, "bad_mac": 0, "malformed": 0,
    "unauthenticated": 2, "handshake_timeouts": 5, "handshake_aborted": 1,
    "duplicate_node_id": 0
  },
  "announcements_last_minute": 30,
  "a_field_from_the_future": {"ignored": true}
}"#;

#[test]
fn reads_a_version_0_agent() {
    let d = StatusDoc::parse(V0).expect("a version 0 document parses");
    assert_eq!(d.version, 0);
    assert!(d.is_leader());
    assert_eq!(d.role, Some(Role::ControlPlane));
    assert_eq!(d.plan.as_ref().map(|p| p.version), Some(1));
    assert!(d.member_health.is_empty());
    assert_eq!(d.rejected.transport_handshakes, 7);
    assert_eq!(d.rejected.unauthenticated, 0);
    assert_eq!(d.steps[0].status, "done");
    assert_eq!(d.cluster_steps[0].status, StepStatus::Done);
    assert_eq!(d.gluster.as_ref().map(|g| g.enabled), Some(false));

    let r = Report {
        agents: vec![d],
        ..Report::default()
    };
    let t = render_table(&r.agents);
    let row = t.lines().nth(1).unwrap();
    // the mixed counter is shown as such, member health as unknown
    assert!(row.contains("  mac=1,handshake=7  ?     -"), "{t}");
    assert_eq!(
        summary_line(&r.agents, 0),
        "1 agent answered; leader 0000000000001000 (term 2); plan v1 on all 1"
    );
    let j = r.to_json();
    assert_eq!(j.version, OUTPUT_VERSION);
    assert_eq!(j.member_health, None);
    assert_eq!(j.agents[0].version, 0);
}

#[test]
fn reads_a_version_1_agent_and_shows_what_is_down() {
    let leader = StatusDoc::parse(V1).expect("a version 1 document parses");
    assert_eq!(leader.version, 1);
    assert_eq!(leader.member_health.len(), 3);
    assert_eq!(leader.rejected.unauthenticated, 2);
    // a follower that has not applied the last entry yet sees all healthy
    let mut follower = leader.clone();
    follower.node_id = hex(0x1001);
    follower.hostname = "node1".into();
    follower.address = "10.90.0.11:7946".into();
    follower.raft.state = RaftRole::Follower;
    follower.raft.last_applied = Some(39);
    follower.rejected = Rejected::default();
    for m in &mut follower.member_health {
        m.last_ack_secs = None;
    }
    let mut stale = follower.clone();
    for m in &mut stale.member_health {
        m.healthy = true;
    }
    let r = Report {
        agents: vec![leader.clone(), follower.clone()],
        unreachable: vec![Unreachable {
            node_id: hex(0x1002),
            addresses: vec!["10.90.0.12:7946".into()],
            error: "10.90.0.12:7946: no answer within 3 s".into(),
        }],
        rejected: Announcements::default(),
    };

    let t = render_table(&r.agents);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].contains("  REJECTED  DOWN   WAITING FOR"), "{t}");
    // the security column counts authentication failures only
    assert!(lines[1].starts_with("*0000000000001000  node0"), "{t}");
    assert!(lines[1].ends_with("  v1    auth=2    node2  -"), "{t}");
    assert!(lines[2].ends_with("  v1    0         node2  -"), "{t}");

    let text = r.render();
    assert!(
        text.contains(
            "down: 0000000000001002 (node2) at 10.90.0.12, last heard from 42.5 s ago; \
             reported by 0000000000001000, 0000000000001001\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "handshakes that timed out or were aborted (not authentication failures): \
             0000000000001000 timeouts=5 aborted=1\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with(
            "2 agents answered, 1 unreachable; leader 0000000000001000 (term 3); \
             2/3 members up, 0000000000001002 (node2) down; plan v1 on all 2, all agree\n"
        ),
        "{text}"
    );

    // the leader's view wins over a follower that lags behind
    let lagging = [stale.clone(), leader.clone()];
    let h = member_health(&lagging).unwrap();
    assert_eq!(h.from, hex(0x1000));
    assert_eq!((h.up, h.total), (2, 3));
    assert_eq!(h.down[0].reported_by, [hex(0x1000)]);
    // without the leader: the agent that applied the most
    let mut ahead = stale.clone();
    ahead.raft.last_applied = Some(41);
    let h = member_health(&[follower.clone(), ahead]).unwrap();
    assert_eq!((h.up, h.total), (3, 3));
    assert!(h.down.is_empty());
    assert!(summary_line(&[stale], 0).contains("; 3/3 members up; "));

    // JSON: the documents as typed, the health view, the field names stable
    let j = r.to_json();
    assert_eq!(j.agents, [leader, follower]);
    let h = j.member_health.clone().unwrap();
    assert_eq!(h.down.len(), 1);
    assert_eq!(h.down[0].id, hex(0x1002));
    assert_eq!(h.down[0].ip, "10.90.0.12");
    assert_eq!(h.down[0].last_ack_secs, Some(42.46));
    let text = serde_json::to_string(&j).unwrap();
    let back: StatusOutput = serde_json::from_str(&text).unwrap();
    assert_eq!(back, j, "the output reads back into the same types");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "version",
            "agents",
            "unreachable",
            "rejected_announcements",
            "member_health",
            // version 2, additive: null when no agent knows a Kubernetes step
            "kubernetes"
        ])
    );
}

#[test]
fn gluster_view_comes_from_the_newest_plan() {
    let mut leader = doc(0, 0, Some(2));
    leader.gluster = Some(GlusterView {
        enabled: true,
        volume: Some("habuild".into()),
        kind: Some("Replicate".into()),
        replica: Some(3),
        bricks: vec![
            "10.90.0.10:/b/habuild".into(),
            "10.90.0.11:/b/habuild".into(),
            "10.90.0.12:/b/habuild".into(),
        ],
        waiting: vec![],
        leader: Some(hex(0x1000)),
        mount_path: Some("/mnt/gluster".into()),
        topology: Some(
            json!({"clusters": [{"nodes": [{"node": {"hostnames": {"manage": ["node0"], "storage": ["10.90.0.10"]}, "zone": 1}, "devices": ["/dev/habuild/gluster-brick"]}]}]}),
        ),
        health: vec![],
    });
    let record = |node: u64, step: &str, status, detail: &str| ClusterStep {
        node: hex(node),
        step: step.into(),
        status,
        detail: detail.into(),
        attempts: 1,
    };
    leader.cluster_steps = vec![
        record(0x1000, "etcd", StepStatus::Done, ""),
        record(0x1000, "gluster-volume", StepStatus::Done, ""),
        record(
            0x1001,
            "gluster-brick",
            StepStatus::Failed,
            "storage device /dev/vdb: holds a ext4 signature; it is never touched",
        ),
    ];
    let mut stale = doc(1, 0, Some(1));
    stale.gluster = Some(GlusterView {
        enabled: true,
        volume: Some("old".into()),
        ..GlusterView::default()
    });
    let r = Report {
        agents: vec![stale, leader],
        unreachable: vec![],
        rejected: Announcements::default(),
    };
    let g = r.gluster().unwrap();
    assert_eq!(g.gluster.volume.as_deref(), Some("habuild"));
    assert_eq!(g.steps.len(), 2, "only gluster steps");
    let text = r.render_gluster();
    assert!(text.starts_with("volume habuild (Replicate, replica 3), mounted at /mnt/gluster on every node\nbricks: 10.90.0.10:/b/habuild "), "{text}");
    assert!(
        text.contains("gluster-brick   failed   storage device /dev/vdb: holds a ext4"),
        "{text}"
    );
    assert!(text.contains("\"devices\": [\n"), "{text}");
    // the --gluster --json document keeps its shape
    let out = serde_json::to_string(&g).unwrap();
    assert!(
        out.starts_with(r#"{"gluster":{"enabled":true,"volume":"habuild","type":"Replicate","#),
        "{out}"
    );
    assert!(
        out.contains(r#""step":"gluster-brick","status":"failed","#),
        "{out}"
    );
    let none = Report {
        agents: vec![doc(0, 0, None)],
        unreachable: vec![],
        rejected: Announcements::default(),
    };
    assert!(none
        .render_gluster()
        .starts_with("no agent reported a plan yet"));
}

#[test]
fn table_of_a_converged_cluster() {
    let agents: Vec<StatusDoc> = (0..3).map(|i| doc(i, 1, Some(1))).collect();
    let t = render_table(&agents);
    let want = [
        " NODE              HOSTNAME  ADDRESS          PHASE    ROLE           RAFT      TERM  LEADER            PLAN  REJECTED      DOWN  WAITING FOR",
        " 0000000000001000  node0     10.90.0.10:7946  planned  control-plane  follower  2     0000000000001001  v1    0             -     -",
        "*0000000000001001  node1     10.90.0.11:7946  planned  control-plane  leader    2     0000000000001001  v1    mac=3,auth=1  -     -",
        " 0000000000001002  node2     10.90.0.12:7946  planned  worker         follower  2     0000000000001001  v1    0             -     -",
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
    fresh.raft = RaftView {
        member: false,
        state: RaftRole::Learner,
        term: 0,
        leader: None,
        voters: vec![],
        learners: vec![],
        last_applied: None,
    };
    fresh.phase = "discovering".into();
    fresh.hostname = "bad\nname".into();
    let empty = StatusDoc::parse("{}").unwrap();
    let t = render_table(&[fresh.clone(), empty]);
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
            "-",
            "the leader to commit the first plan (2 of 3 mem…"
        ],
        "{t}"
    );
    assert_eq!(cells(lines[1])[11].chars().count(), WAITING_WIDTH);
    // an empty document renders as dashes, never panics; it is a version 0
    // document (member health "?"), and a typed term reads 0 when absent
    assert_eq!(
        cells(lines[2]),
        ["-", "-", "-", "-", "-", "-", "0", "-", "-", "0", "?", "-"]
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
    other.plan.as_mut().unwrap().vip = "10.90.0.251".into();
    let agents = vec![doc(0, 0, Some(1)), other];
    assert_eq!(
        summary_line(&agents, 0),
        "2 agents answered; leader 0000000000001000 (term 2); plans DISAGREE: v1 on 1, \
         v1 on 1 (same version, different content)"
    );
    let mut no_leader = doc(2, 0, Some(1));
    no_leader.raft.leader = None;
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
    let rejected = Announcements {
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
    let ids: Vec<&str> = r.agents.iter().map(|d| d.node_id.as_str()).collect();
    assert_eq!(ids, ["0000000000001001", "0000000000001002"]);
    assert_eq!(r.unreachable.len(), 2);
    assert_eq!(r.unreachable[0].node_id, "0000000000001000");
    assert_eq!(r.unreachable[0].addresses, ["10.90.0.10:7946"]);
    assert_eq!(
        r.unreachable[1].error,
        "10.90.0.13:7946: answered as node 0000000000001001 (stale or spoofed mDNS address)"
    );

    let j = r.to_json();
    assert_eq!(j.agents.len(), 2);
    assert_eq!(
        j.unreachable[0].error,
        "10.90.0.10:7946: no answer within 3 s"
    );
    assert_eq!(
        serde_json::to_value(j.rejected_announcements).unwrap(),
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
        rejected: Announcements {
            bad_mac: 3,
            ..Announcements::default()
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

fn step(name: &str, status: &str, detail: &str) -> firstboot::protocol::StepView {
    firstboot::protocol::StepView {
        step: name.into(),
        status: status.into(),
        detail: detail.into(),
        attempts: 1,
    }
}

/// Three agents (node0, node1 control plane; node2 worker) whose
/// Kubernetes steps are done.
fn kube_agents() -> Vec<StatusDoc> {
    (0..3)
        .map(|i| {
            let mut d = doc(i, 1, Some(1));
            if i < 2 {
                d.steps.push(step(
                    CONTROL_PLANE_STEP,
                    "done",
                    &format!("apiserver healthy at 10.90.0.{}:6443", 10 + i),
                ));
            } else {
                d.steps.push(step(CONTROL_PLANE_STEP, "not-here", ""));
            }
            d.steps
                .push(step(KUBELET_STEP, "done", &format!("node node{i} Ready")));
            d
        })
        .collect()
}

#[test]
fn kube_column_and_summary_of_a_ready_cluster() {
    let agents = kube_agents();
    let t = render_table(&agents);
    let want = [
        " NODE              HOSTNAME  ADDRESS          PHASE    ROLE           RAFT      TERM  LEADER            PLAN  REJECTED      DOWN  KUBE      WAITING FOR",
        " 0000000000001000  node0     10.90.0.10:7946  planned  control-plane  follower  2     0000000000001001  v1    0             -     cp+Ready  -",
        "*0000000000001001  node1     10.90.0.11:7946  planned  control-plane  leader    2     0000000000001001  v1    mac=3,auth=1  -     cp+Ready  -",
        " 0000000000001002  node2     10.90.0.12:7946  planned  worker         follower  2     0000000000001001  v1    0             -     Ready     -",
        "",
    ]
    .join("\n");
    assert_eq!(t, want, "\n{t}");
    let r = Report {
        agents: agents.clone(),
        ..Report::default()
    };
    let text = r.render();
    assert!(
        text.ends_with(
            "kubernetes: control plane 2/2 apiservers healthy; 3/3 nodes Ready; \
             cluster DNS: absent (no CoreDNS image seeded)\n\
             3 agents answered; leader 0000000000001001 (term 2); plan v1 on all 3, all agree\n"
        ),
        "{text}"
    );

    // --json: the additive `kubernetes` field, readable back
    let j = r.to_json();
    assert_eq!(j.version, 2);
    let k = j.kubernetes.clone().expect("kube steps known");
    assert_eq!((k.control_plane.healthy, k.control_plane.planned), (2, 2));
    assert_eq!(k.nodes_ready, 3);
    assert_eq!(k.cluster_dns, DNS_ABSENT);
    assert!(!k.disabled);
    let v = serde_json::to_value(&j).unwrap();
    assert_eq!(v["kubernetes"]["nodes"][0]["kube"], "cp+Ready");
    assert_eq!(
        v["kubernetes"]["nodes"][0]["control_plane"],
        json!({"status": "done", "detail": "apiserver healthy at 10.90.0.10:6443", "source": "own"})
    );
    assert_eq!(v["kubernetes"]["nodes"][2]["control_plane_planned"], false);
    assert_eq!(
        v["kubernetes"]["control_plane"],
        json!({"planned": 2, "healthy": 2, "unhealthy": []})
    );
    let back: StatusOutput = serde_json::from_value(v).unwrap();
    assert_eq!(back, j);
    // an output of version 1 (no `kubernetes`) still reads
    let old: StatusOutput =
        serde_json::from_str(r#"{"version": 1, "agents": [], "member_health": null}"#).unwrap();
    assert_eq!(old.kubernetes, None);
}

#[test]
fn kube_states_from_own_views_and_replicated_records() {
    let mut agents = kube_agents();
    // node0: apiserver up, kubelet registered but not Ready yet
    agents[0].steps[1] = step(KUBELET_STEP, "running", "node node0 NotReady");
    // node1 (leader): apiserver failing, backing off; its record has the text
    agents[1].steps[0] = step(CONTROL_PLANE_STEP, "backing-off", "");
    agents[1].steps[1] = step(KUBELET_STEP, "waiting", "an earlier step on this node");
    agents[1].cluster_steps = vec![
        ClusterStep {
            node: hex(0x1001),
            step: CONTROL_PLANE_STEP.into(),
            status: StepStatus::Failed,
            detail: "apiserver /healthz: connection refused\nmore stderr".into(),
            attempts: 3,
        },
        // node3 did not answer: its records come from the leader's state
        ClusterStep {
            node: hex(0x1003),
            step: KUBELET_STEP.into(),
            status: StepStatus::Failed,
            detail: "this image has no Kubernetes binaries (profile kube.source = none)".into(),
            attempts: 1,
        },
    ];
    agents[1].members.push(hex(0x1003));
    // node2: the worker waits for a control plane
    agents[2].steps[1] = step(
        KUBELET_STEP,
        "waiting",
        "kube-control-plane on a control-plane node",
    );

    let k = kube_view(&agents).unwrap();
    let cells: Vec<(&str, &str)> = k
        .nodes
        .iter()
        .map(|n| (n.node_id.as_str(), n.kube.as_str()))
        .collect();
    assert_eq!(
        cells,
        [
            ("0000000000001000", "cp+NotReady"),
            // "connection refused" is a failure, not the step refusing
            (
                "0000000000001001",
                "cp failed: apiserver /healthz: connecti…"
            ),
            ("0000000000001002", "waiting"),
            (
                "0000000000001003",
                "refused: this image has no Kubernetes b…"
            ),
        ]
    );
    assert_eq!(
        k.nodes[1].control_plane.as_ref().unwrap().source,
        "replicated"
    );
    assert_eq!((k.control_plane.healthy, k.control_plane.planned), (1, 2));
    assert_eq!(k.control_plane.unhealthy, [hex(0x1001)]);
    assert_eq!(k.nodes_ready, 0);
    let text = Report {
        agents: agents.clone(),
        ..Report::default()
    }
    .render();
    assert!(
        text.contains(
            "kubernetes: control plane 1/2 apiservers healthy (not: node1 cp failed: \
             apiserver /healthz: connecti…); 0/4 nodes Ready; cluster DNS: absent"
        ),
        "{text}"
    );

    // cells of each state
    let s = |status: &str| StepState {
        status: status.into(),
        detail: String::new(),
        source: "own".into(),
    };
    assert_eq!(kube_cell(None, None), "-");
    assert_eq!(kube_cell(Some(&s("not-here")), Some(&s("not-here"))), "-");
    assert_eq!(
        kube_cell(Some(&s("running")), Some(&s("waiting"))),
        "cp starting"
    );
    assert_eq!(
        kube_cell(Some(&s("done")), Some(&s("waiting"))),
        "cp+waiting"
    );
    assert_eq!(kube_cell(Some(&s("done")), None), "cp");
    assert_eq!(kube_cell(None, Some(&s("done"))), "Ready");
    assert_eq!(
        kube_cell(Some(&s("not-here")), Some(&s("running"))),
        "NotReady"
    );
    assert_eq!(kube_cell(None, Some(&s("backing-off"))), "retrying");
    let failed = StepState {
        status: "failed".into(),
        detail: "kubelet: exit status 1".into(),
        source: "own".into(),
    };
    assert_eq!(
        kube_cell(Some(&s("done")), Some(&failed)),
        "failed: kubelet: exit status 1"
    );
}

#[test]
fn a_node_kept_out_by_the_site_file_is_off_not_missing() {
    let mut agents = kube_agents();
    // node2's [[nodes]] entry says kubernetes = false: all its kube steps are not-here.
    agents[2].steps[1] = step(KUBELET_STEP, "not-here", "");
    let k = kube_view(&agents).unwrap();
    assert!(!k.disabled);
    assert_eq!(k.nodes[2].kube, OFF_SITE_FILE);
    assert_eq!(k.nodes[1].kube, "cp+Ready");
    assert_eq!(k.nodes_ready, 2);
    assert!(
        kube::summary(&k).contains("; 2/2 nodes Ready (1 kept out by the site file); "),
        "{}",
        kube::summary(&k)
    );
    assert!(render_table(&agents).contains("off (site file)"));
}

#[test]
fn kube_disabled_and_older_agents() {
    let mut agents = kube_agents();
    for d in &mut agents {
        for s in &mut d.steps {
            s.status = "not-here".into();
            s.detail.clear();
        }
    }
    let k = kube_view(&agents).unwrap();
    assert!(k.disabled);
    assert!(k.nodes.iter().all(|n| n.kube == "-"));
    let text = Report {
        agents,
        ..Report::default()
    }
    .render();
    assert!(
        text.contains("kubernetes: disabled (every Kubernetes step is not-here; "),
        "{text}"
    );
    // agents that know no Kubernetes step: no KUBE column, no line, null in JSON
    let old = vec![doc(0, 0, Some(1))];
    assert_eq!(kube_view(&old), None);
    assert!(!render_table(&old).contains("KUBE"));
    let r = Report {
        agents: old,
        ..Report::default()
    };
    assert!(!r.render().contains("kubernetes:"));
    assert_eq!(r.to_json().kubernetes, None);
}

#[test]
fn names_the_nodes_that_keep_var_in_ram() {
    let mut ram = doc(2, 0, Some(1));
    ram.live_var = Some(
        "ram: no empty local disk (a disk with a partition table, a filesystem or data is never used)"
            .into(),
    );
    let mut disk = doc(1, 0, Some(1));
    disk.live_var = Some("disk /dev/vda".into());
    let r = Report {
        agents: vec![doc(0, 0, Some(1)), disk, ram],
        ..Report::default()
    };
    let text = r.render();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("var in RAM"))
        .collect();
    assert_eq!(
        lines,
        vec![
            "var in RAM: 0000000000001002 (node2): no empty local disk (a disk with a partition \
             table, a filesystem or data is never used); a worker only (never etcd, control \
             plane or a brick), and a new node after a reboot"
        ],
        "{text}"
    );
    // machines read it in --json as the agent sent it
    let j = serde_json::to_value(r.to_json()).unwrap();
    assert_eq!(j["agents"][1]["live_var"], "disk /dev/vda");
}
