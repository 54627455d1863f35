//! Data safety of the volume: the quorum and timeout options the agent
//! keeps set on it, the clean-shutdown marker that tells a node whether
//! its brick can be trusted after a boot, and the rebuild of an untrusted
//! brick from the other replicas (`reset-brick` with a wiped filesystem).
//!
//! Why a rebuild and not a volume option: AFR clears its changelog on a
//! brick without any fsync for appending writes and for the delayed
//! post-op of eager locking, so after a power loss a brick can hold a
//! stale or empty file while every xattr and index says it is clean, and
//! `heal info` reports 0 entries (ARCHITECTURE.md, Gluster data safety).
//! No Gluster option closes that; only synchronous brick writes would.
//! So a brick whose node did not shut down cleanly is never served again
//! as it is: it is wiped and healed in full from the others, and only when
//! the others are online to be its source.

use std::collections::BTreeMap;

use super::{lv_device, VolumeInfo, BRICK_MOUNT, VOLUME};
use crate::host::Cmd;

/// Present from the moment the brick is mounted until a clean stop has
/// unmounted it; found at boot, the last shutdown was not clean.
pub const MARKER_OPEN: &str = "/var/lib/habuild/gluster/brick-open";
/// The brick must not be trusted (not mounted at boot, rebuilt by the
/// agent). Empty: rebuild from the start; [`COMMITTED`]: the wiped brick
/// is back in the volume and healing. Removed only by the agent once the
/// heal is complete.
pub const MARKER_UNTRUSTED: &str = "/var/lib/habuild/gluster/brick-untrusted";
/// Contents of [`MARKER_UNTRUSTED`] after `reset-brick … commit force`.
pub const COMMITTED: &str = "committed";
/// The oneshot unit that keeps [`MARKER_OPEN`] (written by the agent).
pub const GUARD_UNIT: &str = "habuild-brick-guard.service";

/// Client-side failure detection, in seconds. Gluster's default (42 s)
/// made the first write after a node's power loss wait 73–86 s (a dead
/// brick is declared down 1–2 × the timeout after its last answer); 5 s
/// still gave 9–16 s on loaded emulated nodes (detection up to 10 s, then
/// the write queued behind what was in flight); 3 s gives at most ~6 s of
/// detection. The cost: a brick that does not answer a ping for 3 s (a
/// stalled, overloaded node) is disconnected, its locks are dropped and
/// everything written meanwhile is healed afterwards (no data is lost:
/// client quorum still needs 2 of 3 bricks for every write). The QEMU
/// scenario counts such disconnects of live bricks.
pub const PING_TIMEOUT_SECS: u32 = 3;

/// The options the agent keeps set on the volume (set at creation and
/// re-applied whenever `volume info` shows another value), for a volume
/// over `nodes` storage nodes.
///
/// - `cluster.quorum-type auto` (client quorum): a write needs more than
///   half of the replica set (with exactly half, the first brick), so a
///   partitioned minority gets ENOTCONN instead of writing a split brain.
/// - `cluster.server-quorum-type server` (with 3 or more nodes): glusterd
///   stops the bricks of a node that sees less than the ratio of the pool.
///   Not with 2 nodes: 51 % of 2 is both, and one node's loss would stop
///   the survivor's brick too.
/// - `network.ping-timeout`: see [`PING_TIMEOUT_SECS`].
/// - `cluster.ensure-durability on` (Gluster's default, kept explicit):
///   fsync on the sources before a failed brick is blamed.
pub fn volume_options(nodes: usize) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("cluster.quorum-type", "auto".to_string()),
        ("network.ping-timeout", PING_TIMEOUT_SECS.to_string()),
        ("cluster.ensure-durability", "on".to_string()),
    ];
    if nodes >= 3 {
        out.insert(1, ("cluster.server-quorum-type", "server".to_string()));
    }
    out
}

/// The cluster-wide server quorum ratio (`volume set all`), set with the
/// volume options when server quorum is on.
pub const SERVER_QUORUM_RATIO: &str = "51%";

fn gl(args: &[&str]) -> Cmd {
    let mut argv = vec!["gluster", "--mode=script"];
    argv.extend_from_slice(args);
    Cmd::new(argv)
}

