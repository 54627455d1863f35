//! `habuild cluster status --gluster`: the storage section from the agent
//! with the newest plan (the Raft leader among equals), with every node's
//! `gluster-*` step records, as [`GlusterOutput`] (`--json`) or as text
//! ending in heketi's topology.json.

use firstboot::protocol::StatusDoc;
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
        Some(GlusterOutput {
            gluster: best.gluster.clone()?,
            steps: best
                .cluster_steps
                .iter()
                .filter(|r| r.step.starts_with("gluster-"))
                .cloned()
                .collect(),
        })
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
