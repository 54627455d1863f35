//! How the volume spans the storage nodes (whole replica sets in plan
//! order) and the gluster commands that create, start and grow it.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::safety::option_actions;
use super::{VolumeInfo, BRICK_MOUNT, VOLUME};
use crate::host::Cmd;
use crate::state::NodeId;

/// How the volume spans the storage nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub replica: u32,
    /// Storage nodes whose bricks are in the volume, in plan order (whole replica sets).
    pub in_volume: Vec<NodeId>,
    /// Storage nodes waiting for enough peers to complete a replica set.
    pub waiting: Vec<NodeId>,
}

pub fn layout(storage: &[NodeId], replica: u32) -> Layout {
    let n = storage.len() as u32;
    let replica = replica.max(1).min(n.max(1));
    let whole = if n == 0 { 0 } else { (n / replica) * replica } as usize;
    Layout {
        replica,
        in_volume: storage[..whole].to_vec(),
        waiting: storage[whole..].to_vec(),
    }
}

/// The brick of `ip` in the volume.
pub fn brick_of(ip: Ipv4Addr) -> String {
    format!("{ip}:{BRICK_MOUNT}/{VOLUME}")
}

/// The commands that take the volume from `current` to `layout` (bricks
/// `want`, in plan order): create and start it; later, add the bricks of
/// nodes that joined. Growth policy: a replica count that grew (1 → 2 → 3
/// storage nodes) adds the new bricks with `add-brick replica N`, and
/// self-heal copies the data onto them; whole new replica sets (more storage
/// nodes than the replica count) are added as a new distribute subvolume and
/// `rebalance start` spreads existing files onto it. Bricks are never removed
/// automatically: a brick the plan no longer lists is reported, not dropped.
/// The data-safety options ([`super::safety::volume_options`]) are set
/// before the first start and re-set whenever `volume info` shows them
/// missing or changed.
pub fn volume_actions(current: Option<&VolumeInfo>, layout: &Layout, want: &[String]) -> Vec<Cmd> {
    let gl = |args: &[&str]| {
        let mut argv = vec!["gluster", "--mode=script", "volume"];
        argv.extend_from_slice(args);
        Cmd::new(argv)
    };
    let Some(cur) = current else {
        if want.is_empty() {
            return Vec::new();
        }
        let mut argv = vec!["create", VOLUME];
        let r = layout.replica.to_string();
        if layout.replica > 1 {
            argv.extend(["replica", r.as_str()]);
        }
        argv.extend(want.iter().map(String::as_str));
        let created = VolumeInfo {
            id: String::new(),
            kind: String::new(),
            status: "Created".into(),
            replica: layout.replica,
            bricks: want.to_vec(),
            options: Default::default(),
        };
        let mut out = vec![gl(&argv)];
        out.extend(option_actions(&created, layout.in_volume.len()));
        out.push(gl(&["start", VOLUME]));
        return out;
    };
    let mut out = Vec::new();
    let new: Vec<&str> = want
        .iter()
        .filter(|b| !cur.bricks.contains(b))
        .map(String::as_str)
        .collect();
    if !new.is_empty() {
        let r = layout.replica.to_string();
        let mut argv = vec!["add-brick", VOLUME];
        if layout.replica != cur.replica {
            argv.extend(["replica", r.as_str()]);
        }
        argv.extend(new.iter().copied());
        out.push(gl(&argv));
        if layout.replica == cur.replica {
            out.push(gl(&["rebalance", VOLUME, "start"]));
        }
    }
    out.extend(option_actions(cur, layout.in_volume.len()));
    if cur.status != "Started" {
        out.push(gl(&["start", VOLUME]));
    }
    out
}
