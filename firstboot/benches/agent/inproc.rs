//! In-process part of the agent bench (see main.rs).

use super::*;
use openraft::ServerState;

/// Between join attempts of one node (the test harness's value).
const JOIN_EVERY: Duration = Duration::from_millis(300);
/// How often the driver looks at the cluster.
const POLL: Duration = Duration::from_millis(20);

fn addr(id: NodeId) -> String {
    format!("mem://{id:016x}")
}

/// What the nodes share: the in-memory network and discovery view, and
/// what the planner needs.
struct World {
    expect: usize,
    tick: Duration,
    router: MemRouter,
    adverts: Mutex<BTreeMap<NodeId, Advert>>,
    /// (initializer, voters, ok) of every `initialize()` call.
    inits: Mutex<Vec<(NodeId, BTreeSet<NodeId>, bool)>>,
    cluster: ClusterConfig,
    token_seed: [u8; 32],
    facts: BTreeMap<NodeId, Member>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One node's loop: advertise, decide, initialize / join; once a member,
/// make sure its facts are in the state and, on the leader, commit the
/// plan when the planner's answer moved (as `agent::Agent::plan`).
async fn agent_loop(id: NodeId, node: ConsensusNode, dir: PathBuf, w: Arc<World>) {
    let me = w.facts[&id].clone();
    let mut bs = BootstrapState::load(&dir).expect("bootstrap state");
    let mut last_join: Option<Instant> = None;
    loop {
        tokio::time::sleep(w.tick).await;
        let join_due = match last_join {
            None => true,
            Some(t) => t.elapsed() >= JOIN_EVERY,
        };
        if let Some(adv) = node.member_advert() {
            let leader = match &adv {
                Advert::Member { leader } => *leader,
                Advert::Booting { .. } => None,
            };
            lock(&w.adverts).insert(id, adv);
            let state = node.state();
            if state.members.get(&id) != Some(&me) && join_due {
                if let Some(l) = leader {
                    last_join = Some(Instant::now());
                    let _ = node.join_via(l, &addr(id), Some(me.clone())).await;
                }
            }
            if node.metrics().state == ServerState::Leader && state.members.len() >= w.expect {
                let prev = state.plan.as_ref();
                if let Ok(p) =
                    firstboot::plan::plan(&state.members, &w.cluster, prev, &w.token_seed)
                {
                    if Some(p.version) != prev.map(|p| p.version) {
                        let _ = node.write(StateCommand::SetPlan(p)).await;
                    }
                }
            }
            continue;
        }
        let peers: Vec<Peer> = lock(&w.adverts)
            .iter()
            .filter(|(&p, _)| p != id && w.router.can_talk(id, p))
            .map(|(&p, a)| Peer {
                id: p,
                advert: a.clone(),
            })
            .collect();
        let d = decide(id, w.expect, &bs, &peers);
        match &d {
            Decision::Propose { .. } | Decision::Lock { .. } => {
                if bs.record(&d) {
                    bs.save(&dir).expect("save bootstrap state");
                }
            }
            Decision::Initialize(set) => {
                let voters = set.iter().map(|&v| (v, addr(v))).collect();
                let ok = node.initialize(voters).await.is_ok();
                lock(&w.inits).push((id, set.clone(), ok));
            }
            Decision::JoinExisting { via } => {
                if join_due {
                    last_join = Some(Instant::now());
                    let _ = node.join_via(*via, &addr(id), Some(me.clone())).await;
                }
            }
            Decision::Wait(_) => {}
        }
        if node.member_advert().is_none() {
            lock(&w.adverts).insert(id, bs.advert());
        }
    }
}

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
    let facts = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            (
                id,
                Member {
                    id,
                    hostname: format!("node{i}"),
                    ip: node_ip(i),
                    prefix: 24,
                    port: 7946,
                    cpus: 2,
                    mem_bytes: 4 << 30,
                    spare_disks: vec![],
                    data_free_bytes: 10 << 30,
                    labels: BTreeMap::new(),
                    healthy: true,
                },
            )
        })
        .collect();
    let src = SourceFile::from_text("bench-cluster.toml", cluster_toml(o.expect));
    let cluster = ClusterConfig::from_source(&src).map_err(|e| e.to_string())?;
    let w = Arc::new(World {
        expect: o.expect,
        tick: o.tick,
        router: MemRouter::new(seed, Faults::default()),
        adverts: Mutex::default(),
        inits: Mutex::default(),
        cluster,
        token_seed: [7; 32],
        facts,
    });
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
        let node = ConsensusNode::open(id, dir, &cfg, w.router.transport(id))
            .await
            .map_err(|e| format!("open {id:016x}: {e}"))?;
        w.router.register(id, Arc::new(node.clone()));
        let task = tokio::spawn(agent_loop(id, node.clone(), dir.to_path_buf(), w.clone()));
        nodes.push((node, task));
    }
    let started = t0.elapsed().as_secs_f64();

    let mut first_leader = None;
    let mut first_plan = None;
    let res = loop {
        let inits = lock(&w.inits).clone();
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
                rpcs: w.router.stats().0,
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
        w.router.unregister(node.id());
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
