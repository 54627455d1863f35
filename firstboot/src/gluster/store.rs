//! What glusterd keeps in its own store (`/var/lib/glusterd`): the volume's
//! definition (`vols/VOL/info` and `vols/VOL/bricks/*`) and the trusted
//! pool (`peers/*`), read as files instead of asked through the CLI.
//!
//! glusterd writes these files on every change before it answers the
//! command that made it (and every peer holds the same copy of a volume's
//! files), so they say what `volume info` and the pool's membership say.
//! On an emulated node one gluster CLI call costs 2-3 s of CPU (11 s of
//! wall time under load), and the storage leader's settled checks asked
//! `volume info` and `pool list` every 15 s: a third of a vCPU spent on
//! asking. What needs glusterd live (bricks online, pending heals, peers
//! connected right now) is still asked through the CLI ([`super::cli`]).

use std::collections::BTreeMap;

use super::cli::VolumeInfo;

/// glusterd's store, relative to the host root.
pub const STORE: &str = "var/lib/glusterd";

/// The file of `volume`'s definition, relative to the host root.
pub fn volume_info_file(volume: &str) -> String {
    format!("{STORE}/vols/{volume}/info")
}

/// The file of one brick named `name` in the info file (`brick-N=NAME`).
pub fn brick_file(volume: &str, name: &str) -> String {
    format!("{STORE}/vols/{volume}/bricks/{name}")
}

/// The directory of the pool's peer files, relative to the host root.
pub fn peers_dir() -> String {
    format!("{STORE}/peers")
}

/// The `key=value` lines of a store file.
fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| l.split_once('='))
}

/// The volume as `volume info` shows it, from its `info` file and the
/// brick files `brick` reads (by the name the info file gives, `HOST:-PATH`
/// with slashes as dashes; the brick file has the real `hostname` and
/// `path`). None when the info file names no volume. Options are the keys
/// with a dot (`cluster.quorum-type`): glusterd's own fields have none.
pub fn parse_volume(info: &str, brick: &dyn Fn(&str) -> Option<String>) -> Option<VolumeInfo> {
    let mut v = VolumeInfo::default();
    let (mut kind, mut count, mut status) = (None, 0u32, None);
    let mut bricks: BTreeMap<u32, String> = BTreeMap::new();
    for (k, val) in pairs(info) {
        match k {
            "type" => kind = val.parse::<u32>().ok(),
            "count" => count = val.parse().unwrap_or(0),
            "status" => status = val.parse::<u32>().ok(),
            "replica_count" => v.replica = val.parse().unwrap_or(1).max(1),
            "volume-id" => v.id = val.into(),
            k if k.starts_with("brick-") => {
                if let Ok(n) = k["brick-".len()..].parse() {
                    bricks.insert(n, val.into());
                }
            }
            k if k.contains('.') => {
                v.options.insert(k.into(), val.into());
            }
            _ => {}
        }
    }
    let (kind, status) = (kind?, status?);
    v.status = match status {
        0 => "Created",
        1 => "Started",
        2 => "Stopped",
        _ => "Unknown",
    }
    .into();
    let distributed = count > v.replica;
    v.kind = match (kind, distributed) {
        (2, false) => "Replicate",
        (2, true) => "Distributed-Replicate",
        (4, false) => "Disperse",
        (4, true) => "Distributed-Disperse",
        _ => "Distribute",
    }
    .into();
    if kind != 2 {
        v.replica = 1;
    }
    for name in bricks.values() {
        let text = brick(name)?;
        let field = |f: &str| {
            pairs(&text)
                .find(|(k, _)| *k == f)
                .map(|(_, x)| x.to_string())
        };
        v.bricks
            .push(format!("{}:{}", field("hostname")?, field("path")?));
    }
    Some(v)
}

