//! Kubernetes on booted VMs, growing the way a site grows: one machine
//! from the real image with a site file for a one-node cluster
//! (`bootstrap_expect = 1`, control plane 1, storage off) assembles, with
//! no command typed, etcd with TLS, the API VIP, kube-apiserver,
//! kube-controller-manager and kube-scheduler as systemd units from the
//! image's binaries, containerd with the seeded pause image, the kubelet,
//! kube-proxy and the host-gw pod network.
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
//! and the workload answers again.
//!
//! Then two machines are added, side by side, as a rack's machines power on
//! a week later. The namespace is the site's PXE server (dnsmasq's TFTP for
//! the firmware, busybox httpd for iPXE and the image's `pxe/`), and it
//! serves a cluster file of its own (the site file and one line more, so
//! its sha256 tells which file a node read):
//! - node2 has an empty disk and no image: it boots from the network in
//!   live mode (the root image downloaded, checked against its sha256 and
//!   run read-only from RAM, the empty disk formatted for `/var`, the agent
//!   started with the served cluster file the initramfs fetched), joins the
//!   cluster as a worker and becomes a `Ready` Node with no command typed
//!   (issues 10 and 11); the workload scaled to two pods, one per node:
//!   node2's pod reaches node1's pod directly (host-gw routes) and through
//!   the ClusterIP;
//! - node3 has an empty disk too and boots disk first, network second, as
//!   a rack machine does: the site's dnsmasq tags its MAC for
//!   `install.ipxe`, so it writes the disk image's pieces (reading each
//!   back), puts the served cluster file on its ESP, reboots from its own
//!   disk (`/var` on the data partition grown to the disk) and its agent
//!   joins the cluster; the site file (`[[nodes]]` by its MAC, `kubernetes
//!   = false`) tells that agent to stay out of Kubernetes; the test types
//!   what an operator types on a machine the agents do not manage —
//!   containerd started, the seeded archives imported, a CNI config of the
//!   operator's own, and `kubeadm join VIP:6443 --token …
//!   --discovery-token-ca-cert-hash sha256:…` with the plan's bootstrap
//!   token and the CA hash computed with openssl — and it joins: three
//!   Nodes Ready.
//!
//! Last, netboot identity and faults (node3 stopped, so these get the
//! host's cores): node2 is power-cycled and comes back as the same node
//! (same machine-id, `/var` found again, not formatted again, the same
//! member of the cluster again); beside it two machines whose only
//! disk holds data are sent to install and refused ("NO EMPTY DISK", and,
//! for the one whose site script names its disk, the disk and the cause).
//! Then a machine whose only disk holds data comes in by UEFI HTTP boot
//! (no TFTP) while its server first serves a root image with the wrong
//! bytes, then is down: the initrd names each cause, retries, and boots
//! once the right file is back; `/var` is in RAM and the node says so
//! (console, facts, the agent's "worker only" line), and its machine-id is
//! its SMBIOS UUID (node1 stopped too: it needs no cluster). Every data
//! disk holds exactly its data afterwards.
//!
//! Timings (power-on → API through the VIP → node Ready → pod answering;
//! node2's power-on → root image verified → agent → member → Ready;
//! node3's power-on → installed → agent → member; the join) and every
//! node's memory are printed, not asserted.
//!
//! Three control planes are proved in-process and in network namespaces;
//! on a 2-core host without KVM, three emulated control planes starve etcd
//! and Raft (see ARCHITECTURE.md, "Kubernetes").

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use firstboot::state::Role;
use qemu_harness::boot::json_after;
use qemu_harness::cluster::{dump, running, status, step, wait_until, Lab, LabParts, Size};
use qemu_harness::image::{kube_test_image, TEST_SECRET};
use qemu_harness::kube::{
    api_ready, fetch_kubeconfig, http, join_token, kube_bin_dir, kubeadm_join_command, nodes_ready,
    operator_join_script, pods_ready, workload_manifest, Kubectl, NODE_PORT,
};
use qemu_harness::{pxe, vm, TestNet, Vm, Workdir};
use serde_json::Value;
use sha2::{Digest, Sha256};

