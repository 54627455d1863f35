//! Self-assembly I on booted VMs: three copies of the Debian 12 image built
//! by `habuild image` (cluster.toml: bootstrap_expect = 3, control-plane
//! size 3), on one L2 inside a network namespace this test creates, with
//! dnsmasq as the site's DHCP server. Without any per-VM configuration they
//! form Raft, issue the PKI, start etcd with TLS and bring up the API VIP.
//!
//! Checked from inside the namespace only (the test's own host on the
//! bridge): `habuild cluster status --json` (mDNS + the authenticated agent
//! channel) shows every node's etcd step done with 3/3 members healthy in
//! one etcd cluster, and the VIP answers (haproxy's health endpoint names its
//! holder). Then the VIP holder is powered off (QEMU killed): the VIP answers
//! from another node (failover measured), the survivors' etcd keeps quorum
//! and commits writes (re-election measured); the VM boots again: it rejoins
//! the same etcd cluster as the same member, with its data. Status reads
//! typed (`firstboot::protocol::StatusDoc` inside habuild's `--json`
//! output): the powered-off member is shown down (2/3 members up) and up
//! again after it rejoined. Each node's timeline (`habuild cluster status
//! --timeline`: power-on, agent start, discovery, Raft group, plan, each
//! step's start and done) is printed once the cluster has assembled, with
//! etcd healthy and the VIP answering in seconds since each node's
//! power-on (kernel start), and the rebooted node's at the end.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use builder::cluster_status::render_timeline;
use firstboot::protocol::StatusDoc;
use firstboot::state::Role;
use qemu_harness::cluster::{agents, dump, running, status, status_text, step, wait_until, Lab};
use qemu_harness::image::{debian_image_for, release_bin, test_cluster_text_without_kubernetes};
use qemu_harness::{TestNet, Vm};

const VIP: &str = "10.77.0.10";

fn cluster_status(net: &TestNet, cluster_file: &std::path::Path) -> Result<Vec<StatusDoc>> {
    agents(net, cluster_file)
}

/// (member id, cluster id, healthy, total, revision) from the etcd step's observation.
fn etcd_view(agent: &StatusDoc) -> Option<(String, String, u32, u32, u64)> {
    let s = step(agent, "etcd")?;
    if s.status != "done" {
        return None;
    }
    let d = s.detail.as_str();
    let words: Vec<&str> = d.split([' ', ',', ':']).filter(|w| !w.is_empty()).collect();
    let after = |w: &str| {
        words
            .iter()
            .position(|x| *x == w)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    };
    let (h, n) = words.iter().find(|w| w.contains('/'))?.split_once('/')?;
    if !d.contains("write ok") {
        return None;
    }
    Some((
        after("member")?,
        after("cluster")?,
        h.parse().ok()?,
        n.parse().ok()?,
        after("revision")?.parse().ok()?,
    ))
}

/// Seconds from the node's power-on (kernel start) until `step` was done,
/// from its status timeline.
fn done_since_power_on(agent: &StatusDoc, step: &str) -> Option<f64> {
    let t = agent.timeline.as_ref()?;
    let done = t.steps.iter().find(|s| s.step == step)?.done?;
    Some(done - t.power_on?)
}

/// Prints each agent's timeline and, per node, etcd healthy and the VIP
/// answering in seconds since its power-on.
fn print_timeline(agents: &[StatusDoc]) {
    eprint!("{}", render_timeline(agents));
    for a in agents {
        let s = |step| done_since_power_on(a, step).map_or("-".into(), |s| format!("{s:.0} s"));
        eprintln!(
            "assembly_qemu: {} ({}): etcd healthy {} and VIP answering {} after power-on",
            a.hostname,
            a.node_id,
            s("etcd"),
            s("vip")
        );
    }
}