/// The addresses (or names) of the peers the store holds as in the pool
/// ("Peer in Cluster", `state=3`), from the peer files' texts.
pub fn pool_members(peer_files: &[String]) -> Vec<String> {
    peer_files
        .iter()
        .filter(|t| pairs(t).any(|(k, v)| k == "state" && v == "3"))
        .flat_map(|t| {
            pairs(t)
                .filter(|(k, _)| k.starts_with("hostname"))
                .map(|(_, v)| v.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The store files (path relative to the host root, text) that say
/// volume `v` as glusterd writes them, for tests of what reads them.
#[cfg(test)]
pub fn files_of(volume: &str, v: &VolumeInfo) -> Vec<(String, String)> {
    let kind = if v.kind.contains("Replicate") { 2 } else { 0 };
    let status = match v.status.as_str() {
        "Started" => 1,
        "Stopped" => 2,
        _ => 0,
    };
    let mut info = format!(
        "type={kind}\ncount={}\nstatus={status}\nreplica_count={}\nvolume-id={}\n",
        v.bricks.len(),
        v.replica,
        v.id
    );
    let mut out = Vec::new();
    for (k, val) in &v.options {
        info.push_str(&format!("{k}={val}\n"));
    }
    for (i, b) in v.bricks.iter().enumerate() {
        let (host, path) = b.split_once(':').unwrap_or((b, ""));
        let name = format!("{host}:{}", path.replace('/', "-"));
        info.push_str(&format!("brick-{i}={name}\n"));
        out.push((
            brick_file(volume, &name),
            format!("hostname={host}\npath={path}\nreal_path={path}\n"),
        ));
    }
    out.push((volume_info_file(volume), info));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vols/habuild/info` as glusterfs 10 wrote it on a `cluster_qemu`
    /// node (credentials shortened).
    const INFO: &str = "type=2\ncount=3\nstatus=1\nsub_count=3\nreplica_count=3\n\
disperse_count=0\nredundancy_count=0\nversion=2\ntransport-type=0\n\
volume-id=1bd7dbaf-8084-42e5-bce6-69f9aa08fc61\nusername=u\npassword=p\n\
op-version=40000\nclient-op-version=30800\nquota-version=0\ntier-enabled=0\n\
parent_volname=N/A\nrestored_from_snap=00000000-0000-0000-0000-000000000000\n\
snap-max-hard-limit=256\ncluster.ensure-durability=on\nnetwork.ping-timeout=3\n\
cluster.server-quorum-type=server\ncluster.quorum-type=auto\n\
cluster.granular-entry-heal=on\nstorage.fips-mode-rchecksum=on\n\
transport.address-family=inet\nnfs.disable=on\nperformance.client-io-threads=off\n\
brick-0=10.77.0.80:-var-lib-habuild-bricks-brick0-habuild\n\
brick-1=10.77.0.82:-var-lib-habuild-bricks-brick0-habuild\n\
brick-2=10.77.0.81:-var-lib-habuild-bricks-brick0-habuild\n";

    fn brick(name: &str) -> Option<String> {
        let host = name.split_once(':')?.0;
        Some(format!(
            "uuid=90a84ef6-9008-4a46-b571-7dfd037ffb50\nhostname={host}\n\
path=/var/lib/habuild/bricks/brick0/habuild\nreal_path=/var/lib/habuild/bricks/brick0/habuild\n\
listen-port=0\nrdma.listen-port=0\ndecommissioned=0\nbrick-id=habuild-client-0\n"
        ))
    }

    #[test]
    fn the_volume_from_its_info_and_brick_files() {
        let v = parse_volume(INFO, &brick).unwrap();
        assert_eq!(v.id, "1bd7dbaf-8084-42e5-bce6-69f9aa08fc61");
        assert_eq!(v.kind, "Replicate");
        assert_eq!(v.status, "Started");
        assert_eq!(v.replica, 3);
        // in the volume's brick order, with their real paths
        assert_eq!(
            v.bricks,
            [
                "10.77.0.80:/var/lib/habuild/bricks/brick0/habuild",
                "10.77.0.82:/var/lib/habuild/bricks/brick0/habuild",
                "10.77.0.81:/var/lib/habuild/bricks/brick0/habuild"
            ]
        );
        assert_eq!(v.options["cluster.quorum-type"], "auto");
        assert_eq!(v.options["network.ping-timeout"], "3");
        assert!(!v.options.contains_key("op-version"));
        assert!(!v.options.contains_key("rdma.listen-port"));
        let created = INFO.replace("status=1", "status=0");
        assert_eq!(parse_volume(&created, &brick).unwrap().status, "Created");
        let grown = INFO.replace("\ncount=3\n", "\ncount=6\n");
        assert_eq!(
            parse_volume(&grown, &brick).unwrap().kind,
            "Distributed-Replicate"
        );
    }

    #[test]
    fn what_files_of_writes_reads_back_as_the_same_volume() {
        let v = parse_volume(INFO, &brick).unwrap();
        let files: BTreeMap<String, String> = files_of("habuild", &v).into_iter().collect();
        let read = |rel: &str| files.get(rel).cloned();
        let back = parse_volume(&read(&volume_info_file("habuild")).unwrap(), &|name| {
            read(&brick_file("habuild", name))
        });
        assert_eq!(
            back,
            Some(VolumeInfo {
                id: v.id.clone(),
                ..v
            })
        );
    }

    #[test]
    fn no_volume_from_an_empty_or_half_read_store() {
        assert_eq!(parse_volume("", &brick), None);
        assert_eq!(parse_volume("count=3\n", &brick), None);
        // a brick file that is missing: no volume rather than fewer bricks
        assert_eq!(parse_volume(INFO, &|_| None), None);
    }

    #[test]
    fn pool_members_are_the_befriended_peers() {
        let peers = [
            "uuid=90a8\nstate=3\nhostname1=10.77.0.80\n".to_string(),
            "uuid=faf3\nstate=3\nhostname1=10.77.0.82\nhostname2=node3\n".to_string(),
            // probed, not in the pool yet
            "uuid=1234\nstate=1\nhostname1=10.77.0.83\n".to_string(),
        ];
        assert_eq!(pool_members(&peers), ["10.77.0.80", "10.77.0.82", "node3"]);
    }
}
