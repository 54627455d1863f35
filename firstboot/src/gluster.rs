//! Gluster storage, the pure part: which device a storage node may use,
//! the LVM/XFS commands that make its brick, how the volume is laid out over
//! the storage nodes, and the heketi `topology.json` operators consume.
//!
//! Not wired into the converge steps yet (issue 5): the step that applies
//! these (and glusterd, peer probe, volume create/start, the FUSE mount) is
//! the next piece. Everything here is a pure function, tested on fixtures.
//!
//! Policies:
//! - A device is used only when it is empty: no partitions, no filesystem
//!   or LVM signature, not mounted, not read-only, not the disk the system
//!   runs from. A configured device that fails any of these is an error
//!   naming the device and why; with no devices configured, the backing
//!   file on the data partition (a loop device) is used.
//! - Layout: `replica` = `storage.replica` (3 by default) capped by the
//!   number of storage nodes. 1 node: a single-brick volume (no
//!   redundancy); 2 nodes: replica 2 (Gluster warns of split-brain; the
//!   plan says so); more than the replica count: distributed-replicated,
//!   bricks in whole replica sets in plan order; nodes beyond the last whole
//!   set carry a brick but wait for enough peers before it is added.

use std::net::Ipv4Addr;

use serde::Serialize;
use serde_json::Value;

use crate::host::Cmd;
use crate::state::{Member, NodeId};

/// The volume group / thin pool / LV names on every storage node.
pub const VG: &str = "habuild_gluster";
pub const POOL: &str = "thinpool";
pub const LV: &str = "brick0";
/// Where a node's brick filesystem is mounted; the brick directory is below it.
pub const BRICK_MOUNT: &str = "/var/lib/habuild/bricks/brick0";
pub const VOLUME: &str = "habuild";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlusterError {
    #[error("storage device {device}: {why}; it is never touched")]
    DeviceNotUsable { device: String, why: String },
    #[error("storage device {0} does not exist on this node")]
    NoSuchDevice(String),
    #[error("cannot read the block devices (lsblk -J): {0}")]
    Lsblk(String),
}

/// One block device as `lsblk -J -b -o NAME,PATH,TYPE,SIZE,FSTYPE,RO,MOUNTPOINT,PTTYPE` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub path: String,
    pub kind: String,
    pub size: u64,
    pub fstype: Option<String>,
    pub pttype: Option<String>,
    pub read_only: bool,
    pub mountpoint: Option<String>,
    pub children: Vec<BlockDevice>,
}

/// Parses `lsblk -J -b -o NAME,PATH,TYPE,SIZE,FSTYPE,RO,MOUNTPOINT,PTTYPE` output.
pub fn parse_lsblk(json: &str) -> Result<Vec<BlockDevice>, GlusterError> {
    let v: Value = serde_json::from_str(json).map_err(|e| GlusterError::Lsblk(e.to_string()))?;
    fn dev(v: &Value) -> BlockDevice {
        let s = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(String::from);
        BlockDevice {
            path: s("path").unwrap_or_default(),
            kind: s("type").unwrap_or_default(),
            size: v["size"]
                .as_u64()
                .or_else(|| v["size"].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0),
            fstype: s("fstype"),
            pttype: s("pttype"),
            read_only: v["ro"].as_bool().unwrap_or(v["ro"] == "1"),
            mountpoint: s("mountpoint"),
            children: v["children"]
                .as_array()
                .map(|c| c.iter().map(dev).collect())
                .unwrap_or_default(),
        }
    }
    Ok(v["blockdevices"]
        .as_array()
        .ok_or_else(|| GlusterError::Lsblk("no \"blockdevices\" array".into()))?
        .iter()
        .map(dev)
        .collect())
}

/// Why `d` must not be used for a brick, or `None` when it is empty.
pub fn unusable_reason(d: &BlockDevice) -> Option<String> {
    if d.read_only {
        return Some("is read-only".into());
    }
    if d.kind != "disk" && d.kind != "loop" {
        return Some(format!("is a {} (a whole disk is needed)", d.kind));
    }
    if let Some(pt) = &d.pttype {
        return Some(format!("has a {pt} partition table"));
    }
    if !d.children.is_empty() {
        return Some(format!("has {} partition(s) or holders", d.children.len()));
    }
    if let Some(fs) = &d.fstype {
        return Some(format!("holds a {fs} signature"));
    }
    if let Some(m) = &d.mountpoint {
        return Some(format!("is mounted on {m}"));
    }
    None
}

