//! In-process part of the agent bench (see main.rs): N nodes, each running
//! the agent's own bootstrap component
//! ([`firstboot::agent::driver::Driver`], with its leader duties: plan
//! commit, PKI issue, member health) over the in-memory discovery view and
//! [`MemRouter`] ([`firstboot::agent::sim`]). Call path: [`run`] →
//! `Driver::new` per node → a task per node calling `Driver::step` every
//! tick.

use super::*;
use firstboot::agent::driver::{first_announcement, Driver, DriverConfig};
use firstboot::agent::sim::{self, mem_addr, InitLog, MemDiscovery, MemReporter};
use firstboot::consensus::bootstrap::BootstrapState;
use firstboot::secretbox::SecretBox;

/// How often the bench looks at the cluster.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct RunResult {
    pub n: usize,
    pub seed: u64,
    /// All nodes opened and their loops started.
    pub started: f64,
    pub first_leader: f64,
    /// Some node applied plan v1.
    pub first_plan: f64,
    /// Every node applied the same plan covering all N nodes.
    pub full_plan: f64,
    pub plan_version: u64,
    pub term: u64,
    pub rpcs: u64,
}

async fn run(seed: u64, n: usize, o: &Opts) -> Result<RunResult, String> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut ids = BTreeSet::new();
    while ids.len() < n {
        ids.insert(rng.gen_range(1..u64::MAX));
    }
    let ids: Vec<NodeId> = ids.into_iter().collect();
    let all: BTreeSet<NodeId> = ids.iter().copied().collect();
    let mut facts: BTreeMap<NodeId, Member> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, sim::member(id, format!("node{i}"), node_ip(i), 24)))
        .collect();
    let src = SourceFile::from_text("bench-cluster.toml", cluster_toml(o.expect));
    let cluster = ClusterConfig::from_source(&src).map_err(|e| e.to_string())?;
    let router = MemRouter::new(seed, Faults::default());
    let discovery = MemDiscovery::new(router.clone());
    let inits = InitLog::default();
    let sbox = Arc::new(SecretBox::derive(&cluster.cluster.secret));
    let dirs: BTreeMap<NodeId, tempfile::TempDir> = ids
        .iter()
        .map(|&id| (id, tempfile::tempdir().expect("tempdir")))
        .collect();
    // Nodes boot in a seeded random order, back to back.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order = ids.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let cfg = o.consensus();
    let t0 = Instant::now();
    let mut nodes: Vec<(ConsensusNode, tokio::task::JoinHandle<()>)> = Vec::new();
    for &id in &order {
        let dir = dirs[&id].path();
        let node = ConsensusNode::open(id, dir, &cfg, router.transport(id))
            .await
            .map_err(|e| format!("open {id:016x}: {e}"))?;
        router.register(id, Arc::new(node.clone()));
        let boot = BootstrapState::load(dir).map_err(|e| format!("bootstrap state: {e}"))?;
        let me = facts.remove(&id).expect("facts of every node");
        let announced = first_announcement(&node, &boot, &me);
        let mut driver = Driver::new(
            DriverConfig {
                me,
                addr: mem_addr(id),
                cluster: cluster.clone(),
                state_dir: dir.to_path_buf(),
                token_seed: [7; 32],
                sbox: sbox.clone(),
                down_after: Duration::from_millis(cfg.down_after_ms),
                listen_first: Duration::ZERO,
            },
            node.clone(),
            boot,
            announced,
            discovery.view(id, announced),
            MemReporter::new(id, inits.clone()),
        );
        let tick = o.tick;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                if let Err(e) = driver.step().await {
                    eprintln!("inproc: node {id:016x}: {e}");
                    return;
                }
            }
        });
        nodes.push((node, task));
    }
    let started = t0.elapsed().as_secs_f64();

    let mut first_leader = None;
    let mut first_plan = None;
    let res = loop {
        let inits = inits.calls();
        if inits.len() > 1 {
            break Err(format!(
                "initialize() called {} times: {inits:?}",
                inits.len()
            ));
        }
        if first_leader.is_none()
            && nodes
                .iter()
                .any(|(n, _)| n.metrics().current_leader.is_some())
        {
            first_leader = Some(t0.elapsed().as_secs_f64());
        }
        if first_plan.is_none() && nodes.iter().any(|(n, _)| n.state().plan.is_some()) {
            first_plan = Some(t0.elapsed().as_secs_f64());
        }
        if let Some(plan) = full_plan(&nodes, &all) {
            let t = t0.elapsed().as_secs_f64();
            let m = nodes[0].0.metrics();
            break Ok(RunResult {
                n,
                seed,
                started,
                first_leader: first_leader.unwrap_or(t),
                first_plan: first_plan.unwrap_or(t),
                full_plan: t,
                plan_version: plan,
                term: m.current_term,
                rpcs: router.stats().0,
            });
        }
        if t0.elapsed() > o.timeout {
            break Err(format!(
                "no plan covering all {n} nodes on every node after {:?}",
                o.timeout
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    for (node, task) in nodes {
        task.abort();
        let _ = task.await;
        router.unregister(node.id());
        node.shutdown().await;
    }
    drop(dirs);
    res
}

/// The plan version when every node applied the same plan and it places
/// every node (control plane or worker); stops at the first node that has not.
fn full_plan(
    nodes: &[(ConsensusNode, tokio::task::JoinHandle<()>)],
    all: &BTreeSet<NodeId>,
) -> Option<u64> {
    let mut seen = None;
    for (node, _) in nodes {
        let plan = node.state().plan?;
        let placed: BTreeSet<NodeId> = plan
            .control_plane
            .iter()
            .chain(&plan.workers)
            .copied()
            .collect();
        if &placed != all {
            return None;
        }
        match &seen {
            None => seen = Some(plan),
            Some(p) if *p == plan => {}
            Some(_) => return None,
        }
    }
    seen.map(|p| p.version)
}

pub fn run_all(o: &Opts) -> (Vec<RunResult>, Vec<String>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for &n in &o.sizes {
        for seed in 1..=o.seeds {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let r = rt.block_on(run(seed, n, o));
            rt.shutdown_timeout(Duration::from_secs(5));
            match r {
                Ok(r) => {
                    eprintln!(
                        "inproc n={n} seed={seed}: started {:.2}s, leader {:.2}s, first plan {:.2}s, \
                         plan on all {n} nodes {:.2}s (v{}, term {}, {} RPCs)",
                        r.started, r.first_leader, r.first_plan, r.full_plan, r.plan_version,
                        r.term, r.rpcs
                    );
                    ok.push(r);
                }
                Err(e) => {
                    eprintln!("inproc n={n} seed={seed}: FAILED: {e}");
                    failed.push(format!("inproc n={n} seed={seed}: {e}"));
                }
            }
        }
    }
    (ok, failed)
}

pub fn report(o: &Opts, runs: &[RunResult]) {
    let mut lines = BenchLines::default();
    let cfg = o.consensus();
    println!();
    println!(
        "(a) in-process cluster: MemRouter without faults, bootstrap_expect {}, Raft {} \
         (heartbeat {} ms, election {}-{} ms), loop tick {} ms, 2 tokio workers",
        o.expect,
        o.raft,
        cfg.heartbeat_ms,
        cfg.election_min_ms,
        cfg.election_max_ms,
        o.tick.as_millis()
    );
    println!(
        "    wall-clock seconds from the first node's start (real tokio time: no simulated clock)"
    );
    println!(
        "{:>5} {:>5} | {:>15} | {:>15} | {:>15} | {:>17} | {:>8} {:>9}",
        "N",
        "runs",
        "nodes up",
        "first leader",
        "first plan",
        "plan on all nodes",
        "plan ver",
        "RPCs"
    );
    println!(
        "{:>5} {:>5} | {:>15} | {:>15} | {:>15} | {:>17} | {:>8} {:>9}",
        "", "", "med / max", "med / max", "med / max", "med / max", "med", "med"
    );
    let sizes: BTreeSet<usize> = runs.iter().map(|r| r.n).collect();
    for n in sizes {
        let rs: Vec<&RunResult> = runs.iter().filter(|r| r.n == n).collect();
        let f = |g: fn(&RunResult) -> f64| summary(&rs.iter().map(|r| g(r)).collect::<Vec<_>>());
        let started = f(|r| r.started);
        let leader = f(|r| r.first_leader);
        let first = f(|r| r.first_plan);
        let full = f(|r| r.full_plan);
        let ver = f(|r| r.plan_version as f64);
        let rpcs = f(|r| r.rpcs as f64);
        println!(
            "{n:>5} {:>5} | {:>6.2} / {:>6.2} | {:>6.2} / {:>6.2} | {:>6.2} / {:>6.2} | {:>7.2} / {:>7.2} | {:>8.0} {:>9.0}",
            rs.len(),
            started.0,
            started.1,
            leader.0,
            leader.1,
            first.0,
            first.1,
            full.0,
            full.1,
            ver.0,
            rpcs.0
        );
        for (figure, s, per_run) in [
            (
                "nodes_started_s",
                started,
                rs.iter().map(|r| r.started).collect::<Vec<_>>(),
            ),
            (
                "first_leader_s",
                leader,
                rs.iter().map(|r| r.first_leader).collect(),
            ),
            (
                "first_plan_s",
                first,
                rs.iter().map(|r| r.first_plan).collect(),
            ),
            (
                "time_to_committed_plan_s",
                full,
                rs.iter().map(|r| r.full_plan).collect(),
            ),
        ] {
            lines.push(json!({
                "part": "inproc",
                "figure": figure,
                "n": n,
                "runs": rs.len(),
                "seeds": rs.iter().map(|r| r.seed).collect::<Vec<_>>(),
                "median": round(s.0, 3),
                "max": round(s.1, 3),
                "min": round(s.2, 3),
                "values": per_run.iter().map(|v| round(*v, 3)).collect::<Vec<_>>(),
                "unit": "s",
                "clock": "wall",
                "raft": o.raft,
                "bootstrap_expect": o.expect,
                "tick_ms": o.tick.as_millis() as u64,
            }));
        }
        lines.push(json!({
            "part": "inproc",
            "figure": "raft_rpcs_to_committed_plan",
            "n": n,
            "runs": rs.len(),
            "median": rpcs.0,
            "max": rpcs.1,
            "min": rpcs.2,
            "plan_version_median": ver.0,
            "unit": "delivered MemRouter RPCs",
        }));
    }
    lines.print();
}