const VIP: &str = "10.77.0.10";
/// How long a one-shot request (kubectl, HTTP) is retried: the emulated
/// apiserver answers the odd request with a transient error.
const RETRY: Duration = Duration::from_secs(120);
/// node3's console when its disk is written and it reboots into it.
const INSTALLED: &str = "install: /dev/vda written and verified; rebooting into it";
/// The line the site's PXE server adds to the site file it serves: the
/// served file's sha256 is then not the baked one's, so a node's
/// `HABUILD-CLUSTER` line tells which file it read.
const SERVED_MARK: &str = "# served by the site's PXE server (kube_qemu)\n";
/// Machines of the last part (step 8), by MAC index: one that comes in by
/// UEFI HTTP boot with only a data disk (live, /var in RAM), one with only
/// a data disk sent to install, one whose site script names its disk.
const RAM: u8 = 4;
const INSTALL_DATA: u8 = 5;
const INSTALL_NAMED: u8 = 6;
/// The script the site gives [`INSTALL_NAMED`].
const NAMED_DISK_SCRIPT: &str = "install-vda.ipxe";
/// [`RAM`]'s SMBIOS system UUID (QEMU `-uuid`): with /var in RAM its
/// machine-id, so its node id and name, come from it.
const SMBIOS_UUID: &str = "6a0c3f51-9c2e-4b7d-8d1e-0123456789ab";
/// Any boot of the last part, to its awaited line.
const BOOT: Duration = Duration::from_secs(900);

/// The site file: the cluster forms from the first machine alone
/// (`bootstrap_expect = 1`, one control-plane node); machine 3 (by its MAC)
/// is one whose agent stays out of Kubernetes, for the operator's `kubeadm
/// join`.
fn site_file() -> String {
    format!(
        "[cluster]\nname = \"qemu-kube\"\nsecret = \"{TEST_SECRET}\"\nbootstrap_expect = 1\ncontrol_plane_size = 1\n\n[network]\nsubnet = \"10.77.0.0/24\"\nvip = \"{VIP}\"\nmetallb_range = \"10.77.0.200-10.77.0.220\"\n\n[storage]\nenabled = false\n\n[[nodes]]\nmac = \"{}\"\nkubernetes = false\n",
        qemu_harness::vm::mac_address(3)
    )
}

