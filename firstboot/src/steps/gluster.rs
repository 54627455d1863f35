//! The Gluster steps (the brick on the "storage" chain, the trusted pool on
//! "storage-pool", the volume and the mount on "storage-volume"; see
//! [`crate::gluster`] for the pure parts and the policies):
//!
//! - `gluster-brick`, on each planned storage node: the device (the planned
//!   disk, or the loop device over a backing file on the data partition,
//!   attached by the image's `habuild-gluster-loop.service`), LVM thin pool +
//!   thin LV + XFS, the brick mounted by a mount unit ordered before
//!   glusterd, and glusterd from the distro's package running as
//!   `habuild-glusterd`. Done = brick mounted, dm_thin_pool loaded, glusterd up.
//! - `gluster-pool`, on the storage leader once every storage node in the
//!   volume has its brick done: `peer probe` every missing peer at once
//!   (one thread each); done when all connected.
//! - `gluster-volume`, on the storage leader: create + start the volume, or
//!   grow it with the bricks of nodes that joined; done when it is started
//!   with every planned brick.
//! - `gluster-mount`, on every node once the volume is done: the FUSE mount
//!   unit (backup volfile servers = the other storage nodes), and heketi's
//!   topology.json on storage nodes.
//!
//! These steps need the host itself (block devices, LVM, systemd): an agent
//! running under another `--root` refuses them with a message saying so.

use std::net::Ipv4Addr;
use std::path::Path;

use super::{Chain, Check, Ctx, Gate, Rendered, Step, StepError};
use crate::gluster::health;
use crate::gluster::safety::{self, Phase, Rebuild, RebuildObs, GUARD_UNIT};
use crate::gluster::store;
use crate::gluster::{
    self, brick_actions, brick_of, volume_actions, BrickObs, Layout, BACKING_FILE, BRICK_MOUNT,
    LOOP_CONF, LOOP_DEVICE, LV, POOL, TOPOLOGY_FILE, VG, VOLUME,
};
use crate::host::{Cmd, FileSpec, Host, ServiceSpec};
use crate::state::{NodeId, StepStatus};

pub struct Brick;
pub struct Pool;
pub struct Volume;
pub struct Mount;

pub const GLUSTERD: &str = "habuild-glusterd";
const LOOP_SCRIPT: &str = "/usr/lib/habuild/gluster-loop";

fn host_root_only(ctx: &Ctx) -> Result<(), StepError> {
    if ctx.root == Path::new("/") {
        Ok(())
    } else {
        Err(StepError::Refused(format!(
            "Gluster needs this host's block devices, LVM and systemd, but the agent runs with --root {}: storage is built only by the agent of a booted node (or set storage.enabled = false)",
            ctx.root.display()
        )))
    }
}

fn storage_node(ctx: &Ctx) -> bool {
    ctx.cfg.storage.enabled && ctx.plan.storage.contains(&ctx.me)
}

fn storage_leader(ctx: &Ctx) -> bool {
    ctx.cfg.storage.enabled && ctx.plan.storage_leader == Some(ctx.me)
}

fn device(ctx: &Ctx) -> String {
    ctx.plan
        .storage_devices
        .get(&ctx.me)
        .cloned()
        .unwrap_or_else(|| LOOP_DEVICE.into())
}

fn layout(ctx: &Ctx) -> Layout {
    gluster::layout(&ctx.plan.storage, ctx.cfg.storage.replica)
}

fn ip_of(ctx: &Ctx, id: NodeId) -> Result<Ipv4Addr, StepError> {
    ctx.member(id)
        .map(|m| m.ip)
        .ok_or_else(|| StepError::Render(format!("storage node {id:016x} has no member record")))
}

fn want_bricks(ctx: &Ctx, l: &Layout) -> Result<Vec<String>, StepError> {
    l.in_volume
        .iter()
        .map(|id| ip_of(ctx, *id).map(brick_of))
        .collect()
}

fn gluster_cmd(args: &[&str]) -> Cmd {
    let mut argv = vec!["gluster", "--mode=script"];
    argv.extend_from_slice(args);
    Cmd::new(argv)
}

/// Our volume as glusterd's store holds it ([`gluster::store`]: what
/// `volume info` says, read as files instead of a CLI call that costs
/// 2-3 s of CPU on an emulated node): None when it does not exist.
fn volume_info(host: &Host) -> Result<Option<gluster::VolumeInfo>, StepError> {
    let read = |rel: &str| -> Result<Option<String>, StepError> {
        Ok(host
            .files
            .read(rel)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    let Some(info) = read(&store::volume_info_file(VOLUME))? else {
        return Ok(None);
    };
    let unreadable = std::cell::RefCell::new(None);
    let v = store::parse_volume(&info, &|name| {
        read(&store::brick_file(VOLUME, name)).unwrap_or_else(|e| {
            *unreadable.borrow_mut() = Some(e.to_string());
            None
        })
    });
    if let Some(e) = unreadable.into_inner() {
        return Err(StepError::Host(crate::host::HostError::File {
            path: store::brick_file(VOLUME, "*"),
            message: e,
        }));
    }
    Ok(v)
}

/// A bounded query ([`gluster::query`]) that takes glusterd's volume lock
/// (`volume status`, `volume heal …`), asked again up to
/// [`gluster::LOCK_RETRIES`] times while the answer is that another
/// transaction holds the lock ([`gluster::lock_busy`]): under emulation
/// every node's safety view, a rebuild's checks and the leader's commands
/// meet on that lock, and a busy answer read as "nothing online" kept the
/// views "unknown" (not safe) long after the volume had healed.
fn ask_locked(host: &Host, args: &[&str]) -> Result<crate::host::Output, crate::host::HostError> {
    let cmd = gluster::query(args);
    let mut o = host.exec.output(&cmd)?;
    for _ in 0..gluster::LOCK_RETRIES {
        if o.success() || !gluster::lock_busy(&format!("{}{}", o.stdout, o.stderr)) {
            break;
        }
        tracing::debug!(query = %cmd.display(), "gluster volume lock busy, asking again");
        std::thread::sleep(std::time::Duration::from_secs(gluster::LOCK_RETRY_SECS));
        o = host.exec.output(&cmd)?;
    }
    Ok(o)
}

/// The filesystem type mounted at `path`, if anything is.
fn mounted_fs(host: &Host, path: &str) -> Option<String> {
    let o = host
        .exec
        .output(&Cmd::new([
            "findmnt",
            "-n",
            "-o",
            "FSTYPE",
            "--mountpoint",
            path,
        ]))
        .ok()?;
    let fs = o.stdout.trim();
    (o.success() && !fs.is_empty()).then(|| fs.to_string())
}

fn glusterd_service() -> ServiceSpec {
    ServiceSpec {
        name: GLUSTERD.into(),
        description: "GlusterFS management daemon (habuild)".into(),
        argv: vec![
            "/usr/sbin/glusterd".into(),
            "--no-daemon".into(),
            "--log-level".into(),
            "INFO".into(),
        ],
        fingerprint: "glusterd-v1".into(),
    }
}

impl Step for Brick {
    fn name(&self) -> &'static str {
        "gluster-brick"
    }
    fn chain(&self) -> Chain {
        Chain::Storage
    }
    fn check_first(&self) -> bool {
        true
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        if storage_node(ctx) {
            Gate::Run
        } else {
            Gate::NotHere
        }
    }

    /// Nothing is touched when the brick device is not ours to use: a disk
    /// that holds data, a device that does not exist, or no room for the
    /// backing file. Once the volume group exists these checks are past.
    fn preflight(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        host_root_only(ctx)?;
        if host.exec.output(&Cmd::new(["vgs", VG]))?.success() {
            return Ok(());
        }
        let dev = device(ctx);
        if dev == LOOP_DEVICE {
            if host.files.exists(BACKING_FILE) {
                return Ok(());
            }
            let need = u64::from(ctx.cfg.storage.brick_file_size_gib) << 30;
            let dir = Path::new(BACKING_FILE)
                .parent()
                .and_then(|p| p.parent())
                .map_or("/var".to_string(), |p| p.display().to_string());
            let o = host
                .exec
                .run(&Cmd::new(["df", "-B1", "--output=avail", dir.as_str()]))?;
            let free: u64 = o
                .stdout
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            if free <= need {
                return Err(StepError::Refused(format!(
                    "not enough free space for the Gluster backing file {BACKING_FILE}: storage.brick_file_size_gib = {} needs {} GiB, {:.1} GiB free on {dir}; free space or lower storage.brick_file_size_gib",
                    ctx.cfg.storage.brick_file_size_gib,
                    ctx.cfg.storage.brick_file_size_gib,
                    free as f64 / (1u64 << 30) as f64
                )));
            }
            return Ok(());
        }
        let o = host.exec.run(&Cmd::new([
            "lsblk",
            "-J",
            "-b",
            "-o",
            "NAME,PATH,TYPE,SIZE,FSTYPE,RO,MOUNTPOINT,PTTYPE",
        ]))?;
        let devices =
            gluster::parse_lsblk(&o.stdout).map_err(|e| StepError::Refused(e.to_string()))?;
        gluster::check_configured(&devices, &dev).map_err(|e| StepError::Refused(e.to_string()))
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        let mut r = Rendered::default();
        if device(ctx) == LOOP_DEVICE {
            r.files.push(FileSpec::new(
                LOOP_CONF,
                0o644,
                format!(
                    "# Written by habuild-agent: the Gluster brick's backing file.\nBACKING={BACKING_FILE}\nSIZE_GIB={}\n",
                    ctx.cfg.storage.brick_file_size_gib
                ),
            ));
            r.commands.push(Cmd::new([LOOP_SCRIPT, "attach"]));
        }
        r.files.push(FileSpec::new(
            format!("etc/systemd/system/{GUARD_UNIT}"),
            0o644,
            safety::guard_unit(),
        ));
        r.files.push(FileSpec::new(
            format!(
                "etc/systemd/system/{}",
                gluster::mount_unit_name(BRICK_MOUNT)
            ),
            0o644,
            gluster::brick_mount_unit(),
        ));
        r.commands.push(Cmd::new([
            "mkdir",
            "-p",
            "/var/log/glusterfs",
            "/var/lib/glusterd",
        ]));
        r.services.push(glusterd_service());
        Ok(r)
    }

    fn act(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        if untrusted(host)?.is_some() {
            if !host.exec.output(&Cmd::new(["vgs", VG]))?.success() {
                drop_marker(host, "no brick built yet: nothing to distrust")?;
            } else if !rebuild(ctx, host)? {
                return Ok(());
            }
        }
        let mut obs = BrickObs {
            vg: host.exec.output(&Cmd::new(["vgs", VG]))?.success(),
            ..BrickObs::default()
        };
        if obs.vg {
            host.exec
                .run(&Cmd::new(["vgchange", "--activate", "y", VG]))?;
            let lvs = host
                .exec
                .output(&Cmd::new(["lvs", "--noheadings", "-o", "lv_name", VG]))?;
            let names: Vec<&str> = lvs.stdout.split_whitespace().collect();
            obs.pool = names.contains(&POOL);
            obs.lv = names.contains(&LV);
        }
        if obs.lv {
            let b = host.exec.output(&Cmd::new([
                "blkid",
                "-o",
                "value",
                "-s",
                "TYPE",
                &gluster::lv_device(),
            ]))?;
            let fs = b.stdout.trim();
            obs.fs = (!fs.is_empty()).then(|| fs.to_string());
        }
        obs.mounted = mounted_fs(host, BRICK_MOUNT).as_deref() == Some("xfs");
        let size = u64::from(ctx.cfg.storage.brick_file_size_gib.max(1));
        let mut dev = device(ctx);
        if !obs.vg && dev == LOOP_DEVICE {
            // LVM is given the loop device itself, not our stable symlink.
            let o = host.exec.run(&Cmd::new(["readlink", "-f", LOOP_DEVICE]))?;
            let real = o.stdout.trim();
            if !real.starts_with("/dev/loop") {
                return Err(StepError::Refused(format!(
                    "{LOOP_DEVICE} does not point at a loop device ({real:?}); see habuild-gluster-loop.service"
                )));
            }
            dev = real.to_string();
        }
        let cmds =
            brick_actions(&obs, &dev, size).map_err(|e| StepError::Refused(e.to_string()))?;
        if !obs.mounted {
            // the mount unit and the guard it requires, as rendered this round
            let unit = gluster::mount_unit_name(BRICK_MOUNT);
            crate::host::reload_if_stale(host.exec.as_ref(), &[unit.as_str(), GUARD_UNIT])?;
        }
        for c in &cmds {
            host.exec.run(c)?;
        }
        // The brick was not mounted when glusterd started (e.g. the LV came
        // up late after a reboot): glusterd gave up on it; start it now.
        if !obs.mounted {
            if let Ok(Some(_)) = volume_info(host) {
                host.exec
                    .run(&gluster_cmd(&["volume", "start", VOLUME, "force"]))?;
            }
        }
        Ok(())
    }

    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        if let Some(phase) = untrusted(host)? {
            let (why, state) = match phase {
                Phase::Untrusted => ("untrusted after an unclean shutdown: not served; rebuilt from the other replicas before use", health::UNTRUSTED),
                Phase::Committed => ("rebuilt after an unclean shutdown: healing from the other replicas", health::REBUILDING),
            };
            return Ok(Check::Pending(format!(
                "brick {why}{}",
                safety_suffix(ctx, host, state)
            )));
        }
        let mut missing = Vec::new();
        if mounted_fs(host, BRICK_MOUNT).as_deref() != Some("xfs") {
            missing.push(format!("{BRICK_MOUNT} is not mounted"));
        }
        if !host.files.exists("sys/module/dm_thin_pool") {
            missing.push("dm_thin_pool is not loaded".into());
        }
        if !host.services.running(GLUSTERD) {
            missing.push(format!("{GLUSTERD} is not running"));
        }
        if missing.is_empty() {
            Ok(Check::Done(format!(
                "brick {BRICK_MOUNT}: xfs on thin LV {VG}/{LV} over {}{}",
                device(ctx),
                safety_suffix(ctx, host, health::SERVING)
            )))
        } else {
            Ok(Check::Pending(missing.join("; ")))
        }
    }
}

