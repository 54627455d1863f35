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

/// The exit codes of coreutils `timeout` when it stopped the command:
/// 124 (SIGTERM after [`QUERY_TIMEOUT_SECS`]) or 137 (SIGKILL 5 s later).
pub fn timed_out(code: i32) -> bool {
    code == 124 || code == 137
}

/// A read-only `gluster --mode=script ARGS` (`volume info`, `volume
/// status`, `volume heal … info|statistics`, `pool list`) under coreutils
/// `timeout`: `timeout --kill-after=5 20 gluster --mode=script ARGS`.
/// Not gluster's own `--timeout=N`: in glusterfs 10 it sets only
/// `cli_default_conn_timeout`, while `heal` requests wait the fixed
/// `cli_ten_minutes_timeout` and `heal … info` runs `glfsheal`, which has
/// no timeout at all (cli/src/cli-cmd.c `cli_cmd_submit`,
/// cli-cmd-volume.c `cli_launch_glfs_heal`); `timeout` stops the CLI and
/// its children alike. Commands that change the cluster (create, start,
/// set, probe, reset-brick) are not bounded: stopping the CLI does not
/// stop glusterd's transaction, and their caller needs its real outcome.
pub fn query(args: &[&str]) -> Cmd {
    let secs = QUERY_TIMEOUT_SECS.to_string();
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

/// Parses `gluster volume info NAME` (None when it names no volume).
pub fn parse_volume_info(text: &str) -> Option<VolumeInfo> {
    let mut v = VolumeInfo {
        id: String::new(),
        kind: String::new(),
        status: String::new(),
        replica: 1,
        bricks: Vec::new(),
        options: BTreeMap::new(),
    };
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
