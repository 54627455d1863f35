//! The gluster CLI's read-only queries, bounded in time ([`query`]), and
//! the parsing of their answers (`volume info`, `pool list`,
//! `volume status VOL detail`, `volume heal VOL statistics heal-count`).

use std::collections::BTreeMap;

use crate::host::Cmd;

/// How long a read-only gluster query may take. While a peer is losing
/// power, glusterd on the survivors holds `volume status` (and `heal`)
/// on its cluster-wide lock; the CLI waits up to its own 120 s (600 s for
/// `heal`), which held the storage chain's check and the safety view that
/// long. Bounded, the view says "unknown" after this many seconds.
pub const QUERY_TIMEOUT_SECS: u32 = 20;
/// [`QUERY_TIMEOUT_SECS`] on an emulated CPU ([`crate::facts::emulated_cpu`]):
/// there three storage nodes' glusterd answered a local `pool list` in
/// 20-27 s for minutes on end (2 s on an idle emulated node), so a 20 s
/// bound turned slow answers into failures and the pool and volume steps
/// flipped between done and failed, holding every mount and safety view
/// back.
pub const QUERY_TIMEOUT_EMULATED_SECS: u32 = 45;

static QUERY_TIMEOUT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Sets the bound of every [`query`] for this process (once, at start-up:
/// [`QUERY_TIMEOUT_EMULATED_SECS`] on an emulated CPU); the first call wins.
pub fn set_query_timeout(secs: u32) {
    let _ = QUERY_TIMEOUT.set(secs);
}

/// The bound of a [`query`]: [`QUERY_TIMEOUT_SECS`] unless
/// [`set_query_timeout`] said otherwise.
pub fn query_timeout() -> u32 {
    QUERY_TIMEOUT.get().copied().unwrap_or(QUERY_TIMEOUT_SECS)
}

/// The exit codes of coreutils `timeout` when it stopped the command:
/// 124 (SIGTERM after [`QUERY_TIMEOUT_SECS`]) or 137 (SIGKILL 5 s later).
pub fn timed_out(code: i32) -> bool {
    code == 124 || code == 137
}

/// A read-only `gluster --mode=script ARGS` (`volume info`, `volume
/// status`, `volume heal … info|statistics`, `pool list`) under coreutils
/// `timeout`: `timeout --kill-after=5 20 gluster --mode=script ARGS` (20:
/// [`query_timeout`]).
/// Not gluster's own `--timeout=N`: in glusterfs 10 it sets only
/// `cli_default_conn_timeout`, while `heal` requests wait the fixed
/// `cli_ten_minutes_timeout` and `heal … info` runs `glfsheal`, which has
/// no timeout at all (cli/src/cli-cmd.c `cli_cmd_submit`,
/// cli-cmd-volume.c `cli_launch_glfs_heal`); `timeout` stops the CLI and
/// its children alike. Commands that change the cluster (create, start,
/// set, probe, reset-brick) are not bounded: stopping the CLI does not
/// stop glusterd's transaction, and their caller needs its real outcome.
pub fn query(args: &[&str]) -> Cmd {
    let secs = query_timeout().to_string();
    let mut argv = vec![
        "timeout",
        "--kill-after=5",
        secs.as_str(),
        "gluster",
        "--mode=script",
    ];
    argv.extend_from_slice(args);
    Cmd::new(argv)
}

/// Whether a failed query's output says glusterd's volume lock was held by
/// another transaction ("Another transaction is in progress for VOL.
/// Please try again after some time."): `volume status` and `heal` take
/// that lock, and every storage node's safety view, the rebuild and the
/// leader's own volume commands ask for it; such an answer says nothing
/// about the volume, so it is asked again ([`LOCK_RETRIES`]). Not "Locking
/// failed on HOST": that is also what a peer that lost power gives, and
/// asking again would only wait on it again.
pub fn lock_busy(output: &str) -> bool {
    output.contains("Another transaction is in progress")
}

/// How many times a query that found the volume lock busy is asked again
/// (after [`LOCK_RETRY_SECS`] each time) before its answer is taken as it is.
pub const LOCK_RETRIES: u32 = 3;
/// The pause before asking again after a busy lock.
pub const LOCK_RETRY_SECS: u64 = 2;

/// What `gluster volume info VOLUME` says of the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: String,
    pub kind: String,
    pub status: String,
    /// Bricks per replica set (1 for a plain distributed volume).
    pub replica: u32,
    pub bricks: Vec<String>,
    /// The "Options Reconfigured" section: options set on the volume.
    pub options: BTreeMap<String, String>,
}

impl Default for VolumeInfo {
    /// Nothing known yet: no bricks, no options, replica 1.
    fn default() -> Self {
        VolumeInfo {
            id: String::new(),
            kind: String::new(),
            status: String::new(),
            replica: 1,
            bricks: Vec::new(),
            options: BTreeMap::new(),
        }
    }
}

/// Parses `gluster volume info NAME` (None when it names no volume).
pub fn parse_volume_info(text: &str) -> Option<VolumeInfo> {
    let mut v = VolumeInfo::default();
    let mut named = false;
    let mut in_options = false;
    for line in text.lines() {
        if line.trim() == "Options Reconfigured:" {
            in_options = true;
            continue;
        }
        if in_options {
            match line.split_once(':') {
                Some((k, val)) if !k.trim().is_empty() && !k.contains(' ') => {
                    v.options.insert(k.trim().into(), val.trim().into());
                    continue;
                }
                _ => in_options = false,
            }
        }
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

/// Hostnames/addresses `gluster pool list` shows as disconnected.
pub fn disconnected_peers(pool_list: &str) -> Vec<String> {
    pool_list
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "Disconnected").then(|| f[1].to_string())
        })
        .collect()
}

/// Which bricks `gluster volume status VOL detail` reports, and whether
/// each is online ("Online : Y"). Bricks of peers that are not connected
/// are missing from that output: callers treat "absent" as offline.
pub fn parse_status_detail(text: &str) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let Some((k, val)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "Brick" => {
                current = val
                    .trim()
                    .strip_prefix("Brick ")
                    .map(|b| b.trim().to_string())
            }
            "Online" => {
                if let Some(b) = current.take() {
                    out.insert(b, val.trim() == "Y");
                }
            }
            _ => {}
        }
    }
    out
}

/// Pending heal entries per brick from `gluster volume heal VOL statistics
/// heal-count` (each node's self-heal daemon counts its brick's index);
/// `None` for a brick it printed no count for (brick or shd down).
pub fn parse_heal_count(text: &str) -> BTreeMap<String, Option<u64>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(b) = line.strip_prefix("Brick ") {
            current = Some(b.trim().to_string());
            out.insert(b.trim().to_string(), None);
        } else if let Some(n) = line.strip_prefix("Number of entries:") {
            if let Some(b) = &current {
                out.insert(b.clone(), n.trim().parse().ok());
            }
        }
    }
    out
}
