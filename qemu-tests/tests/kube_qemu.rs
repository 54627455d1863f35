//! Kubernetes on a booted VM: one machine from the real image with a site
//! file for a one-node cluster (`bootstrap_expect = 1`, control plane 1,
//! storage off) assembles, with no command typed, etcd with TLS, the API
//! VIP, kube-apiserver, kube-controller-manager and kube-scheduler as
//! systemd units from the image's binaries, containerd with the seeded pause
//! image, the kubelet, kube-proxy and the host-gw pod network.
//!
//! Checked from the test namespace as an operator would: the admin
//! kubeconfig from `habuild cluster kubeconfig` (mode 0600, server
//! `https://VIP:6443`), `kubectl` (the one built for the image) through the
//! VIP: `/readyz`, the node `Ready` under the agent's hostname with its
//! cluster address; `habuild cluster status` showing it `cp+Ready`. A
//! workload from an OCI archive baked into the image through the profile's
//! `[images] archives` (the test's static Go server, packed by habuild's
//! OCI writer; `imagePullPolicy: Never`, no registry) runs with an address
//! from the node's pod CIDR in the plan, answers on its NodePort from the
//! namespace (kube-proxy's iptables rules), reaches its own ClusterIP
//! Service from inside the pod, and writes and reads a hostPath file. The
//! kubelet is then killed: a new kubelet process runs, the node is `Ready`
//! and the workload answers again. Timings (power-on → API through the VIP → node Ready → pod
//! answering) and the node's memory are printed, not asserted.
//!
//! Three control planes are proved in-process and in network namespaces;
//! on a 2-core host without KVM, three emulated control planes starve etcd
//! and Raft (see ARCHITECTURE.md, "Kubernetes").

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use qemu_harness::cluster::{dump, running, status, wait_until, Lab};
use qemu_harness::image::{kube_test_image, TEST_SECRET};
use qemu_harness::kube::{
    api_ready, fetch_kubeconfig, http, kube_bin_dir, nodes_ready, pods_ready, workload_manifest,
    Kubectl, NODE_PORT,
};
use qemu_harness::Vm;

const VIP: &str = "10.77.0.10";
/// How long a one-shot request (kubectl, HTTP) is retried: the emulated
/// apiserver answers the odd request with a transient error.
const RETRY: Duration = Duration::from_secs(120);

fn one_node_cluster() -> String {
    format!(
        "[cluster]\nname = \"qemu-kube\"\nsecret = \"{TEST_SECRET}\"\nbootstrap_expect = 1\ncontrol_plane_size = 1\n\n[network]\nsubnet = \"10.77.0.0/24\"\nvip = \"{VIP}\"\nmetallb_range = \"10.77.0.200-10.77.0.220\"\n\n[storage]\nenabled = false\n"
    )
}

/// The node's memory with the whole stack running, through the guest agent.
fn print_memory(vm: &Vm) {
    match vm.guest().sh(
        "ps -eo rss=,comm= --sort=-rss | head -n 10; grep -E 'MemTotal|MemAvailable' /proc/meminfo",
        Duration::from_secs(60),
    ) {
        Ok(o) => {
            let lines: Vec<String> = o
                .stdout
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            eprintln!("kube_qemu: memory (RSS KiB, command): {}", lines.join("; "));
        }
        Err(e) => eprintln!("kube_qemu: memory not read: {e:#}"),
    }
}