/// Disks with nothing on them (the `spare_disks` fact), by path.
pub fn spare_disks(devices: &[BlockDevice]) -> Vec<String> {
    devices
        .iter()
        .filter(|d| d.kind == "disk" && d.size > 0 && unusable_reason(d).is_none())
        .map(|d| d.path.clone())
        .collect()
}

/// The configured `device` if it exists and is empty; an error naming why otherwise.
pub fn check_configured(devices: &[BlockDevice], device: &str) -> Result<(), GlusterError> {
    fn find<'a>(ds: &'a [BlockDevice], p: &str) -> Option<&'a BlockDevice> {
        ds.iter()
            .find_map(|d| (d.path == p).then_some(d).or_else(|| find(&d.children, p)))
    }
    let d = find(devices, device).ok_or_else(|| GlusterError::NoSuchDevice(device.into()))?;
    match unusable_reason(d) {
        None => Ok(()),
        Some(why) => Err(GlusterError::DeviceNotUsable {
            device: device.into(),
            why,
        }),
    }
}

/// The commands that turn an empty `device` into a mounted thin-LV XFS brick
/// of `size_gib` (thin pool over the whole PV, one thin LV). Each command is
/// guarded by the caller's "already done" checks (`vgs`, `lvs`, `blkid`,
/// `findmnt`); listed here in order.
pub fn brick_commands(device: &str, size_gib: u64) -> Vec<Cmd> {
    let thin = format!("{VG}/{POOL}");
    let lv_dev = format!("/dev/{VG}/{LV}");
    vec![
        Cmd::new(["modprobe", "dm_thin_pool"]),
        Cmd::new(["pvcreate", "--yes", device]),
        Cmd::new(["vgcreate", "--yes", VG, device]),
        Cmd::new([
            "lvcreate",
            "--yes",
            "--type",
            "thin-pool",
            "--extents",
            "95%FREE",
            "--name",
            POOL,
            VG,
        ]),
        Cmd::new([
            "lvcreate",
            "--yes",
            "--type",
            "thin",
            "--virtualsize",
            &format!("{size_gib}G"),
            "--thinpool",
            &thin,
            "--name",
            LV,
        ]),
        Cmd::new(["mkfs.xfs", "-i", "size=512", "-L", "habuild-brick", &lv_dev]),
        Cmd::new(["mkdir", "-p", BRICK_MOUNT]),
        Cmd::new(["mount", "-o", "noatime,inode64", &lv_dev, BRICK_MOUNT]),
    ]
}

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

