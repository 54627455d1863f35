//! `habuild cluster status --gluster`: the storage section from the agent
//! with the newest plan (the Raft leader among equals), with every node's
//! `gluster-*` step records, and each answering storage node's safety view
//! (from its own `gluster-brick` step: brick serving / untrusted /
//! rebuilding, bricks offline, pending heals, split brain) as
//! `gluster.health`, with one verdict: safe, or "not safe yet" and why; as
//! [`GlusterOutput`] (`--json`) or as text ending in heketi's topology.json.

use firstboot::gluster::health::Health;
use firstboot::protocol::{GlusterNodeHealth, StatusDoc};
use firstboot::state::StepStatus;

use super::json::GlusterOutput;
use super::table::{cell, clip};
use super::Report;

impl Report {
    /// The storage section of the agent with the newest plan; `None` when
    /// no agent reported one.
    pub fn gluster(&self) -> Option<GlusterOutput> {
        let best: &StatusDoc = self
            .agents
            .iter()
            .filter(|d| d.gluster.is_some())
            .max_by_key(|d| (d.plan.as_ref().map(|p| p.version), d.is_leader()))?;
        let mut gluster = best.gluster.clone()?;
        gluster.health = self.gluster_health();
        Some(GlusterOutput {
            gluster,
            steps: best
                .cluster_steps
                .iter()
                .filter(|r| r.step.starts_with("gluster-"))
                .cloned()
                .collect(),
        })
    }

    /// Each answering agent's safety view, from its `gluster-brick` step
    /// (agents without that step hold no brick and are left out).
    fn gluster_health(&self) -> Vec<GlusterNodeHealth> {
        self.agents
            .iter()
            .filter_map(|a| {
                let step = a.steps.iter().find(|s| s.step == "gluster-brick")?;
                if step.status == "not-here" {
                    return None;
                }
                let mut n = GlusterNodeHealth {
                    node: a.node_id.clone(),
                    hostname: a.hostname.clone(),
                    brick: step.status.clone(),
                    ..GlusterNodeHealth::default()
                };
                if let Some(h) = Health::from_detail(&step.detail) {
                    n.safe = h.safe();
                    n.brick = h.brick;
                    n.bricks_offline = h.offline;
                    n.heal_pending = h.heal_pending;
                    n.split_brain = h.split_brain;
                }
                Some(n)
            })
            .collect()
    }

    /// The human output of `--gluster`: the volume, each node's storage
    /// steps, then topology.json as heketi loads it.
    pub fn render_gluster(&self) -> String {
        let Some(g) = self.gluster() else {
            return "no agent reported a plan yet; storage is not known\n".into();
        };
        let v = &g.gluster;
        if !v.enabled {
            return "storage is disabled in the cluster file (storage.enabled = false)\n".into();
        }
        let opt = |s: &Option<String>| s.as_deref().map_or("-".into(), cell);
        let list = |l: &[String]| l.iter().map(|s| cell(s)).collect::<Vec<_>>().join(" ");
        let mut out = format!(
            "volume {} ({}, replica {}), mounted at {} on every node\nbricks: {}\n",
            opt(&v.volume),
            opt(&v.kind),
            v.replica.map_or("-".into(), |r| r.to_string()),
            opt(&v.mount_path),
            list(&v.bricks),
        );
        if !v.waiting.is_empty() {
            out += &format!("waiting for a whole replica set: {}\n", list(&v.waiting));
        }
        out += &render_safety(&v.health, v.bricks.len());
        for r in &g.steps {
            let status = match r.status {
                StepStatus::Running => "running",
                StepStatus::Done => "done",
                StepStatus::Failed => "failed",
            };
            out += &format!(
                "  {} {:<15} {:<8} {}\n",
                cell(&r.node),
                cell(&r.step),
                status,
                clip(&cell(&r.detail), 100)
            );
        }
        out += "topology.json:\n";
        out += &serde_json::to_string_pretty(&v.topology).unwrap_or_default();
        out.push('\n');
        out
    }
}

