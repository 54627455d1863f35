//! The storage section of the status document.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{brick_of, layout, topology, LOOP_DEVICE, VOLUME};
use crate::state::{Member, NodeId};

/// The storage section of the status document (`habuild cluster status
/// --gluster`): the volume as planned, where it is mounted, and the heketi
/// topology.
pub fn summary(
    plan: &crate::state::Plan,
    members: &BTreeMap<NodeId, Member>,
    cfg: &crate::cluster::StorageSection,
) -> Value {
    if !cfg.enabled || plan.storage.is_empty() {
        return serde_json::json!({ "enabled": cfg.enabled });
    }
    let l = layout(&plan.storage, cfg.replica);
    let ip = |id: &NodeId| members.get(id).map(|m| m.ip);
    let storage: Vec<&Member> = plan
        .storage
        .iter()
        .filter_map(|id| members.get(id))
        .collect();
    let device_of = |m: &Member| {
        plan.storage_devices
            .get(&m.id)
            .cloned()
            .unwrap_or_else(|| LOOP_DEVICE.into())
    };
    let kind = match (l.replica, l.in_volume.len() as u32 / l.replica.max(1)) {
        (1, _) => "Distribute",
        (_, 1) => "Replicate",
        _ => "Distributed-Replicate",
    };
    serde_json::json!({
        "enabled": true,
        "volume": VOLUME,
        "type": kind,
        "replica": l.replica,
        "bricks": l.in_volume.iter().filter_map(ip).map(brick_of).collect::<Vec<_>>(),
        "waiting": l.waiting.iter().map(|id| format!("{id:016x}")).collect::<Vec<_>>(),
        "leader": plan.storage_leader.map(|id| format!("{id:016x}")),
        "mount_path": cfg.mount_path,
        "topology": topology(&storage, &device_of),
    })
}