#[test]
fn one_vm_assembles_kubernetes_and_runs_a_seeded_workload() -> Result<()> {
    let img = kube_test_image(&site_file())?;
    // the namespace is also the site's PXE server, for the machines that
    // netboot later: live for every machine but those the site installs
    // (node3, and step 8's), with a cluster file of its own (the site file
    // and one line more)
    let site_dir = Workdir::new("kube-site")?;
    let served = site_dir.join("cluster.toml");
    let served_text = format!("{}{SERVED_MARK}", site_file());
    std::fs::write(&served, &served_text)?;
    let served_sha = hex::encode(Sha256::digest(served_text.as_bytes()));
    let site = pxe::Site {
        install: vec![vm::mac_address(3), vm::mac_address(INSTALL_DATA)],
        cluster: Some(served),
        http_boot: vec![vm::mac_address(RAM)],
        scripts: vec![(vm::mac_address(INSTALL_NAMED), NAMED_DISK_SCRIPT.into())],
        ..pxe::Site::script("boot.ipxe")
    };
    // node1 runs alone for most of the test (steps 1-4): with two vCPUs
    // (multi-threaded TCG) it uses the host's second core, which would
    // otherwise idle; node2 and node3 get one each. Two vCPUs cost the
    // guest kernel its TSC clocksource (it finds the emulated TSCs
    // unsynchronized and falls back to the HPET, a system call and an
    // emulated device read for every clock read of the Go binaries): the
    // test image's `tsc=reliable` (`image::TEST_KERNEL_ARGS`) keeps it
    // (the memory report prints the clocksource). Two
    // vCPUs won even with the HPET: apiserver ready 238 s with two, 422 s
    // with one on an idle host later the same day.
    let node1 = Size {
        memory_mib: 2048,
        cpus: 2,
    };
    let mut lab = Lab::start_serving_pxe("kube", "hbk", 1, img, node1, &site)?;
    let LabParts {
        vms,
        net,
        img,
        work,
        dhcp,
        http: pxe_http,
    } = lab.parts();
    std::fs::write(
        work.join("www/habuild").join(NAMED_DISK_SCRIPT),
        "#!ipxe\nset habuild-install-disk /dev/vda\nchain install.ipxe\n",
    )?;
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
    qemu_harness::guest_cpu::print_memory("kube_qemu", running(vms)[0]);
    qemu_harness::guest_cpu::print("kube_qemu", "with the workload running", &running(vms));

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

    // 5. Machines added later, both with empty disks: node2 boots from the
    // network (live: the root image in RAM, /var on the empty disk) and
    // joins as a worker with no command typed; node3 (boot order disk,
    // then network) is installed over the network, reboots from its disk,
    // and its agent is told (site file, by MAC) to stay out of Kubernetes.
    // Side by side, as a rack's machines power on.
    let node2 = pxe::netboot_spec(net, work, "node2", 2)?;
    vms.push(Some(Vm::start(net, node2, work.path())?));
    let mut node3 = pxe::netboot_spec(net, work, "node3", 3)?;
    node3.extra_args = vm::DISK_THEN_NETWORK.map(String::from).to_vec();
    vms.push(Some(Vm::start(net, node3, work.path())?));
    let worker = vms[1].as_ref().context("node2")?;
    let operator_node = vms[2].as_ref().context("node3")?;
    // node3's milestones as they happen, while the test looks at node2
    let node3_times = {
        let serial = operator_node.serial().clone();
        let started = operator_node.started();
        std::thread::spawn(move || {
            let installed = serial
                .wait_for(INSTALLED, Duration::from_secs(1800))
                .map(|_| (started.elapsed(), serial.len()));
            // (install mode never starts the agent: the first facts and
            // cluster lines are the installed system's)
            let agent = serial
                .wait_for_line_with_prefix("HABUILD-FACTS ", Duration::from_secs(900))
                .map(|line| (started.elapsed(), line))
                .and_then(|(at, facts)| {
                    let cluster = serial
                        .wait_for_line_with_prefix("HABUILD-CLUSTER ", Duration::from_secs(300))?;
                    Ok((at, facts, cluster))
                });
            (installed, agent)
        })
    };
    worker
        .wait_for("live boot: root image verified", Duration::from_secs(900))
        .with_context(|| dump(&running(vms)))?;
    let verified = worker.elapsed();
    let facts = worker
        .wait_for_line_with_prefix("HABUILD-FACTS ", Duration::from_secs(900))
        .with_context(|| dump(&running(vms)))?;
    let agent_up = worker.elapsed();
    ensure!(
        facts.contains("\"root_fstype\":\"erofs\"")
            && facts.contains("\"root_ro\":true")
            && facts.contains("\"var_device\":\"/dev/vda\"")
            && facts.contains("\"live_var\":\"disk /dev/vda\""),
        "node2 is not a live netbooted node (erofs root in RAM, /var on the empty disk): {facts}"
    );
    ensure!(
        worker
            .serial_text()
            .contains("formatting empty /dev/vda as ext4"),
        "node2's empty disk was not formatted for /var"
    );
    let node2_id = json_after(&facts, "HABUILD-FACTS ")?["machine_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(node2_id.len() == 32, "node2's machine-id {node2_id:?}");
    let cluster = json_after(
        &worker.wait_for_line_with_prefix("HABUILD-CLUSTER ", Duration::from_secs(300))?,
        "HABUILD-CLUSTER ",
    )?;
    ensure!(
        cluster["file"] == "/run/habuild/cluster.toml" && cluster["sha256"] == served_sha.as_str(),
        "node2's agent did not read the served cluster file its live boot fetched (sha256 {served_sha}): {cluster}"
    );
    let ip = dhcp.wait_for_lease(&worker.spec().mac, RETRY)?.ip;
    let members = wait_until(
        "node2 a member of the cluster",
        Duration::from_secs(900),
        || {
            let st = status(net, &img.cluster).ok()?;
            let me = st
                .agents
                .iter()
                .find(|a| a.address.starts_with(&format!("{ip}:")))?;
            (me.role == Some(Role::Worker)).then(|| (me.hostname.clone(), me.node_id.clone()))
        },
    )
    .with_context(|| dump(&running(vms)))?;
    let (members, node2_member) = members;
    let member_at = worker.elapsed();
    let live_var = status(net, &img.cluster)?
        .agents
        .into_iter()
        .find(|a| a.hostname == members)
        .and_then(|a| a.live_var);
    ensure!(
        live_var.as_deref() == Some("disk /dev/vda"),
        "habuild cluster status does not show node2's /var on its disk: {live_var:?}"
    );
    let two =
        nodes_ready(&kubectl, 2, Duration::from_secs(1800)).with_context(|| dump(&running(vms)))?;
    let ready_at = worker.elapsed();
    let w = two
        .iter()
        .find(|n| n.name == members)
        .with_context(|| format!("no Node {members} in {two:?}"))?;
    eprintln!(
        "kube_qemu: node2 ({}, netbooted live): power-on → root image downloaded and verified {:.0} s → agent running {:.0} s → cluster member (worker {}) {:.0} s → Node Ready at {} {:.0} s",
        worker.accel(),
        verified.as_secs_f64(),
        agent_up.as_secs_f64(),
        members,
        member_at.as_secs_f64(),
        w.internal_ip.as_deref().unwrap_or("?"),
        ready_at.as_secs_f64()
    );

    // 6. The workload on both agent-managed nodes (before node3 joins):
    // one pod per node, pod-to-pod across nodes, the ClusterIP answered by
    // the other node's pod, the NodePort on the new node.
    kubectl.retrying(&["scale", "deployment", "web", "--replicas=2"], "", RETRY)?;
    let pods =
        pods_ready(&kubectl, 2, Duration::from_secs(900)).with_context(|| dump(&running(vms)))?;
    let on_worker = pods
        .iter()
        .find(|p| p.node == members)
        .context("no pod on node2")?;
    let on_cp = pods
        .iter()
        .find(|p| p.node != members)
        .context("no pod on node1")?;
    ensure!(
        on_worker.ip.starts_with("10.244.") && on_worker.ip != on_cp.ip,
        "{pods:?}"
    );
    let wbase = format!(
        "http://{}:{NODE_PORT}",
        w.internal_ip.as_deref().context("node2 address")?
    );
    let via = wait_until("node2's pod fetching node1's pod", RETRY, || {
        http(
            net,
            "GET",
            &format!("{wbase}/fetch?url=http://{}:8080/", on_cp.ip),
            None,
        )
        .ok()
    })?;
    ensure!(
        via.contains(&on_cp.name),
        "pod-to-pod across nodes answered {via:?}"
    );
    // the Service picks a backend at random per connection: ask until
    // node1's pod answers (the answers seen are in the error otherwise)
    let mut seen = Vec::new();
    let across = wait_until("the ClusterIP answered from the other node", RETRY, || {
        let v = http(
            net,
            "GET",
            &format!("{wbase}/fetch?url=http://{}/", cluster_ip.trim()),
            None,
        );
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                seen.push(format!("{e:#}"));
                return None;
            }
        };
        if v.trim()
            .ends_with(&format!("{}@{}", on_cp.name, on_cp.node))
        {
            return Some(v);
        }
        seen.push(v.trim().to_string());
        None
    })
    .with_context(|| format!("answers seen: {seen:?}"))?;
    eprintln!(
        "kube_qemu: pods on both nodes; node2's pod reached node1's pod directly ({}) and through ClusterIP {} ({})",
        via.trim(),
        cluster_ip.trim(),
        across.trim()
    );

    // 7. An operator's `kubeadm join` on node3, whose agent stays out of
    // Kubernetes: the plan's bootstrap token (read with the admin
    // kubeconfig) and the CA's public-key hash, typed as the docs say.
    let (installed, agent) = node3_times
        .join()
        .map_err(|_| anyhow::anyhow!("node3's watcher panicked"))?;
    let (installed, mark) = installed.with_context(|| dump(&running(vms)))?;
    let (agent_at, facts, cluster) = agent.with_context(|| dump(&running(vms)))?;
    check_installed(operator_node, mark, &facts, &cluster, &served_sha)?;
    let node3_ip = dhcp.wait_for_lease(&operator_node.spec().mac, RETRY)?.ip;
    let node3 = wait_until(
        "node3 a member, Kubernetes not its agent's business",
        Duration::from_secs(900),
        || {
            let st = status(net, &img.cluster).ok()?;
            let me = st
                .agents
                .iter()
                .find(|a| a.address.starts_with(&format!("{node3_ip}:")))?;
            let kubelet = step(me, "kubelet")?;
            (kubelet.status == "not-here").then(|| me.hostname.clone())
        },
    )
    .with_context(|| dump(&running(vms)))?;
    eprintln!(
        "kube_qemu: node3 ({}, installed over the network): power-on → disk written and verified {:.0} s → agent running from its disk {:.0} s; a cluster member ({node3}, Kubernetes off) when the test looked, {:.0} s",
        operator_node.accel(),
        installed.as_secs_f64(),
        agent_at.as_secs_f64(),
        operator_node.elapsed().as_secs_f64()
    );
    let join = kubeadm_join_command(&kubectl, &kubeconfig)?;
    let t = Instant::now();
    let out = operator_node
        .guest()
        .sh(&operator_join_script(&join), Duration::from_secs(1200))?;
    ensure!(
        out.code == 0,
        "kubeadm join on node3 failed (exit {}):\n{}\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    ensure!(
        out.stdout.contains("This node has joined the cluster"),
        "kubeadm join did not say it joined:\n{}",
        out.stdout
    );
    let three =
        nodes_ready(&kubectl, 3, Duration::from_secs(900)).with_context(|| dump(&running(vms)))?;
    ensure!(
        three.iter().any(|n| n.name == node3),
        "no Node {node3} in {three:?}"
    );
    eprintln!(
        "kube_qemu: `{}` on node3 ({node3}): joined and Ready {:.0} s after it was typed",
        join.replace(&join_token(&join), "<token>"),
        t.elapsed().as_secs_f64()
    );
    for vm in running(vms) {
        qemu_harness::guest_cpu::print_memory("kube_qemu", vm);
    }

    // 8. Netboot identity and faults: node3 is done with (stopped, so the
    // machines below have the cores); node2 is power-cycled and rejoins
    // node1's cluster as the same member; then node1 is stopped too, for
    // machines that need no cluster.
    if let Some(vm) = vms[2].take() {
        vm.kill()?;
    }
    let node2 = vms[1].take().context("node2")?;
    let again = Node2 {
        vm: node2,
        machine_id: &node2_id,
        member: &node2_member,
        ip,
    };
    netboot_again_and_refusals(net, work, &img.cluster, again)?;
    if let Some(vm) = vms[0].take() {
        vm.kill()?;
    }
    data_disk_live_through_server_faults(net, work, pxe_http)?;
    Ok(())
}

