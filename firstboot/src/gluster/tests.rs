use std::net::Ipv4Addr;

use super::*;
use crate::host::Cmd;
use crate::state::NodeId;

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
