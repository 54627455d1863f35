//! `habuild cluster status` against three real `habuild-agent` processes,
//! each in its own network namespace on a bridge this test creates; the
//! command runs in a fourth namespace on the same bridge. With the cluster
//! file it lists all three agents, one leader and one plan (JSON and table);
//! with a cluster file carrying another secret it finds nobody (exit 1) and
//! counts the announcements it refused. A bad cluster file is exit 2.
//!
//! Network rule: every packet stays inside the namespaces created here (mDNS
//! runs only on the namespaces' `eth0`, a veth into the test's bridge).
//! Without the means to create namespaces the test fails and says why.
//!
//! `habuild-agent` is built by the firstboot crate, not by this one: run
//! `cargo build --workspace` first (the test says so when it is missing).

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const NS_PREFIX: &str = "hbstat";
const NODES: usize = 3;
const GOOD_SECRET: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const BAD_SECRET: &str = "4444444444444444444444444444444444444444444444444444444444444444";

fn habuild() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_habuild"))
}

fn agent_binary() -> PathBuf {
    let p = habuild().with_file_name("habuild-agent");
    assert!(
        p.is_file(),
        "habuild-agent not built: run cargo build --workspace (looked for {})",
        p.display()
    );
    p
}

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
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
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

fn node_cidr(i: usize) -> String {
    format!("10.90.0.{}/24", 10 + i)
}

const CLIENT_CIDR: &str = "10.90.0.100/24";

fn node_id(i: usize) -> u64 {
    0x5a00 + i as u64
}

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