/// node2 as step 8 finds it: its VM, machine-id, member (node id) and
/// address.
struct Node2<'a> {
    vm: Vm,
    machine_id: &'a str,
    member: &'a str,
    ip: std::net::Ipv4Addr,
}

/// node3's installed system (`mark`: its console's length when the
/// installer rebooted; `facts`, `cluster`: the installed system's first
/// lines): written pieces and the served cluster file named by the
/// installer, a read-only root and /var on the data partition grown to the
/// disk, the served cluster file read from the ESP, and the second boot
/// from the disk, not the network.
fn check_installed(vm: &Vm, mark: u64, facts: &str, cluster: &str, served_sha: &str) -> Result<()> {
    let log = std::fs::read(vm.serial_path())?;
    let (before, after) = log.split_at((mark as usize).min(log.len()));
    let (before, after) = (
        String::from_utf8_lossy(before),
        String::from_utf8_lossy(after),
    );
    ensure!(
        before.contains("install: the cluster file from http://"),
        "the served cluster file was not put on node3's ESP: {}",
        vm.serial().tail(40)
    );
    for piece in ["esp.img", "root.img"] {
        ensure!(
            before.contains(&format!("install: {piece} (")),
            "{piece} was not written: {}",
            vm.serial().tail(40)
        );
    }
    ensure!(
        !before.contains("INSTALL FAILED"),
        "{}",
        vm.serial().tail(40)
    );
    let f = json_after(facts, "HABUILD-FACTS ")?;
    ensure!(
        f["root_ro"] == Value::Bool(true) && f["var_device"] == "/dev/vda4",
        "node3 did not come up from the disk it installed (read-only root, /var on its data partition): {f}"
    );
    // 256 MiB in the image; grown, the rest of the 8 GiB disk after the ESP
    // and the two root slots (~4.7 GiB)
    let grown = f["var_partition_bytes"].as_u64().unwrap_or(0);
    ensure!(
        grown > 4 << 30,
        "node3's data partition was not grown to its 8 GiB disk: {f}"
    );
    let c = json_after(cluster, "HABUILD-CLUSTER ")?;
    ensure!(
        c["file"] == "/boot/efi/habuild/cluster.toml" && c["sha256"] == served_sha,
        "node3's agent did not read the served cluster file (sha256 {served_sha}) from its ESP: {c}"
    );
    ensure!(
        !after.contains("live boot:") && !after.contains("install: writing"),
        "node3's second boot came over the network, not from its disk"
    );
    Ok(())
}

