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
//!
//! Kubernetes on the same cluster (1.5 GiB per VM): every node's kubelet is
//! `Ready` in `kubectl get nodes` through the VIP, with the admin
//! kubeconfig fetched by `habuild cluster kubeconfig`; a workload from an
//! OCI archive seeded into the image (the test's own static Go server,
//! packed by habuild's OCI writer) runs one pod per node: a NodePort
//! answers from the namespace on every node, pods reach pods on other
//! nodes (host-gw routes), a ClusterIP Service is reached from a pod on
//! another node, and a pod reads what a pod on another node wrote to the
//! Gluster volume (hostPath). After the VIP holder's power-off the API
//! answers through the VIP again and the survivors' pods keep answering;
//! the rebooted node is `Ready` again. Timings (power-on → API through the
//! VIP, → all nodes Ready, power-off → API again) and each node's memory
//! are printed, not asserted.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use builder::cluster_status::render_timeline;
use firstboot::protocol::StatusDoc;
use firstboot::state::Role;
use qemu_harness::cluster::{agents, dump, running, status, status_text, step, wait_until, Lab};
use qemu_harness::image::{kube_test_image, release_bin};
use qemu_harness::kube::{
    fetch_kubeconfig, http, kube_bin_dir, parse_pods, workload_manifest, Kubectl, PodState,
    NODE_PORT,
};
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

/// Waits until the API answers `/readyz` through the VIP.
fn api_ready(kubectl: &Kubectl, limit: Duration) -> Result<()> {
    wait_until("the API to answer /readyz through the VIP", limit, || {
        kubectl
            .run(&["get", "--raw", "/readyz"])
            .ok()
            .filter(|t| t.trim() == "ok")
            .map(|_| ())
    })
}

/// Waits until `want` nodes are registered and all of them are `Ready`.
fn nodes_ready(
    kubectl: &Kubectl,
    want: usize,
    limit: Duration,
) -> Result<Vec<qemu_harness::kube::NodeState>> {
    let mut last = String::new();
    wait_until(&format!("{want} nodes Ready"), limit, || {
        match kubectl.nodes() {
            Ok(n) => {
                last = format!("{n:?}");
                (n.len() == want && n.iter().all(|x| x.ready)).then_some(n)
            }
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        }
    })
    .with_context(|| format!("last seen: {last}"))
}

/// The workload's pods, once `want` of them are Ready on distinct nodes.
fn pods_ready(kubectl: &Kubectl, want: usize, limit: Duration) -> Result<Vec<PodState>> {
    let mut last = String::new();
    wait_until(
        &format!("{want} web pods Ready on distinct nodes"),
        limit,
        || {
            let text = match kubectl.run(&["get", "pods", "-l", "app=web", "-o", "json"]) {
                Ok(t) => t,
                Err(e) => {
                    last = format!("{e:#}");
                    return None;
                }
            };
            let pods: Vec<PodState> = parse_pods(&text)
                .ok()?
                .into_iter()
                .filter(|p| p.ready)
                .collect();
            last = format!("{pods:?}");
            let nodes: std::collections::BTreeSet<_> =
                pods.iter().map(|p| p.node.clone()).collect();
            (pods.len() == want && nodes.len() == want).then_some(pods)
        },
    )
    .with_context(|| {
        let events = kubectl
            .run(&["get", "events", "-A", "--sort-by=.lastTimestamp"])
            .unwrap_or_default();
        format!("last seen: {last}\nevents:\n{events}")
    })
}

/// Each node's memory with the whole stack running (RSS of the big
/// processes, and MemAvailable), through the guest agent.
fn print_memory(vms: &[&Vm]) {
    for vm in vms {
        let out = vm.guest().sh(
            "ps -eo rss=,comm= --sort=-rss | head -n 9; grep -E 'MemTotal|MemAvailable' /proc/meminfo",
            Duration::from_secs(30),
        );
        match out {
            Ok(o) => {
                let lines: Vec<String> = o
                    .stdout
                    .lines()
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect();
                eprintln!(
                    "assembly_qemu: {} memory (RSS KiB, comm): {}",
                    vm.name(),
                    lines.join("; ")
                );
            }
            Err(e) => eprintln!("assembly_qemu: {} memory not read: {e:#}", vm.name()),
        }
    }
}

