//! Gluster storage, the pure part: which device a storage node may use,
//! the LVM/XFS commands that make its brick, how the volume is laid out over
//! the storage nodes and grown, the mount units, the parsing of the gluster
//! CLI's answers, and the heketi `topology.json` operators consume. The
//! converge steps that apply these are in [`crate::steps::gluster`].
//! Everything here is a pure function, tested on fixtures.
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
/// The brick device of a node without a disk: a loop device over a file on
/// the data partition, attached at boot by `habuild-gluster-loop.service`,
/// which keeps this stable name pointing at it.
pub const LOOP_DEVICE: &str = "/dev/habuild/gluster-brick";
/// The backing file of [`LOOP_DEVICE`] and the unit's config.
pub const BACKING_FILE: &str = "/var/lib/habuild/gluster/brick.img";
pub const LOOP_CONF: &str = "var/lib/habuild/gluster/loop.conf";
/// Written on storage nodes for heketi or a CSI driver.
pub const TOPOLOGY_FILE: &str = "var/lib/habuild/gluster/topology.json";

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

/// What a storage node has of its brick so far (from `vgs`, `lvs`, `blkid`, `findmnt`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrickObs {
    pub vg: bool,
    pub pool: bool,
    pub lv: bool,
    /// Filesystem type on the thin LV (`blkid`), if any.
    pub fs: Option<String>,
    pub mounted: bool,
}

/// The brick LV's device path.
pub fn lv_device() -> String {
    format!("/dev/{VG}/{LV}")
}

/// The commands that take a storage node from `obs` to a mounted thin-LV XFS
/// brick of `size_gib` on `device` (thin pool over the whole PV, one thin
/// LV, XFS with 512-byte inodes as Gluster wants): only the missing pieces,
/// in order, so running them again after a reboot or a half-done attempt
/// does nothing twice. A filesystem on the LV that is not XFS is refused
/// (it is not ours).
pub fn brick_actions(
    obs: &BrickObs,
    device: &str,
    size_gib: u64,
) -> Result<Vec<Cmd>, GlusterError> {
    let thin = format!("{VG}/{POOL}");
    let lv_dev = lv_device();
    let mut out = vec![Cmd::new(["modprobe", "dm_thin_pool"])];
    if !obs.vg {
        out.push(Cmd::new(["pvcreate", "--yes", device]));
        out.push(Cmd::new(["vgcreate", "--yes", VG, device]));
    }
    if !obs.pool {
        out.push(Cmd::new([
            "lvcreate",
            "--yes",
            "--type",
            "thin-pool",
            "--extents",
            "95%FREE",
            "--name",
            POOL,
            VG,
        ]));
    }
    if !obs.lv {
        out.push(Cmd::new([
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
        ]));
    }
    out.push(Cmd::new(["vgchange", "--activate", "y", VG]));
    match obs.fs.as_deref() {
        None => out.push(Cmd::new([
            "mkfs.xfs",
            "-i",
            "size=512",
            "-L",
            "habuild-gl",
            &lv_dev,
        ])),
        Some("xfs") => {}
        Some(other) => {
            return Err(GlusterError::DeviceNotUsable {
                device: lv_dev,
                why: format!("holds a {other} filesystem, not the XFS brick habuild makes"),
            })
        }
    }
    if !obs.mounted {
        let unit = mount_unit_name(BRICK_MOUNT);
        out.push(Cmd::new(["mkdir", "-p", BRICK_MOUNT]));
        out.push(Cmd::new(["systemctl", "daemon-reload"]));
        out.push(Cmd::new(["systemctl", "enable", "--now", unit.as_str()]));
    }
    Ok(out)
}

/// The systemd mount unit for the brick: after the loop device, before glusterd,
/// so bricks are never served from the empty directory underneath.
pub fn brick_mount_unit() -> String {
    format!(
        "# Written by habuild-agent: the Gluster brick (thin LV, XFS).\n\
         [Unit]\n\
         Description=habuild Gluster brick {LV}\n\
         After=habuild-gluster-loop.service\n\
         Before=habuild-glusterd.service\n\
         \n\
         [Mount]\n\
         What={dev}\n\
         Where={BRICK_MOUNT}\n\
         Type=xfs\n\
         Options=noatime,inode64\n\
         \n\
         [Install]\n\
         WantedBy=local-fs.target\n",
        dev = lv_device(),
    )
}

