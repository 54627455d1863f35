//! Self-assembly I across network namespaces: three real `habuild-agent`
//! processes, each in its own namespace with its own root directory, form a
//! Raft group, issue the PKI, and start the *real* etcd, keepalived and
//! haproxy (as supervised child processes, files under each node's root).
//!
//! `three_agents_assemble_tls_etcd_and_the_vip`: 3 healthy TLS members
//! (`etcdctl endpoint health --cluster`), a write through one member read
//! through another, the VIP answering (haproxy's health endpoint names its
//! holder; etcd reachable through the VIP); the VIP holder loses power → the
//! VIP answers from another node (failover time measured) and writes still
//! succeed; it comes back → same etcd cluster, data written while it was
//! away is there.
//!
//! `faults_are_reported_and_nothing_is_stolen`: the VIP is already in use on
//! the L2 (another host answers ARP for it) and one node carries etcd data of
//! another cluster: the vip step refuses (no node takes the address), the
//! foreign node's etcd step refuses, the other two still form etcd.
//!
//! Network rule: all traffic stays inside the namespaces created here.
//! The lab (namespaces, agents, status) is `testlab`'s.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use firstboot::protocol::{hex, StatusDoc};
use firstboot::state::StepStatus;
use testlab::{wait_until, AgentArgs, Lab, Netns};

const SECRET: &str = "3333333333333333333333333333333333333333333333333333333333333333";

/// The agent binary cargo built for these tests.
const AGENT: &str = env!("CARGO_BIN_EXE_habuild-agent");

/// The site file: three nodes, control plane 3, storage off (Kubernetes
/// on by default).
fn cluster_toml(lab: &Lab) -> String {
    let [a, b, c, _] = lab.net().bridge_addr().octets();
    testlab::ClusterToml::lab_without_storage("asm", SECRET, 3, [a, b, c])
}

fn node_id(i: usize) -> u64 {
    0x2000 + i as u64
}

fn root(lab: &Lab, i: usize) -> PathBuf {
    lab.node_dir(i).join("root")
}

/// The `--net` part of the lab's addresses, e.g. "10.92.0".
fn net(lab: &Lab) -> String {
    let o = lab.net().bridge_addr().octets();
    format!("{}.{}.{}", o[0], o[1], o[2])
}

/// Runs `argv` inside namespace `ns`.
fn exec_in(ns: &Netns, argv: &[&str]) -> Output {
    ns.exec(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("ip netns exec {} {argv:?}: {e}", ns.name()))
}

fn start(lab: &mut Lab, i: usize, file: &Path) {
    let r = root(lab, i);
    let args = AgentArgs::new(Path::new(AGENT), file, node_id(i), &format!("node{i}"))
        .args(["--root".as_ref(), r.as_os_str()])
        .args(["--services", "supervise"]);
    lab.start(i, &args)
        .unwrap_or_else(|e| panic!("starting node{i}: {e}"));
}

fn step_status(s: &StatusDoc, step: &str) -> Option<String> {
    s.steps
        .iter()
        .find(|v| v.step == step)
        .map(|v| v.status.clone())
}

