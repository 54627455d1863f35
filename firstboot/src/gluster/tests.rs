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
            "vgcreate --yes habuild_gluster /dev/habuild/gluster-brick",
            "lvcreate --yes --extents 95%FREE --thinpool thinpool --virtualsize 2G --name brick0 habuild_gluster",
            "mkfs.xfs -i size=512 -L habuild-gl /dev/habuild_gluster/brick0",
            "mkdir -p /var/lib/habuild/bricks/brick0",
            "systemctl enable --no-reload --now var-lib-habuild-bricks-brick0.mount",
        ]
    );
    // Half done: the VG (or also the pool) exists; only what is missing is
    // made, the pool and the thin LV each by its own lvcreate.
    let vg_only = BrickObs {
        vg: true,
        ..BrickObs::default()
    };
    let lvm = |obs: &BrickObs| -> Vec<String> {
        shown(obs, "/dev/vdb")
            .into_iter()
            .filter(|c| c.starts_with("lvcreate") || c.starts_with("pvcreate"))
            .collect()
    };
    assert_eq!(
        lvm(&vg_only),
        vec!["lvcreate --yes --extents 95%FREE --thinpool thinpool --virtualsize 2G --name brick0 habuild_gluster"]
    );
    let pool_only = BrickObs {
        vg: true,
        pool: true,
        ..BrickObs::default()
    };
    assert_eq!(
        lvm(&pool_only),
        vec!["lvcreate --yes --type thin --virtualsize 2G --thinpool habuild_gluster/thinpool --name brick0"]
    );
    let lv_only = BrickObs {
        vg: true,
        lv: true,
        ..BrickObs::default()
    };
    assert_eq!(
        lvm(&lv_only),
        vec!["lvcreate --yes --type thin-pool --extents 95%FREE --name thinpool habuild_gluster"]
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
            "systemctl enable --no-reload --now var-lib-habuild-bricks-brick0.mount",
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
    assert!(b.contains("Requires=habuild-brick-guard.service\n"), "{b}");
    assert!(
        b.contains("ConditionPathExists=!/var/lib/habuild/gluster/brick-untrusted\n"),
        "{b}"
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
            "gluster --mode=script volume set habuild cluster.quorum-type auto \
             cluster.server-quorum-type server network.ping-timeout 3 \
             cluster.ensure-durability on",
            "gluster --mode=script volume set all cluster.server-quorum-ratio 51%",
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
        options: safety::volume_options(ids.len().max(3))
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
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
    let info = "\nVolume Name: habuild\nType: Replicate\nVolume ID: 5d0c2f3e-aaaa\nStatus: Started\nSnapshot Count: 0\nNumber of Bricks: 1 x 3 = 3\nTransport-type: tcp\nBricks:\nBrick1: 10.0.0.1:/var/lib/habuild/bricks/brick0/habuild\nBrick2: 10.0.0.2:/var/lib/habuild/bricks/brick0/habuild\nBrick3: 10.0.0.3:/var/lib/habuild/bricks/brick0/habuild\nOptions Reconfigured:\ncluster.granular-entry-heal: on\nnetwork.ping-timeout: 3\n";
    let v = parse_volume_info(info).unwrap();
    assert_eq!(
        (v.replica, v.status.as_str(), v.kind.as_str()),
        (3, "Started", "Replicate")
    );
    assert_eq!(v.bricks, bricks(&[1, 2, 3]));
    assert_eq!(v.id, "5d0c2f3e-aaaa");
    assert_eq!(v.options.len(), 2);
    assert_eq!(v.options["network.ping-timeout"], "3");
    let d = parse_volume_info("Volume Name: habuild\nType: Distribute\nStatus: Created\nNumber of Bricks: 1\nBrick1: 10.0.0.1:/b\n").unwrap();
    assert_eq!((d.replica, d.bricks.len()), (1, 1));
    assert!(parse_volume_info("Volume habuild does not exist\n").is_none());
    let pool = "UUID\t\t\t\t\tHostname \tState\n\
                1e2f\t10.0.0.2\tConnected \n\
                3a4b\t10.0.0.3\tDisconnected \n\
                5c6d\tlocalhost\tConnected \n";
    assert_eq!(connected_peers(pool), vec!["10.0.0.2".to_string()]);
    assert_eq!(
        crate::gluster::disconnected_peers(pool),
        vec!["10.0.0.3".to_string()]
    );
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

#[test]
fn options_are_reapplied_only_when_missing_or_changed() {
    let l3 = layout(&[1, 2, 3], 3);
    let mut info = VolumeInfo {
        id: "x".into(),
        kind: "Replicate".into(),
        status: "Started".into(),
        replica: 3,
        bricks: bricks(&[1, 2, 3]),
        options: Default::default(),
    };
    // An existing volume from before these options: all of them are set.
    let got = show(volume_actions(Some(&info), &l3, &bricks(&[1, 2, 3])));
    assert_eq!(
        got,
        vec![
            "gluster --mode=script volume set habuild cluster.quorum-type auto \
             cluster.server-quorum-type server network.ping-timeout 3 \
             cluster.ensure-durability on",
            "gluster --mode=script volume set all cluster.server-quorum-ratio 51%",
        ]
    );
    for (k, v) in safety::volume_options(3) {
        info.options.insert(k.into(), v);
    }
    assert!(volume_actions(Some(&info), &l3, &bricks(&[1, 2, 3])).is_empty());
    // gluster's own spelling of a boolean is the same value.
    info.options
        .insert("cluster.ensure-durability".into(), "enable".into());
    assert!(volume_actions(Some(&info), &l3, &bricks(&[1, 2, 3])).is_empty());
    // Someone changed one: only that one is set again.
    info.options
        .insert("network.ping-timeout".into(), "42".into());
    assert_eq!(
        show(volume_actions(Some(&info), &l3, &bricks(&[1, 2, 3]))),
        vec!["gluster --mode=script volume set habuild network.ping-timeout 3"]
    );
    // Two changed: both in one command, in the options' order.
    info.options
        .insert("cluster.quorum-type".into(), "none".into());
    assert_eq!(
        show(volume_actions(Some(&info), &l3, &bricks(&[1, 2, 3]))),
        vec!["gluster --mode=script volume set habuild cluster.quorum-type auto network.ping-timeout 3"]
    );
    // Two nodes: no server quorum (51 % of 2 would stop the survivor).
    let two: Vec<&str> = safety::volume_options(2).iter().map(|(k, _)| *k).collect();
    assert_eq!(
        two,
        vec![
            "cluster.quorum-type",
            "network.ping-timeout",
            "cluster.ensure-durability"
        ]
    );
}

const STATUS_DETAIL: &str = "Status of volume: habuild\n\
------------------------------------------------------------------------------\n\
Brick                : Brick 10.0.0.1:/var/lib/habuild/bricks/brick0/habuild\n\
TCP Port             : 49152\n\
RDMA Port            : 0\n\
Online               : Y\n\
Pid                  : 1234\n\
File System          : xfs\n\
------------------------------------------------------------------------------\n\
Brick                : Brick 10.0.0.2:/var/lib/habuild/bricks/brick0/habuild\n\
TCP Port             : N/A\n\
RDMA Port            : N/A\n\
Online               : N\n\
Pid                  : N/A\n";

const HEAL_COUNT: &str =
    "Gathering count of entries to be healed on volume habuild has been successful \n\
\n\
Brick 10.0.0.1:/var/lib/habuild/bricks/brick0/habuild\n\
Number of entries: 0\n\
\n\
Brick 10.0.0.2:/var/lib/habuild/bricks/brick0/habuild\n\
Number of entries: 7\n\
\n\
Brick 10.0.0.3:/var/lib/habuild/bricks/brick0/habuild\n\
Status: Transport endpoint is not connected\n";

#[test]
fn status_detail_and_heal_count_are_parsed() {
    let s = parse_status_detail(STATUS_DETAIL);
    let b = bricks(&[1, 2, 3]);
    assert_eq!(s.len(), 2);
    assert_eq!((s[&b[0]], s[&b[1]]), (true, false));
    let h = parse_heal_count(HEAL_COUNT);
    assert_eq!((h[&b[0]], h[&b[1]], h[&b[2]]), (Some(0), Some(7), None));
}

fn volume3() -> VolumeInfo {
    VolumeInfo {
        id: "x".into(),
        kind: "Replicate".into(),
        status: "Started".into(),
        replica: 3,
        bricks: bricks(&[1, 2, 3]),
        options: Default::default(),
    }
}

#[test]
fn an_untrusted_brick_is_rebuilt_only_while_the_others_are_online() {
    use safety::{decide, Phase, Rebuild, RebuildObs};
    let info = volume3();
    let b = bricks(&[1, 2, 3]);
    let online = |ids: &[usize]| -> std::collections::BTreeMap<String, bool> {
        b.iter()
            .enumerate()
            .map(|(i, x)| (x.clone(), ids.contains(&i)))
            .collect()
    };
    let none = Default::default();
    let dec = |phase, mounted, on: &std::collections::BTreeMap<String, bool>| {
        decide(&RebuildObs {
            info: Some(&info),
            brick: &b[1],
            phase,
            mounted,
            online: on,
            heal: &none,
            split_brain: Some(0),
        })
    };
    // Node 2 back from a power loss while node 3 is down: node 1 may be the
    // only good copy; never wiped.
    let only_one = online(&[0]);
    let Rebuild::Wait(why) = dec(Phase::Untrusted, false, &only_one) else {
        panic!("must wait")
    };
    assert!(why.contains("10.0.0.3:"), "{why}");
    // Both others online: reset-brick start, wipe, mount, commit force, in this order.
    let both = online(&[0, 2]);
    let Rebuild::Wipe { ops, after } = dec(Phase::Untrusted, false, &both) else {
        panic!("must rebuild")
    };
    let shown: Vec<(String, bool)> = ops
        .iter()
        .map(|o| (o.cmd.display(), o.must_succeed))
        .collect();
    let brick = &b[1];
    assert_eq!(
        shown,
        vec![
            (format!("gluster --mode=script volume reset-brick habuild {brick} start"), false),
            ("mkfs.xfs -f -i size=512 -L habuild-gl /dev/habuild_gluster/brick0".into(), true),
            ("mkdir -p /var/lib/habuild/bricks/brick0".into(), true),
            ("mount -t xfs -o noatime,inode64 /dev/habuild_gluster/brick0 /var/lib/habuild/bricks/brick0".into(), true),
            ("mountpoint -q /var/lib/habuild/bricks/brick0".into(), true),
            ("mkdir /var/lib/habuild/bricks/brick0/habuild".into(), true),
            (format!("gluster --mode=script volume reset-brick habuild {brick} {brick} commit force"), true),
        ]
    );
    assert_eq!(
        after[0].display(),
        "gluster --mode=script volume heal habuild"
    );
    // A half-done attempt that left the old filesystem mounted unmounts it first.
    let Rebuild::Wipe { ops, .. } = dec(Phase::Untrusted, true, &both) else {
        panic!("must rebuild")
    };
    assert_eq!(
        ops[1].cmd.display(),
        "umount /var/lib/habuild/bricks/brick0"
    );
    assert!(ops[1].must_succeed);
    // Committed but the mount is gone (rebooted mid-heal): wiped again.
    assert!(matches!(
        dec(Phase::Committed, false, &both),
        Rebuild::Wipe { .. }
    ));
    // The others online but in split brain, or silent about it: never wiped.
    for (split, says) in [
        (Some(2), "2 entries are in split brain"),
        (None, "answers for"),
    ] {
        let got = decide(&RebuildObs {
            info: Some(&info),
            brick: &b[1],
            phase: Phase::Untrusted,
            mounted: false,
            online: &both,
            heal: &none,
            split_brain: split,
        });
        let Rebuild::Wait(why) = got else {
            panic!("must wait with split brain {split:?}: {got:?}")
        };
        assert!(why.contains(says) && why.contains("10.0.0.1:"), "{why}");
    }
}

#[test]
fn a_committed_brick_is_verified_only_when_the_whole_set_healed() {
    use safety::{decide, Phase, Rebuild, RebuildObs};
    let info = volume3();
    let b = bricks(&[1, 2, 3]);
    let all: std::collections::BTreeMap<String, bool> =
        b.iter().map(|x| (x.clone(), true)).collect();
    let counts = |c: [Option<u64>; 3]| -> std::collections::BTreeMap<String, Option<u64>> {
        b.iter().cloned().zip(c).collect()
    };
    let decide_with = |heal: &std::collections::BTreeMap<String, Option<u64>>,
                       online: &std::collections::BTreeMap<String, bool>| {
        decide(&RebuildObs {
            info: Some(&info),
            brick: &b[1],
            phase: Phase::Committed,
            mounted: true,
            online,
            heal,
            split_brain: Some(0),
        })
    };
    let Rebuild::Healing { why, kick } = decide_with(&counts([Some(3), Some(0), Some(2)]), &all)
    else {
        panic!()
    };
    assert!(why.contains("5 entries pending heal"), "{why}");
    assert!(kick.is_none());
    assert!(matches!(
        decide_with(&counts([Some(0), Some(0), None]), &all),
        Rebuild::Healing { .. }
    ));
    assert!(matches!(
        decide_with(&counts([Some(0), Some(0), Some(0)]), &all),
        Rebuild::Verified(_)
    ));
    // The rebuilt brick itself is not online: restarted, not verified.
    let mut mine_down = all.clone();
    mine_down.insert(b[1].clone(), false);
    let Rebuild::Healing { kick, .. } =
        decide_with(&counts([Some(0), Some(0), Some(0)]), &mine_down)
    else {
        panic!()
    };
    assert_eq!(
        kick.unwrap().display(),
        "gluster --mode=script volume start habuild force"
    );
}

#[test]
fn nothing_to_rebuild_from_means_the_brick_is_kept() {
    use safety::{decide, Phase, Rebuild, RebuildObs};
    let none_on = Default::default();
    let none_heal = Default::default();
    let mut single = volume3();
    single.replica = 1;
    single.bricks = bricks(&[2]);
    for info in [None, Some(&single)] {
        let got = decide(&RebuildObs {
            info,
            brick: &bricks(&[2])[0],
            phase: Phase::Untrusted,
            mounted: false,
            online: &none_on,
            heal: &none_heal,
            split_brain: None,
        });
        assert!(matches!(got, Rebuild::Trust(_)), "{got:?}");
    }
    assert_eq!(safety::Phase::from_marker("committed\n"), Phase::Committed);
    assert_eq!(safety::Phase::from_marker(""), Phase::Untrusted);
}

#[test]
fn the_guard_unit_turns_a_leftover_marker_into_untrusted() {
    let u = safety::guard_unit();
    assert!(u.contains("if [ -e /var/lib/habuild/gluster/brick-open ]; then : > /var/lib/habuild/gluster/brick-untrusted; fi"), "{u}");
    assert!(u.contains("ExecStop=/bin/sh -c 'if ! mountpoint -q /var/lib/habuild/bricks/brick0; then rm -f /var/lib/habuild/gluster/brick-open;"), "{u}");
    assert!(u.contains("Conflicts=shutdown.target\n") && u.contains("DefaultDependencies=no\n"));
}

#[test]
fn health_goes_through_the_step_detail_and_back() {
    use health::{parse_split_brain, Health, REBUILDING, SERVING};
    let b = bricks(&[1, 2, 3]);
    let online = parse_status_detail(STATUS_DETAIL);
    let heal = parse_heal_count(HEAL_COUNT);
    let h = Health::observe(REBUILDING, &b, &online, &heal, Some(1));
    assert_eq!(h.offline, Some(vec![b[1].clone(), b[2].clone()]));
    assert_eq!((h.heal_pending, h.split_brain), (Some(7), Some(1)));
    assert!(!h.safe());
    let detail = format!("brick rebuilt after an unclean shutdown; {}", h.to_detail());
    assert_eq!(Health::from_detail(&detail), Some(h));
    let all_on: std::collections::BTreeMap<String, bool> =
        b.iter().map(|x| (x.clone(), true)).collect();
    let zero: std::collections::BTreeMap<String, Option<u64>> =
        b.iter().map(|x| (x.clone(), Some(0))).collect();
    let ok = Health::observe(SERVING, &b, &all_on, &zero, None);
    assert!(ok.safe(), "{ok:?}");
    assert_eq!(
        ok.to_detail(),
        "safety: brick serving; bricks offline: none; heal pending: 0; split-brain: 0"
    );
    assert_eq!(Health::from_detail("brick /b: xfs"), None);
    // `volume status` did not answer (glusterd waiting on a dead peer):
    // which bricks are online is unknown, not "all offline", and not safe
    let silent = Health::observe(SERVING, &b, &Default::default(), &zero, None);
    assert_eq!(silent.offline, None);
    assert!(!silent.safe(), "{silent:?}");
    assert_eq!(
        silent.to_detail(),
        "safety: brick serving; bricks offline: ?; heal pending: 0; split-brain: 0"
    );
    assert_eq!(Health::from_detail(&silent.to_detail()), Some(silent));
    let sb = "Brick 10.0.0.1:/b\nStatus: Connected\nNumber of entries in split-brain: 2\n\nBrick 10.0.0.2:/b\nStatus: Connected\nNumber of entries in split-brain: 1\n";
    assert_eq!(parse_split_brain(sb), Some(3));
    assert_eq!(parse_split_brain("Volume habuild is not started"), None);
}

#[test]
fn gluster_queries_are_bounded_by_coreutils_timeout() {
    assert_eq!(
        query(&["volume", "status", VOLUME, "detail"]).display(),
        "timeout --kill-after=5 20 gluster --mode=script volume status habuild detail"
    );
    assert_eq!(QUERY_TIMEOUT_SECS, 20);
    assert!(timed_out(124) && timed_out(137));
    assert!(!timed_out(0) && !timed_out(1));
}
