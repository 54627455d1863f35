//! Self-assembly II on booted VMs: three copies of the Debian 12 image
//! (cluster.toml: storage enabled, 1 GiB backing files, replica 3), on one
//! L2 inside a network namespace this test creates, with dnsmasq as DHCP.
//! Without any per-VM configuration the agents build the bricks (loop device
//! over a file on the data partition, LVM thin pool, XFS), form the trusted
//! pool, create and start a replica-3 volume and mount it on every node.
//!
//! Checked from the namespace (`habuild cluster status --gluster --json`)
//! and inside the VMs through the QEMU guest agent (virtio-serial, no
//! network): `gluster volume info/status`, topology.json, a file written on
//! node 1 read with the same sha256 on node 3, write throughput against the
//! local data partition. Then issue 12's sequence: on node 1 a file written
//! without fsync, one with fsync and a large write still in flight when
//! node 2 loses power (QEMU killed) seconds later; the time to the first
//! successful write after the power-off (ping-timeout 5 s); more writes
//! from nodes 1 and 3; node 2 boots again → its brick is untrusted after
//! the unclean shutdown, wiped and rebuilt from the other two with
//! `reset-brick`, and healed; then every file's sha256 on every node's
//! *brick* (not through the mount) must equal what was written. Last,
//! quorum: node 3 with its link down cannot write (its write fails) while
//! node 1 still can, and the refused file is on no other brick.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use firstboot::protocol::StatusDoc;
use qemu_harness::cluster::{agents, dump, gluster_status, running, step, wait_until, Lab};
use qemu_harness::image::{debian_image_for, test_cluster_text_without_kubernetes};
use qemu_harness::{TestNet, Vm};
use serde::Deserialize;
use serde_json::Value;

const MOUNT: &str = "/mnt/gluster";
const BRICK: &str = "/var/lib/habuild/bricks/brick0/habuild";

/// Runs `script` with /bin/sh inside `vm` (guest agent); its stdout, or an
/// error with the exit code, stdout and stderr.
fn sh(vm: &Vm, script: &str, timeout: Duration) -> Result<String> {
    let out = vm
        .guest()
        .sh(script, timeout)
        .with_context(|| format!("{}: {script}", vm.name()))?;
    Ok(out.stdout)
}

/// heketi's topology.json, as far as this test reads it (the status
/// document passes it through in heketi's own format).
#[derive(Debug, Deserialize)]
struct Topology {
    clusters: Vec<TopologyCluster>,
}

#[derive(Debug, Deserialize)]
struct TopologyCluster {
    nodes: Vec<TopologyNode>,
}