/// The options of [`volume_options`] that `info` does not show with the
/// wanted value, in one `gluster volume set VOLUME k1 v1 k2 v2 …` (the CLI
/// takes any number of pairs and glusterd applies them in one transaction:
/// one volume lock and one volfile regeneration instead of one per option,
/// each 3-6 s on emulated nodes), plus the global server quorum ratio
/// (`volume set all`, which glusterd handles apart from volume options)
/// whenever server quorum is among them. Empty when all hold.
pub fn option_actions(info: &VolumeInfo, nodes: usize) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut server_quorum = false;
    let mut set: Vec<String> = vec!["volume".into(), "set".into(), VOLUME.into()];
    for (k, v) in volume_options(nodes) {
        if info.options.get(k).map(|have| same_value(have, &v)) != Some(true) {
            server_quorum |= k == "cluster.server-quorum-type";
            set.push(k.into());
            set.push(v);
        }
    }
    if set.len() > 3 {
        out.push(gl(&set.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    if server_quorum {
        out.push(gl(&[
            "volume",
            "set",
            "all",
            "cluster.server-quorum-ratio",
            SERVER_QUORUM_RATIO,
        ]));
    }
    out
}

/// Option values as gluster may echo them: case and the boolean
/// spellings it accepts (`on`/`enable`/`true`/`yes`) do not matter.
fn same_value(have: &str, want: &str) -> bool {
    let norm = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "on" | "enable" | "true" | "yes" => "on".to_string(),
        "off" | "disable" | "false" | "no" => "off".to_string(),
        other => other.to_string(),
    };
    norm(have) == norm(want)
}

/// The replica set (bricks in volume order, `replica` per set) that holds `brick`.
pub fn replica_set(info: &VolumeInfo, brick: &str) -> Option<Vec<String>> {
    info.bricks
        .chunks(info.replica.max(1) as usize)
        .find(|set| set.iter().any(|b| b == brick))
        .map(<[String]>::to_vec)
}

/// The systemd unit that keeps [`MARKER_OPEN`]: started before the brick
/// mount (which requires it), it turns a marker left by the previous boot
/// into [`MARKER_UNTRUSTED`] (truncated: a rebuild starts over), then sets
/// the marker; stopped after the brick is unmounted, it removes the marker
/// only if the unmount succeeded. Power loss, panic or a forced reboot
/// leave the marker behind.
pub fn guard_unit() -> String {
    let dir = "/var/lib/habuild/gluster";
    format!(
        "# Written by habuild-agent: marks whether the Gluster brick was cleanly unmounted.\n\
         [Unit]\n\
         Description=habuild Gluster brick clean-shutdown marker\n\
         DefaultDependencies=no\n\
         RequiresMountsFor={dir}\n\
         After=habuild-gluster-loop.service\n\
         Before=habuild-glusterd.service shutdown.target\n\
         Conflicts=shutdown.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/bin/sh -c 'mkdir -p {dir} && if [ -e {MARKER_OPEN} ]; then : > {MARKER_UNTRUSTED}; fi && touch {MARKER_OPEN} && sync -f {dir}'\n\
         ExecStop=/bin/sh -c 'if ! mountpoint -q {BRICK_MOUNT}; then rm -f {MARKER_OPEN}; sync -f {dir}; fi'\n"
    )
}

/// Where an untrusted brick's rebuild stands, from [`MARKER_UNTRUSTED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not rebuilt yet (or a rebuild that must start over).
    Untrusted,
    /// Wiped and committed back into the volume; healing.
    Committed,
}

impl Phase {
    pub fn from_marker(contents: &str) -> Phase {
        if contents.trim() == COMMITTED {
            Phase::Committed
        } else {
            Phase::Untrusted
        }
    }
}

/// What the agent sees when its brick is untrusted.
#[derive(Debug, Clone)]
pub struct RebuildObs<'a> {
    /// `volume info`, None when the volume does not exist.
    pub info: Option<&'a VolumeInfo>,
    /// This node's brick (`IP:/path`).
    pub brick: &'a str,
    pub phase: Phase,
    /// The brick filesystem is mounted (XFS) at [`BRICK_MOUNT`].
    pub mounted: bool,
    /// `volume status detail`: brick → online; absent = offline.
    pub online: &'a BTreeMap<String, bool>,
    /// `heal-count`: brick → pending entries (None = unknown).
    pub heal: &'a BTreeMap<String, Option<u64>>,
    /// `heal info split-brain`: entries in split brain over the bricks that
    /// answered (None = unknown: no brick answered). Asked only before a
    /// wipe.
    pub split_brain: Option<u64>,
}

/// One command of a rebuild, and whether its failure stops the rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub cmd: Cmd,
    pub must_succeed: bool,
}

/// What to do with an untrusted brick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuild {
    /// There is nothing to rebuild from or for (no volume, brick not in
    /// it, no other replica): the marker is dropped, the brick used as is.
    Trust(String),
    /// Not safe to rebuild now (said why); the brick stays down.
    Wait(String),
    /// Wipe and rebuild: run `ops` in order, then mark [`Phase::Committed`]
    /// and run `after` (a heal kick; its failure does not matter).
    Wipe { ops: Vec<Op>, after: Vec<Cmd> },
    /// Committed; the heal is not complete yet (said how far). `kick`:
    /// the rebuilt brick is not online, restart it.
    Healing { why: String, kick: Option<Cmd> },
    /// Committed and every brick of the set reports 0 pending entries:
    /// the brick is verified, the marker can go.
    Verified(String),
}