/// Proves the workload: every node's NodePort answers from its own pod,
/// each pod reaches every pod on the other nodes, the ClusterIP Service is
/// reached from a pod on another node than the one answering, and a file
/// written to the Gluster volume by one pod is read by a pod on another
/// node.
fn check_workload(
    net: &TestNet,
    kubectl: &Kubectl,
    pods: &[PodState],
    node_ips: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let url = |node: &str, path: &str| format!("http://{}:{NODE_PORT}{path}", node_ips[node]);
    for p in pods {
        let body = wait_until(
            &format!("NodePort on {} answering", p.node),
            Duration::from_secs(120),
            || http(net, "GET", &url(&p.node, "/"), None).ok(),
        )?;
        ensure!(
            body.trim() == format!("{}@{}", p.name, p.node),
            "NodePort {NODE_PORT} on {} (externalTrafficPolicy Local) answered {body:?}, not its own pod {}",
            p.node,
            p.name
        );
    }
    eprintln!(
        "assembly_qemu: NodePort {NODE_PORT} answers on all {} nodes from their own pods",
        pods.len()
    );
    for a in pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            let body = http(
                net,
                "GET",
                &url(&a.node, &format!("/fetch?url=http://{}:8080/", b.ip)),
                None,
            )
            .with_context(|| {
                format!(
                    "pod {} on {} reaching pod {} ({}) on {}",
                    a.name, a.node, b.name, b.ip, b.node
                )
            })?;
            ensure!(
                body.trim() == format!("{}@{} -> {}@{}", a.name, a.node, b.name, b.node),
                "pod-to-pod {} -> {} answered {body:?}",
                a.name,
                b.name
            );
        }
    }
    eprintln!("assembly_qemu: pod-to-pod across nodes: every pod reached every other node's pod");
    let cluster_ip = kubectl.run(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let from = &pods[0];
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let body = http(
            net,
            "GET",
            &url(
                &from.node,
                &format!("/fetch?url=http://{}/", cluster_ip.trim()),
            ),
            None,
        )
        .with_context(|| format!("pod {} reaching Service web at {cluster_ip}", from.name))?;
        let backend = body
            .trim()
            .rsplit("-> ")
            .next()
            .unwrap_or_default()
            .to_string();
        seen.insert(backend);
        if seen
            .iter()
            .any(|b| !b.ends_with(&format!("@{}", from.node)))
        {
            break;
        }
    }
    ensure!(
        seen.iter()
            .any(|b| !b.ends_with(&format!("@{}", from.node))),
        "ClusterIP {cluster_ip} from pod {} on {} only reached {seen:?}",
        from.name,
        from.node
    );
    eprintln!(
        "assembly_qemu: ClusterIP {} reached from {} on {}: backends {seen:?}",
        cluster_ip.trim(),
        from.name,
        from.node
    );
    let file = format!("/data/kube-{}", std::process::id());
    let text = format!("written by {} on {}", pods[0].name, pods[0].node);
    http(
        net,
        "POST",
        &url(&pods[0].node, &format!("/file?path={file}")),
        Some(&text),
    )?;
    let reader = &pods[1];
    let read = wait_until(
        "the Gluster file seen from another node's pod",
        Duration::from_secs(60),
        || {
            http(
                net,
                "GET",
                &url(&reader.node, &format!("/file?path={file}")),
                None,
            )
            .ok()
        },
    )?;
    ensure!(
        read == text,
        "pod {} on {} read {read:?} from {file}, {} wrote {text:?}",
        reader.name,
        reader.node,
        pods[0].name
    );
    eprintln!(
        "assembly_qemu: pod on {} read what the pod on {} wrote to the Gluster volume",
        reader.node, pods[0].node
    );
    Ok(())
}