/// Step 8, first half, three machines side by side: node2 (live, /var on
/// its disk) is power-cycled and comes back as the same node (same
/// machine-id, /var found again by its label, not formatted again, the
/// same member of the cluster again, as a worker); two
/// machines whose only disk holds data are sent to install: one is
/// refused with "NO EMPTY DISK", the other, whose site script names the
/// disk (`habuild-install-disk`), is refused naming the disk and the
/// cause; both disks hold exactly their data afterwards.
fn netboot_again_and_refusals(
    net: &TestNet,
    work: &Workdir,
    cluster: &std::path::Path,
    node2: Node2,
) -> Result<()> {
    let Node2 {
        vm: node2,
        machine_id: id,
        member,
        ip,
    } = node2;
    let spec = node2.spec().clone();
    node2.kill()?;
    drop(node2);
    let again = Vm::start(net, spec, work.path())?;
    let mut refused = Vec::new();
    for (name, i) in [("instdata", INSTALL_DATA), ("instnamed", INSTALL_NAMED)] {
        let disk = pxe::disk_with_data(work, name)?;
        let mut spec = pxe::netboot_spec_on(net, name, i, &disk)?;
        spec.extra_args = vm::DISK_THEN_NETWORK.map(String::from).to_vec();
        refused.push((Vm::start(net, spec, work.path())?, disk));
    }
    let facts = json_after(
        &again.wait_for_line_with_prefix("HABUILD-FACTS ", BOOT)?,
        "HABUILD-FACTS ",
    )?;
    ensure!(
        facts["machine_id"] == id,
        "node2's machine-id changed across the power cycle: {id} -> {}",
        facts["machine_id"]
    );
    ensure!(
        !again.serial_text().contains("formatting empty"),
        "node2's /var was formatted again on its second boot"
    );
    let agent_at = again.elapsed();
    wait_until(
        "node2 the same cluster member again after its power cycle",
        Duration::from_secs(600),
        || {
            let st = status(net, cluster).ok()?;
            st.agents
                .iter()
                .any(|a| {
                    a.node_id == member
                        && a.address.starts_with(&format!("{ip}:"))
                        && a.role == Some(Role::Worker)
                })
                .then_some(())
        },
    )
    .with_context(|| dump(&[&again]))?;
    eprintln!(
        "kube_qemu: node2 power-cycled: agent running {:.0} s after power-on (same machine-id, /var kept), the same member {member} again {:.0} s",
        agent_at.as_secs_f64(),
        again.elapsed().as_secs_f64()
    );
    again.kill()?;
    let (data, named) = (&refused[0], &refused[1]);
    data.0
        .wait_for("habuild-initrd: INSTALL FAILED: NO EMPTY DISK", BOOT)?;
    let data_at = data.0.elapsed();
    let line = named
        .0
        .wait_for_line_with_prefix("habuild-initrd: INSTALL FAILED: ", BOOT)?;
    ensure!(
        line.contains(
            "habuild.install_disk=/dev/vda is not empty (its first MiB is not all zeros)"
        ),
        "the refusal of the machine whose site names its disk does not name the disk and the cause: {line}"
    );
    let named_at = named.0.elapsed();
    for (vm, disk) in &refused {
        vm.kill()?;
        pxe::check_data_untouched(disk)?;
    }
    eprintln!(
        "kube_qemu: only a data disk, sent to install: refused {:.0} s after power-on (NO EMPTY DISK); with the disk named by the site: refused {:.0} s ({}); both disks untouched",
        data_at.as_secs_f64(),
        named_at.as_secs_f64(),
        line.split("INSTALL FAILED: ").nth(1).unwrap_or_default()
    );
    Ok(())
}