/// The bridge namespace, one namespace per agent (`-0`, `-1`, ...) and the
/// client's (`-c`), each with `eth0` on the bridge.
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
    let hosts = (0..nodes)
        .map(|i| (i.to_string(), node_cidr(i)))
        .chain([("c".to_string(), CLIENT_CIDR.to_string())]);
    for (suffix, cidr) in hosts {
        let ns = format!("{NS_PREFIX}{pid}-{suffix}");
        ip(&["netns", "add", &ns])?;
        lab.namespaces.push(ns.clone());
        let v = format!("v{suffix}");
        ip(&[
            "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &br, "link", "set", &v, "master", "br0"])?;
        ip(&["-n", &br, "link", "set", &v, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
    }
    Ok(())
}

fn cluster_toml(secret: &str) -> String {
    format!(
        r#"[cluster]
name = "statlab"
secret = "{secret}"
bootstrap_expect = 3
control_plane_size = 3

[network]
interface = "eth0"
subnet = "10.90.0.0/24"
vip = "10.90.0.250"
metallb_range = "10.90.0.200-10.90.0.215"
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

/// What one `habuild` run printed and how it ended.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "exit {:?} after {:.1} s\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status.code(),
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

impl Lab {
    fn client_ns(&self) -> &str {
        self.namespaces.last().expect("client namespace")
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("status.sock")
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("agent.log")).unwrap_or_default()
    }

    fn start(&mut self, i: usize, agent: &Path, cluster_file: &Path) {
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let ns = &self.namespaces[i + 1];
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(agent)
            .arg("run")
            .arg("--cluster")
            .arg(cluster_file)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--status-socket")
            .arg(self.socket(i))
            .args(["--node-id", &node_id(i).to_string()])
            .args(["--advertise", &node_cidr(i)])
            .args(["--interface", "eth0"])
            .args(["--hostname", &format!("node{i}")])
            // consensus only: no converge steps on the test host
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
        self.children.push(child);
    }

    fn status(&self, i: usize) -> Option<Value> {
        let mut s = UnixStream::connect(self.socket(i)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        serde_json::from_str(&out).ok()
    }

    fn statuses(&self) -> Vec<Option<Value>> {
        (0..NODES).map(|i| self.status(i)).collect()
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for i in 0..NODES {
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

    /// `habuild cluster status --cluster <file> --interface eth0 --timeout 3
    /// <extra>` in the client namespace, killed after 60 s.
    fn cluster_status(&self, cluster_file: &Path, extra: &[&str], tag: &str) -> Run {
        let out = self.dir.path().join(format!("status-{tag}.out"));
        let err = self.dir.path().join(format!("status-{tag}.err"));
        let t0 = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.client_ns()])
            .arg(habuild())
            .args(["cluster", "status", "--cluster"])
            .arg(cluster_file)
            .args(["--interface", "eth0", "--timeout", "3"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("STATUS_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("running habuild");
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "habuild cluster status did not finish within 60 s\n{}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Run {
            status,
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
            took: t0.elapsed(),
        }
    }
}

fn str_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

/// Every agent a member, planned, with one leader and one plan naming them all.
fn converged(statuses: &[Option<Value>], ids: &BTreeSet<String>) -> Option<(String, Value)> {
    let mut seen: Option<(String, Value)> = None;
    for s in statuses {
        let s = s.as_ref()?;
        if s["raft"]["member"] != true || s["phase"] != "planned" || s["role"].is_null() {
            return None;
        }
        let leader = s["raft"]["leader"].as_str()?.to_string();
        let plan = s["plan"].clone();
        let mut in_plan = str_set(&plan["control_plane"]);
        in_plan.extend(str_set(&plan["workers"]));
        if plan["version"].as_u64().unwrap_or(0) < 1 || &in_plan != ids {
            return None;
        }
        match &seen {
            None => seen = Some((leader, plan)),
            Some((l, p)) if *l == leader && *p == plan => {}
            Some(_) => return None,
        }
    }
    seen
}

#[test]
fn cluster_status_lists_the_agents_and_refuses_another_secret() {
    let agent = agent_binary();
    remove_stale_namespaces();
    let mut lab = Lab {
        namespaces: Vec::new(),
        children: Vec::new(),
        dir: tempfile::tempdir().unwrap(),
    };
    if let Err(e) = setup(&mut lab, NODES) {
        // Never skipped: a test that cannot run fails and says what is missing.
        panic!("cannot create network namespaces: {e} (needs root, iproute2 and veth/bridge support: run scripts/setup as root)");
    }
    let good = lab.dir.path().join("cluster.toml");
    std::fs::write(&good, cluster_toml(GOOD_SECRET)).unwrap();
    let bad = lab.dir.path().join("cluster-other-secret.toml");
    std::fs::write(&bad, cluster_toml(BAD_SECRET)).unwrap();

    let ids: BTreeSet<String> = (0..NODES).map(|i| hex(node_id(i))).collect();
    let t0 = Instant::now();
    for i in 0..NODES {
        lab.start(i, &agent, &good);
    }
    let (leader, plan) = loop {
        if let Some(c) = converged(&lab.statuses(), &ids) {
            break c;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let malformed: Vec<Value> = lab
                .statuses()
                .iter()
                .map(|s| {
                    s.as_ref()
                        .map_or(Value::Null, |s| s["rejected"]["malformed"].clone())
                })
                .collect();
            panic!(
                "agents did not converge within 60 s (an agent problem, not the status \
                 command's; malformed announcements seen by each agent: {malformed:?})\n{}",
                lab.dump()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!(
        "cluster_status_netns: {NODES} agents converged on plan v{} in {:.1} s (leader {leader})",
        plan["version"],
        t0.elapsed().as_secs_f64()
    );

    // 1. JSON: all three agents, one plan version, exactly one leader
    let run = lab.cluster_status(&good, &["--json"], "json");
    assert_eq!(run.status.code(), Some(0), "{}", run.show());
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document: {e}\n{}", run.show()));
    let agents = doc["agents"].as_array().expect("agents array");
    let listed: BTreeSet<String> = agents
        .iter()
        .filter_map(|a| a["node_id"].as_str().map(String::from))
        .collect();
    assert_eq!(listed, ids, "{}", run.show());
    assert_eq!(agents.len(), NODES, "{}", run.show());
    let versions: BTreeSet<u64> = agents
        .iter()
        .map(|a| a["plan"]["version"].as_u64().expect("plan version"))
        .collect();
    assert_eq!(versions.len(), 1, "one plan version: {versions:?}");
    assert_eq!(versions.iter().next(), plan["version"].as_u64().as_ref());
    let leaders: Vec<&str> = agents
        .iter()
        .filter(|a| a["raft"]["state"] == "Leader")
        .filter_map(|a| a["node_id"].as_str())
        .collect();
    assert_eq!(
        leaders,
        [leader.as_str()],
        "exactly one leader\n{}",
        run.show()
    );
    for a in agents {
        assert_eq!(a["raft"]["leader"], leader.as_str(), "{a}");
    }
    assert_eq!(doc["unreachable"], Value::Array(vec![]), "{}", run.show());
    assert_eq!(
        doc["rejected_announcements"],
        serde_json::json!({"other_cluster": 0, "bad_mac": 0, "malformed": 0})
    );
    assert!(!run.stdout.contains(GOOD_SECRET), "status leaks the secret");
    println!(
        "cluster_status_netns: --json listed {} agents in {:.1} s",
        agents.len(),
        run.took.as_secs_f64()
    );

    // 2. the table
    let run = lab.cluster_status(&good, &[], "table");
    assert_eq!(run.status.code(), Some(0), "{}", run.show());
    for i in 0..NODES {
        assert!(run.stdout.contains(&hex(node_id(i))), "{}", run.show());
        assert!(run.stdout.contains(&format!("node{i}")), "{}", run.show());
    }
    assert!(
        run.stdout.contains(&format!("*{leader}")),
        "leader marked\n{}",
        run.show()
    );
    assert!(
        run.stdout
            .contains(&format!("{NODES} agents answered; leader {leader}"))
            && run.stdout.contains("all agree"),
        "{}",
        run.show()
    );
    println!(
        "cluster_status_netns: table in {:.1} s:\n{}",
        run.took.as_secs_f64(),
        run.stdout
    );

    // 3. another secret: nobody verified, nobody asked, announcements counted
    let run = lab.cluster_status(&bad, &["--json"], "other-secret");
    assert_eq!(run.status.code(), Some(1), "{}", run.show());
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document: {e}\n{}", run.show()));
    assert_eq!(doc["agents"], Value::Array(vec![]), "{}", run.show());
    assert_eq!(doc["unreachable"], Value::Array(vec![]), "{}", run.show());
    let bad_mac = doc["rejected_announcements"]["bad_mac"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        bad_mac > 0,
        "rejected announcements counted\n{}",
        run.show()
    );
    assert!(run.stderr.contains("failed verification"), "{}", run.show());
    println!(
        "cluster_status_netns: other secret: 0 agents, {bad_mac} announcements rejected, exit 1, in {:.1} s",
        run.took.as_secs_f64()
    );

    // the command announced nothing: the agents only know each other
    for (i, s) in lab.statuses().into_iter().enumerate() {
        let s = s.unwrap_or_else(|| panic!("node{i} has no status"));
        let peers: BTreeSet<String> = s["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["id"].as_str().map(String::from))
            .collect();
        assert!(peers.is_subset(&ids), "node{i} saw {peers:?}");
        assert_eq!(s["rejected"]["bad_mac"], 0, "node{i}: {s}");
    }
}

/// A bad cluster file is refused before anything is sent: exit 2, file and
/// key named. Needs no namespace.
#[test]
fn bad_cluster_file_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cluster.toml");
    std::fs::write(
        &f,
        cluster_toml(GOOD_SECRET).replace("control_plane_size = 3", "control_plane_size = 2"),
    )
    .unwrap();
    for file in [f.clone(), dir.path().join("missing.toml")] {
        let o = Command::new(habuild())
            .args(["cluster", "status", "--cluster"])
            .arg(&file)
            .args(["--interface", "lo-does-not-exist"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(
            o.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let o = Command::new(habuild())
        .args(["cluster", "status", "--cluster"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cluster.control_plane_size"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // bad --timeout is a command-line error (clap: exit 2)
    let o = Command::new(habuild())
        .args(["cluster", "status", "--cluster"])
        .arg(&f)
        .args(["--timeout", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