/// Decides what to do with an untrusted brick. The rule that matters:
/// the brick is wiped only when every other brick of its replica set is
/// online (and so holds the data to heal it from) and they agree (no
/// entry in split brain: with two copies that differ, this brick's copy may
/// be the one that tells which is right, so an operator decides); never
/// when this node holds the only copy left.
pub fn decide(obs: &RebuildObs) -> Rebuild {
    let Some(info) = obs.info else {
        return Rebuild::Trust("volume does not exist yet: nothing to rebuild".into());
    };
    let Some(set) = replica_set(info, obs.brick) else {
        return Rebuild::Trust(format!("{} is not in volume {VOLUME}", obs.brick));
    };
    let others: Vec<&String> = set.iter().filter(|b| *b != obs.brick).collect();
    if others.is_empty() {
        return Rebuild::Trust(
            "no other replica to rebuild from: brick kept as it is (unverified, no redundancy)"
                .into(),
        );
    }
    let online = |b: &str| obs.online.get(b).copied().unwrap_or(false);
    if obs.phase == Phase::Committed && obs.mounted {
        if !online(obs.brick) {
            return Rebuild::Healing {
                why: "rebuilt brick committed, waiting for it to come online".into(),
                kick: Some(gl(&["volume", "start", VOLUME, "force"])),
            };
        }
        let unknown: Vec<&String> = set
            .iter()
            .filter(|b| obs.heal.get(*b).copied().flatten().is_none())
            .collect();
        if !unknown.is_empty() {
            return Rebuild::Healing {
                why: format!(
                    "rebuilt brick healing; no heal count from {}",
                    join(&unknown)
                ),
                kick: None,
            };
        }
        let pending: u64 = set.iter().filter_map(|b| obs.heal[b]).sum();
        if pending > 0 {
            return Rebuild::Healing {
                why: format!(
                    "rebuilt brick healing from the other replicas: {pending} entries pending heal"
                ),
                kick: None,
            };
        }
        return Rebuild::Verified(format!(
            "rebuilt from {} after an unclean shutdown; heal complete",
            join(&others)
        ));
    }
    let offline: Vec<&String> = others.iter().copied().filter(|b| !online(b)).collect();
    if !offline.is_empty() {
        return Rebuild::Wait(format!(
            "brick untrusted after an unclean shutdown; not rebuilt while {} offline (it may hold the only good copy)",
            join(&offline)
        ));
    }
    match obs.split_brain {
        Some(0) => {}
        Some(n) => {
            return Rebuild::Wait(format!(
                "brick untrusted after an unclean shutdown; not rebuilt while {n} entries are in split brain on {} (this copy may be needed to resolve them: gluster volume heal {VOLUME} info split-brain, then gluster volume heal {VOLUME} split-brain …)",
                join(&others)
            ))
        }
        None => {
            return Rebuild::Wait(format!(
                "brick untrusted after an unclean shutdown; not rebuilt until gluster volume heal {VOLUME} info split-brain answers for {}",
                join(&others)
            ))
        }
    }
    let dev = lv_device();
    let mut ops = vec![
        // Stops the brick if glusterd runs it; fails harmlessly when it is
        // already stopped or a previous attempt got this far.
        Op {
            cmd: gl(&["volume", "reset-brick", VOLUME, obs.brick, "start"]),
            must_succeed: false,
        },
    ];
    if obs.mounted {
        ops.push(Op {
            cmd: Cmd::new(["umount", BRICK_MOUNT]),
            must_succeed: true,
        });
    }
    ops.extend([
        Op {
            cmd: Cmd::new(["mkfs.xfs", "-f", "-i", "size=512", "-L", "habuild-gl", &dev]),
            must_succeed: true,
        },
        Op {
            cmd: Cmd::new(["mkdir", "-p", BRICK_MOUNT]),
            must_succeed: true,
        },
        Op {
            cmd: Cmd::new([
                "mount",
                "-t",
                "xfs",
                "-o",
                "noatime,inode64",
                &dev,
                BRICK_MOUNT,
            ]),
            must_succeed: true,
        },
        // Only once the new filesystem is mounted: otherwise the brick
        // directory would land on /var.
        Op {
            cmd: Cmd::new(["mountpoint", "-q", BRICK_MOUNT]),
            must_succeed: true,
        },
        Op {
            cmd: Cmd::new(["mkdir", &format!("{BRICK_MOUNT}/{VOLUME}")]),
            must_succeed: true,
        },
        Op {
            cmd: gl(&[
                "volume",
                "reset-brick",
                VOLUME,
                obs.brick,
                obs.brick,
                "commit",
                "force",
            ]),
            must_succeed: true,
        },
    ]);
    Rebuild::Wipe {
        ops,
        after: vec![gl(&["volume", "heal", VOLUME])],
    }
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}