/// `gluster volume create` for `layout` (bricks at each node's storage IP).
pub fn volume_create(layout: &Layout, ip_of: &dyn Fn(NodeId) -> Option<Ipv4Addr>) -> Option<Cmd> {
    let mut argv = vec![
        "gluster".to_string(),
        "--mode=script".into(),
        "volume".into(),
        "create".into(),
        VOLUME.into(),
    ];
    if layout.replica > 1 {
        argv.extend(["replica".into(), layout.replica.to_string()]);
    }
    if layout.in_volume.is_empty() {
        return None;
    }
    for id in &layout.in_volume {
        argv.push(format!("{}:{BRICK_MOUNT}/{VOLUME}", ip_of(*id)?));
    }
    Some(Cmd::new(argv))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const LSBLK: &str = r#"{"blockdevices": [
      {"name":"vda","path":"/dev/vda","type":"disk","size":8589934592,"fstype":null,"ro":false,"mountpoint":null,"pttype":"gpt",
       "children":[{"name":"vda4","path":"/dev/vda4","type":"part","size":4000000000,"fstype":"ext4","ro":false,"mountpoint":"/var","pttype":"gpt"}]},
      {"name":"vdb","path":"/dev/vdb","type":"disk","size":2147483648,"fstype":null,"ro":false,"mountpoint":null,"pttype":null},
      {"name":"vdc","path":"/dev/vdc","type":"disk","size":2147483648,"fstype":"xfs","ro":false,"mountpoint":null,"pttype":null},
      {"name":"vdd","path":"/dev/vdd","type":"disk","size":2147483648,"fstype":"LVM2_member","ro":false,"mountpoint":null,"pttype":null},
      {"name":"sr0","path":"/dev/sr0","type":"rom","size":1024,"fstype":null,"ro":true,"mountpoint":null,"pttype":null}
    ]}"#;

    #[test]
    fn only_empty_disks_are_spare() {
        let ds = parse_lsblk(LSBLK).unwrap();
        assert_eq!(spare_disks(&ds), vec!["/dev/vdb".to_string()]);
    }

    #[test]
    fn configured_devices_holding_data_are_refused_by_name() {
        let ds = parse_lsblk(LSBLK).unwrap();
        assert_eq!(check_configured(&ds, "/dev/vdb"), Ok(()));
        let e = check_configured(&ds, "/dev/vda").unwrap_err().to_string();
        assert_eq!(
            e,
            "storage device /dev/vda: has a gpt partition table; it is never touched"
        );
        let e = check_configured(&ds, "/dev/vdc").unwrap_err().to_string();
        assert!(e.contains("holds a xfs signature"), "{e}");
        let e = check_configured(&ds, "/dev/vdd").unwrap_err().to_string();
        assert!(e.contains("LVM2_member"), "{e}");
        let e = check_configured(&ds, "/dev/vda4").unwrap_err().to_string();
        assert!(e.contains("is a part"), "{e}");
        assert_eq!(
            check_configured(&ds, "/dev/nvme9n1"),
            Err(GlusterError::NoSuchDevice("/dev/nvme9n1".into()))
        );
    }

    #[test]
    fn golden_brick_commands() {
        let got: Vec<String> = brick_commands("/dev/loop0", 2)
            .iter()
            .map(Cmd::display)
            .collect();
        assert_eq!(
            got,
            vec![
                "modprobe dm_thin_pool",
                "pvcreate --yes /dev/loop0",
                "vgcreate --yes habuild_gluster /dev/loop0",
                "lvcreate --yes --type thin-pool --extents 95%FREE --name thinpool habuild_gluster",
                "lvcreate --yes --type thin --virtualsize 2G --thinpool habuild_gluster/thinpool --name brick0",
                "mkfs.xfs -i size=512 -L habuild-brick /dev/habuild_gluster/brick0",
                "mkdir -p /var/lib/habuild/bricks/brick0",
                "mount -o noatime,inode64 /dev/habuild_gluster/brick0 /var/lib/habuild/bricks/brick0",
            ]
        );
    }

    #[test]
    fn layouts_for_one_two_three_and_more_nodes() {
        assert_eq!(layout(&[1], 3).replica, 1);
        assert_eq!(layout(&[1, 2], 3).replica, 2);
        let l = layout(&[1, 2, 3], 3);
        assert_eq!((l.replica, l.in_volume.len(), l.waiting.len()), (3, 3, 0));
        let l = layout(&[1, 2, 3, 4, 5, 6, 7], 3);
        assert_eq!(l.in_volume, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(l.waiting, vec![7]);
        assert_eq!(layout(&[], 3).in_volume, Vec::<NodeId>::new());
        let ip = |id: NodeId| Some(Ipv4Addr::new(10, 0, 0, id as u8));
        assert_eq!(
            volume_create(&layout(&[1, 2, 3], 3), &ip)
                .unwrap()
                .display(),
            "gluster --mode=script volume create habuild replica 3 \
             10.0.0.1:/var/lib/habuild/bricks/brick0/habuild \
             10.0.0.2:/var/lib/habuild/bricks/brick0/habuild \
             10.0.0.3:/var/lib/habuild/bricks/brick0/habuild"
        );
        assert!(volume_create(&layout(&[], 3), &ip).is_none());
    }

    #[test]
    fn topology_has_heketis_shape() {
        let mut a = crate::plan::testutil::member(1, 7);
        a.hostname = "worker1".into();
        a.labels.insert("zone".into(), "2".into());
        let b = crate::plan::testutil::member(2, 8);
        let t = topology(&[&a, &b], &|_| "/dev/loop0".into());
        let n0 = &t["clusters"][0]["nodes"][0];
        assert_eq!(n0["node"]["hostnames"]["manage"][0], "worker1");
        assert_eq!(n0["node"]["hostnames"]["storage"][0], "10.77.0.7");
        assert_eq!(n0["node"]["zone"], 2);
        assert_eq!(n0["devices"][0], "/dev/loop0");
        assert_eq!(t["clusters"][0]["nodes"][1]["node"]["zone"], 1);
    }
}