/// Where the last safety view is kept (tmpfs), with when it was taken.
const SAFETY_CACHE: &str = "run/habuild/gluster-safety";
/// How old a kept safety view may be: `volume status` and `heal` take
/// glusterd's volume lock, and asking every round from every node would
/// make the leader's own volume commands fail with "Another transaction
/// is in progress"; each is also a gluster CLI call, 2-3 s of CPU on an
/// emulated node (every 30 s on every storage node was a tenth of its CPU).
const SAFETY_EVERY_SECS: u64 = 60;

/// `; safety: …` (see [`health::Health`]) once the storage leader's
/// volume step is done: what gluster says of its bricks, pending heals and
/// split brain, with this brick's `state`; asked at most every
/// [`SAFETY_EVERY_SECS`] (the kept view is reused with the current
/// `state`). The bricks come from glusterd's store ([`volume_info`]); when
/// it cannot be read, the view says everything but the brick state is
/// unknown (`?`). Every query is bounded ([`gluster::query`], 20 s): when `volume status` times out, the
/// heal counts are not asked (they would wait on the same lock) and are
/// unknown too, so a hung glusterd costs a check about 20 s, not 120 s or
/// more per query. Empty before the volume step is done or when the volume
/// does not exist: the status never fails a step.
fn safety_suffix(ctx: &Ctx, host: &Host, state: &str) -> String {
    let volume_done = ctx
        .plan
        .storage_leader
        .is_some_and(|l| ctx.done_on("gluster-volume", &[l]));
    if !volume_done {
        return String::new();
    }
    let now = super::unix_now();
    let kept = host
        .files
        .read(SAFETY_CACHE)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    if let Some((at, detail)) = kept.as_deref().and_then(|k| k.split_once('\n')) {
        let fresh = at
            .parse::<u64>()
            .is_ok_and(|t| now.saturating_sub(t) < SAFETY_EVERY_SECS);
        if let (true, Some(mut h)) = (fresh, health::Health::from_detail(detail)) {
            h.brick = state.into();
            return format!("; {}", h.to_detail());
        }
    }
    let info = match volume_info(host) {
        Ok(Some(info)) => info,
        Ok(None) => return String::new(),
        Err(e) => {
            // glusterd does not answer (or is not running): everything unknown.
            tracing::info!(error = %e, "gluster safety view");
            let h =
                health::Health::observe(state, &[], &Default::default(), &Default::default(), None);
            return keep_view(host, now, &h);
        }
    };
    // Each query bounded ([`gluster::query`]); None when it timed out.
    let ask = |args: &[&str]| -> Option<String> {
        match ask_locked(host, args) {
            Ok(o) if gluster::timed_out(o.code) => None,
            Ok(o) if o.success() => Some(o.stdout),
            _ => Some(String::new()),
        }
    };
    let status = ask(&["volume", "status", VOLUME, "detail"]);
    let mut online = gluster::parse_status_detail(status.as_deref().unwrap_or_default());
    if online.is_empty() {
        // `volume status` did not answer: its cluster-wide lock waits on a
        // peer that lost power. What this glusterd knows locally: the
        // bricks of disconnected peers are offline (the others unknown,
        // counted online here: the verdict is "not safe" either way).
        let down = gluster::disconnected_peers(&ask(&["pool", "list"]).unwrap_or_default());
        if !down.is_empty() {
            online = info
                .bricks
                .iter()
                .map(|b| {
                    let host = b.split_once(':').map_or(b.as_str(), |x| x.0);
                    (b.clone(), !down.iter().any(|d| d == host))
                })
                .collect();
        }
    }
    // `heal` takes the same lock: after a `volume status` that timed out it
    // would wait as long again; its counts are then unknown.
    let heal = match status {
        Some(_) => gluster::parse_heal_count(
            &ask(&["volume", "heal", VOLUME, "statistics", "heal-count"]).unwrap_or_default(),
        ),
        None => Default::default(),
    };
    let pending: u64 = heal.values().filter_map(|c| *c).sum();
    let split = if pending > 0 {
        health::parse_split_brain(
            &ask(&["volume", "heal", VOLUME, "info", "split-brain"]).unwrap_or_default(),
        )
    } else if heal.is_empty() {
        None
    } else {
        Some(0)
    };
    let h = health::Health::observe(state, &info.bricks, &online, &heal, split);
    keep_view(host, now, &h)
}

/// Keeps `h` as the view taken at `now` (reused for [`SAFETY_EVERY_SECS`],
/// also when it says "unknown": a glusterd that does not answer is not
/// asked again every round) and returns it as the detail suffix.
fn keep_view(host: &Host, now: u64, h: &health::Health) -> String {
    let keep = FileSpec::new(SAFETY_CACHE, 0o644, format!("{now}\n{}", h.to_detail()));
    if let Err(e) = host.files.write(&keep) {
        tracing::debug!(error = %e, "keeping the gluster safety view");
    }
    format!("; {}", h.to_detail())
}

/// The rebuild phase when this node's brick is untrusted (the marker
/// [`safety::MARKER_UNTRUSTED`] exists), None when it is trusted.
fn untrusted(host: &Host) -> Result<Option<Phase>, StepError> {
    let rel = safety::MARKER_UNTRUSTED.trim_start_matches('/');
    Ok(host
        .files
        .read(rel)?
        .map(|c| Phase::from_marker(&String::from_utf8_lossy(&c))))
}

fn drop_marker(host: &Host, why: &str) -> Result<(), StepError> {
    tracing::warn!(why, "gluster brick: untrusted marker removed");
    host.exec
        .run(&Cmd::new(["rm", "-f", safety::MARKER_UNTRUSTED]))?;
    host.exec
        .run(&Cmd::new(["sync", "-f", "/var/lib/habuild/gluster"]))?;
    Ok(())
}