fn step_detail(s: &StatusDoc, step: &str) -> String {
    s.steps
        .iter()
        .find(|v| v.step == step)
        .map(|v| v.detail.clone())
        .unwrap_or_default()
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
    wait_until(what, limit, Duration::from_millis(250), || {
        pred(&lab.statuses(nodes)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.dump(nodes)));
    t0.elapsed()
}

fn all_step(statuses: &[Option<StatusDoc>], step: &str, want: &str) -> bool {
    statuses
        .iter()
        .all(|s| s.as_ref().and_then(|s| step_status(s, step)).as_deref() == Some(want))
}

/// Prints each node's timeline (from its status document) as seconds since
/// its agent started: the namespaces share the host's kernel, so power-on
/// says nothing here.
fn print_timelines(lab: &Lab, nodes: &[usize]) {
    for (i, s) in nodes.iter().zip(lab.statuses(nodes)) {
        let t = s.and_then(|s| s.timeline);
        let Some((t, start)) = t.and_then(|t| t.agent_start.map(|a| (t, a))) else {
            panic!("node{i} reports no timeline\n{}", lab.dump(&[*i]));
        };
        let marks: Vec<String> = t
            .offsets(start)
            .iter()
            .filter(|(what, _)| what != "power-on")
            .map(|(what, at)| format!("{what} {at:.1}"))
            .collect();
        println!(
            "assembly_netns: node{i} timeline (s since agent start): {}",
            marks.join(", ")
        );
    }
}

/// etcdctl run inside namespace `ns` with node `certs_of`'s client certificate.
fn etcdctl(
    lab: &Lab,
    ns: &Netns,
    certs_of: usize,
    endpoints: &str,
    args: &[&str],
) -> (bool, String) {
    let pki = root(lab, certs_of).join("etc/kubernetes/pki/etcd");
    let mut argv: Vec<String> = vec![
        "env".into(),
        "ETCDCTL_API=3".into(),
        "etcdctl".into(),
        format!("--endpoints={endpoints}"),
        format!("--cacert={}", pki.join("ca.crt").display()),
        format!("--cert={}", pki.join("healthcheck-client.crt").display()),
        format!("--key={}", pki.join("healthcheck-client.key").display()),
        "--dial-timeout=2s".into(),
        "--command-timeout=4s".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let o = exec_in(ns, &refs);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// `GET http://addr/healthz` from the test's own host on the bridge: the body.
fn vip_holder(lab: &Lab, addr: &str) -> Option<String> {
    let o = exec_in(lab.net(), &[AGENT, "probe", addr, "--http", "/healthz"]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn endpoints(lab: &Lab, nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|i| format!("https://{}:2379", lab.node_ip(*i)))
        .collect::<Vec<_>>()
        .join(",")
}

fn require_tools() {
    for (tool, pkg) in [
        ("/usr/bin/etcd", "etcd-server"),
        ("/usr/bin/etcdctl", "etcd-client"),
        ("/usr/sbin/keepalived", "keepalived"),
        ("/usr/sbin/haproxy", "haproxy"),
        ("/usr/bin/arping", "iputils-arping"),
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} not found: run scripts/setup (Debian package {pkg})"
        );
    }
}

#[test]
fn three_agents_assemble_tls_etcd_and_the_vip() {
    require_tools();
    let mut lab = Lab::new("hbasm", [10, 92, 0], 3).unwrap_or_else(|e| panic!("{e}"));
    let file = lab.dir().join("cluster.toml");
    std::fs::write(&file, cluster_toml(&lab)).unwrap();
    let all = [0usize, 1, 2];
    let t0 = Instant::now();
    for i in all {
        start(&mut lab, i, &file);
    }

    // 1. every node converges: pki → etcd healthy → VIP answering
    let limit = Duration::from_secs(120);
    wait_for(&lab, &all, "etcd healthy on all 3", limit, |st| {
        all_step(st, "etcd", "done")
    });
    let etcd_healthy = t0.elapsed();
    wait_for(&lab, &all, "vip done on all 3", limit, |st| {
        all_step(st, "vip", "done")
    });
    let vip_up = t0.elapsed();
    println!(
        "assembly_netns: etcd healthy on all 3 after {:.1} s; VIP answering after {:.1} s (from agent start)",
        etcd_healthy.as_secs_f64(),
        vip_up.as_secs_f64()
    );
    print_timelines(&lab, &all);
    // every node went through each milestone, in order, before its steps ran
    for (i, s) in lab.statuses(&all).into_iter().enumerate() {
        let t = s.and_then(|s| s.timeline).expect("a timeline");
        let reached: Vec<f64> = [t.agent_start, t.discovered, t.raft_group, t.plan]
            .into_iter()
            .map(|m| m.unwrap_or_else(|| panic!("node{i}: a milestone is missing: {t:?}")))
            .collect();
        assert!(reached.windows(2).all(|w| w[0] <= w[1]), "node{i}: {t:?}");
        let vip = t.steps.iter().find(|s| s.step == "vip").expect("vip times");
        let etcd = t
            .steps
            .iter()
            .find(|s| s.step == "etcd")
            .expect("etcd times");
        let (Some(_), Some(vip_start)) = (etcd.done, vip.first_start) else {
            panic!("node{i}: etcd done and vip started: {t:?}");
        };
        assert!(reached[3] <= etcd.first_start.unwrap_or(f64::MAX), "{t:?}");
        // the VIP has its own chain (api-vip): it starts once the plan is
        // there, beside etcd, not after it
        assert!(
            reached[3] <= vip_start + 0.001,
            "node{i}: vip ran before the plan: {t:?}"
        );
    }

    // 2. three healthy members through TLS; client certificates are required
    let eps = endpoints(&lab, &all);
    let (ok, out) = etcdctl(
        &lab,
        lab.host(0),
        0,
        &eps,
        &["endpoint", "health", "--cluster"],
    );
    assert!(ok, "endpoint health failed:\n{out}");
    assert_eq!(out.matches("is healthy").count(), 3, "{out}");
    let (ok, members) = etcdctl(&lab, lab.host(0), 0, &eps, &["member", "list"]);
    assert!(ok, "{members}");
    assert_eq!(
        members.lines().filter(|l| l.contains("started")).count(),
        3,
        "{members}"
    );
    for i in all {
        assert!(
            members.contains(&format!("node-{}", hex(node_id(i)))),
            "{members}"
        );
    }
    let no_cert = exec_in(
        lab.host(1),
        &[
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            &format!("--endpoints=https://{}:2379", lab.node_ip(1)),
            &format!(
                "--cacert={}",
                root(&lab, 1)
                    .join("etc/kubernetes/pki/etcd/ca.crt")
                    .display()
            ),
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "x",
        ],
    );
    assert!(
        !no_cert.status.success(),
        "etcd answered a client without a certificate"
    );
    // A certificate from another CA (a node that is not ours) is refused too.
    let alien = lab.dir().join("alien");
    std::fs::create_dir_all(&alien).unwrap();
    let o = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=alien"])
        .arg("-keyout")
        .arg(alien.join("client.key"))
        .arg("-out")
        .arg(alien.join("client.crt"))
        .output()
        .expect("openssl not found: run scripts/setup");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wrong = exec_in(
        lab.host(1),
        &[
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            &format!("--endpoints=https://{}:2379", lab.node_ip(1)),
            &format!(
                "--cacert={}",
                root(&lab, 1)
                    .join("etc/kubernetes/pki/etcd/ca.crt")
                    .display()
            ),
            &format!("--cert={}", alien.join("client.crt").display()),
            &format!("--key={}", alien.join("client.key").display()),
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "x",
        ],
    );
    assert!(
        !wrong.status.success(),
        "etcd answered a client whose certificate is from another CA"
    );

    // 3. a write through one member is read through another
    let (ok, out) = etcdctl(
        &lab,
        lab.host(0),
        0,
        &format!("https://{}:2379", lab.node_ip(0)),
        &["put", "habuild/a", "written-through-node0"],
    );
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(
        &lab,
        lab.host(1),
        1,
        &format!("https://{}:2379", lab.node_ip(1)),
        &["get", "habuild/a", "--print-value-only"],
    );
    assert!(ok && out.trim() == "written-through-node0", "{out}");

    // 4. the VIP answers from haproxy; etcd is reachable through it (TLS end to end)
    let vip = format!("{}.250", net(&lab));
    let holder = vip_holder(&lab, &format!("{vip}:8404")).expect("VIP answers");
    assert!(holder.starts_with("habuild-vip node-"), "{holder}");
    let (ok, out) = etcdctl(
        &lab,
        lab.net(),
        2,
        &format!("https://{vip}:2379"),
        &["get", "habuild/a", "--print-value-only"],
    );
    assert!(
        ok && out.trim() == "written-through-node0",
        "etcd through the VIP: {out}"
    );
    let holder_idx = all
        .into_iter()
        .find(|i| holder.ends_with(&hex(node_id(*i))))
        .expect("holder is one of ours");
    let holders: usize = all
        .iter()
        .filter(|i| {
            let o = exec_in(
                lab.host(**i),
                &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
            );
            String::from_utf8_lossy(&o.stdout).contains(&format!(" {vip}/"))
        })
        .count();
    assert_eq!(holders, 1, "exactly one node carries the VIP");

    // 5. the VIP holder loses power: the VIP moves, writes still succeed
    lab.power_off(holder_idx);
    let killed = Instant::now();
    let rest: Vec<usize> = all.into_iter().filter(|i| *i != holder_idx).collect();
    let new_holder = loop {
        if let Some(h) = vip_holder(&lab, &format!("{vip}:8404")) {
            if h != holder {
                break h;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "VIP did not move within 30 s\n{}",
            lab.dump(&rest)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let failover = killed.elapsed();
    let survivor = rest[0];
    let write_ok = loop {
        let (ok, out) = etcdctl(
            &lab,
            lab.host(survivor),
            survivor,
            &endpoints(&lab, &rest),
            &["put", "habuild/b", "written-while-one-was-down"],
        );
        if ok {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no write accepted 30 s after losing one member: {out}\n{}",
            lab.dump(&rest)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "assembly_netns: {holder} powered off; VIP answered from {new_holder} after {:.2} s; \
         first write accepted after {:.2} s",
        failover.as_secs_f64(),
        write_ok.as_secs_f64()
    );

    // 6. it comes back into the same etcd cluster, with the data written while away
    start(&mut lab, holder_idx, &file);
    let back = Instant::now();
    wait_for(
        &lab,
        &all,
        "the returning node's etcd healthy",
        limit,
        |st| all_step(st, "etcd", "done") && all_step(st, "vip", "done"),
    );
    let (ok, out) = etcdctl(
        &lab,
        lab.host(holder_idx),
        holder_idx,
        &format!("https://{}:2379", lab.node_ip(holder_idx)),
        &["get", "habuild/b", "--print-value-only", "--consistency=s"],
    );
    assert!(ok && out.trim() == "written-while-one-was-down", "{out}");
    let (ok, members_after) = etcdctl(&lab, lab.host(0), 0, &eps, &["member", "list"]);
    assert!(ok, "{members_after}");
    let ids = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = s
            .lines()
            .filter_map(|l| l.split(',').next())
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&members_after), ids(&members), "same etcd cluster");
    println!(
        "assembly_netns: node{holder_idx} rejoined etcd with its data after {:.1} s",
        back.elapsed().as_secs_f64()
    );
    for s in all.iter().filter_map(|i| lab.status_text(*i)) {
        assert!(!s.contains(SECRET), "status leaks the secret");
        assert!(!s.contains("PRIVATE KEY"), "status leaks key material");
    }
}

#[test]
fn faults_are_reported_and_nothing_is_stolen() {
    require_tools();
    let mut lab = Lab::new("hbflt", [10, 93, 0], 3).unwrap_or_else(|e| panic!("{e}"));
    let file = lab.dir().join("cluster.toml");
    std::fs::write(&file, cluster_toml(&lab)).unwrap();
    let vip = format!("{}.250", net(&lab));
    // Another host on the L2 already uses the VIP (the test's own bridge host).
    lab.net()
        .ip(&["addr", "add", &format!("{vip}/24"), "dev", "br0"])
        .unwrap();
    // Node 2's data partition holds etcd data of another cluster.
    let foreign = root(&lab, 2).join("var/lib/etcd");
    std::fs::create_dir_all(foreign.join("member/snap")).unwrap();
    std::fs::write(foreign.join("member/snap/db"), b"not ours").unwrap();
    std::fs::write(
        foreign.join("habuild-cluster"),
        "habuild-other-0011223344556677\n",
    )
    .unwrap();

    let all = [0usize, 1, 2];
    for i in all {
        start(&mut lab, i, &file);
    }
    let limit = Duration::from_secs(120);
    wait_for(&lab, &all, "faults reported", limit, |st| {
        let (Some(a), Some(b), Some(c)) = (&st[0], &st[1], &st[2]) else {
            return false;
        };
        step_status(a, "etcd").as_deref() == Some("done")
            && step_status(b, "etcd").as_deref() == Some("done")
            && step_status(c, "etcd").as_deref() == Some("failed")
            && step_detail(a, "vip").contains("already in use")
            && step_detail(b, "vip").contains("already in use")
    });
    let st = lab.statuses(&all);
    let c = st[2].as_ref().unwrap();
    let detail = step_detail(c, "etcd");
    assert!(detail.contains("belongs to another cluster"), "{detail}");
    assert_eq!(
        std::fs::read(foreign.join("member/snap/db")).unwrap(),
        b"not ours",
        "foreign etcd data untouched"
    );
    // The refusal is in the replicated state too, where operators' status sees it.
    let recorded =
        st[0].as_ref().unwrap().cluster_steps.iter().any(|r| {
            r.node == hex(node_id(2)) && r.step == "etcd" && r.status == StepStatus::Failed
        });
    assert!(recorded, "{}", lab.dump(&[0]));
    // Two members still make a healthy etcd (quorum of the planned three).
    let (ok, out) = etcdctl(
        &lab,
        lab.host(0),
        0,
        &endpoints(&lab, &[0, 1]),
        &["put", "habuild/x", "quorum-of-two"],
    );
    assert!(ok, "{out}");
    // Nobody took the VIP away from its owner.
    for i in all {
        let o = exec_in(
            lab.host(i),
            &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        );
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains(&format!(" {vip}/")),
            "node{i} took the VIP"
        );
    }
    println!(
        "assembly_netns: VIP conflict reported as {:?}; foreign etcd data reported as {detail:?}",
        step_detail(st[0].as_ref().unwrap(), "vip")
    );
}