#[test]
fn three_vms_assemble_tls_etcd_the_vip_and_kubernetes_and_survive_a_power_off() -> Result<()> {
    let mut lab = Lab::start_with("assembly", "hba", 3, kube_test_image()?, 1536)?;
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

    // 2b. Kubernetes: every node Ready through the VIP, with the admin
    // kubeconfig from the agents
    let first_start = running(vms)
        .iter()
        .map(|vm| vm.started())
        .min()
        .context("no VM")?;
    let kubeconfig = work.join("admin.conf");
    wait_until(
        "habuild cluster kubeconfig",
        Duration::from_secs(300),
        || fetch_kubeconfig(net, &img.cluster, &kubeconfig).ok(),
    )
    .with_context(|| dump(&running(vms)))?;
    let mode = std::fs::metadata(&kubeconfig)?.permissions();
    ensure!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777 == 0o600,
        "admin kubeconfig written with mode {:o}, not 0600",
        std::os::unix::fs::PermissionsExt::mode(&mode)
    );
    let kubectl = Kubectl {
        net,
        bin: kube_bin_dir()?.join("kubectl"),
        kubeconfig: kubeconfig.clone(),
    };
    api_ready(&kubectl, Duration::from_secs(900)).with_context(|| dump(&running(vms)))?;
    let api_at = first_start.elapsed();
    let nodes =
        nodes_ready(&kubectl, 3, Duration::from_secs(900)).with_context(|| dump(&running(vms)))?;
    let ready_at = first_start.elapsed();
    let mut node_ips = std::collections::BTreeMap::new();
    for a in &agents {
        let n = nodes
            .iter()
            .find(|n| n.name == a.hostname)
            .with_context(|| {
                format!(
                    "no Kubernetes node named after agent {} ({}): {nodes:?}",
                    a.hostname, a.node_id
                )
            })?;
        let ip = a.address.split(':').next().unwrap_or_default().to_string();
        ensure!(
            n.internal_ip.as_deref() == Some(ip.as_str()),
            "node {} has InternalIP {:?}, its agent is at {ip}",
            n.name,
            n.internal_ip
        );
        node_ips.insert(n.name.clone(), ip);
    }
    eprintln!(
        "assembly_qemu: Kubernetes API answering through the VIP {:.0} s and all 3 nodes Ready {:.0} s after the first VM's power-on (first seen; kubelet {})",
        api_at.as_secs_f64(),
        ready_at.as_secs_f64(),
        nodes[0].kubelet_version
    );
    for a in &cluster_status(net, &img.cluster)? {
        let s = |step| done_since_power_on(a, step).map_or("-".into(), |s| format!("{s:.0} s"));
        eprintln!(
            "assembly_qemu: {}: apiserver healthy {}, kubelet Ready {} after its power-on (timeline)",
            a.hostname,
            s("kube-control-plane"),
            s("kubelet")
        );
    }

    // 2c. the workload, once the Gluster volume is mounted everywhere
    wait_until(
        "gluster-mount done on every node",
        Duration::from_secs(900),
        || {
            let agents = cluster_status(net, &img.cluster).ok()?;
            (agents.len() == 3
                && agents
                    .iter()
                    .all(|a| step(a, "gluster-mount").is_some_and(|s| s.status == "done")))
            .then_some(())
        },
    )
    .with_context(|| dump(&running(vms)))?;
    kubectl.run_stdin(&["apply", "-f", "-"], &workload_manifest(3))?;
    let pods =
        pods_ready(&kubectl, 3, Duration::from_secs(600)).with_context(|| dump(&running(vms)))?;
    check_workload(net, &kubectl, &pods, &node_ips)?;
    print_memory(&running(vms));

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
    api_ready(&kubectl, Duration::from_secs(300)).with_context(|| dump(&running(vms)))?;
    let api_again = off.elapsed();
    let holder_host = holder_agent.hostname.clone();
    let survivors_pods: Vec<PodState> = pods
        .iter()
        .filter(|p| p.node != holder_host)
        .cloned()
        .collect();
    for p in &survivors_pods {
        let url = format!("http://{}:{NODE_PORT}/", node_ips[&p.node]);
        let body = http(net, "GET", &url, None)
            .with_context(|| format!("the workload on {} after the power-off", p.node))?;
        ensure!(
            body.trim() == format!("{}@{}", p.name, p.node),
            "{url} answered {body:?}"
        );
    }
    eprintln!(
        "assembly_qemu: {holder_host} powered off: the API answered through the VIP again after {:.1} s; the pods on the {} other nodes keep answering",
        api_again.as_secs_f64(),
        survivors_pods.len()
    );
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
    let ready_again = wait_until(
        "the rebooted node Ready again",
        Duration::from_secs(600),
        || {
            let n = kubectl.nodes().ok()?;
            n.iter()
                .find(|n| n.name == holder_host && n.ready)
                .map(|_| back.elapsed())
        },
    )
    .with_context(|| dump(&running(vms)))?;
    eprintln!(
        "assembly_qemu: {holder_host} Ready again {:.0} s after it was booted again",
        ready_again.as_secs_f64()
    );
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