/// The FUSE mount of the volume at `path`: from `server`, falling back to
/// `backups` for the volume file (the client then talks to every brick).
pub fn fuse_mount_unit(server: Ipv4Addr, backups: &[Ipv4Addr], path: &str) -> String {
    let mut opts = vec!["_netdev".to_string()];
    if !backups.is_empty() {
        let b: Vec<String> = backups.iter().map(|ip| ip.to_string()).collect();
        opts.push(format!("backup-volfile-servers={}", b.join(":")));
    }
    opts.push("log-file=/var/log/glusterfs/habuild-mount.log".into());
    format!(
        "# Written by habuild-agent: the Gluster volume {VOLUME} (FUSE client).\n\
         [Unit]\n\
         Description=habuild Gluster volume {VOLUME}\n\
         Wants=network-online.target\n\
         After=network-online.target habuild-glusterd.service\n\
         \n\
         [Mount]\n\
         What={server}:/{VOLUME}\n\
         Where={path}\n\
         Type=glusterfs\n\
         Options={opts}\n\
         \n\
         [Install]\n\
         WantedBy=remote-fs.target\n",
        opts = opts.join(","),
    )
}

/// `systemd-escape --path --suffix=mount PATH`.
pub fn mount_unit_name(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "-.mount".into();
    }
    let mut out = String::new();
    for (i, part) in trimmed.split('/').filter(|p| !p.is_empty()).enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, b) in part.bytes().enumerate() {
            let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b':' || (b == b'.' && j > 0);
            if plain {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out + ".mount"
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

/// The brick of `ip` in the volume.
pub fn brick_of(ip: Ipv4Addr) -> String {
    format!("{ip}:{BRICK_MOUNT}/{VOLUME}")
}

/// What `gluster volume info VOLUME` says of the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: String,
    pub kind: String,
    pub status: String,
    /// Bricks per replica set (1 for a plain distributed volume).
    pub replica: u32,
    pub bricks: Vec<String>,
}

/// Parses `gluster volume info NAME` (None when it names no volume).
pub fn parse_volume_info(text: &str) -> Option<VolumeInfo> {
    let mut v = VolumeInfo {
        id: String::new(),
        kind: String::new(),
        status: String::new(),
        replica: 1,
        bricks: Vec::new(),
    };
    let mut named = false;
    for line in text.lines() {
        let Some((k, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        match k.trim() {
            "Volume Name" => named = true,
            "Volume ID" => v.id = val.into(),
            "Type" => v.kind = val.into(),
            "Status" => v.status = val.into(),
            // "1 x 3 = 3" (replicated) or "3" (distributed).
            "Number of Bricks" => {
                if let Some((_, rest)) = val.split_once(" x ") {
                    v.replica = rest
                        .split_whitespace()
                        .next()
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(1);
                }
            }
            k if k.starts_with("Brick")
                && k[5..].chars().all(|c| c.is_ascii_digit())
                && k.len() > 5 =>
            {
                v.bricks.push(val.to_string())
            }
            _ => {}
        }
    }
    named.then_some(v)
}

/// Hostnames/addresses `gluster pool list` shows as connected (without localhost).
pub fn connected_peers(pool_list: &str) -> Vec<String> {
    pool_list
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "Connected" && f[1] != "localhost").then(|| f[1].to_string())
        })
        .collect()
}

/// The commands that take the volume from `current` to `layout` (bricks
/// `want`, in plan order): create and start it; later, add the bricks of
/// nodes that joined. Growth policy: a replica count that grew (1 → 2 → 3
/// storage nodes) adds the new bricks with `add-brick replica N`, and
/// self-heal copies the data onto them; whole new replica sets (more storage
/// nodes than the replica count) are added as a new distribute subvolume and
/// `rebalance start` spreads existing files onto it. Bricks are never removed
/// automatically: a brick the plan no longer lists is reported, not dropped.
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
        return vec![gl(&argv), gl(&["start", VOLUME])];
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
    if cur.status != "Started" {
        out.push(gl(&["start", VOLUME]));
    }
    out
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

