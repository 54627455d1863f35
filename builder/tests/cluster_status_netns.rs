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
//! The lab (namespaces, agents, status) is `testlab`'s.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use firstboot::protocol::{hex, StatusDoc};
use serde_json::Value;
use testlab::status::{converged, pretty, Converged};
use testlab::{AgentArgs, Host, Lab};

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

/// The client's address on the lab's bridge: 10.90.0.100.
const CLIENT_OCTET: usize = 100;

fn node_id(i: usize) -> u64 {
    0x5a00 + i as u64
}

fn cluster_toml(secret: &str) -> String {
    testlab::ClusterToml::lab("statlab", secret, 3, [10, 90, 0])
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

/// `habuild cluster status --cluster <file> --interface eth0 --timeout 3
/// <extra>` in the client namespace, killed after 60 s; its output goes
/// to files in `dir`.
fn cluster_status(
    client: &Host,
    dir: &Path,
    cluster_file: &Path,
    extra: &[&str],
    tag: &str,
) -> Run {
    let out = dir.join(format!("status-{tag}.out"));
    let err = dir.join(format!("status-{tag}.err"));
    let t0 = Instant::now();
    let mut child = client
        .exec(habuild())
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

#[test]
fn cluster_status_lists_the_agents_and_refuses_another_secret() {
    let agent = agent_binary();
    // Never skipped: a test that cannot run fails and says what is missing.
    let mut lab = Lab::new(NS_PREFIX, [10, 90, 0], NODES).unwrap_or_else(|e| panic!("{e}"));
    let client = lab.add_host(CLIENT_OCTET).unwrap_or_else(|e| panic!("{e}"));
    let good = lab.dir().join("cluster.toml");
    std::fs::write(&good, cluster_toml(GOOD_SECRET)).unwrap();
    let bad = lab.dir().join("cluster-other-secret.toml");
    std::fs::write(&bad, cluster_toml(BAD_SECRET)).unwrap();

    let ids: BTreeSet<String> = (0..NODES).map(|i| hex(node_id(i))).collect();
    let t0 = Instant::now();
    let all: Vec<usize> = (0..NODES).collect();
    for &i in &all {
        // consensus only: no converge steps on the test host
        let args = AgentArgs::new(&agent, &good, node_id(i), &format!("node{i}"))
            .args(["--services", "none"]);
        lab.start(i, &args)
            .unwrap_or_else(|e| panic!("starting node{i}: {e}"));
    }
    let Converged { leader, plan, .. } = loop {
        if let Some(c) = converged(&lab.statuses(&all), &ids) {
            break c;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let malformed: Vec<Option<u64>> = lab
                .statuses(&all)
                .iter()
                .map(|s| s.as_ref().map(|s| s.rejected.malformed))
                .collect();
            panic!(
                "agents did not converge within 60 s (an agent problem, not the status \
                 command's; malformed announcements seen by each agent: {malformed:?})\n{}",
                lab.dump(&all)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!(
        "cluster_status_netns: {NODES} agents converged on plan v{} in {:.1} s (leader {leader})",
        plan.version,
        t0.elapsed().as_secs_f64()
    );

    // 1. JSON: all three agents, one plan version, exactly one leader
    let run = cluster_status(&client, lab.dir(), &good, &["--json"], "json");
    assert_eq!(run.status.code(), Some(0), "{}", run.show());
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document: {e}\n{}", run.show()));
    let agents: Vec<StatusDoc> = serde_json::from_value(doc["agents"].clone())
        .unwrap_or_else(|e| panic!("agents are not status documents: {e}\n{}", run.show()));
    let listed: BTreeSet<String> = agents.iter().map(|a| a.node_id.clone()).collect();
    assert_eq!(listed, ids, "{}", run.show());
    assert_eq!(agents.len(), NODES, "{}", run.show());
    let versions: BTreeSet<u64> = agents
        .iter()
        .map(|a| a.plan.as_ref().expect("plan version").version)
        .collect();
    assert_eq!(versions.len(), 1, "one plan version: {versions:?}");
    assert_eq!(versions.iter().next(), Some(&plan.version));
    let leaders: Vec<&str> = agents
        .iter()
        .filter(|a| a.is_leader())
        .map(|a| a.node_id.as_str())
        .collect();
    assert_eq!(
        leaders,
        [leader.as_str()],
        "exactly one leader\n{}",
        run.show()
    );
    for a in &agents {
        assert_eq!(a.raft.leader.as_ref(), Some(&leader), "{}", pretty(a));
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
    let run = cluster_status(&client, lab.dir(), &good, &[], "table");
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
    let run = cluster_status(&client, lab.dir(), &bad, &["--json"], "other-secret");
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
    for (i, s) in lab.statuses(&all).into_iter().enumerate() {
        let s = s.unwrap_or_else(|| panic!("node{i} has no status"));
        let peers: BTreeSet<String> = s.peers.iter().map(|p| p.id.clone()).collect();
        assert!(peers.is_subset(&ids), "node{i} saw {peers:?}");
        assert_eq!(s.rejected.bad_mac, 0, "node{i}: {}", pretty(&s));
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
