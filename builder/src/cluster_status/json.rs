//! `habuild cluster status --json` and `--gluster --json`: the typed output
//! documents (schema in the module docs of [`super`]). Both derive
//! `Deserialize` too, so scripts written in Rust (the QEMU tests) read the
//! output back into the same types.

use firstboot::protocol::{ClusterStep, GlusterView, StatusDoc};
use serde::{Deserialize, Serialize};

use super::agreement::{member_health, HealthView};
use super::kube::{kube_view, KubeView};
use super::{Report, Unreachable};

/// Revision of the `--json` output. Absent (0) before this field existed;
/// 1 adds `version` and `member_health`; 2 adds `kubernetes`. Fields are
/// only ever added.
pub const OUTPUT_VERSION: u32 = 2;

/// The `--json` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusOutput {
    /// [`OUTPUT_VERSION`].
    pub version: u32,
    /// Each answering agent's status document, ordered by node id.
    pub agents: Vec<StatusDoc>,
    /// Agents that announced themselves (verified) but gave no status.
    pub unreachable: Vec<Unreachable>,
    /// Announcements that failed verification while listening.
    pub rejected_announcements: RejectedAnnouncements,
    /// Member health as the freshest agent sees it; `null` when no agent
    /// reports any (version 0 agents).
    pub member_health: Option<HealthView>,
    /// Kubernetes from the `kube-control-plane` and `kubelet` step records;
    /// `null` when no agent knows either step.
    pub kubernetes: Option<KubeView>,
}

/// What `habuild cluster status` itself rejected while listening to mDNS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RejectedAnnouncements {
    pub other_cluster: u64,
    pub bad_mac: u64,
    pub malformed: u64,
}

/// The `--gluster --json` document (`null` when no agent reported a plan).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GlusterOutput {
    /// The volume as planned, from the agent with the newest plan.
    pub gluster: GlusterView,
    /// Every node's `gluster-*` step records from that agent's replicated state.
    pub steps: Vec<ClusterStep>,
}

impl Report {
    /// The `--json` document.
    pub fn to_json(&self) -> StatusOutput {
        StatusOutput {
            version: OUTPUT_VERSION,
            agents: self.agents.clone(),
            unreachable: self.unreachable.clone(),
            rejected_announcements: RejectedAnnouncements {
                other_cluster: self.rejected.other_cluster,
                bad_mac: self.rejected.bad_mac,
                malformed: self.rejected.malformed,
            },
            member_health: member_health(&self.agents),
            kubernetes: kube_view(&self.agents),
        }
    }
}