fn vip_holder(net: &TestNet) -> Option<String> {
    let agent = release_bin("habuild-agent").ok()?;
    let out = net
        .exec(&agent)
        .args(["probe", &format!("{VIP}:8404"), "--http", "/healthz"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn three_vms_form_tls_etcd_and_the_vip_and_survive_a_power_off() -> Result<()> {
    // Kubernetes off: three emulated control planes on a 2-core host starve
    // etcd and Raft (kube_qemu proves Kubernetes on one node).
    let img = debian_image_for(&test_cluster_text_without_kubernetes())?;
    let mut lab = Lab::start_with("assembly", "hba", 3, img, 1024)?;
    let (vms, net, img, work, _) = lab.parts();

    // 1. each node reports etcd healthy and the VIP answering on its console
    let limit = Duration::from_secs(1200);
    for vm in running(vms) {
        let r = vm.wait_for("habuild-agent: step etcd done", limit);
        if let Err(e) = r {
            bail!("{e:#}\n{}", dump(&running(vms)));
        }
        let etcd_at = vm.elapsed();
        vm.wait_for("habuild-agent: step vip done", Duration::from_secs(300))
            .with_context(|| dump(&[vm]))?;
        eprintln!(
            "assembly_qemu: {}: etcd healthy {:.0} s and VIP answering {:.0} s after VM start (accel {})",
            vm.name(),
            etcd_at.as_secs_f64(),
            vm.elapsed().as_secs_f64(),
            vm.accel()
        );
    }

    // 2. from the namespace: 3 agents, one etcd cluster of 3 healthy TLS members, writes ok
    let views = wait_until(
        "3/3 etcd members healthy in status",
        Duration::from_secs(180),
        || {
            let agents = cluster_status(net, &img.cluster).ok()?;
            let v: Vec<_> = agents.iter().filter_map(etcd_view).collect();
            (v.len() == 3 && v.iter().all(|x| x.2 == 3 && x.3 == 3)).then_some((agents, v))
        },
    )
    .with_context(|| dump(&running(vms)))?;
    let (agents, v) = views;
    let clusters: std::collections::BTreeSet<_> = v.iter().map(|x| x.1.clone()).collect();
    let members: std::collections::BTreeSet<_> = v.iter().map(|x| x.0.clone()).collect();
    ensure!(
        clusters.len() == 1,
        "more than one etcd cluster: {clusters:?}"
    );
    ensure!(members.len() == 3, "members not distinct: {members:?}");
    for a in &agents {
        ensure!(a.role == Some(Role::ControlPlane), "{a:?}");
    }
    ensure!(
        !status_text(net, &img.cluster, &[])?.contains(qemu_harness::image::TEST_SECRET),
        "status leaks the secret"
    );
    let holder = vip_holder(net).context("the VIP does not answer")?;
    eprintln!("assembly_qemu: etcd cluster {clusters:?} members {members:?}; VIP held by {holder}");
    let agents = wait_until(
        "every node's timeline with etcd and vip done",
        Duration::from_secs(60),
        || {
            let agents = cluster_status(net, &img.cluster).ok()?;
            let complete = agents.len() == 3
                && agents.iter().all(|a| {
                    done_since_power_on(a, "etcd").is_some()
                        && done_since_power_on(a, "vip").is_some()
                });
            complete.then_some(agents)
        },
    )
    .with_context(|| dump(&running(vms)))?;
    print_timeline(&agents);

    // 3. power off the VIP holder
    let node_of = |a: &StatusDoc| format!("node-{}", a.node_id);
    let holder_agent = agents
        .iter()
        .find(|a| holder.ends_with(&node_of(a)))
        .context("the VIP holder is one of the agents")?;
    let holder_id = holder_agent.node_id.clone();
    let (holder_member, _, _, _, _) = etcd_view(holder_agent).context("holder etcd view")?;
    let idx = (0..3)
        .find(|i| {
            vms[*i].as_ref().is_some_and(|vm| {
                vm.serial_text()
                    .contains(&format!("node id {holder_id} at "))
            })
        })
        .context("which VM holds the VIP")?;
    let spec = vms[idx].as_ref().unwrap().spec().clone();
    vms[idx].as_ref().unwrap().kill()?;
    let off = Instant::now();
    vms[idx] = None;
    let new_holder = wait_until("the VIP to move", Duration::from_secs(120), || {
        vip_holder(net).filter(|h| *h != holder)
    })
    .with_context(|| dump(&running(vms)))?;
    let failover = off.elapsed();
    let (survivors, rev_before) = wait_until(
        "the survivors' etcd to commit writes again",
        Duration::from_secs(180),
        || {
            let agents = cluster_status(net, &img.cluster).ok()?;
            let v: Vec<_> = agents.iter().filter_map(etcd_view).collect();
            let ok = v.len() == 2 && v.iter().all(|x| x.2 == 2 && x.3 == 3);
            ok.then(|| (v.clone(), v.iter().map(|x| x.4).max().unwrap_or(0)))
        },
    )
    .with_context(|| dump(&running(vms)))?;
    eprintln!(
        "assembly_qemu: {holder} powered off: VIP answered from {new_holder} after {:.1} s; \
         etcd committing writes with 2/3 members after {:.1} s (revision {rev_before})",
        failover.as_secs_f64(),
        off.elapsed().as_secs_f64()
    );
    ensure!(survivors
        .iter()
        .all(|x| x.1 == *clusters.iter().next().unwrap()));
    // the powered-off member is shown down, by id, with 2 of 3 up
    let down = wait_until(
        "the powered-off member shown down in status",
        Duration::from_secs(120),
        || {
            let h = status(net, &img.cluster).ok()?.member_health?;
            let d = h.down.iter().find(|d| d.id == holder_id)?.clone();
            (h.up == 2 && h.total == 3 && h.down.len() == 1).then_some(d)
        },
    )
    .with_context(|| dump(&running(vms)))?;
    eprintln!(
        "assembly_qemu: status shows {} down (2/3 members up, reported by {:?}) {:.1} s after power-off",
        down.label(),
        down.reported_by,
        off.elapsed().as_secs_f64()
    );

    // 4. boot it again: same member of the same cluster, data caught up
    let back = Instant::now();
    let vm = Vm::start(net, spec, work.path())?;
    vm.wait_for("habuild-agent: step etcd done", limit)
        .with_context(|| dump(&[&vm]))?;
    vms[idx] = Some(vm);
    let rejoined = wait_until(
        "the rebooted member back in",
        Duration::from_secs(240),
        || {
            let agents = cluster_status(net, &img.cluster).ok()?;
            let v: Vec<_> = agents.iter().filter_map(etcd_view).collect();
            let me = v.iter().find(|x| x.0 == holder_member)?.clone();
            (v.len() == 3 && v.iter().all(|x| x.2 == 3)).then_some(me)
        },
    )
    .with_context(|| dump(&running(vms)))?;
    ensure!(
        clusters.contains(&rejoined.1),
        "rebooted node is in another etcd cluster: {rejoined:?}"
    );
    ensure!(
        rejoined.4 >= rev_before,
        "rebooted member's data is behind: revision {} < {rev_before}",
        rejoined.4
    );
    ensure!(
        vip_holder(net).is_some(),
        "VIP lost after the node came back"
    );
    wait_until(
        "every member up again in status",
        Duration::from_secs(120),
        || {
            let h = status(net, &img.cluster).ok()?.member_health?;
            (h.up == 3 && h.total == 3 && h.down.is_empty()).then_some(())
        },
    )
    .with_context(|| dump(&running(vms)))?;
    eprintln!(
        "assembly_qemu: rebooted node rejoined as member {} of the same cluster after {:.0} s (revision {})",
        rejoined.0,
        back.elapsed().as_secs_f64(),
        rejoined.4
    );
    match cluster_status(net, &img.cluster) {
        Ok(agents) => {
            let rebooted: Vec<StatusDoc> = agents
                .into_iter()
                .filter(|a| a.node_id == holder_id)
                .collect();
            eprintln!("assembly_qemu: the rebooted node's timeline:");
            print_timeline(&rebooted);
        }
        Err(e) => eprintln!("assembly_qemu: no timeline of the rebooted node: {e:#}"),
    }
    Ok(())
}
