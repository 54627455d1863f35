//! heketi's `topology.json`, written on storage nodes for heketi or a CSI
//! driver.

use serde_json::Value;

use crate::state::Member;

/// heketi's `topology.json` for the storage nodes (the shape operators load
/// with `heketi-cli topology load`): manage = hostname, storage = address,
/// zone = the node's `zone` label (a number; 1 when absent), devices.
pub fn topology(storage: &[&Member], device_of: &dyn Fn(&Member) -> String) -> Value {
    let nodes: Vec<Value> = storage
        .iter()
        .map(|m| {
            let zone = m
                .labels
                .get("zone")
                .and_then(|z| z.parse::<u64>().ok())
                .unwrap_or(1);
            serde_json::json!({
                "node": {
                    "hostnames": {
                        "manage": [m.hostname],
                        "storage": [m.ip.to_string()],
                    },
                    "zone": zone,
                },
                "devices": [device_of(m)],
            })
        })
        .collect();
    serde_json::json!({ "clusters": [ { "nodes": nodes } ] })
}
