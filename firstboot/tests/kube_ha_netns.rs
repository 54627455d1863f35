//! The HA Kubernetes control plane across network namespaces: three real
//! `habuild-agent` processes (testlab's [`Lab`]: one namespace and one root
//! directory per node, services as supervised child processes) assemble
//! etcd, the VIP and then the *real* kube-apiserver, kube-controller-manager
//! and kube-scheduler (Kubernetes 1.20.2 from `scripts/build-kube`, linked
//! into each node root's `usr/bin`), and the VIP holder loses power.
//!
//! `three_control_planes_answer_through_the_vip_and_survive_the_holders_power_off`:
//! 1. `kube-control-plane` and `kube-bootstrap` done on all three; each
//!    node's own apiserver answers `/readyz`;
//! 2. through `https://VIP:6443` with the agents' `admin.conf`, from
//!    a client host on the L2 (not a node): `/readyz`, `/version`, a ConfigMap
//!    written and read back; the controller-manager and scheduler leader leases name
//!    one of the nodes; `cluster-info` carries the bootstrapsigner's
//!    `jws-kubeconfig-<token id>` (token discovery of `kubeadm join` works);
//! 3. the VIP holder powered off (every process of its namespace killed):
//!    the API answers through the VIP again, the ConfigMap is still there, a
//!    new write succeeds (etcd 2 of 3), and a leader lease the dead node held
//!    moves to a survivor (times printed, not asserted);
//! 4. the node powered on again (its `/run` emptied, as a reboot does): its
//!    `kube-control-plane` is done again and its apiserver answers, with the
//!    data written while it was away;
//! 5. unless step 3 already moved the controller-manager's lease, its
//!    leader is powered off too: its leases move to a survivor and a write
//!    through the VIP succeeds.
//!
//! Only the control-plane binaries and kubectl are linked, not the kubelet
//! or kube-proxy (no containerd in a namespace): the node-side steps, later
//! in the chain, refuse with "no Kubernetes binaries", which is fine here.
//!
//! Each agent runs in its own UTS namespace (testlab); the test sets the
//! kernel hostname there to the node's name, as the agent does on a node it
//! owns, so the leader-election identities (`<hostname>_<uuid>`) tell the
//! nodes apart.
//!
//! Network rule: all traffic stays inside the namespaces created here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use firstboot::protocol::{hex, StatusDoc};
use testlab::{wait_until, AgentArgs, Lab, Netns};

const SECRET: &str = "4444444444444444444444444444444444444444444444444444444444444444";

/// The agent binary cargo built for these tests.
const AGENT: &str = env!("CARGO_BIN_EXE_habuild-agent");

/// Linked into every node root's `usr/bin`: the control plane and kubectl.
const KUBE_BINS: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// The site file: three nodes, control plane 3, storage off (Kubernetes
/// on by default).
fn cluster_toml(lab: &Lab) -> String {
    let [a, b, c, _] = lab.net().bridge_addr().octets();
    testlab::ClusterToml::lab_without_storage("kha", SECRET, 3, [a, b, c])
}

fn node_id(i: usize) -> u64 {
    0x3000 + i as u64
}

fn hostname(i: usize) -> String {
    format!("node{i}")
}

fn root(lab: &Lab, i: usize) -> PathBuf {
    lab.node_dir(i).join("root")
}

/// The `--net` part of the lab's addresses, e.g. "10.94.0".
fn net(lab: &Lab) -> String {
    let o = lab.net().bridge_addr().octets();
    format!("{}.{}.{}", o[0], o[1], o[2])
}

/// The directory of the Kubernetes binaries `scripts/build-kube` prints
/// (building them once on a fresh machine: minutes of Go). No binaries is a
/// failure, never a skip.
fn kube_bin_dir() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-kube");
    let o = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/build-kube ({}): {e}", script.display()));
    assert!(
        o.status.success(),
        "scripts/build-kube failed ({}): this test needs its Kubernetes binaries",
        o.status
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let dir = PathBuf::from(text.lines().last().unwrap_or("").trim());
    for b in KUBE_BINS {
        assert!(
            dir.join(b).is_file(),
            "scripts/build-kube printed {:?} but {b} is not there",
            dir
        );
    }
    dir
}