/// The storage section of the status document (`habuild cluster status
/// --gluster`): the volume as planned, where it is mounted, and the heketi
/// topology.
pub fn summary(
    plan: &crate::state::Plan,
    members: &std::collections::BTreeMap<NodeId, Member>,
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
    fn golden_brick_commands_from_nothing_and_after_a_reboot() {
        let shown = |obs: &BrickObs, dev: &str| -> Vec<String> {
            let cmds = brick_actions(obs, dev, 2).unwrap();
            cmds.iter().map(Cmd::display).collect()
        };
        let got = shown(&BrickObs::default(), "/dev/habuild/gluster-brick");
        assert_eq!(
            got,
            vec![
                "modprobe dm_thin_pool",
                "pvcreate --yes /dev/habuild/gluster-brick",
                "vgcreate --yes habuild_gluster /dev/habuild/gluster-brick",
                "lvcreate --yes --type thin-pool --extents 95%FREE --name thinpool habuild_gluster",
                "lvcreate --yes --type thin --virtualsize 2G --thinpool habuild_gluster/thinpool --name brick0",
                "vgchange --activate y habuild_gluster",
                "mkfs.xfs -i size=512 -L habuild-gl /dev/habuild_gluster/brick0",
                "mkdir -p /var/lib/habuild/bricks/brick0",
                "systemctl daemon-reload",
                "systemctl enable --now var-lib-habuild-bricks-brick0.mount",
            ]
        );
        // After a reboot everything exists but the mount: no LVM or mkfs again.
        let obs = BrickObs {
            vg: true,
            pool: true,
            lv: true,
            fs: Some("xfs".into()),
            mounted: false,
        };
        let got = shown(&obs, "/dev/vdb");
        assert_eq!(
            got,
            vec![
                "modprobe dm_thin_pool",
                "vgchange --activate y habuild_gluster",
                "mkdir -p /var/lib/habuild/bricks/brick0",
                "systemctl daemon-reload",
                "systemctl enable --now var-lib-habuild-bricks-brick0.mount",
            ]
        );
        let foreign = BrickObs {
            fs: Some("ext4".into()),
            ..obs
        };
        let e = brick_actions(&foreign, "/dev/vdb", 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds a ext4 filesystem"), "{e}");
    }

    #[test]
    fn mount_units() {
        assert_eq!(mount_unit_name("/mnt/gluster"), "mnt-gluster.mount");
        assert_eq!(mount_unit_name("/srv/my-data/"), "srv-my\\x2ddata.mount");
        assert_eq!(mount_unit_name("/"), "-.mount");
        let u = fuse_mount_unit(
            Ipv4Addr::new(10, 0, 0, 1),
            &[Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
            "/mnt/gluster",
        );
        assert!(u.contains("What=10.0.0.1:/habuild\n"), "{u}");
        assert!(u.contains("Where=/mnt/gluster\n"), "{u}");
        assert!(u.contains("Type=glusterfs\n"), "{u}");
        assert!(
            u.contains("Options=_netdev,backup-volfile-servers=10.0.0.2:10.0.0.3,"),
            "{u}"
        );
        let b = brick_mount_unit();
        assert!(b.contains("What=/dev/habuild_gluster/brick0\n") && b.contains("Type=xfs\n"));
        assert!(b.contains("Before=habuild-glusterd.service"));
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
    }

    fn bricks(ids: &[u8]) -> Vec<String> {
        ids.iter()
            .map(|i| brick_of(Ipv4Addr::new(10, 0, 0, *i)))
            .collect()
    }

    fn show(cmds: Vec<Cmd>) -> Vec<String> {
        cmds.iter().map(Cmd::display).collect()
    }

    #[test]
    fn volume_is_created_started_and_grown() {
        let l3 = layout(&[1, 2, 3], 3);
        assert_eq!(
            show(volume_actions(None, &l3, &bricks(&[1, 2, 3]))),
            vec![
                "gluster --mode=script volume create habuild replica 3 \
                 10.0.0.1:/var/lib/habuild/bricks/brick0/habuild \
                 10.0.0.2:/var/lib/habuild/bricks/brick0/habuild \
                 10.0.0.3:/var/lib/habuild/bricks/brick0/habuild",
                "gluster --mode=script volume start habuild",
            ]
        );
        let one = layout(&[1], 3);
        assert_eq!(
            show(volume_actions(None, &one, &bricks(&[1])))[0],
            "gluster --mode=script volume create habuild 10.0.0.1:/var/lib/habuild/bricks/brick0/habuild"
        );
        let started = |replica, ids: &[u8]| VolumeInfo {
            id: "x".into(),
            kind: "Replicate".into(),
            status: "Started".into(),
            replica,
            bricks: bricks(ids),
        };
        // Nothing to do when it matches.
        assert!(volume_actions(Some(&started(3, &[1, 2, 3])), &l3, &bricks(&[1, 2, 3])).is_empty());
        // 2 -> 3 nodes: the replica count grows.
        assert_eq!(
            show(volume_actions(Some(&started(2, &[1, 2])), &l3, &bricks(&[1, 2, 3]))),
            vec!["gluster --mode=script volume add-brick habuild replica 3 10.0.0.3:/var/lib/habuild/bricks/brick0/habuild"]
        );
        // A second replica set: distributed-replicated, then rebalance.
        let l6 = layout(&[1, 2, 3, 4, 5, 6], 3);
        let got = show(volume_actions(
            Some(&started(3, &[1, 2, 3])),
            &l6,
            &bricks(&[1, 2, 3, 4, 5, 6]),
        ));
        assert_eq!(got.len(), 2);
        assert!(got[0].starts_with("gluster --mode=script volume add-brick habuild 10.0.0.4:"));
        assert_eq!(
            got[1],
            "gluster --mode=script volume rebalance habuild start"
        );
        // Created but not started (a failed start is retried).
        let mut created = started(3, &[1, 2, 3]);
        created.status = "Created".into();
        assert_eq!(
            show(volume_actions(Some(&created), &l3, &bricks(&[1, 2, 3]))),
            vec!["gluster --mode=script volume start habuild"]
        );
    }

    #[test]
    fn gluster_cli_output_is_parsed() {
        let info = "\nVolume Name: habuild\nType: Replicate\nVolume ID: 5d0c2f3e-aaaa\nStatus: Started\nSnapshot Count: 0\nNumber of Bricks: 1 x 3 = 3\nTransport-type: tcp\nBricks:\nBrick1: 10.0.0.1:/var/lib/habuild/bricks/brick0/habuild\nBrick2: 10.0.0.2:/var/lib/habuild/bricks/brick0/habuild\nBrick3: 10.0.0.3:/var/lib/habuild/bricks/brick0/habuild\nOptions Reconfigured:\ncluster.granular-entry-heal: on\n";
        let v = parse_volume_info(info).unwrap();
        assert_eq!(
            (v.replica, v.status.as_str(), v.kind.as_str()),
            (3, "Started", "Replicate")
        );
        assert_eq!(v.bricks, bricks(&[1, 2, 3]));
        assert_eq!(v.id, "5d0c2f3e-aaaa");
        let d = parse_volume_info("Volume Name: habuild\nType: Distribute\nStatus: Created\nNumber of Bricks: 1\nBrick1: 10.0.0.1:/b\n").unwrap();
        assert_eq!((d.replica, d.bricks.len()), (1, 1));
        assert!(parse_volume_info("Volume habuild does not exist\n").is_none());
        let pool = "UUID\t\t\t\t\tHostname \tState\n\
                    1e2f\t10.0.0.2\tConnected \n\
                    3a4b\t10.0.0.3\tDisconnected \n\
                    5c6d\tlocalhost\tConnected \n";
        assert_eq!(connected_peers(pool), vec!["10.0.0.2".to_string()]);
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