/// Step 8, second half: a machine whose only disk holds data comes in by
/// UEFI HTTP boot (no TFTP: the firmware fetches `ipxe.efi` from the HTTP
/// server). Its server first serves a root image with the wrong bytes,
/// then goes down: the initrd names each cause on the console, retries,
/// and boots once the right file is back. The disk is never written,
/// /var is in RAM and the node says so (console, `live_var` in its facts,
/// the agent's "worker only" line), and its machine-id is its SMBIOS UUID.
fn data_disk_live_through_server_faults(
    net: &TestNet,
    work: &Workdir,
    http: &mut Option<pxe::Http>,
) -> Result<()> {
    let root = work.join("www/habuild/root.img");
    let real_root = std::fs::read_link(&root).context("the served root.img is a link")?;
    std::fs::remove_file(&root)?;
    std::fs::write(&root, vec![0xa5u8; 1 << 20])?;
    let disk = pxe::disk_with_data(work, "ram")?;
    let mut spec = pxe::netboot_spec_on(net, "ram", RAM, &disk)?;
    spec.extra_args = [
        "-uuid",
        SMBIOS_UUID,
        // the firmware's own network stack, as on a rack machine: without
        // the NIC's option ROM (QEMU's is iPXE, which would answer
        // first), and IPv4 only (OVMF's PXE over IPv6 waits minutes for a
        // DHCPv6 server before HTTP boot gets its turn)
        "-global",
        "virtio-net-pci.romfile=",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6Support,string=no",
    ]
    .map(String::from)
    .to_vec();
    let vm = Vm::start(net, spec, work.path())?;
    let uri = vm.wait_for_line_with_prefix("URI: http://", BOOT)?;
    ensure!(
        uri.contains("/habuild/ipxe.efi"),
        "the data-disk machine's firmware did not HTTP-boot the served ipxe.efi: {uri}"
    );
    let http_booted = vm.elapsed();
    let wrong = vm.wait_for_line_with_prefix("root.img has sha256 ", BOOT)?;
    ensure!(
        wrong.contains("was expected (attempt 1); discarded, retrying in 2s"),
        "the wrong root image's line: {wrong}"
    );
    let wrong_at = vm.elapsed();
    drop(http.take());
    let mark = vm.serial_len();
    let down = vm.wait_for_line_with_prefix_after(
        mark,
        "root.img failed (attempt ",
        Duration::from_secs(120),
    )?;
    ensure!(
        down.contains("Connection refused") || down.contains("can't connect"),
        "the line for a server that is down does not name the cause: {down}"
    );
    let down_at = vm.elapsed();
    std::fs::remove_file(&root)?;
    std::os::unix::fs::symlink(&real_root, &root)?;
    *http = Some(pxe::serve(net, &work.join("www"))?);
    vm.wait_for_after(mark, "live boot: root image verified", BOOT)?;
    let verified = vm.elapsed();
    vm.wait_for("live boot: NO USABLE DISK: /var is in RAM", BOOT)?;
    let machine_id = SMBIOS_UUID.replace('-', "");
    vm.wait_for(
        &format!("identity from the SMBIOS UUID (machine-id {machine_id})"),
        Duration::from_secs(60),
    )?;
    let f = json_after(
        &vm.wait_for_line_with_prefix("HABUILD-FACTS ", BOOT)?,
        "HABUILD-FACTS ",
    )?;
    ensure!(
        f["var_device"].is_null()
            && f["live_var"]
                .as_str()
                .is_some_and(|v| v.starts_with("ram: no empty local disk")),
        "the data-disk machine does not report /var in RAM: {f}"
    );
    ensure!(
        f["machine_id"] == machine_id.as_str(),
        "its machine-id is not its SMBIOS UUID {SMBIOS_UUID}: {f}"
    );
    vm.wait_for(
        "habuild-agent: /var is in RAM (no empty local disk",
        Duration::from_secs(300),
    )?;
    let line =
        vm.wait_for_line_with_prefix("a Raft voter); after a reboot it ", Duration::from_secs(10))?;
    ensure!(
        line.contains("rejoins as the same node with its state gone"),
        "{line}"
    );
    let agent = vm.elapsed();
    vm.kill()?;
    drop(vm);
    pxe::check_data_untouched(&disk)?;
    eprintln!(
        "kube_qemu: data-disk machine: UEFI HTTP boot of ipxe.efi {:.0} s, wrong root image named and discarded {:.0} s, server down named {:.0} s, root verified once served again {:.0} s; its only disk left untouched, /var in RAM, machine-id from its SMBIOS UUID, the agent says it is a worker only ({:.0} s after power-on)",
        http_booted.as_secs_f64(),
        wrong_at.as_secs_f64(),
        down_at.as_secs_f64(),
        verified.as_secs_f64(),
        agent.as_secs_f64()
    );
    Ok(())
}