/// One round of the rebuild of an untrusted brick (see
/// [`safety::decide`]): each call looks at gluster's state again and does
/// the next part, so a crash anywhere is finished by a later round or boot
/// (an interrupted wipe starts over; a committed brick that lost its mount
/// is wiped again). True when the brick is trusted again (the marker is
/// gone) and the normal brick path may go on.
fn rebuild(ctx: &Ctx, host: &Host) -> Result<bool, StepError> {
    host.exec.run(&Cmd::new(["modprobe", "dm_thin_pool"]))?;
    host.exec
        .run(&Cmd::new(["vgchange", "--activate", "y", VG]))?;
    let phase = untrusted(host)?.unwrap_or(Phase::Untrusted);
    let me = ctx
        .my_ip()
        .ok_or_else(|| StepError::Render("this node has no address in the plan".into()))?;
    let brick = brick_of(me);
    let info = volume_info(host)?;
    // Bounded ([`gluster::query`]): a query that timed out leaves its
    // answer empty, which `decide` reads as offline / unknown (wait).
    let ask = |args: &[&str]| -> Result<String, StepError> { Ok(ask_locked(host, args)?.stdout) };
    let online = gluster::parse_status_detail(&ask(&["volume", "status", VOLUME, "detail"])?);
    // The heal count matters once the rebuilt brick is committed; split
    // brain before anything is wiped.
    let heal = if phase == Phase::Committed {
        gluster::parse_heal_count(&ask(&[
            "volume",
            "heal",
            VOLUME,
            "statistics",
            "heal-count",
        ])?)
    } else {
        Default::default()
    };
    let split_brain = if phase == Phase::Untrusted {
        health::parse_split_brain(&ask(&["volume", "heal", VOLUME, "info", "split-brain"])?)
    } else {
        Some(0)
    };
    let mounted = mounted_fs(host, BRICK_MOUNT).as_deref() == Some("xfs");
    let decision = safety::decide(&RebuildObs {
        info: info.as_ref(),
        brick: &brick,
        phase,
        mounted,
        online: &online,
        heal: &heal,
        split_brain,
    });
    match decision {
        Rebuild::Trust(why) | Rebuild::Verified(why) => {
            drop_marker(host, &why)?;
            Ok(true)
        }
        Rebuild::Wait(why) => {
            tracing::warn!(%why, "gluster brick");
            Ok(false)
        }
        Rebuild::Healing { why, kick } => {
            tracing::info!(%why, "gluster brick");
            if let Some(k) = kick {
                host.exec.output(&k)?;
            }
            Ok(false)
        }
        Rebuild::Wipe { ops, after } => {
            tracing::warn!(%brick, "gluster brick untrusted: wiping it and rebuilding it from the other replicas");
            for op in &ops {
                if op.must_succeed {
                    host.exec.run(&op.cmd)?;
                } else {
                    let o = host.exec.output(&op.cmd)?;
                    if !o.success() {
                        tracing::info!(command = %op.cmd.display(), out = %format!("{}{}", o.stdout, o.stderr).trim(), "ignored");
                    }
                }
            }
            host.files.write(&FileSpec::new(
                safety::MARKER_UNTRUSTED.trim_start_matches('/'),
                0o644,
                format!("{}\n", safety::COMMITTED),
            ))?;
            host.exec
                .run(&Cmd::new(["sync", "-f", "/var/lib/habuild/gluster"]))?;
            for c in &after {
                host.exec.output(c)?;
            }
            Ok(false)
        }
    }
}

/// Why the storage leader is still waiting for `nodes`' bricks, or None.
fn bricks_not_ready(ctx: &Ctx, nodes: &[NodeId]) -> Option<String> {
    let waiting: Vec<String> = nodes
        .iter()
        .filter(|id| !ctx.done_on("gluster-brick", &[**id]))
        .map(|id| {
            let rec = ctx.state.steps.get(&(*id, "gluster-brick".to_string()));
            match rec {
                Some(r) if r.status == StepStatus::Failed => {
                    format!("node {id:016x} (failed: {})", r.detail)
                }
                Some(r) if !r.detail.is_empty() => format!("node {id:016x} ({})", r.detail),
                _ => format!("node {id:016x}"),
            }
        })
        .collect();
    (!waiting.is_empty()).then(|| format!("bricks not ready on {}", waiting.join(", ")))
}

/// The storage nodes other than this one, by address: the trusted pool
/// needs only their glusterd (started by their brick step's first round),
/// not their bricks.
fn storage_peers(ctx: &Ctx) -> Result<Vec<Ipv4Addr>, StepError> {
    ctx.plan
        .storage
        .iter()
        .filter(|id| **id != ctx.me)
        .map(|id| ip_of(ctx, *id))
        .collect()
}

/// `gluster peer probe` of every address in `peers`, all at once (one
/// thread each): on emulated nodes a probe takes 20-40 s, mostly waiting
/// for the peer's glusterd, and one after another they added up. Every
/// probe runs to its end; the error of each failed one is logged, and the
/// step fails with all of them (the check then says which peers are still
/// missing).
fn probe_all(host: &Host, peers: &[String]) -> Result<(), StepError> {
    let exec = host.exec.as_ref();
    let results: Vec<(String, Result<(), crate::host::HostError>)> = std::thread::scope(|s| {
        let probes: Vec<_> = peers
            .iter()
            .map(|ip| {
                let cmd = gluster_cmd(&["peer", "probe", ip]);
                (ip, s.spawn(move || exec.run(&cmd).map(drop)))
            })
            .collect();
        probes
            .into_iter()
            .map(|(ip, h)| {
                let r = h.join().unwrap_or_else(|_| {
                    Err(crate::host::HostError::Command {
                        command: format!("gluster peer probe {ip}"),
                        message: "the probing thread panicked".into(),
                    })
                });
                (ip.clone(), r)
            })
            .collect()
    });
    let mut failed: Vec<crate::host::HostError> = Vec::new();
    for (ip, r) in results {
        if let Err(e) = r {
            tracing::warn!(peer = %ip, error = %e, "gluster peer probe failed");
            failed.push(e);
        }
    }
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0).into()),
        n => Err(StepError::Host(crate::host::HostError::Command {
            command: format!("gluster peer probe ({n} peers)"),
            message: failed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })),
    }
}

impl Step for Pool {
    fn name(&self) -> &'static str {
        "gluster-pool"
    }
    /// Its own chain: probing needs the peers' glusterd, not their bricks,
    /// so the pool forms while the bricks are made (on emulated nodes the
    /// brick step takes ~2 min, the probes ~1.5 min). Until the glusterd
    /// here and there answer, a round fails and backs off (5 s, 10 s, …).
    fn chain(&self) -> Chain {
        Chain::StoragePool
    }
    fn check_first(&self) -> bool {
        true
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        if storage_leader(ctx) {
            Gate::Run
        } else {
            Gate::NotHere
        }
    }

    fn preflight(&self, ctx: &Ctx, _host: &Host) -> Result<(), StepError> {
        host_root_only(ctx)
    }

    fn render(&self, _ctx: &Ctx) -> Result<Rendered, StepError> {
        Ok(Rendered::default())
    }

    /// `pool list` first: it fails at once while the glusterd here does
    /// not answer yet (its brick step starts it), and the round backs off;
    /// a `peer probe` sent then waited 84 s to say so, and the next ones,
    /// sent to peers whose glusterd was busy starting, timed out after
    /// 234 s (a `cluster_qemu` run whose act read only the store). A peer
    /// `pool list` shows connected or the store holds is not probed again.
    ///
    /// Not even `pool list` before the glusterd here listens: the CLI does
    /// not fail at once when glusterd is not there, it waits for it, and
    /// each round spent its whole bound (49-52 s on emulated nodes) for
    /// the minutes until the brick step had started glusterd. Until then
    /// the step is pending ([`StepError::NotYet`]), not failed: a failure's
    /// backoff (5, 10, 20, 40, 60 s) kept probing from starting for up to a
    /// minute after glusterd listened (the pool done 155 s after the step
    /// started, ~100 s after every brick, in a 2026-12-02 `cluster_qemu`).
    fn act(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        if let Some(why) = glusterd_not_listening(host) {
            return Err(StepError::NotYet(why));
        }
        let pool = host.exec.run(&gluster::query(&["pool", "list"]))?;
        let connected = gluster::connected_peers(&pool.stdout);
        let mut known = pool_members(host)?;
        known.extend(connected);
        probe_all(host, &peers_not_in(ctx, &known)?)
    }

    /// Done when glusterd's store holds every storage peer in the pool
    /// ([`gluster::store`]: a file read; `pool list` cost 2-3 s of CPU on
    /// an emulated node and timed out for minutes on a starved one).
    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        let missing = peers_not_in(ctx, &pool_members(host)?)?;
        if missing.is_empty() {
            Ok(Check::Done(format!(
                "trusted pool of {} storage nodes",
                storage_peers(ctx)?.len() + 1
            )))
        } else {
            Ok(Check::Pending(format!(
                "waiting for {} to be in the trusted pool",
                missing.join(", ")
            )))
        }
    }
}

/// The socket the gluster CLI talks to glusterd on (glusterd makes it when
/// it listens).
const GLUSTERD_SOCKET: &str = "var/run/glusterd.socket";

/// Why the gluster CLI cannot talk to the glusterd here yet (its service
/// is not running, or has not made its socket), or None. A file and a
/// cgroup read: no CLI call.
fn glusterd_not_listening(host: &Host) -> Option<String> {
    if !host.services.running(GLUSTERD) {
        Some(format!(
            "{GLUSTERD} is not running here yet (the brick step starts it)"
        ))
    } else if !host.files.exists(GLUSTERD_SOCKET) {
        Some(format!("glusterd has not made /{GLUSTERD_SOCKET} yet"))
    } else {
        None
    }
}

