//! The systemd mount units: the brick filesystem (before glusterd) and the
//! FUSE mount of the volume, and systemd's name for a mount path.

use std::net::Ipv4Addr;

use super::safety::{GUARD_UNIT, MARKER_UNTRUSTED};
use super::{lv_device, BRICK_MOUNT, LV, VOLUME};

/// The systemd mount unit for the brick: after the loop device, before glusterd,
/// so bricks are never served from the empty directory underneath. It
/// requires the clean-shutdown guard ([`super::safety::guard_unit`]) and is
/// not mounted at boot while the brick is untrusted: glusterd then finds
/// no brick directory and does not serve it until the agent rebuilt it.
pub fn brick_mount_unit() -> String {
    format!(
        "# Written by habuild-agent: the Gluster brick (thin LV, XFS).\n\
         [Unit]\n\
         Description=habuild Gluster brick {LV}\n\
         Requires={GUARD_UNIT}\n\
         After=habuild-gluster-loop.service {GUARD_UNIT}\n\
         Before=habuild-glusterd.service\n\
         ConditionPathExists=!{MARKER_UNTRUSTED}\n\
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
