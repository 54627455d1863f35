//! The brick itself: the LVM (thin pool, thin LV) and XFS commands that take
//! a storage node from what it has to a mounted brick, only the missing
//! pieces, in order.

use super::{mount_unit_name, GlusterError, BRICK_MOUNT, LV, POOL, VG};
use crate::host::Cmd;

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
/// does nothing twice. `vgcreate` initializes the PV itself. With neither
/// pool nor LV, one `lvcreate` makes both;
/// when only one of them exists, the other is made alone. A filesystem on the LV that is not XFS is refused
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
        // vgcreate initializes a device that is not a PV yet itself (and
        // takes one that is): no separate pvcreate, whose run cost 10-16 s
        // on emulated nodes.
        out.push(Cmd::new(["vgcreate", "--yes", VG, device]));
    }
    let size = format!("{size_gib}G");
    if !obs.pool && !obs.lv {
        // One lvcreate makes the pool and the thin LV in it (LVM's
        // `lvcreate_thin_vol_and_thinpool`: `--extents` sizes the pool):
        // each lvcreate run cost 16-17 s on emulated nodes.
        out.push(Cmd::new([
            "lvcreate",
            "--yes",
            "--extents",
            "95%FREE",
            "--thinpool",
            POOL,
            "--virtualsize",
            &size,
            "--name",
            LV,
            VG,
        ]));
    } else {
        // Half done (an interrupted run, or a pool made by an older agent):
        // the missing piece alone.
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
                &size,
                "--thinpool",
                &thin,
                "--name",
                LV,
            ]));
        }
    }
    if obs.lv {
        // made before (a reboot): it may be inactive; one made now is active
        out.push(Cmd::new(["vgchange", "--activate", "y", VG]));
    }
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
        out.push(Cmd::new([
            "systemctl",
            "enable",
            "--no-reload",
            "--now",
            unit.as_str(),
        ]));
    }
    Ok(out)
}