/// The storage peers (by address) that are not among `known`.
fn peers_not_in(ctx: &Ctx, known: &[String]) -> Result<Vec<String>, StepError> {
    Ok(storage_peers(ctx)?
        .iter()
        .map(Ipv4Addr::to_string)
        .filter(|ip| !known.contains(ip))
        .collect())
}

/// The peers glusterd's store holds in the pool ([`store::pool_members`]).
fn pool_members(host: &Host) -> Result<Vec<String>, StepError> {
    let dir = store::peers_dir();
    let mut texts = Vec::new();
    for name in host.files.list(&dir)? {
        if let Some(t) = host.files.read(&format!("{dir}/{name}"))? {
            texts.push(String::from_utf8_lossy(&t).into_owned());
        }
    }
    Ok(store::pool_members(&texts))
}

impl Step for Volume {
    fn name(&self) -> &'static str {
        "gluster-volume"
    }
    fn chain(&self) -> Chain {
        Chain::StorageVolume
    }
    fn check_first(&self) -> bool {
        true
    }

    /// On the storage leader, once every brick of the volume is ready and
    /// the trusted pool (its own chain, [`Pool`]) is complete. Once the
    /// volume is done, neither gates it again: not a pool check that fails
    /// (glusterd slow to answer `pool list` on a starved node), not a brick
    /// being rebuilt after a power loss (the other replicas serve the
    /// volume meanwhile). The volume step's own check watches the volume;
    /// before this, every node's mount and safety view went back to waiting
    /// with it, and the rebuilt node's mount waited out its whole heal.
    fn gate(&self, ctx: &Ctx) -> Gate {
        if !storage_leader(ctx) {
            return Gate::NotHere;
        }
        if ctx.done_on("gluster-volume", &[ctx.me]) {
            return Gate::Run;
        }
        if let Some(why) = bricks_not_ready(ctx, &layout(ctx).in_volume) {
            return Gate::Wait(why);
        }
        if ctx.done_on("gluster-pool", &[ctx.me]) {
            Gate::Run
        } else {
            Gate::Wait("the trusted pool (gluster-pool on this node)".into())
        }
    }

    /// A brick directory that exists while the volume does not belongs to
    /// another (or a deleted) volume: refused, never reused.
    fn preflight(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        host_root_only(ctx)?;
        let own = format!("{BRICK_MOUNT}/{VOLUME}/.glusterfs");
        if volume_info(host)?.is_none() && host.files.exists(&own) {
            return Err(StepError::Refused(format!(
                "brick path {BRICK_MOUNT}/{VOLUME} already holds another volume's brick (it has .glusterfs) but volume {VOLUME} does not exist; move it away to let habuild create the volume"
            )));
        }
        Ok(())
    }

    fn render(&self, _ctx: &Ctx) -> Result<Rendered, StepError> {
        Ok(Rendered::default())
    }

    /// Creates, starts or grows the volume. A brick goes into it only once
    /// its node's brick step is done: the gate lets a done volume through
    /// while a brick is rebuilt, and a volume growing with a new node must
    /// not take its brick before it is built (the check then says the
    /// volume lacks it, the step is not done, and the gate waits for it).
    fn act(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        let l = layout(ctx);
        let want = want_bricks(ctx, &l)?;
        let info = volume_info(host)?;
        let adding: Vec<NodeId> = l
            .in_volume
            .iter()
            .zip(&want)
            .filter(|(_, b)| !info.as_ref().is_some_and(|i| i.bricks.contains(b)))
            .map(|(id, _)| *id)
            .collect();
        if let Some(why) = bricks_not_ready(ctx, &adding) {
            tracing::info!(%why, "gluster volume: no brick added yet");
            return Ok(());
        }
        for c in volume_actions(info.as_ref(), &l, &want) {
            host.exec.run(&c)?;
        }
        Ok(())
    }

    /// The volume as glusterd's store says it ([`volume_info`]).
    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        volume_check(ctx, volume_info(host)?)
    }
}

/// What `volume info` (`info`, None: no such volume) says of the step.
fn volume_check(ctx: &Ctx, info: Option<gluster::VolumeInfo>) -> Result<Check, StepError> {
    let l = layout(ctx);
    let want = want_bricks(ctx, &l)?;
    let Some(info) = info else {
        return Ok(Check::Pending(format!("volume {VOLUME} not created yet")));
    };
    let missing: Vec<&String> = want.iter().filter(|b| !info.bricks.contains(b)).collect();
    let unset: Vec<String> = safety::option_actions(&info, l.in_volume.len())
        .iter()
        .map(Cmd::display)
        .collect();
    if info.status == "Started" && missing.is_empty() && !unset.is_empty() {
        return Ok(Check::Pending(format!(
            "volume {VOLUME} options not set yet: {}",
            unset.join("; ")
        )));
    }
    if info.status == "Started" && missing.is_empty() {
        let waiting = if l.waiting.is_empty() {
            String::new()
        } else {
            format!(
                "; {} storage node(s) wait for a whole replica set",
                l.waiting.len()
            )
        };
        Ok(Check::Done(format!(
                "volume {VOLUME} ({}, replica {}, {} bricks) started, quorum and ping-timeout {}s set{waiting}",
                info.kind,
                info.replica,
                info.bricks.len(),
                safety::PING_TIMEOUT_SECS
            )))
    } else {
        Ok(Check::Pending(format!(
            "volume {VOLUME} is {} with {} of {} bricks",
            info.status,
            want.len() - missing.len(),
            want.len()
        )))
    }
}

/// The volfile server for this node (itself if it holds a brick) and the backups.
fn mount_servers(ctx: &Ctx) -> Result<(Ipv4Addr, Vec<Ipv4Addr>), StepError> {
    let l = layout(ctx);
    let mut ips: Vec<Ipv4Addr> = l
        .in_volume
        .iter()
        .map(|id| ip_of(ctx, *id))
        .collect::<Result<_, _>>()?;
    if let Some(me) = ctx.my_ip() {
        if let Some(pos) = ips.iter().position(|ip| *ip == me) {
            ips.remove(pos);
            ips.insert(0, me);
        }
    }
    match ips.split_first() {
        Some((first, rest)) => Ok((*first, rest.to_vec())),
        None => Err(StepError::Render("the volume has no bricks yet".into())),
    }
}