#[test]
fn one_vm_assembles_kubernetes_and_runs_a_seeded_workload() -> Result<()> {
    let img = kube_test_image(&one_node_cluster())?;
    let mut lab = Lab::start_with("kube", "hbk", 1, img, 2048)?;
    let (vms, net, img, work, _) = lab.parts();
    let vm_started = running(vms)[0].started();

    // 1. the agent says the kubelet is Ready, on its console
    running(vms)[0]
        .wait_for(
            "habuild-agent: step kubelet done",
            Duration::from_secs(1800),
        )
        .with_context(|| dump(&running(vms)))?;
    let kubelet_done = vm_started.elapsed();

    // 2. the admin kubeconfig from the agents, kubectl through the VIP
    let kubeconfig = work.join("admin.conf");
    wait_until(
        "habuild cluster kubeconfig",
        Duration::from_secs(120),
        || fetch_kubeconfig(net, &img.cluster, &kubeconfig).ok(),
    )
    .with_context(|| dump(&running(vms)))?;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kubeconfig)?.permissions());
    ensure!(
        mode & 0o777 == 0o600,
        "admin kubeconfig mode {:o}",
        mode & 0o777
    );
    let text = std::fs::read_to_string(&kubeconfig)?;
    ensure!(
        text.contains(&format!("server: https://{VIP}:6443\n")),
        "the kubeconfig does not name the VIP:\n{text}"
    );
    let kubectl = Kubectl {
        net,
        bin: kube_bin_dir()?.join("kubectl"),
        kubeconfig: kubeconfig.clone(),
    };
    api_ready(&kubectl, Duration::from_secs(300)).with_context(|| dump(&running(vms)))?;
    let nodes =
        nodes_ready(&kubectl, 1, Duration::from_secs(300)).with_context(|| dump(&running(vms)))?;
    let agent = qemu_harness::cluster::agents(net, &img.cluster)?
        .into_iter()
        .next()
        .context("no agent answers")?;
    let ip = agent
        .address
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    ensure!(
        nodes[0].name == agent.hostname && nodes[0].internal_ip.as_deref() == Some(ip.as_str()),
        "node {:?} is not the agent's {} at {ip}",
        nodes[0],
        agent.hostname
    );
    eprintln!(
        "kube_qemu: {} ({}) Ready, kubelet {}: the agent reported it {:.0} s after VM start",
        nodes[0].name,
        ip,
        nodes[0].kubelet_version,
        kubelet_done.as_secs_f64()
    );
    // status shows the node cp+Ready (a round of the chain may briefly show
    // the kubelet step held back while an earlier step re-checks)
    let mut last = None;
    let seen = wait_until(
        "status showing the node cp+Ready",
        Duration::from_secs(300),
        || {
            let kube = status(net, &img.cluster).ok()?.kubernetes?;
            let ok = kube.nodes_ready == 1
                && kube
                    .nodes
                    .iter()
                    .any(|n| n.hostname == agent.hostname && n.kube == "cp+Ready");
            last = Some(kube.clone());
            ok.then_some(kube)
        },
    );
    seen.with_context(|| format!("last status kubernetes view: {last:?}"))?;
    if let Some(t) = &agent.timeline {
        let since = |step: &str| {
            t.steps
                .iter()
                .find(|s| s.step == step)
                .and_then(|s| s.done)
                .zip(t.power_on)
                .map_or("-".to_string(), |(d, p)| format!("{:.0} s", d - p))
        };
        eprintln!(
            "kube_qemu: since power-on (timeline): etcd healthy {}, VIP {}, apiserver ready {}, kubelet Ready {}, kube-proxy {}",
            since("etcd"),
            since("vip"),
            since("kube-control-plane"),
            since("kubelet"),
            since("kube-proxy")
        );
    }

    // 3. the seeded workload: pod CIDR, NodePort, ClusterIP, hostPath
    let t = Instant::now();
    kubectl.retrying(
        &["apply", "-f", "-"],
        &workload_manifest(1, "/var/lib/habuild-test-data"),
        RETRY,
    )?;
    let pods =
        pods_ready(&kubectl, 1, Duration::from_secs(600)).with_context(|| dump(&running(vms)))?;
    let pod = &pods[0];
    ensure!(
        pod.ip.starts_with("10.244."),
        "pod {} has {} outside the plan's pod network 10.244.0.0/16",
        pod.name,
        pod.ip
    );
    let base = format!("http://{ip}:{NODE_PORT}");
    let body = wait_until("the NodePort answering", Duration::from_secs(120), || {
        http(net, "GET", &format!("{base}/"), None).ok()
    })?;
    ensure!(
        body.trim() == format!("{}@{}", pod.name, pod.node),
        "NodePort {NODE_PORT} answered {body:?}"
    );
    eprintln!(
        "kube_qemu: pod {} at {} Ready and answering on NodePort {NODE_PORT} {:.0} s after the apply",
        pod.name,
        pod.ip,
        t.elapsed().as_secs_f64()
    );
    let cluster_ip = kubectl.retrying(
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
        "",
        RETRY,
    )?;
    let via = wait_until("the ClusterIP from inside the pod", RETRY, || {
        http(
            net,
            "GET",
            &format!("{base}/fetch?url=http://{}/", cluster_ip.trim()),
            None,
        )
        .ok()
    })?;
    ensure!(
        via.trim() == format!("{0}@{1} -> {0}@{1}", pod.name, pod.node),
        "the ClusterIP Service {cluster_ip} from inside the pod answered {via:?}"
    );
    let content = format!("written by {}", pod.name);
    wait_until("the hostPath write", RETRY, || {
        http(
            net,
            "POST",
            &format!("{base}/file?path=/data/hello"),
            Some(&content),
        )
        .ok()
    })?;
    let read = wait_until("the hostPath read", RETRY, || {
        http(net, "GET", &format!("{base}/file?path=/data/hello"), None).ok()
    })?;
    ensure!(read == content, "hostPath read {read:?}, wrote {content:?}");
    eprintln!(
        "kube_qemu: ClusterIP {} reached from the pod; hostPath written and read",
        cluster_ip.trim()
    );
    print_memory(running(vms)[0]);

    // 4. the kubelet killed: back to Ready, the workload still answers
    let vm = running(vms)[0];
    let main_pid = |vm: &Vm| -> Option<u32> {
        let o = vm
            .guest()
            .sh(
                "systemctl show -p MainPID --value kubelet.service",
                Duration::from_secs(60),
            )
            .ok()?;
        o.stdout.trim().parse().ok().filter(|p| *p != 0)
    };
    let before = wait_until("the kubelet's main PID", RETRY, || main_pid(vm))?;
    vm.guest()
        .sh(
            "systemctl kill -s KILL kubelet.service",
            Duration::from_secs(60),
        )?
        .check("killing the kubelet")?;
    let killed = Instant::now();
    let after = wait_until("a new kubelet process", Duration::from_secs(300), || {
        main_pid(vm).filter(|p| *p != before)
    })
    .with_context(|| dump(&running(vms)))?;
    eprintln!(
        "kube_qemu: kubelet {before} killed, {after} running {:.0} s later",
        killed.elapsed().as_secs_f64()
    );
    nodes_ready(&kubectl, 1, Duration::from_secs(600)).with_context(|| dump(&running(vms)))?;
    let again = wait_until(
        "the NodePort answering after the kubelet kill",
        Duration::from_secs(300),
        || http(net, "GET", &format!("{base}/"), None).ok(),
    )?;
    ensure!(
        again.trim().ends_with(&format!("@{}", pod.node)),
        "{again:?}"
    );
    eprintln!(
        "kube_qemu: kubelet killed: node Ready and the workload answering again after {:.0} s",
        killed.elapsed().as_secs_f64()
    );
    ensure!(
        !qemu_harness::cluster::status_text(net, &img.cluster, &[])?.contains(TEST_SECRET),
        "status leaks the secret"
    );
    Ok(())
}