/// Links the control-plane binaries and kubectl into node `i`'s `usr/bin`.
fn link_binaries(lab: &Lab, i: usize, bin: &Path) {
    let dir = root(lab, i).join("usr/bin");
    std::fs::create_dir_all(&dir).unwrap();
    for b in KUBE_BINS {
        std::os::unix::fs::symlink(bin.join(b), dir.join(b))
            .unwrap_or_else(|e| panic!("linking {b} into {}: {e}", dir.display()));
    }
}

/// Runs `argv` inside namespace `ns`.
fn exec_in(ns: &Netns, argv: &[&str]) -> Output {
    ns.exec(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("ip netns exec {} {argv:?}: {e}", ns.name()))
}

/// Sets the kernel hostname in node `i`'s agent's own UTS namespace (never
/// the test host's: it waits until the agent runs in a UTS namespace other
/// than this process's).
fn set_hostname(lab: &Lab, i: usize) {
    let pid = lab.agent_pid(i).expect("the agent runs");
    let ours = std::fs::read_link("/proc/self/ns/uts").unwrap();
    let agent = std::fs::canonicalize(AGENT).unwrap();
    wait_until(
        "the agent in its own UTS namespace",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            let uts = std::fs::read_link(format!("/proc/{pid}/ns/uts")).ok()?;
            (exe == agent && uts != ours).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("node{i}: {e}"));
    let o = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-u", "hostname", &hostname(i)])
        .output()
        .expect("nsenter not found");
    assert!(
        o.status.success(),
        "setting node{i}'s hostname: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn start(lab: &mut Lab, i: usize, file: &Path) {
    let r = root(lab, i);
    let args = AgentArgs::new(Path::new(AGENT), file, node_id(i), &hostname(i))
        .args(["--root".as_ref(), r.as_os_str()])
        .args(["--services", "supervise"]);
    lab.start(i, &args)
        .unwrap_or_else(|e| panic!("starting node{i}: {e}"));
    set_hostname(lab, i);
}

fn step_status(s: &StatusDoc, step: &str) -> Option<String> {
    s.steps
        .iter()
        .find(|v| v.step == step)
        .map(|v| v.status.clone())
}

fn all_step(statuses: &[Option<StatusDoc>], step: &str, want: &str) -> bool {
    statuses
        .iter()
        .all(|s| s.as_ref().and_then(|s| step_status(s, step)).as_deref() == Some(want))
}

/// Waits until `pred` holds for the statuses of `nodes`; returns the elapsed time.
fn wait_for(
    lab: &Lab,
    nodes: &[usize],
    what: &str,
    limit: Duration,
    pred: impl Fn(&[Option<StatusDoc>]) -> bool,
) -> Duration {
    let t0 = Instant::now();
    wait_until(what, limit, Duration::from_millis(500), || {
        pred(&lab.statuses(nodes)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.dump(nodes)));
    t0.elapsed()
}

/// kubectl (the linked one) run in `ns` with `kubeconfig`: success and
/// stdout, or the failure's text.
fn kubectl(ns: &Netns, bin: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let mut argv: Vec<String> = vec![
        bin.join("kubectl").display().to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
        "--request-timeout=10s".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let o = exec_in(ns, &refs);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// Retries `f` every 500 ms until it gives a value or `limit` passes.
fn retry<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if t0.elapsed() >= limit => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The node whose name `identity` (`<hostname>_<uuid>`) starts with.
fn node_of(identity: &str) -> Option<usize> {
    let host = identity.split('_').next()?;
    (0..3).find(|i| hostname(*i) == host)
}

/// The holder of the leader lease `name` in kube-system, and which node it is.
fn lease_holder(
    ns: &Netns,
    bin: &Path,
    conf: &Path,
    name: &str,
) -> Result<(String, usize), String> {
    let id = kubectl(
        ns,
        bin,
        conf,
        &[
            "-n",
            "kube-system",
            "get",
            "lease",
            name,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )?;
    let node = node_of(&id).ok_or_else(|| format!("lease {name} held by {id:?}"))?;
    Ok((id, node))
}

/// The pids of processes whose command line names a path under `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let o = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .expect("pgrep not found");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Resident memory of node `i`'s control-plane processes, for the log.
fn rss(lab: &Lab, i: usize) -> String {
    let r = root(lab, i);
    KUBE_BINS[..3]
        .iter()
        .map(|b| {
            let mb: u64 = processes_under(&r.join("usr/bin").join(b))
                .iter()
                .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
                .filter_map(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .sum::<u64>()
                / 1024;
            format!("{b} {mb} MB")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// haproxy's answer on `VIP:8404/healthz` (`habuild-vip node-<id>`).
fn vip_holder(lab: &Lab, vip: &str) -> Option<String> {
    let o = exec_in(
        lab.net(),
        &[AGENT, "probe", &format!("{vip}:8404"), "--http", "/healthz"],
    );
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The leader leases `holders` names (lease, identity, node): each one
/// `down` held moves to another node (waited for, time since `off`
/// printed); the others are reported staying. Whether any moved.
fn leases_move(
    client: &Netns,
    bin: &Path,
    admin: &Path,
    holders: &[(&str, String, usize)],
    down: usize,
    off: Instant,
) -> bool {
    let mut moved = false;
    for (l, id, node) in holders {
        if *node != down {
            println!("kube_ha_netns: lease {l} stays with node{node} ({id})");
            continue;
        }
        let (new_id, new_node) = retry(
            &format!("the {l} lease moving off node{down}"),
            Duration::from_secs(300),
            || {
                let (id, n) = lease_holder(client, bin, admin, l)?;
                (n != down)
                    .then_some((id.clone(), n))
                    .ok_or_else(|| format!("still held by {id}"))
            },
        );
        println!(
            "kube_ha_netns: lease {l} moved from node{down} to node{new_node} ({new_id}) \
             {:.1} s after the power-off",
            off.elapsed().as_secs_f64()
        );
        moved = true;
    }
    moved
}

#[test]
fn three_control_planes_answer_through_the_vip_and_survive_the_holders_power_off() {
    for tool in ["/usr/bin/etcd", "/usr/sbin/keepalived", "/usr/sbin/haproxy"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} not found: run scripts/setup"
        );
    }
    let bin = kube_bin_dir();
    let lab_holder: PathBuf;
    {
        let mut lab = Lab::new("hbkha", [10, 94, 0], 3).unwrap_or_else(|e| panic!("{e}"));
        lab_holder = lab.dir().to_path_buf();
        run(&mut lab, &bin);
    }
    // Dropping the lab killed every process of its namespaces: no
    // apiserver (or anything else) of its node roots is left.
    let left = processes_under(&lab_holder);
    assert!(left.is_empty(), "processes of the lab still run: {left:?}");
}

fn run(lab: &mut Lab, bin: &Path) {
    let file = lab.dir().join("cluster.toml");
    std::fs::write(&file, cluster_toml(lab)).unwrap();
    let all = [0usize, 1, 2];
    for i in all {
        link_binaries(lab, i, bin);
    }
    let t0 = Instant::now();
    for i in all {
        start(lab, i, &file);
    }
    let vip = format!("{}.250", net(lab));

    // 1. the control plane on all three, each apiserver ready
    let limit = Duration::from_secs(600);
    wait_for(lab, &all, "kube-control-plane done on all 3", limit, |st| {
        all_step(st, "kube-control-plane", "done")
    });
    let cp_done = t0.elapsed();
    wait_for(lab, &all, "kube-bootstrap done on all 3", limit, |st| {
        all_step(st, "kube-bootstrap", "done")
    });
    let boot_done = t0.elapsed();
    for i in all {
        let local = root(lab, i).join("etc/kubernetes/habuild/admin-local.conf");
        let ready = retry(&format!("node{i}'s apiserver /readyz"), limit, || {
            kubectl(lab.net(), bin, &local, &["get", "--raw", "/readyz"])
        });
        assert_eq!(ready, "ok", "node{i}");
    }
    println!(
        "kube_ha_netns: kube-control-plane done on all 3 after {:.1} s, kube-bootstrap after {:.1} s \
         (from agent start)",
        cp_done.as_secs_f64(),
        boot_done.as_secs_f64()
    );
    for i in all {
        println!("kube_ha_netns: node{i} RSS: {}", rss(lab, i));
    }

    // 2. through the VIP, from a client host on the L2 (not a node)
    let client = lab
        .add_host(50)
        .unwrap_or_else(|e| panic!("a client host: {e}"));
    let admin = root(lab, 0).join("etc/kubernetes/admin.conf");
    let admin_text = std::fs::read_to_string(&admin).unwrap();
    assert!(
        admin_text.contains(&format!("server: https://{vip}:6443")),
        "admin.conf names the VIP:\n{}",
        admin_text
            .lines()
            .filter(|l| l.contains("server"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let via = |args: &[&str]| kubectl(&client, bin, &admin, args);
    // Creates ConfigMap `name` through the VIP; retried, so an attempt the
    // server applied but whose answer was lost counts as done.
    let create = |name: &str, value: &str| match via(&[
        "-n",
        "default",
        "create",
        "configmap",
        name,
        &format!("--from-literal=written={value}"),
    ]) {
        Err(e) if e.contains("AlreadyExists") => Ok(String::new()),
        r => r,
    };
    let ready = retry("/readyz through the VIP", limit, || {
        via(&["get", "--raw", "/readyz"])
    });
    assert_eq!(ready, "ok");
    let version = retry("/version through the VIP", limit, || {
        via(&["get", "--raw", "/version"])
    });
    assert!(version.contains("\"gitVersion\": \"v1.20.2"), "{version}");
    retry("creating a ConfigMap through the VIP", limit, || {
        create("habuild-ha", "before-power-off")
    });
    let read = |name: &str| {
        via(&[
            "-n",
            "default",
            "get",
            "configmap",
            name,
            "-o",
            "jsonpath={.data.written}",
        ])
    };
    assert_eq!(
        retry("reading the ConfigMap back", limit, || read("habuild-ha")),
        "before-power-off"
    );
    let leases = ["kube-controller-manager", "kube-scheduler"];
    let current_holders = || -> Vec<(&str, String, usize)> {
        leases
            .iter()
            .map(|l| {
                let (id, node) = retry(&format!("the {l} leader lease"), limit, || {
                    lease_holder(&client, bin, &admin, l)
                });
                println!("kube_ha_netns: lease {l} held by {id} (node{node})");
                (*l, id, node)
            })
            .collect()
    };
    let holders = current_holders();
    // The bootstrapsigner signed cluster-info for the plan's token.
    let token_id = retry("the bootstrap token Secret", limit, || {
        let names = via(&["-n", "kube-system", "get", "secrets", "-o", "name"])?;
        names
            .lines()
            .find_map(|n| n.strip_prefix("secret/bootstrap-token-"))
            .map(str::to_string)
            .ok_or_else(|| format!("no bootstrap-token Secret: {names}"))
    });
    let jws = format!("jws-kubeconfig-{token_id}");
    retry("cluster-info signed by the bootstrapsigner", limit, || {
        let keys = via(&[
            "-n",
            "kube-public",
            "get",
            "configmap",
            "cluster-info",
            "-o",
            "go-template={{range $k, $v := .data}}{{$k}} {{end}}",
        ])?;
        keys.split_whitespace()
            .any(|k| k == jws)
            .then_some(())
            .ok_or_else(|| format!("cluster-info has {keys}, not {jws}"))
    });
    println!("kube_ha_netns: cluster-info carries {jws}");

    // 3. the VIP holder loses power
    let holder = vip_holder(lab, &vip).expect("the VIP answers");
    let down = all
        .into_iter()
        .find(|i| holder.ends_with(&hex(node_id(*i))))
        .unwrap_or_else(|| panic!("VIP held by {holder:?}, not one of ours"));
    let down_bins = root(lab, down).join("usr/bin");
    assert!(
        !processes_under(&down_bins.join("kube-apiserver")).is_empty(),
        "node{down}'s apiserver runs before the power-off"
    );
    lab.power_off(down);
    let off = Instant::now();
    let survivors = processes_under(&down_bins);
    assert!(
        survivors.is_empty(),
        "node{down}'s Kubernetes processes outlived its power-off: {survivors:?}"
    );
    let ready = retry("/readyz through the VIP after the power-off", limit, || {
        via(&["get", "--raw", "/readyz"])
    });
    assert_eq!(ready, "ok");
    let api_back = off.elapsed();
    assert_eq!(
        retry("the ConfigMap after the power-off", limit, || read(
            "habuild-ha"
        )),
        "before-power-off"
    );
    retry("a write after the power-off", limit, || {
        create("habuild-ha-after", "with-one-node-down")
    });
    assert_eq!(
        retry("the write after the power-off", limit, || read(
            "habuild-ha-after"
        )),
        "with-one-node-down"
    );
    let write_ok = off.elapsed();
    println!(
        "kube_ha_netns: {holder} (node{down}) powered off; API answered through the VIP again \
         after {:.1} s; a write accepted after {:.1} s",
        api_back.as_secs_f64(),
        write_ok.as_secs_f64()
    );
    let cm_moved = leases_move(&client, bin, &admin, &holders, down, off) && holders[0].2 == down;

    // 4. it comes back: /run is empty after a reboot (it is a tmpfs)
    let run_dir = root(lab, down).join("run");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).unwrap();
    }
    let on = Instant::now();
    start(lab, down, &file);
    wait_for(
        lab,
        &[down],
        "the returning node's kube-control-plane done",
        limit,
        |st| all_step(st, "kube-control-plane", "done"),
    );
    let local = root(lab, down).join("etc/kubernetes/habuild/admin-local.conf");
    let ready = retry("the returning node's apiserver /readyz", limit, || {
        kubectl(lab.net(), bin, &local, &["get", "--raw", "/readyz"])
    });
    assert_eq!(ready, "ok");
    // It serves the data written while it was away (from the same etcd).
    let seen = kubectl(
        lab.net(),
        bin,
        &local,
        &[
            "-n",
            "default",
            "get",
            "configmap",
            "habuild-ha-after",
            "-o",
            "jsonpath={.data.written}",
        ],
    )
    .unwrap_or_else(|e| panic!("node{down}'s apiserver: {e}"));
    assert_eq!(seen, "with-one-node-down");
    println!(
        "kube_ha_netns: node{down} back: kube-control-plane done and its apiserver ready \
         {:.1} s after power-on",
        on.elapsed().as_secs_f64()
    );

    // 5. the controller-manager's leader loses power, unless it was the
    // VIP holder: its leases move to a survivor (etcd still has 2 of 3 once
    // the returning member is healthy again)
    if !cm_moved {
        wait_for(lab, &all, "etcd done on all 3 again", limit, |st| {
            all_step(st, "etcd", "done")
        });
        let holders = current_holders();
        let leader = holders[0].2;
        lab.power_off(leader);
        let off = Instant::now();
        let left = processes_under(&root(lab, leader).join("usr/bin"));
        assert!(
            left.is_empty(),
            "node{leader}'s Kubernetes processes outlived its power-off: {left:?}"
        );
        assert!(leases_move(&client, bin, &admin, &holders, leader, off));
        retry("a write after the leader's power-off", limit, || {
            create("habuild-ha-leader", "without-the-leader")
        });
        println!(
            "kube_ha_netns: node{leader} (the controller-manager's leader) powered off; \
             then a write through the VIP accepted ({:.1} s after the power-off)",
            off.elapsed().as_secs_f64()
        );
    }
    for s in all.iter().filter_map(|i| lab.status_text(*i)) {
        assert!(!s.contains(SECRET), "status leaks the secret");
        assert!(!s.contains("PRIVATE KEY"), "status leaks key material");
    }
}