#[derive(Debug, Deserialize)]
struct TopologyNode {
    node: TopologyNodeInfo,
    devices: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct TopologyNodeInfo {
    hostnames: Hostnames,
}

#[derive(Debug, Deserialize)]
struct Hostnames {
    manage: Vec<String>,
    storage: Vec<String>,
}

/// Every running agent reports gluster-mount done (and how many agents answered).
fn mounted_everywhere(
    net: &TestNet,
    cluster: &std::path::Path,
    n: usize,
) -> Option<Vec<StatusDoc>> {
    let agents = agents(net, cluster).ok()?;
    let done = agents
        .iter()
        .filter(|a| step(a, "gluster-mount").is_some_and(|s| s.status == "done"))
        .count();
    (agents.len() == n && done == n).then_some(agents)
}

fn vm(i: usize, vms: &[Option<Vm>]) -> Result<&Vm> {
    vms[i].as_ref().context("VM is powered off")
}

/// `sha256sum FILE` → the hex digest.
fn sha(vm: &Vm, file: &str) -> Result<String> {
    let out = sh(vm, &format!("sha256sum {file}"), Duration::from_secs(120))?;
    out.split_whitespace()
        .next()
        .map(String::from)
        .context("sha256sum printed nothing")
}

/// Writes `mib` MiB of random data to `path` on `vm` (fsync'd), returns its sha256.
fn write_random(vm: &Vm, path: &str, mib: u32) -> Result<String> {
    sh(
        vm,
        &format!(
            "head -c {}M /dev/urandom > {path}.tmp && sync {path}.tmp && mv {path}.tmp {path} && sync",
            mib
        ),
        Duration::from_secs(300),
    )?;
    sha(vm, path)
}

/// MB/s that `dd` reports writing 64 MiB to `path` with fsync.
fn dd_rate(vm: &Vm, path: &str) -> Result<(f64, String)> {
    let out = sh(
        vm,
        &format!("dd if=/dev/zero of={path} bs=1M count=64 conv=fsync 2>&1; rm -f {path}"),
        Duration::from_secs(600),
    )?;
    // "67108864 bytes (67 MB, 64 MiB) copied, 3.2 s, 21.0 MB/s"
    let line = out
        .lines()
        .find(|l| l.contains("copied"))
        .with_context(|| format!("dd said: {out}"))?
        .to_string();
    let secs: f64 = line
        .split(", ")
        .find(|p| p.ends_with(" s"))
        .and_then(|p| p.trim_end_matches(" s").trim().parse().ok())
        .with_context(|| format!("no duration in {line:?}"))?;
    Ok((64.0 * 1.048_576 / secs, line))
}

/// `gluster volume heal VOL statistics heal-count` reports 0 pending entries
/// on each of the 3 bricks.
fn heal_done(out: &str) -> bool {
    let counts: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Number of entries: "))
        .collect();
    counts.len() == 3 && counts.iter().all(|c| c.trim() == "0")
}

/// Bricks reported online by `gluster volume status VOL detail` (one block
/// per brick with "Online               : Y").
fn bricks_online(detail: &str) -> usize {
    detail
        .lines()
        .filter(|l| l.starts_with("Online") && l.trim_end().ends_with(": Y"))
        .count()
}

/// What gluster says on each running node, for a failed wait.
fn diagnose(vms: &[Option<Vm>]) -> String {
    let script = "gluster volume status habuild; gluster peer status; \
                  systemctl --no-pager status habuild-glusterd var-lib-habuild-bricks-brick0.mount mnt-gluster.mount | head -40; \
                  tail -n 15 /var/log/glusterfs/glustershd.log";
    running(vms)
        .iter()
        .map(|v| {
            let out = v
                .guest()
                .exec(&["/bin/sh", "-c", script], Duration::from_secs(120))
                .map(|o| format!("{}{}", o.stdout, o.stderr))
                .unwrap_or_else(|e| format!("(guest agent: {e:#})"));
            format!("--- {} gluster:\n{out}\n", v.name())
        })
        .collect()
}

#[test]
fn three_vms_build_a_replica_3_volume_that_survives_a_power_off() -> Result<()> {
    // Kubernetes off: this scenario proves the storage chain, and three
    // emulated control planes would only slow it (assembly_qemu proves
    // Kubernetes).
    let img = debian_image_for(&test_cluster_text_without_kubernetes())?;
    let mut lab = Lab::start_with("gluster", "hbg", 3, img, 1024)?;
    let (vms, net, img, work, _) = lab.parts();
    let t0 = Instant::now();

    // 1. every node mounts the volume, with no per-VM configuration
    for vm in running(vms) {
        vm.wait_for(
            "habuild-agent: step gluster-mount done",
            Duration::from_secs(1500),
        )
        .with_context(|| dump(&running(vms)))?;
        eprintln!(
            "gluster_qemu: {}: volume mounted {:.0} s after VM start (accel {})",
            vm.name(),
            vm.elapsed().as_secs_f64(),
            vm.accel()
        );
    }
    let agents = wait_until(
        "gluster-mount done in status",
        Duration::from_secs(120),
        || mounted_everywhere(net, &img.cluster, 3),
    )
    .with_context(|| dump(&running(vms)))?;
    eprintln!(
        "gluster_qemu: volume mounted on all 3 nodes {:.0} s after the VMs started",
        t0.elapsed().as_secs_f64()
    );

    // 2. habuild cluster status --gluster: replica 3 over the 3 nodes, topology
    let g = gluster_status(net, &img.cluster)?;
    let v = &g.gluster;
    ensure!(
        v.kind.as_deref() == Some("Replicate") && v.replica == Some(3),
        "{g:#?}"
    );
    let addrs: Vec<String> = agents
        .iter()
        .map(|a| a.address.split(':').next().unwrap_or("").to_string())
        .collect();
    let bricks = &v.bricks;
    ensure!(bricks.len() == 3, "{g:#?}");
    for a in &addrs {
        ensure!(
            bricks.contains(&format!("{a}:{BRICK}")),
            "no brick of {a} in {bricks:?}"
        );
    }
    let topo: Value = v.topology.clone().context("no topology in status")?;
    let parsed: Topology =
        serde_json::from_value(topo.clone()).with_context(|| format!("topology: {topo:#}"))?;
    let nodes = &parsed.clusters.first().context("topology cluster")?.nodes;
    ensure!(nodes.len() == 3, "{topo:#}");
    for n in nodes {
        let ip = n.node.hostnames.storage.first().map_or("", String::as_str);
        ensure!(addrs.iter().any(|a| a == ip), "topology names {ip}");
        let host = n.node.hostnames.manage.first().map_or("", String::as_str);
        ensure!(
            agents.iter().any(|a| a.hostname == host),
            "topology manage hostname {host}"
        );
        ensure!(
            n.devices.first().map(String::as_str) == Some("/dev/habuild/gluster-brick"),
            "{n:?}"
        );
    }

    // 3. inside the VMs: gluster's own view, topology.json, bricks on XFS thin LVs
    for i in 0..3 {
        vm(i, vms)?.guest().wait_ready(Duration::from_secs(120))?;
    }
    let info = sh(
        vm(0, vms)?,
        "gluster volume info habuild",
        Duration::from_secs(60),
    )?;
    ensure!(
        info.contains("Type: Replicate")
            && info.contains("Status: Started")
            && info.contains("Number of Bricks: 1 x 3 = 3"),
        "{info}"
    );
    let status = sh(
        vm(2, vms)?,
        "gluster volume status habuild detail",
        Duration::from_secs(60),
    )?;
    ensure!(
        bricks_online(&status) == 3,
        "3 bricks online expected:\n{status}"
    );
    let expected_topo = serde_json::to_string_pretty(&topo)?;
    for i in [0, 2] {
        let on_node = sh(
            vm(i, vms)?,
            "cat /var/lib/habuild/gluster/topology.json",
            Duration::from_secs(30),
        )?;
        let parsed: Value = serde_json::from_str(&on_node)?;
        ensure!(
            serde_json::to_string_pretty(&parsed)? == expected_topo,
            "topology.json on node{} differs from status:\n{on_node}",
            i + 1
        );
    }
    let fs = sh(
        vm(0, vms)?,
        "findmnt -n -o FSTYPE,SOURCE /var/lib/habuild/bricks/brick0; xfs_info /var/lib/habuild/bricks/brick0 | grep -o 'isize=[0-9]*'; lvs --noheadings -o lv_name,segtype habuild_gluster; findmnt -n -o FSTYPE,OPTIONS /mnt/gluster",
        Duration::from_secs(60),
    )?;
    ensure!(
        fs.contains("xfs")
            && fs.contains("isize=512")
            && fs.contains("thin-pool")
            && fs.contains("fuse.glusterfs"),
        "brick/mount facts:\n{fs}"
    );

    // 4. written on node 1, read on node 3
    let a = write_random(vm(0, vms)?, &format!("{MOUNT}/from-node1.bin"), 8)?;
    let a3 = sha(vm(2, vms)?, &format!("{MOUNT}/from-node1.bin"))?;
    ensure!(a == a3, "node3 reads {a3}, node1 wrote {a}");

    // 5. throughput: the volume against the local data partition, same node, same run
    let (local, l_line) = dd_rate(vm(0, vms)?, "/var/tmp/habuild-dd.bin")?;
    let (gl, g_line) = dd_rate(vm(0, vms)?, &format!("{MOUNT}/habuild-dd.bin"))?;
    eprintln!(
        "gluster_qemu: write 64 MiB with fsync on node1: local data partition {local:.1} MB/s ({l_line}); volume {gl:.1} MB/s ({g_line}); volume/local = {:.2}",
        gl / local
    );

    // 6. the issue-12 sequence: on node 1 a file written without fsync and
    // one with fsync, read back on node 3; a large write in flight; node 2
    // loses power seconds later.
    let nofsync = format!("{MOUNT}/no-fsync.bin");
    let fsynced = format!("{MOUNT}/fsync.bin");
    let mid = format!("{MOUNT}/mid-write.bin");
    sh(
        vm(0, vms)?,
        &format!("head -c 8388608 /dev/urandom > {nofsync}"),
        Duration::from_secs(300),
    )?;
    sh(
        vm(0, vms)?,
        &format!("dd if=/dev/urandom of={fsynced} bs=1M count=8 conv=fsync 2>/dev/null"),
        Duration::from_secs(300),
    )?;
    let mut written = vec![(format!("{MOUNT}/from-node1.bin"), a)];
    for f in [&nofsync, &fsynced] {
        let s1 = sha(vm(0, vms)?, f)?;
        let s3 = sha(vm(2, vms)?, f)?;
        ensure!(s1 == s3, "node3 reads {f} as {s3}, node1 wrote {s1}");
        written.push((f.clone(), s1));
    }
    // 32 MiB without fsync, still being written when the power goes.
    sh(
        vm(0, vms)?,
        &format!(
            "setsid sh -c 'head -c 33554432 /dev/urandom > {mid}; echo $? > /run/mid-write.done' </dev/null >/dev/null 2>&1 &"
        ),
        Duration::from_secs(60),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let spec = vm(1, vms)?.spec().clone();
    vm(1, vms)?.kill()?;
    vms[1] = None;
    let off = Instant::now();
    // first write after the power-off: Gluster's 42 s ping timeout made it
    // 73-86 s; the agent sets 5 s (<= ~10 s to notice a dead brick).
    let first = format!("{MOUNT}/first-after-off.bin");
    let first_sum = write_random(vm(0, vms)?, &first, 1)?;
    let first_secs = off.elapsed().as_secs_f64();
    eprintln!(
        "gluster_qemu: node2 off: first successful write (fsync'd) from node1 {first_secs:.1} s after the power-off"
    );
    ensure!(
        first_secs < 40.0,
        "first write after the power-off took {first_secs:.1} s (ping-timeout not in effect?)"
    );
    written.push((first, first_sum));
    // what an operator sees: `habuild cluster status --gluster` says the
    // volume is not safe to lose another node, naming node2's brick offline
    let unsafe_view = wait_until(
        "status --gluster to say NOT SAFE with a brick offline",
        Duration::from_secs(180),
        || {
            let g = gluster_status(net, &img.cluster).ok()?;
            let h = g.gluster.health.clone();
            let offline = h.iter().any(|n| !n.safe && !n.bricks_offline.is_empty());
            offline.then_some(h)
        },
    )
    .with_context(|| dump(&running(vms)))?;
    eprintln!(
        "gluster_qemu: node2 off: status --gluster NOT SAFE {:.0} s after the power-off: {:?}",
        off.elapsed().as_secs_f64(),
        unsafe_view
            .iter()
            .map(|n| format!(
                "{} brick {} offline {:?}",
                n.hostname, n.brick, n.bricks_offline
            ))
            .collect::<Vec<_>>()
    );
    let mid_done = wait_until(
        "the write in flight at the power-off to finish",
        Duration::from_secs(300),
        || {
            sh(
                vm(0, vms).ok()?,
                "cat /run/mid-write.done",
                Duration::from_secs(30),
            )
            .ok()
            .filter(|o| !o.trim().is_empty())
        },
    )?;
    ensure!(
        mid_done.trim() == "0",
        "the write in flight failed: exit {mid_done}"
    );
    written.push((mid.clone(), sha(vm(0, vms)?, &mid)?));
    for (i, name) in [(0usize, "while-off-node1"), (2, "while-off-node3")] {
        for k in 0..2 {
            let path = format!("{MOUNT}/{name}-{k}.bin");
            let t = Instant::now();
            let sum = write_random(vm(i, vms)?, &path, 2)?;
            eprintln!(
                "gluster_qemu: node2 off: {path} written from node{} in {:.1} s ({:.0} s after power-off)",
                i + 1,
                t.elapsed().as_secs_f64(),
                off.elapsed().as_secs_f64()
            );
            written.push((path, sum));
        }
    }
    // read back across: node 3 reads node 1's, node 1 reads node 3's
    for (path, sum) in &written {
        for i in [0, 2] {
            ensure!(
                sha(vm(i, vms)?, path)? == *sum,
                "node{} reads another {path}",
                i + 1
            );
        }
    }

    // 7. node 2 boots again: brick back by itself, self-heal, nothing lost
    let back = Instant::now();
    vms[1] = Some(Vm::start(net, spec, work.path())?);
    vm(1, vms)?
        .wait_for(
            "habuild-agent: step gluster-mount done",
            Duration::from_secs(900),
        )
        .with_context(|| dump(&running(vms)))?;
    vm(1, vms)?.guest().wait_ready(Duration::from_secs(120))?;
    let mounted_after = back.elapsed();
    // `heal-count` asks each node's self-heal daemon for its brick's pending
    // entries: cheap, unlike `heal info` (a full client per call).
    let mut last = String::new();
    let healed = wait_until("self-heal to complete", Duration::from_secs(900), || {
        std::thread::sleep(Duration::from_secs(8));
        let out = match sh(
            vm(0, vms).ok()?,
            "gluster volume heal habuild statistics heal-count",
            Duration::from_secs(120),
        ) {
            Ok(out) => out,
            Err(e) => {
                last = format!("{e:#}");
                return None;
            }
        };
        last = out.clone();
        heal_done(&out).then_some(out)
    })
    .with_context(|| {
        format!(
            "last heal-count:\n{last}\n{}\n{}",
            diagnose(vms),
            dump(&running(vms))
        )
    })?;
    let detail = sh(
        vm(1, vms)?,
        "gluster volume status habuild detail",
        Duration::from_secs(120),
    )?;
    let shd = sh(
        vm(1, vms)?,
        "gluster volume status habuild shd",
        Duration::from_secs(120),
    )?;
    ensure!(
        bricks_online(&detail) == 3,
        "3 bricks online expected after node2's return:\n{detail}"
    );
    let shd_online = shd
        .lines()
        .filter(|l| {
            l.starts_with("Self-heal Daemon on ") && l.split_whitespace().rev().nth(1) == Some("Y")
        })
        .count();
    ensure!(
        shd_online == 3,
        "3 self-heal daemons online expected after node2's return:\n{shd}\n{healed}"
    );
    eprintln!(
        "gluster_qemu: node2 back: volume mounted {:.0} s after boot, self-heal complete {:.0} s after boot",
        mounted_after.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    // the brick came back untrusted and was rebuilt, not served as it was
    let rebuilt = sh(
        vm(1, vms)?,
        "journalctl -b -u habuild-agent --no-pager | grep -c 'wiping it and rebuilding' || true; \
         ls /var/lib/habuild/gluster/",
        Duration::from_secs(60),
    )?;
    ensure!(
        rebuilt
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .unwrap_or(0)
            >= 1
            && !rebuilt.contains("brick-untrusted"),
        "node2's brick was not rebuilt after its power loss (or is still untrusted):\n{rebuilt}"
    );
    // every file, on every node's brick (not through the mount): same bytes
    for (path, sum) in &written {
        let on_brick = path.replacen(MOUNT, BRICK, 1);
        for i in 0..3 {
            let got = sha(vm(i, vms)?, &on_brick)?;
            ensure!(
                got == *sum,
                "node{}'s brick has {on_brick} with sha256 {got}, written as {sum}",
                i + 1
            );
        }
    }
    eprintln!(
        "gluster_qemu: all 3 bricks hold all {} files with the same sha256 (incl. the un-fsynced one and the one in flight at the power-off)",
        written.len()
    );
    let safe_again = wait_until(
        "status --gluster to say safe on all 3 storage nodes",
        Duration::from_secs(300),
        || {
            let g = gluster_status(net, &img.cluster).ok()?;
            let h = &g.gluster.health;
            (h.len() == 3 && h.iter().all(|n| n.safe && n.brick == "serving")).then_some(())
        },
    );
    safe_again.with_context(|| {
        format!(
            "{:#?}\n{}",
            gluster_status(net, &img.cluster).map(|g| g.gluster.health),
            dump(&running(vms))
        )
    })?;
    eprintln!(
        "gluster_qemu: status --gluster says safe on all 3 nodes {:.0} s after node2 was booted again",
        back.elapsed().as_secs_f64()
    );

    // 8. quorum: node 3 cut off from nodes 1 and 2 (its link down) cannot
    // write (client quorum: 1 of 3 bricks); the majority still can.
    sh(
        vm(2, vms)?,
        "dev=$(ip -o -4 addr show scope global | awk '{print $2; exit}'); ip link set dev \"$dev\" down",
        Duration::from_secs(30),
    )?;
    let cut = Instant::now();
    let minority = format!("{MOUNT}/minority.bin");
    let out = vm(2, vms)?.guest().exec(
        &[
            "/bin/sh",
            "-c",
            &format!("head -c 1048576 /dev/urandom > {minority} && sync {minority}"),
        ],
        Duration::from_secs(300),
    )?;
    ensure!(
        out.code != 0,
        "node3, cut off from the other two, wrote {minority}: {}{}",
        out.stdout,
        out.stderr
    );
    eprintln!(
        "gluster_qemu: node3 cut off: its write refused after {:.1} s: {}",
        cut.elapsed().as_secs_f64(),
        out.stderr.trim()
    );
    let majority = format!("{MOUNT}/majority.bin");
    let sum = write_random(vm(0, vms)?, &majority, 1)?;
    ensure!(
        sha(vm(1, vms)?, &majority)? == sum,
        "node2 reads another {majority}"
    );
    let on_bricks = sh(
        vm(0, vms)?,
        &format!("ls {BRICK}/minority.bin 2>&1 || true"),
        Duration::from_secs(30),
    )?;
    ensure!(
        on_bricks.contains("No such file"),
        "the minority's file reached node1's brick: {on_bricks}"
    );
    Ok(())
}