/// The verdict line and one line per storage node. Not safe: a node's
/// brick is not serving (untrusted or rebuilding after an unclean shutdown,
/// or not built), a brick is offline, heals are pending, split brain, or a
/// storage node did not answer.
fn render_safety(health: &[GlusterNodeHealth], bricks: usize) -> String {
    let n = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    let mut why: Vec<String> = Vec::new();
    for h in health.iter().filter(|h| !h.safe) {
        let mut parts = Vec::new();
        if h.brick != "serving" {
            parts.push(format!("brick {}", h.brick));
        }
        match &h.bricks_offline {
            None => {
                parts.push("bricks online unknown (gluster volume status did not answer)".into())
            }
            Some(o) if !o.is_empty() => parts.push(format!("{} brick(s) offline", o.len())),
            Some(_) => {}
        }
        if h.heal_pending != Some(0) {
            parts.push(format!("{} pending heals", n(h.heal_pending)));
        }
        if h.split_brain != Some(0) {
            parts.push(format!("{} split-brain", n(h.split_brain)));
        }
        why.push(format!("{}: {}", cell(&h.hostname), parts.join(", ")));
    }
    if health.len() < bricks {
        why.push(format!(
            "{} of {bricks} storage nodes answered",
            health.len()
        ));
    }
    let mut out = if why.is_empty() {
        "safety: safe (every brick serving and online, 0 pending heals, 0 split-brain)\n"
            .to_string()
    } else {
        format!("safety: NOT SAFE YET ({})\n", why.join("; "))
    };
    for h in health {
        out += &format!(
            "  {} {:<12} brick {:<10} offline {:<3} heal-pending {:<4} split-brain {}\n",
            cell(&h.node),
            cell(&h.hostname),
            cell(&h.brick),
            h.bricks_offline
                .as_ref()
                .map_or("?".to_string(), |o| o.len().to_string()),
            n(h.heal_pending),
            n(h.split_brain)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use firstboot::gluster::health::{Health, SERVING};
    use firstboot::protocol::{GlusterView, StatusDoc, StepView};

    use super::super::Report;

    fn agent(n: u8, detail: &str, status: &str) -> StatusDoc {
        StatusDoc {
            node_id: format!("{n:016x}"),
            hostname: format!("node{n}"),
            steps: vec![StepView {
                step: "gluster-brick".into(),
                status: status.into(),
                detail: detail.into(),
                attempts: 0,
            }],
            gluster: Some(GlusterView {
                enabled: true,
                volume: Some("habuild".into()),
                bricks: (1..=3).map(|i| format!("10.0.0.{i}:/b")).collect(),
                ..GlusterView::default()
            }),
            ..StatusDoc::default()
        }
    }

    #[test]
    fn every_node_safe_says_safe_and_a_rebuilding_brick_says_not_safe_yet() {
        let ok = Health {
            brick: SERVING.into(),
            offline: Some(vec![]),
            heal_pending: Some(0),
            split_brain: Some(0),
        };
        let serving = format!("brick /b: xfs on thin LV; {}", ok.to_detail());
        let report = |agents| Report {
            agents,
            unreachable: vec![],
            rejected: Default::default(),
        };
        let r = report(vec![
            agent(1, &serving, "done"),
            agent(2, &serving, "done"),
            agent(3, &serving, "done"),
        ]);
        let g = r.gluster().unwrap();
        assert_eq!(g.gluster.health.len(), 3);
        assert!(g.gluster.health.iter().all(|h| h.safe));
        let text = r.render_gluster();
        assert!(text.contains("safety: safe ("), "{text}");

        let rebuilding = Health {
            brick: "rebuilding".into(),
            heal_pending: Some(12),
            split_brain: None,
            ..ok.clone()
        };
        let r = report(vec![
            agent(1, &serving, "done"),
            agent(
                2,
                &format!(
                    "brick rebuilt after an unclean shutdown; {}",
                    rebuilding.to_detail()
                ),
                "pending",
            ),
        ]);
        let g = r.gluster().unwrap();
        let h2 = &g.gluster.health[1];
        assert_eq!(
            (h2.brick.as_str(), h2.heal_pending, h2.safe),
            ("rebuilding", Some(12), false)
        );
        let text = r.render_gluster();
        assert!(
            text.contains("safety: NOT SAFE YET (node2: brick rebuilding, 12 pending heals, ? split-brain; 2 of 3 storage nodes answered)"),
            "{text}"
        );
        assert!(
            text.contains("node2        brick rebuilding offline 0   heal-pending 12"),
            "{text}"
        );

        // a node whose glusterd did not answer `volume status` (waiting on
        // a dead peer) says "unknown", not "every brick offline"
        let silent = Health {
            offline: None,
            ..ok.clone()
        };
        let r = report(vec![
            agent(1, &serving, "done"),
            agent(2, &format!("brick /b: xfs; {}", silent.to_detail()), "done"),
            agent(3, &serving, "done"),
        ]);
        let g = r.gluster().unwrap();
        assert_eq!(g.gluster.health[1].bricks_offline, None);
        assert!(!g.gluster.health[1].safe);
        assert_eq!(g.gluster.health[0].bricks_offline, Some(vec![]));
        let text = r.render_gluster();
        assert!(
            text.contains("safety: NOT SAFE YET (node2: bricks online unknown (gluster volume status did not answer))"),
            "{text}"
        );
        assert!(
            text.contains("node2        brick serving    offline ?   heal-pending 0"),
            "{text}"
        );
    }
}
