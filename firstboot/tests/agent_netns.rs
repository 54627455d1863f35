//! Five real `habuild-agent` processes, each in its own network namespace on
//! a bridge this test creates, form one Raft group and commit a plan; the
//! leader is killed (failover measured), restarted (rejoins, no second
//! group), and a sixth agent with the wrong secret is never admitted.
//!
//! Network rule: every packet stays inside the namespaces created here (mDNS
//! runs only on the namespaces' `eth0`, a veth into the test's bridge).
//! Without the means to create namespaces the test fails and says why.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NS_PREFIX: &str = "hbagent";
const NODES: usize = 5;
const GOOD_SECRET: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const BAD_SECRET: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

/// Namespaces and agent processes of one run; removed on every path (Drop
/// also runs while unwinding from a failed assertion).
struct Lab {
    namespaces: Vec<String>,
    children: Vec<Option<Child>>,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Removes namespaces left by an earlier run that was killed (SIGKILL skips Drop).
fn remove_stale_namespaces() {
    let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn setup(lab: &mut Lab, nodes: usize) -> Result<(), String> {
    let pid = std::process::id();
    let br = format!("{NS_PREFIX}{pid}-br");
    ip(&["netns", "add", &br])?;
    lab.namespaces.push(br.clone());
    ip(&["-n", &br, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        &br,
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ])?;
    ip(&["-n", &br, "link", "set", "br0", "up"])?;
    for i in 0..nodes {
        let ns = format!("{NS_PREFIX}{pid}-{i}");
        ip(&["netns", "add", &ns])?;
        lab.namespaces.push(ns.clone());
        let v = format!("v{i}");
        ip(&[
            "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &br, "link", "set", &v, "master", "br0"])?;
        ip(&["-n", &br, "link", "set", &v, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", &node_cidr(i), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
    }
    Ok(())
}

fn node_cidr(i: usize) -> String {
    format!("10.89.0.{}/24", 10 + i)
}

fn node_id(i: usize) -> u64 {
    0x1000 + i as u64
}

fn cluster_toml(secret: &str) -> String {
    format!(
        r#"[cluster]
name = "nslab"
secret = "{secret}"
bootstrap_expect = 3
control_plane_size = 3

[network]
interface = "eth0"
subnet = "10.89.0.0/24"
vip = "10.89.0.250"
metallb_range = "10.89.0.200-10.89.0.215"
pod_cidr = "10.244.0.0/16"
service_cidr = "10.96.0.0/12"

[storage]
enabled = true
brick_file_size_gib = 1
devices = []
replica = 3
mount_path = "/mnt/gluster"
"#
    )
}

impl Lab {
    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("status.sock")
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("agent.log")).unwrap_or_default()
    }

    fn start(&mut self, i: usize, cluster_file: &Path) {
        self.start_as(i, cluster_file, node_id(i));
    }

    fn start_as(&mut self, i: usize, cluster_file: &Path, id: u64) {
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .unwrap();
        let ns = &self.namespaces[i + 1];
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(env!("CARGO_BIN_EXE_habuild-agent"))
            .arg("run")
            .arg("--cluster")
            .arg(cluster_file)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--status-socket")
            .arg(self.socket(i))
            .args(["--node-id", &id.to_string()])
            .args(["--advertise", &node_cidr(i)])
            .args(["--interface", "eth0"])
            .args(["--hostname", &format!("node{i}")])
            // consensus only: this test starts no etcd/keepalived/haproxy
            .args(["--services", "none"])
            .env(
                "RUST_LOG",
                std::env::var("AGENT_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        while self.children.len() <= i {
            self.children.push(None);
        }
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn status(&self, i: usize) -> Option<Value> {
        let mut s = UnixStream::connect(self.socket(i)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        serde_json::from_str(&out).ok()
    }

    fn statuses(&self, nodes: &[usize]) -> Vec<Option<Value>> {
        nodes.iter().map(|i| self.status(*i)).collect()
    }

    fn dump(&self, nodes: &[usize]) -> String {
        let mut s = String::new();
        for &i in nodes {
            s += &format!(
                "--- node{i} status:\n{}\n--- node{i} log:\n{}\n",
                self.status(i)
                    .map(|v| serde_json::to_string_pretty(&v).unwrap())
                    .unwrap_or_else(|| "(no status)".into()),
                self.log(i)
            );
        }
        s
    }
}

fn str_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

/// When every node in `nodes` is a member with one leader, one voter set and
/// one plan (version >= 1) covering all of `expect_in_plan`: (leader, voters, plan).
fn converged(
    statuses: &[Option<Value>],
    expect_in_plan: &BTreeSet<String>,
) -> Option<(String, BTreeSet<String>, Value)> {
    let mut seen: Option<(String, BTreeSet<String>, Value)> = None;
    for s in statuses {
        let s = s.as_ref()?;
        if s["raft"]["member"] != true || s["phase"] != "planned" || s["role"].is_null() {
            return None;
        }
        let leader = s["raft"]["leader"].as_str()?.to_string();
        let voters = str_set(&s["raft"]["voters"]);
        let plan = s["plan"].clone();
        if plan["version"].as_u64().unwrap_or(0) < 1 {
            return None;
        }
        let mut in_plan = str_set(&plan["control_plane"]);
        in_plan.extend(str_set(&plan["workers"]));
        if &in_plan != expect_in_plan {
            return None;
        }
        match &seen {
            None => seen = Some((leader, voters, plan)),
            Some((l, v, p)) if *l == leader && *v == voters && *p == plan => {}
            Some(_) => return None,
        }
    }
    seen
}

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

#[test]
fn five_agents_form_one_group_fail_over_and_refuse_a_wrong_secret() {
    remove_stale_namespaces();
    let mut lab = Lab {
        namespaces: Vec::new(),
        children: Vec::new(),
        dir: tempfile::tempdir().unwrap(),
    };
    if let Err(e) = setup(&mut lab, NODES + 2) {
        // Never skipped: a test that cannot run fails and says what is missing.
        panic!("cannot create network namespaces: {e} (needs root, iproute2 and veth/bridge support: run scripts/setup as root)");
    }
    let good = lab.dir.path().join("cluster.toml");
    std::fs::write(&good, cluster_toml(GOOD_SECRET)).unwrap();
    let bad = lab.dir.path().join("cluster-wrong-secret.toml");
    std::fs::write(&bad, cluster_toml(BAD_SECRET)).unwrap();

    let all: Vec<usize> = (0..NODES).collect();
    let ids: BTreeSet<String> = all.iter().map(|i| hex(node_id(*i))).collect();
    let t0 = Instant::now();
    for &i in &all {
        lab.start(i, &good);
    }

    // 1. one group, one plan
    let (leader, voters, plan) = loop {
        if let Some(c) = converged(&lab.statuses(&all), &ids) {
            break c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no common plan after 60 s\n{}",
            lab.dump(&all)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let formed = t0.elapsed();
    println!(
        "agent_netns: {NODES} agents committed plan v{} in {:.1} s (leader {leader}, voters {voters:?})",
        plan["version"],
        formed.as_secs_f64()
    );
    assert_eq!(voters, ids, "one group with every node a voter");
    assert_eq!(str_set(&plan["control_plane"]).len(), 3, "{plan}");
    for s in lab.statuses(&all).into_iter().flatten() {
        assert!(
            !s.to_string().contains(GOOD_SECRET),
            "status leaks the secret"
        );
        assert!(s["role"].is_string(), "{s}");
    }
    let inits: usize = all
        .iter()
        .map(|i| lab.log(*i).matches("initializing the group").count())
        .sum();
    assert_eq!(inits, 1, "exactly one initialize\n{}", lab.dump(&all));

    // 2. leader failover
    let old = all
        .iter()
        .copied()
        .find(|i| hex(node_id(*i)) == leader)
        .expect("leader is one of ours");
    lab.kill(old);
    let killed = Instant::now();
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != old).collect();
    let new_leader = loop {
        let st = lab.statuses(&rest);
        let leaders: BTreeSet<Option<String>> = st
            .iter()
            .map(|s| {
                s.as_ref()
                    .and_then(|s| s["raft"]["leader"].as_str().map(String::from))
            })
            .collect();
        if let [Some(l)] = &leaders.iter().cloned().collect::<Vec<_>>()[..] {
            if *l != leader {
                break l.clone();
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no new leader 15 s after killing {leader}\n{}",
            lab.dump(&rest)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "agent_netns: leader {leader} killed; new leader {new_leader} after {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    for s in lab.statuses(&rest).into_iter().flatten() {
        assert_eq!(s["plan"], plan, "plan changed on failover");
    }

    // 3. the killed agent restarts with its state and rejoins the same group
    lab.start(old, &good);
    let restarted = Instant::now();
    loop {
        if let Some((l, v, p)) = converged(&lab.statuses(&all), &ids) {
            assert_eq!(v, voters, "same group");
            assert_eq!(p, plan, "plan unchanged");
            println!(
                "agent_netns: restarted {} rejoined in {:.1} s (leader {l})",
                hex(node_id(old)),
                restarted.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "restarted agent did not rejoin\n{}",
            lab.dump(&all)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let inits: usize = all
        .iter()
        .map(|i| lab.log(*i).matches("initializing the group").count())
        .sum();
    assert_eq!(inits, 1, "no second initialize\n{}", lab.dump(&all));

    // 4. a wrong secret is never admitted
    let intruder = NODES;
    lab.start(intruder, &bad);
    std::thread::sleep(Duration::from_secs(10));
    let iid = hex(node_id(intruder));
    for (i, s) in all.iter().zip(lab.statuses(&all)) {
        let s = s.unwrap_or_else(|| panic!("node{i} has no status"));
        for key in ["voters", "learners"] {
            assert!(!str_set(&s["raft"][key]).contains(&iid), "{s}");
        }
        assert!(!str_set(&s["members"]).contains(&iid), "{s}");
        assert!(
            s["rejected"]["bad_mac"].as_u64().unwrap_or(0) >= 1,
            "node{i} did not count the intruder's announcements\n{s}"
        );
    }
    let is = lab.status(intruder).expect("intruder status");
    assert_eq!(is["raft"]["member"], false, "{is}");
    assert!(is["rejected"]["bad_mac"].as_u64().unwrap_or(0) >= 1, "{is}");
    println!(
        "agent_netns: intruder {iid} not admitted after 10 s (phase {}, bad_mac seen by others: {:?})",
        is["phase"],
        lab.statuses(&all)
            .iter()
            .map(|s| s.as_ref().map(|s| s["rejected"]["bad_mac"].clone()))
            .collect::<Vec<_>>()
    );

    // 5. a clone of node 1's disk (same node id, another address) is refused
    //    and reported on both sides; the group and the plan are untouched
    let clone = NODES + 1;
    lab.start_as(clone, &good, node_id(1));
    let t = Instant::now();
    loop {
        let orig = lab.status(1);
        let cl = lab.status(clone);
        let seen = |s: &Option<Value>| {
            s.as_ref()
                .is_some_and(|s| s["rejected"]["duplicate_node_id"].as_u64().unwrap_or(0) >= 1)
        };
        let clone_told = cl.as_ref().is_some_and(|c| {
            let w = c["waiting_for"].as_str().unwrap_or("");
            w.contains("fresh machine-id") || w.contains("duplicate node id")
        });
        if seen(&orig) && clone_told {
            let (orig, cl) = (orig.unwrap(), cl.unwrap());
            assert!(
                orig["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("fresh machine-id"),
                "{orig}"
            );
            assert_eq!(cl["raft"]["member"], false, "{cl}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "duplicate node id not reported\n{}",
            lab.dump(&[1, clone])
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3));
    let st = lab.statuses(&all);
    let (_, v, p) = converged(&st, &ids).expect("group still converged");
    assert_eq!(v, voters, "same voters");
    assert_eq!(p, plan, "plan unchanged by the clone");
    println!(
        "agent_netns: clone of {} reported as a duplicate node id after {:.1} s and kept out",
        hex(node_id(1)),
        t.elapsed().as_secs_f64()
    );
}