impl Step for Mount {
    fn name(&self) -> &'static str {
        "gluster-mount"
    }
    fn chain(&self) -> Chain {
        Chain::StorageVolume
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        if !ctx.cfg.storage.enabled {
            return Gate::NotHere;
        }
        let Some(leader) = ctx.plan.storage_leader else {
            return Gate::NotHere;
        };
        if ctx.done_on("gluster-volume", &[leader]) {
            Gate::Run
        } else {
            Gate::Wait(format!(
                "volume {VOLUME} (created by the storage leader {leader:016x})"
            ))
        }
    }

    fn preflight(&self, ctx: &Ctx, _host: &Host) -> Result<(), StepError> {
        host_root_only(ctx)
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        let (server, backups) = mount_servers(ctx)?;
        let path = &ctx.cfg.storage.mount_path;
        let mut r = Rendered::default();
        r.files.push(FileSpec::new(
            format!("etc/systemd/system/{}", gluster::mount_unit_name(path)),
            0o644,
            gluster::fuse_mount_unit(server, &backups, path),
        ));
        if storage_node(ctx) {
            let summary = gluster::summary(ctx.plan, &ctx.state.members, &ctx.cfg.storage);
            let mut text = serde_json::to_string_pretty(&summary["topology"])
                .map_err(|e| StepError::Render(e.to_string()))?;
            text.push('\n');
            r.files.push(FileSpec::new(TOPOLOGY_FILE, 0o644, text));
        }
        Ok(r)
    }

    fn act(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        let path = &ctx.cfg.storage.mount_path;
        if mounted_fs(host, path).is_some_and(|fs| fs.contains("glusterfs")) {
            return Ok(());
        }
        let unit = gluster::mount_unit_name(path);
        // `start`, not `restart`: at boot systemd may be mounting it already
        // (remote-fs.target); start joins that job instead of failing it.
        host.exec.run(&Cmd::new([
            "mkdir",
            "-p",
            path.as_str(),
            "/var/log/glusterfs",
        ]))?;
        crate::host::reload_if_stale(host.exec.as_ref(), &[unit.as_str()])?;
        for c in [
            Cmd::new(["systemctl", "enable", "--no-reload", unit.as_str()]),
            Cmd::new(["systemctl", "start", unit.as_str()]),
        ] {
            host.exec.run(&c)?;
        }
        Ok(())
    }

    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        let path = &ctx.cfg.storage.mount_path;
        match mounted_fs(host, path) {
            Some(fs) if fs.contains("glusterfs") => {
                let (server, _) = mount_servers(ctx)?;
                Ok(Check::Done(format!("{server}:/{VOLUME} on {path}")))
            }
            _ => Ok(Check::Pending(format!("{path} is not mounted yet"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::with_ctx;
    use super::super::{converge, Outcome};
    use super::*;
    use crate::host::fake::Recording;
    use crate::state::{Command, StepRecord};

    /// Puts the volume that `volume info` text `cli` shows into glusterd's
    /// store on `rec`, as glusterd would have written it.
    fn store_volume(rec: &Recording, cli: &str) {
        let v = crate::gluster::parse_volume_info(cli).expect("a volume info text");
        let mut r = rec.lock();
        for (path, text) in store::files_of(VOLUME, &v) {
            r.files
                .insert(path.clone(), FileSpec::new(path, 0o600, text));
        }
    }

    /// Puts a peer file for each of `peers` into glusterd's store on `rec`
    /// (`state=3`: in the pool).
    fn store_peers(rec: &Recording, peers: &[String]) {
        let mut r = rec.lock();
        for (i, ip) in peers.iter().enumerate() {
            let path = format!("{}/peer-{i}", store::peers_dir());
            r.files.insert(
                path.clone(),
                FileSpec::new(path, 0o600, format!("uuid={i}\nstate=3\nhostname1={ip}\n")),
            );
        }
    }

    fn storage_steps() -> Vec<Box<dyn Step>> {
        vec![
            Box::new(Brick),
            Box::new(Pool),
            Box::new(Volume),
            Box::new(Mount),
        ]
    }

    #[test]
    fn the_plan_gives_bricks_to_storage_nodes_and_the_mount_to_all() {
        with_ctx(1, |ctx| {
            assert_eq!(ctx.plan.storage.len(), 3);
            let leader = ctx.plan.storage_leader.unwrap();
            let non_storage = *ctx
                .state
                .members
                .keys()
                .find(|id| !ctx.plan.storage.contains(id))
                .unwrap();
            for (id, brick) in [(leader, Gate::Run), (non_storage, Gate::NotHere)] {
                let c = Ctx { me: id, ..*ctx };
                assert_eq!(Brick.gate(&c), brick);
                assert!(matches!(Mount.gate(&c), Gate::Wait(_)));
            }
            let c = Ctx { me: leader, ..*ctx };
            // the pool forms while the bricks are made; the volume waits
            assert_eq!(Pool.gate(&c), Gate::Run);
            let Gate::Wait(why) = Volume.gate(&c) else {
                panic!("the volume waits for the bricks")
            };
            assert!(why.starts_with("bricks not ready on node"), "{why}");
        });
    }

    #[test]
    fn agents_under_another_root_refuse_storage() {
        with_ctx(1, |ctx| {
            let leader = ctx.plan.storage_leader.unwrap();
            let c = Ctx {
                me: leader,
                root: Path::new("/tmp/node1"),
                ..*ctx
            };
            let rec = Recording::default();
            let out = converge(&storage_steps(), &c, &rec.host(), &|_| false);
            let Outcome::Failed(e) = &out[0].1 else {
                panic!("{out:?}")
            };
            assert!(e.contains("--root /tmp/node1"), "{e}");
            assert!(rec.commands().iter().all(|c| !c.starts_with("vgcreate")));
        });
    }

    #[test]
    fn a_brick_from_nothing_on_the_loop_device() {
        with_ctx(1, |ctx| {
            let leader = ctx.plan.storage_leader.unwrap();
            let c = Ctx { me: leader, ..*ctx };
            let rec = Recording::default();
            rec.answer("vgs habuild_gluster", 5, "", "Volume group not found");
            rec.answer("findmnt", 1, "", "");
            rec.answer("df -B1", 0, "Avail\n99999999999\n", "");
            rec.answer(
                "readlink -f /dev/habuild/gluster-brick",
                0,
                "/dev/loop3\n",
                "",
            );
            let out = Brick.preflight(&c, &rec.host());
            assert_eq!(out, Ok(()));
            super::super::apply(&Brick.render(&c).unwrap(), &rec.host()).unwrap();
            Brick.act(&c, &rec.host()).unwrap();
            let cmds = rec.commands();
            let pos = |p: &str| {
                cmds.iter()
                    .position(|c| c.starts_with(p))
                    .unwrap_or_else(|| panic!("{p} not run: {cmds:?}"))
            };
            assert!(
                pos("/usr/lib/habuild/gluster-loop attach")
                    < pos("vgcreate --yes habuild_gluster /dev/loop3")
            );
            assert!(pos("vgcreate") < pos("mkfs.xfs -i size=512"));
            // The pool and the thin LV in one lvcreate.
            let lvcreates: Vec<&String> =
                cmds.iter().filter(|c| c.starts_with("lvcreate")).collect();
            assert_eq!(
                lvcreates,
                vec!["lvcreate --yes --extents 95%FREE --thinpool thinpool --virtualsize 10G --name brick0 habuild_gluster"]
            );
            assert!(pos("vgcreate") < pos("lvcreate") && pos("lvcreate") < pos("mkfs.xfs"));
            assert!(
                pos("mkfs.xfs")
                    < pos("systemctl enable --no-reload --now var-lib-habuild-bricks-brick0.mount")
            );
            assert!(rec
                .file("var/lib/habuild/gluster/loop.conf")
                .unwrap()
                .contains("SIZE_GIB=10"));
            assert!(rec.lock().services.contains_key(GLUSTERD));
        });
    }

    /// `volume info` and `volume status detail` of a started replica-3
    /// volume over the plan's storage nodes, `online` of them up.
    fn answers_for(ctx: &Ctx, rec: &Recording, online: &[bool]) -> Vec<String> {
        let bricks: Vec<String> = ctx
            .plan
            .storage
            .iter()
            .map(|id| brick_of(ctx.member(*id).unwrap().ip))
            .collect();
        let mut info =
            "Volume Name: habuild\nType: Replicate\nStatus: Started\nNumber of Bricks: 1 x 3 = 3\n"
                .to_string();
        let mut detail = "Status of volume: habuild\n".to_string();
        let mut split = String::new();
        for (i, b) in bricks.iter().enumerate() {
            info += &format!("Brick{}: {b}\n", i + 1);
            let on = if online[i] { "Y" } else { "N" };
            detail += &format!("Brick                : Brick {b}\nOnline               : {on}\n");
            split += &if online[i] {
                format!("Brick {b}\nStatus: Connected\nNumber of entries in split-brain: 0\n\n")
            } else {
                format!("Brick {b}\nStatus: Transport endpoint is not connected\nNumber of entries in split-brain: -\n\n")
            };
        }
        rec.answer(
            "timeout --kill-after=5 20 gluster --mode=script volume heal habuild info split-brain",
            0,
            &split,
            "",
        );
        store_volume(rec, &info);
        rec.answer(
            "timeout --kill-after=5 20 gluster --mode=script volume status habuild detail",
            0,
            &detail,
            "",
        );
        bricks
    }

    #[test]
    fn an_untrusted_brick_is_wiped_committed_and_verified_after_the_heal() {
        with_ctx(1, |ctx| {
            let me = ctx.plan.storage[1];
            let c = Ctx { me, ..*ctx };
            let marker = "var/lib/habuild/gluster/brick-untrusted";
            // Another storage node is down: the brick is not touched.
            let rec = Recording::default();
            rec.lock()
                .files
                .insert(marker.into(), FileSpec::new(marker, 0o644, ""));
            answers_for(&c, &rec, &[true, false, false]);
            rec.answer("findmnt", 1, "", "");
            Brick.act(&c, &rec.host()).unwrap();
            assert!(
                rec.commands()
                    .iter()
                    .all(|c| !c.contains("reset-brick") && !c.starts_with("mkfs")),
                "{:?}",
                rec.commands()
            );
            let Check::Pending(why) = Brick.check(&c, &rec.host()).unwrap() else {
                panic!("an untrusted brick is never done")
            };
            assert!(why.contains("untrusted after an unclean shutdown"), "{why}");

            // Both others online but an entry in split brain between them:
            // not touched either (this copy may be the one that settles it).
            let rec = Recording::default();
            rec.lock()
                .files
                .insert(marker.into(), FileSpec::new(marker, 0o644, ""));
            rec.answer(
                "timeout --kill-after=5 20 gluster --mode=script volume heal habuild info split-brain",
                0,
                "Brick a\nStatus: Connected\nNumber of entries in split-brain: 1\n",
                "",
            );
            answers_for(&c, &rec, &[true, false, true]);
            rec.answer("findmnt", 1, "", "");
            Brick.act(&c, &rec.host()).unwrap();
            assert!(
                rec.commands()
                    .iter()
                    .all(|c| !c.contains("reset-brick") && !c.starts_with("mkfs")),
                "{:?}",
                rec.commands()
            );

            // Both others online: the whole rebuild, in order, then "committed".
            let rec = Recording::default();
            rec.lock()
                .files
                .insert(marker.into(), FileSpec::new(marker, 0o644, ""));
            let bricks = answers_for(&c, &rec, &[true, false, true]);
            rec.answer("findmnt", 1, "", "");
            Brick.act(&c, &rec.host()).unwrap();
            let cmds = rec.commands();
            let pos = |p: &str| {
                cmds.iter()
                    .position(|c| c.starts_with(p))
                    .unwrap_or_else(|| panic!("{p} not run: {cmds:?}"))
            };
            let mine = &bricks[1];
            assert!(
                pos("vgchange --activate y")
                    < pos("gluster --mode=script volume reset-brick habuild")
            );
            assert!(
                pos(&format!(
                    "gluster --mode=script volume reset-brick habuild {mine} start"
                )) < pos("mkfs.xfs -f")
            );
            assert!(pos("mkfs.xfs -f") < pos("mount -t xfs"));
            assert!(pos("mount -t xfs") < pos(&format!("gluster --mode=script volume reset-brick habuild {mine} {mine} commit force")));
            let heal_kick = cmds
                .iter()
                .position(|c| c == "gluster --mode=script volume heal habuild")
                .expect("the heal kick");
            assert!(pos("gluster --mode=script volume reset-brick habuild 10") < heal_kick);
            assert!(
                pos("timeout --kill-after=5 20 gluster --mode=script volume heal habuild info split-brain")
                    < pos("gluster --mode=script volume reset-brick habuild"),
                "split brain is asked before anything is wiped"
            );
            assert_eq!(rec.file(marker).as_deref(), Some("committed\n"));
            assert!(cmds.iter().all(|c| !c.starts_with("rm -f")), "{cmds:?}");
            // Nothing of the normal path (no `volume start force` on a half-built brick).
            assert!(
                cmds.iter().all(|c| !c.contains("start habuild force")),
                "{cmds:?}"
            );

            // Next round: committed, mounted, healing, then healed.
            let rec = Recording::default();
            rec.lock()
                .files
                .insert(marker.into(), FileSpec::new(marker, 0o644, "committed\n"));
            answers_for(&c, &rec, &[true, true, true]);
            rec.answer("findmnt", 0, "xfs\n", "");
            let counts = |n: [u64; 3]| -> String {
                bricks
                    .iter()
                    .zip(n)
                    .map(|(b, n)| format!("Brick {b}\nNumber of entries: {n}\n\n"))
                    .collect()
            };
            rec.answer(
                "timeout --kill-after=5 20 gluster --mode=script volume heal habuild statistics heal-count",
                0,
                &counts([4, 0, 4]),
                "",
            );
            Brick.act(&c, &rec.host()).unwrap();
            assert!(rec
                .commands()
                .iter()
                .all(|c| !c.starts_with("rm -f") && !c.starts_with("mkfs")));
            rec.lock()
                .answers
                .retain(|(k, _)| !k.contains("heal-count"));
            rec.answer(
                "timeout --kill-after=5 20 gluster --mode=script volume heal habuild statistics heal-count",
                0,
                &counts([0, 0, 0]),
                "",
            );
            Brick.act(&c, &rec.host()).unwrap();
            assert!(
                rec.commands()
                    .iter()
                    .any(|c| c == "rm -f /var/lib/habuild/gluster/brick-untrusted"),
                "{:?}",
                rec.commands()
            );
        });
    }

    /// Records `step` done on `node` in `state`.
    fn record_done(state: &mut crate::state::ClusterState, node: NodeId, step: &str) {
        state.apply(Command::RecordStep(StepRecord {
            node,
            step: step.into(),
            status: StepStatus::Done,
            detail: String::new(),
            attempts: 0,
        }));
    }

    /// The test state with the storage leader's `gluster-volume` step done
    /// (what makes the brick step report the volume's safety).
    fn volume_done_state() -> crate::state::ClusterState {
        let mut state = super::super::testutil::state();
        let leader = state.plan.as_ref().unwrap().storage_leader.unwrap();
        record_done(&mut state, leader, "gluster-volume");
        state
    }

    /// The test state with every storage node's `gluster-brick` step done
    /// (what lets the leader's volume step run once the pool is complete).
    fn bricks_done_state() -> crate::state::ClusterState {
        let mut state = super::super::testutil::state();
        for id in state.plan.clone().unwrap().storage {
            record_done(&mut state, id, "gluster-brick");
        }
        state
    }

    /// The glusterd service running, with its socket made.
    fn glusterd_listening(rec: &Recording) {
        crate::host::Services::ensure(rec, &glusterd_service()).unwrap();
        rec.lock().files.insert(
            GLUSTERD_SOCKET.into(),
            FileSpec::new(GLUSTERD_SOCKET, 0o755, ""),
        );
    }

    /// [`bricks_done_state`] with the leader's trusted pool complete too
    /// (what opens the volume step's gate).
    fn pool_done_state() -> crate::state::ClusterState {
        let mut state = bricks_done_state();
        let leader = state.plan.as_ref().unwrap().storage_leader.unwrap();
        record_done(&mut state, leader, "gluster-pool");
        state
    }

    /// What the brick step's check finds on a serving brick: XFS mounted,
    /// dm_thin_pool loaded, glusterd running.
    fn brick_serving(rec: &Recording) {
        rec.answer("findmnt", 0, "xfs\n", "");
        rec.lock().files.insert(
            "sys/module/dm_thin_pool".into(),
            FileSpec::new("sys/module/dm_thin_pool", 0o644, ""),
        );
        rec.lock()
            .services
            .insert(GLUSTERD.into(), glusterd_service());
    }

    /// `f` on a storage node that is not the storage leader, in
    /// [`volume_done_state`] (with that state's plan).
    fn on_a_storage_peer(f: impl FnOnce(&Ctx, &crate::state::Plan)) {
        let state = volume_done_state();
        let plan = state.plan.clone().unwrap();
        with_ctx(1, |ctx| {
            let c = Ctx {
                me: plan.storage[1],
                state: &state,
                ..*ctx
            };
            f(&c, &plan)
        });
    }

    #[test]
    fn the_brick_step_reports_the_volumes_safety_asked_at_most_every_30_s() {
        on_a_storage_peer(|c, _| {
            let rec = Recording::default();
            answers_for(c, &rec, &[true, false, true]);
            brick_serving(&rec);
            let Check::Done(d) = Brick.check(c, &rec.host()).unwrap() else {
                panic!("done")
            };
            let h = health::Health::from_detail(&d).unwrap();
            assert_eq!(h.brick, health::SERVING);
            assert_eq!(h.offline.as_ref().map(|o| o.len()), Some(1), "{d}");
            assert!(!h.safe());
            let asked = |rec: &Recording| {
                rec.commands()
                    .iter()
                    .filter(|c| c.contains("volume status"))
                    .count()
            };
            assert_eq!(asked(&rec), 1);
            let Check::Done(again) = Brick.check(c, &rec.host()).unwrap() else {
                panic!("done")
            };
            assert_eq!(again, d);
            assert_eq!(asked(&rec), 1, "the kept view is reused");
        });
    }

    #[test]
    fn a_busy_volume_lock_is_asked_again_instead_of_making_the_view_unknown() {
        on_a_storage_peer(|c, _| {
            let rec = Recording::default();
            rec.answer_once(
                "timeout --kill-after=5 20 gluster --mode=script volume status",
                1,
                "",
                "Another transaction is in progress for habuild. Please try again after some time.",
            );
            answers_for(c, &rec, &[true, true, true]);
            brick_serving(&rec);
            let Check::Done(d) = Brick.check(c, &rec.host()).unwrap() else {
                panic!("done")
            };
            let h = health::Health::from_detail(&d).unwrap();
            assert_eq!(h.offline, Some(vec![]), "{d}");
            let asked = rec
                .commands()
                .iter()
                .filter(|c| c.contains("volume status"))
                .count();
            assert_eq!(asked, 2, "asked once more after the busy answer");
        });
    }

    #[test]
    fn a_silent_volume_status_names_the_bricks_of_disconnected_peers_or_says_unknown() {
        on_a_storage_peer(|c, plan| {
            let dead = c.member(plan.storage[2]).unwrap().ip;
            let view = |pool: &str| {
                let rec = Recording::default();
                // glusterd's cluster-wide lock waits on the dead peer
                rec.answer(
                    "timeout --kill-after=5 20 gluster --mode=script volume status",
                    1,
                    "",
                    &format!("Locking failed on {dead}. Please check log file for details."),
                );
                rec.answer(
                    "timeout --kill-after=5 20 gluster --mode=script pool list",
                    0,
                    pool,
                    "",
                );
                answers_for(c, &rec, &[true, true, true]);
                brick_serving(&rec);
                let Check::Done(d) = Brick.check(c, &rec.host()).unwrap() else {
                    panic!("done")
                };
                health::Health::from_detail(&d).unwrap()
            };
            let h = view(&format!(
                "UUID\tHostname\tState\n1a\t{dead}\tDisconnected \n2b\tlocalhost\tConnected \n"
            ));
            assert_eq!(h.offline, Some(vec![brick_of(dead)]));
            assert!(!h.safe());
            // every peer connected as far as this glusterd knows: unknown
            let h = view("UUID\tHostname\tState\n2b\tlocalhost\tConnected \n");
            assert_eq!(h.offline, None);
            assert!(!h.safe());
        });
    }

    #[test]
    fn a_hung_glusterd_makes_the_view_unknown_after_one_bounded_query_and_asks_no_more() {
        on_a_storage_peer(|c, _| {
            let check = |rec: &Recording| {
                let Check::Done(d) = Brick.check(c, &rec.host()).unwrap() else {
                    panic!("done")
                };
                (health::Health::from_detail(&d).unwrap(), d)
            };
            let queries = |rec: &Recording| -> Vec<String> {
                rec.commands()
                    .into_iter()
                    .filter(|c| c.contains("gluster"))
                    .collect()
            };
            // `volume status` times out (coreutils timeout: exit 124): the
            // heal counts are not asked (same lock), all unknown but what
            // `pool list` tells.
            let rec = Recording::default();
            rec.answer(
                "timeout --kill-after=5 20 gluster --mode=script volume status",
                124,
                "",
                "",
            );
            rec.answer(
                "timeout --kill-after=5 20 gluster --mode=script pool list",
                0,
                "UUID\tHostname\tState\n2b\tlocalhost\tConnected \n",
                "",
            );
            answers_for(c, &rec, &[true, true, true]);
            brick_serving(&rec);
            let (h, _) = check(&rec);
            assert_eq!(
                (
                    h.brick.as_str(),
                    h.offline.clone(),
                    h.heal_pending,
                    h.split_brain
                ),
                (health::SERVING, None, None, None)
            );
            assert!(!h.safe());
            assert_eq!(
                queries(&rec),
                vec![
                    "timeout --kill-after=5 20 gluster --mode=script volume status habuild detail",
                    "timeout --kill-after=5 20 gluster --mode=script pool list",
                ]
            );
        });
    }

    #[test]
    fn an_untrusted_brick_is_not_wiped_while_volume_status_times_out() {
        with_ctx(1, |ctx| {
            let me = ctx.plan.storage[1];
            let c = Ctx { me, ..*ctx };
            let marker = "var/lib/habuild/gluster/brick-untrusted";
            let rec = Recording::default();
            rec.lock()
                .files
                .insert(marker.into(), FileSpec::new(marker, 0o644, ""));
            rec.answer(
                "timeout --kill-after=5 20 gluster --mode=script volume status",
                124,
                "",
                "",
            );
            answers_for(&c, &rec, &[true, true, true]);
            rec.answer("findmnt", 1, "", "");
            Brick.act(&c, &rec.host()).unwrap();
            let cmds = rec.commands();
            assert!(
                cmds.iter()
                    .all(|c| !c.contains("reset-brick") && !c.starts_with("mkfs")),
                "{cmds:?}"
            );
            assert!(cmds.contains(
                &"timeout --kill-after=5 20 gluster --mode=script volume status habuild detail"
                    .to_string()
            ));
        });
    }

    #[test]
    fn existing_volumes_get_the_safety_options_on_the_next_round() {
        with_ctx(1, |ctx| {
            let leader = ctx.plan.storage_leader.unwrap();
            let c = Ctx { me: leader, ..*ctx };
            let rec = Recording::default();
            answers_for(&c, &rec, &[true, true, true]);
            let Check::Pending(why) = Volume.check(&c, &rec.host()).unwrap() else {
                panic!("options missing: not done")
            };
            assert!(
                why.contains("volume set habuild cluster.quorum-type auto"),
                "{why}"
            );
            Volume.act(&c, &rec.host()).unwrap();
            let sets: Vec<String> = rec
                .commands()
                .into_iter()
                .filter(|c| c.contains("volume set"))
                .collect();
            // Every volume option in one `volume set`, then the global ratio.
            assert_eq!(
                sets,
                vec![
                    "gluster --mode=script volume set habuild cluster.quorum-type auto cluster.server-quorum-type server network.ping-timeout 3 cluster.ensure-durability on",
                    "gluster --mode=script volume set all cluster.server-quorum-ratio 51%",
                ],
                "{sets:?}"
            );
        });
    }

    #[test]
    fn no_room_for_the_backing_file_or_a_disk_with_data_is_refused() {
        with_ctx(1, |ctx| {
            let leader = ctx.plan.storage_leader.unwrap();
            let c = Ctx { me: leader, ..*ctx };
            let rec = Recording::default();
            rec.answer("vgs", 5, "", "");
            rec.answer("df -B1", 0, "Avail\n1073741824\n", "");
            let e = Brick.preflight(&c, &rec.host()).unwrap_err().to_string();
            assert!(
                e.starts_with("not enough free space for the Gluster backing file /var/lib/habuild/gluster/brick.img: storage.brick_file_size_gib = 10 needs 10 GiB, 1.0 GiB free"),
                "{e}"
            );

            let mut plan = ctx.plan.clone();
            plan.storage_devices.insert(leader, "/dev/vdb".into());
            let c = Ctx {
                me: leader,
                plan: &plan,
                ..*ctx
            };
            let rec = Recording::default();
            rec.answer("vgs", 5, "", "");
            rec.answer(
                "lsblk",
                0,
                r#"{"blockdevices":[{"name":"vdb","path":"/dev/vdb","type":"disk","size":1073741824,"fstype":"ext4","ro":false,"mountpoint":null,"pttype":null}]}"#,
                "",
            );
            let e = Brick.preflight(&c, &rec.host()).unwrap_err().to_string();
            assert_eq!(
                e,
                "storage device /dev/vdb: holds a ext4 signature; it is never touched"
            );
        });
    }

    #[test]
    fn the_pool_is_done_when_glusterds_store_holds_every_peer_without_asking_the_cli() {
        let state = bricks_done_state();
        let plan = state.plan.clone().unwrap();
        with_ctx(1, |ctx| {
            let c = Ctx {
                me: plan.storage_leader.unwrap(),
                state: &state,
                ..*ctx
            };
            let peers: Vec<String> = plan
                .storage
                .iter()
                .filter(|id| **id != c.me)
                .map(|id| c.member(*id).unwrap().ip.to_string())
                .collect();
            let rec = Recording::default();
            // one peer in the pool, the other probed but not in it yet
            store_peers(&rec, &peers[..1]);
            let half = format!("{}/peer-x", store::peers_dir());
            rec.lock().files.insert(
                half.clone(),
                FileSpec::new(
                    half,
                    0o600,
                    format!("uuid=x\nstate=1\nhostname1={}\n", peers[1]),
                ),
            );
            let Check::Pending(p) = Pool.check(&c, &rec.host()).unwrap() else {
                panic!("a peer that is not in the pool yet is pending")
            };
            assert_eq!(
                p,
                format!("waiting for {} to be in the trusted pool", peers[1])
            );
            assert!(rec.commands().is_empty(), "the check reads the store only");
            // the glusterd here is not running: not even `pool list`, and
            // not a failure (no backoff: the brick step is starting it)
            let err = Pool.act(&c, &rec.host()).unwrap_err();
            assert!(
                matches!(&err, StepError::NotYet(t) if t.contains("habuild-glusterd is not running here")),
                "{err:?}"
            );
            assert!(rec.commands().is_empty(), "{:?}", rec.commands());
            glusterd_listening(&rec);
            // the glusterd here does not answer yet: nothing is probed
            rec.answer(
                "timeout --kill-after=5 20 gluster --mode=script pool list",
                1,
                "",
                "Connection failed. Please check if gluster daemon is operational.",
            );
            assert!(Pool.act(&c, &rec.host()).is_err());
            assert!(
                rec.commands().iter().all(|c| !c.contains("peer probe")),
                "{:?}",
                rec.commands()
            );
            // it answers: only the missing peer is probed
            let rec2 = Recording::default();
            rec2.lock().files = rec.lock().files.clone();
            glusterd_listening(&rec2);
            rec2.answer(
                "timeout --kill-after=5 20 gluster --mode=script pool list",
                0,
                "UUID\tHostname\tState\n2b\tlocalhost\tConnected \n",
                "",
            );
            Pool.act(&c, &rec2.host()).unwrap();
            assert_eq!(
                rec2.commands(),
                vec![
                    "timeout --kill-after=5 20 gluster --mode=script pool list".to_string(),
                    format!("gluster --mode=script peer probe {}", peers[1])
                ]
            );
            store_peers(&rec2, &peers);
            let Check::Done(d) = Pool.check(&c, &rec2.host()).unwrap() else {
                panic!("not done")
            };
            assert_eq!(d, "trusted pool of 3 storage nodes");
        });
    }

    #[test]
    fn a_done_volume_is_not_gated_again_by_a_failing_pool_check() {
        let mut state = bricks_done_state();
        let plan = state.plan.clone().unwrap();
        let leader = plan.storage_leader.unwrap();
        let fail = |state: &mut crate::state::ClusterState, step: &str| {
            state.apply(Command::RecordStep(StepRecord {
                node: leader,
                step: step.into(),
                status: StepStatus::Failed,
                detail: "glusterd did not answer within 20 s".into(),
                attempts: 2,
            }));
        };
        fail(&mut state, "gluster-pool");
        with_ctx(1, |ctx| {
            let c = Ctx {
                me: leader,
                state: &state,
                ..*ctx
            };
            assert!(
                matches!(Volume.gate(&c), Gate::Wait(_)),
                "no volume yet: it waits for the pool"
            );
        });
        record_done(&mut state, leader, "gluster-volume");
        fail(&mut state, "gluster-pool");
        // a node back from a power loss rebuilds its brick (pending for as
        // long as the heal): the volume, served by the other replicas,
        // stays checked and every node's mount stays runnable
        let victim = *plan.storage.iter().find(|id| **id != leader).unwrap();
        state.apply(Command::RecordStep(StepRecord {
            node: victim,
            step: "gluster-brick".into(),
            status: StepStatus::Running,
            detail: "brick rebuilt after an unclean shutdown: healing from the other replicas"
                .into(),
            attempts: 0,
        }));
        with_ctx(1, |ctx| {
            let c = Ctx {
                me: leader,
                state: &state,
                ..*ctx
            };
            assert!(matches!(Volume.gate(&c), Gate::Run));
            assert_eq!(Mount.gate(&Ctx { me: victim, ..c }), Gate::Run);
        });
    }

    #[test]
    fn a_brick_goes_into_the_volume_only_once_its_node_built_it() {
        let mut state = bricks_done_state();
        let plan = state.plan.clone().unwrap();
        let leader = plan.storage_leader.unwrap();
        record_done(&mut state, leader, "gluster-pool");
        record_done(&mut state, leader, "gluster-volume");
        let other = *plan.storage.iter().find(|id| **id != leader).unwrap();
        state.apply(Command::RecordStep(StepRecord {
            node: other,
            step: "gluster-brick".into(),
            status: StepStatus::Running,
            detail: "/var/lib/habuild/bricks/brick0 is not mounted".into(),
            attempts: 0,
        }));
        with_ctx(1, |ctx| {
            let c = Ctx {
                me: leader,
                state: &state,
                ..*ctx
            };
            // the volume lost track of that node's brick (or never had it)
            let l = layout(&c);
            let want = want_bricks(&c, &l).unwrap();
            let other_brick = brick_of(c.member(other).unwrap().ip);
            let kept: Vec<String> = want
                .iter()
                .filter(|b| **b != other_brick)
                .cloned()
                .collect();
            let info = format!(
                "Volume Name: habuild\nType: Replicate\nVolume ID: x\nStatus: Started\nNumber of Bricks: 1 x 3 = 3\nBricks:\n{}\n",
                kept.iter()
                    .enumerate()
                    .map(|(i, b)| format!("Brick{}: {b}", i + 1))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let rec = Recording::default();
            store_volume(&rec, &info);
            Volume.act(&c, &rec.host()).unwrap();
            let changes: Vec<String> = rec
                .commands()
                .into_iter()
                .filter(|c| c.contains("add-brick") || c.contains("volume create"))
                .collect();
            assert!(changes.is_empty(), "{changes:?}");
            // once it is built, it goes in
            let mut built = state.clone();
            record_done(&mut built, other, "gluster-brick");
            let c = Ctx { state: &built, ..c };
            let rec = Recording::default();
            store_volume(&rec, &info);
            Volume.act(&c, &rec.host()).unwrap();
            assert!(
                rec.commands()
                    .iter()
                    .any(|c| c.contains("add-brick") && c.contains(&other_brick)),
                "{:?}",
                rec.commands()
            );
        });
    }

    #[test]
    fn the_volume_is_checked_from_glusterds_store_without_asking_the_cli() {
        let state = bricks_done_state();
        let plan = state.plan.clone().unwrap();
        with_ctx(1, |ctx| {
            let c = Ctx {
                me: plan.storage_leader.unwrap(),
                state: &state,
                ..*ctx
            };
            let rec = Recording::default();
            let Check::Pending(p) = Volume.check(&c, &rec.host()).unwrap() else {
                panic!("a missing volume is pending")
            };
            assert_eq!(p, "volume habuild not created yet");
            let mut info =
                "Volume Name: habuild\nType: Replicate\nStatus: Started\nNumber of Bricks: 1 x 3 = 3\n"
                    .to_string();
            for (i, id) in plan.storage.iter().enumerate() {
                info += &format!("Brick{}: {}\n", i + 1, brick_of(c.member(*id).unwrap().ip));
            }
            store_volume(&rec, &info);
            let Check::Pending(p) = Volume.check(&c, &rec.host()).unwrap() else {
                panic!("options not set: pending")
            };
            assert!(p.starts_with("volume habuild options not set yet"), "{p}");
            info += "Options Reconfigured:\n";
            for (k, v) in safety::volume_options(plan.storage.len()) {
                info += &format!("{k}: {v}\n");
            }
            store_volume(&rec, &info);
            let Check::Done(d) = Volume.check(&c, &rec.host()).unwrap() else {
                panic!("not done")
            };
            assert!(d.contains("started, quorum and ping-timeout"), "{d}");
            assert!(rec.commands().is_empty(), "{:?}", rec.commands());
        });
    }

    #[test]
    fn the_leader_probes_creates_and_starts_once_bricks_are_ready() {
        let state = bricks_done_state();
        let plan = state.plan.clone().unwrap();
        with_ctx(1, |ctx| {
            let leader = plan.storage_leader.unwrap();
            let c = Ctx {
                me: leader,
                state: &state,
                ..*ctx
            };
            assert_eq!(Pool.gate(&c), Gate::Run);
            // the volume waits for the pool (its own chain) to be complete
            let Gate::Wait(why) = Volume.gate(&c) else {
                panic!("the volume runs before the pool is complete")
            };
            assert!(why.contains("trusted pool"), "{why}");
            let rec = Recording::default();
            glusterd_listening(&rec);
            rec.answer(
                "timeout --kill-after=5 20 gluster --mode=script pool list",
                0,
                "UUID Hostname State\n",
                "",
            );
            Pool.act(&c, &rec.host()).unwrap();
            let probes: Vec<String> = rec
                .commands()
                .into_iter()
                .filter(|c| c.contains("peer probe"))
                .collect();
            assert_eq!(probes.len(), 2, "{probes:?}");
            let mut want: Vec<String> = plan
                .storage
                .iter()
                .filter(|id| **id != leader)
                .map(|id| {
                    format!(
                        "gluster --mode=script peer probe {}",
                        c.member(*id).unwrap().ip
                    )
                })
                .collect();
            let mut probes = probes;
            probes.sort();
            want.sort();
            assert_eq!(probes, want);

            let rec = Recording::default();
            Volume.act(&c, &rec.host()).unwrap();
            let cmds = rec.commands();
            assert!(cmds
                .iter()
                .any(|c| c.starts_with("gluster --mode=script volume create habuild replica 3 ")));
            assert!(cmds
                .last()
                .is_some_and(|c| c == "gluster --mode=script volume start habuild"));
        });
    }

    /// An [`Exec`](crate::host::Exec) over the recording fake whose `peer
    /// probe`s each wait (up to 5 s) until `expect` of them are running at
    /// once, and fail for the addresses in `fail`.
    struct ProbeGate {
        rec: Recording,
        expect: usize,
        fail: Vec<String>,
        running: std::sync::Mutex<(usize, usize)>,
        cv: std::sync::Condvar,
    }

    impl crate::host::Exec for ProbeGate {
        fn output(&self, cmd: &Cmd) -> Result<crate::host::Output, crate::host::HostError> {
            let line = cmd.display();
            if line.contains("peer probe") {
                let mut g = self.running.lock().unwrap();
                g.0 += 1;
                g.1 = g.1.max(g.0);
                self.cv.notify_all();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while g.1 < self.expect && std::time::Instant::now() < deadline {
                    g = self
                        .cv
                        .wait_timeout(g, std::time::Duration::from_millis(50))
                        .unwrap()
                        .0;
                }
                g.0 -= 1;
                drop(g);
                if self.fail.iter().any(|ip| line.ends_with(ip.as_str())) {
                    self.rec.output(cmd)?;
                    return Ok(crate::host::Output {
                        code: 1,
                        stdout: String::new(),
                        stderr: format!("peer probe: failed: Probe returned with Transport endpoint is not connected ({line})"),
                    });
                }
            }
            self.rec.output(cmd)
        }
    }

    #[test]
    fn the_leader_probes_every_missing_peer_at_once_and_reports_each_failure() {
        let state = bricks_done_state();
        let plan = state.plan.clone().unwrap();
        with_ctx(1, |ctx| {
            let leader = plan.storage_leader.unwrap();
            let c = Ctx {
                me: leader,
                state: &state,
                ..*ctx
            };
            let peers: Vec<String> = plan
                .storage
                .iter()
                .filter(|id| **id != leader)
                .map(|id| c.member(*id).unwrap().ip.to_string())
                .collect();
            assert_eq!(peers.len(), 2);
            let run = |fail: Vec<String>| {
                let rec = Recording::default();
                glusterd_listening(&rec);
                rec.answer(
                    "timeout --kill-after=5 20 gluster --mode=script pool list",
                    0,
                    "UUID Hostname State\n",
                    "",
                );
                let gate = std::sync::Arc::new(ProbeGate {
                    rec: rec.clone(),
                    expect: 2,
                    fail,
                    running: Default::default(),
                    cv: Default::default(),
                });
                struct Shared(std::sync::Arc<ProbeGate>);
                impl crate::host::Exec for Shared {
                    fn output(
                        &self,
                        cmd: &Cmd,
                    ) -> Result<crate::host::Output, crate::host::HostError> {
                        self.0.output(cmd)
                    }
                }
                let host = Host {
                    exec: Box::new(Shared(gate.clone())),
                    ..rec.host()
                };
                let out = Pool.act(&c, &host);
                let most = gate.running.lock().unwrap().1;
                (rec, out, most)
            };
            let (rec, out, most) = run(Vec::new());
            assert_eq!(out, Ok(()));
            assert_eq!(most, 2, "both probes ran at the same time");
            let cmds = rec.commands();
            assert_eq!(
                cmds[0],
                "timeout --kill-after=5 20 gluster --mode=script pool list"
            );
            let mut probes: Vec<String> = cmds[1..].to_vec();
            probes.sort();
            let mut want: Vec<String> = peers
                .iter()
                .map(|ip| format!("gluster --mode=script peer probe {ip}"))
                .collect();
            want.sort();
            assert_eq!(probes, want);

            // One fails: the other still runs; the step fails naming it.
            let (rec, out, _) = run(vec![peers[0].clone()]);
            let e = out.unwrap_err().to_string();
            assert!(e.contains(&format!("peer probe {}", peers[0])), "{e}");
            assert!(!e.contains(&format!("peer probe {}", peers[1])), "{e}");
            assert_eq!(rec.commands().len(), 3);
            // Both fail: both errors are in the step's error.
            let (_, out, _) = run(peers.clone());
            let e = out.unwrap_err().to_string();
            assert!(
                e.starts_with("`gluster peer probe (2 peers)` failed"),
                "{e}"
            );
            for ip in &peers {
                assert!(e.contains(&format!("peer probe {ip}`")), "{e}");
            }
        });
    }

    #[test]
    fn a_brick_path_of_another_volume_is_refused_and_nothing_is_created() {
        let state = pool_done_state();
        with_ctx(1, |ctx| {
            let leader = ctx.plan.storage_leader.unwrap();
            let c = Ctx {
                me: leader,
                state: &state,
                ..*ctx
            };
            assert_eq!(Volume.gate(&c), Gate::Run);
            let rec = Recording::default();
            rec.lock().files.insert(
                "var/lib/habuild/bricks/brick0/habuild/.glusterfs".into(),
                FileSpec::new(
                    "var/lib/habuild/bricks/brick0/habuild/.glusterfs",
                    0o755,
                    "",
                ),
            );
            let out = converge(
                &[Box::new(Volume) as Box<dyn Step>],
                &c,
                &rec.host(),
                &|_| false,
            );
            let Outcome::Failed(e) = &out[0].1 else {
                panic!("{out:?}")
            };
            assert!(e.contains("already holds another volume's brick"), "{e}");
            assert!(
                rec.commands().iter().all(|c| !c.contains("volume create")),
                "{:?}",
                rec.commands()
            );
        });
    }

    #[test]
    fn every_node_mounts_with_backup_servers_and_storage_nodes_get_the_topology() {
        let mut state = super::super::testutil::state();
        let plan = state.plan.clone().unwrap();
        let leader = plan.storage_leader.unwrap();
        state.apply(Command::RecordStep(StepRecord {
            node: leader,
            step: "gluster-volume".into(),
            status: StepStatus::Done,
            detail: String::new(),
            attempts: 0,
        }));
        with_ctx(1, |ctx| {
            for me in state.members.keys().copied() {
                let c = Ctx {
                    me,
                    state: &state,
                    ..*ctx
                };
                assert_eq!(Mount.gate(&c), Gate::Run);
                let r = Mount.render(&c).unwrap();
                let unit = String::from_utf8(r.files[0].contents.clone()).unwrap();
                assert_eq!(r.files[0].path, "etc/systemd/system/mnt-gluster.mount");
                assert!(unit.contains("backup-volfile-servers="), "{unit}");
                let my_ip = c.my_ip().unwrap().to_string();
                if plan.storage.contains(&me) {
                    assert!(unit.contains(&format!("What={my_ip}:/habuild")), "{unit}");
                    let topo: serde_json::Value =
                        serde_json::from_slice(&r.files[1].contents).unwrap();
                    assert_eq!(topo["clusters"][0]["nodes"].as_array().unwrap().len(), 3);
                } else {
                    assert_eq!(r.files.len(), 1, "topology only on storage nodes");
                }
            }
        });
    }
}
