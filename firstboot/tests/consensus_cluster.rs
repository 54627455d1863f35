//! In-process consensus clusters: N agents in one process, each with its own
//! store directory and Raft instance, over the in-memory `MemRouter` and an
//! in-memory discovery view, with seeded faults (drops, delays, partitions,
//! crash + restart).
//!
//! Every node runs the agent's own bootstrap component,
//! `firstboot::agent::driver::Driver` (the decide → record → initialize →
//! join → leader-duties loop that `habuild-agent run` runs over mDNS and the
//! Noise transport), here over `agent::sim::MemView` (announcements shared
//! between nodes, honouring `MemRouter::can_talk`) and `agent::sim::MemReporter`
//! (counts `initialize()` calls). Call path: `Cluster::start` →
//! `Driver::new` → a task calling `Driver::step` every 25 ms while holding
//! the node's init gate. The leader duties run too, so a converged cluster
//! also has a committed plan placing every node, with every member healthy.
//!
//! Replay one seed: `HABUILD_RAFT_SEED=<seed> cargo test -p habuild-firstboot
//! --test consensus_cluster faulty -- --nocapture`. The suite runs 200 seeds;
//! fewer or more with `HABUILD_RAFT_RUNS=N`, 8 side by side
//! (`HABUILD_RAFT_JOBS=N`; 1 runs them in order).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firstboot::agent::driver::{first_announcement, Driver, DriverConfig};
use firstboot::agent::sim::{self, mem_addr, InitLog, MemDiscovery, MemReporter};
use firstboot::cluster::ClusterConfig;
use firstboot::consensus::bootstrap::BootstrapState;
use firstboot::consensus::router::{Faults, MemRouter};
use firstboot::consensus::{ConsensusConfig, ConsensusNode};
use firstboot::secretbox::SecretBox;
use firstboot::source::SourceFile;
use firstboot::state::{Member, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The cluster.toml every simulated node reads.
fn cluster_config(expect: usize) -> ClusterConfig {
    let text = testlab::ClusterToml {
        name: "sim",
        secret: "5151515151515151515151515151515151515151515151515151515151515151",
        bootstrap_expect: expect,
        // a one-node cluster has a one-node control plane
        control_plane_size: if expect < 3 { 1 } else { 3 },
        storage: true,
        subnet: "10.0.0.0/12",
        vip: "10.15.255.250",
        metallb_range: "10.15.255.200-10.15.255.215",
    }
    .render();
    ClusterConfig::from_source(&SourceFile::from_text("sim-cluster.toml", text))
        .expect("the simulation's cluster.toml")
}

/// Node number `i`'s facts (addresses 10.1.x.y, away from the VIP and MetalLB).
fn member(id: NodeId, i: usize) -> Member {
    sim::member(
        id,
        format!("n{id:016x}"),
        Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1),
        12,
    )
}

/// Voters a converged group of `n` nodes has: `expect` to start with, then
/// grown by joins up to `max_voters`, always to an odd count.
fn want_voters(n: usize, expect: usize, max_voters: usize) -> usize {
    let mut v = expect.min(n);
    if v.is_multiple_of(2) && v < max_voters && v < n {
        v += 1;
    }
    while v + 2 <= max_voters.min(n) {
        v += 2;
    }
    v
}

struct Running {
    node: ConsensusNode,
    task: tokio::task::JoinHandle<()>,
    /// Held by the node's task across each `Driver::step` (so across
    /// `initialize()` and the recording of its result), and by `crash`
    /// across the abort: a crash never lands inside an initialize (a
    /// check-then-abort on a flag raced on the multi-thread runtime: the
    /// group got initialized, the call was never counted, and seed 1164
    /// failed with "got []" in CI).
    init_gate: Arc<tokio::sync::Mutex<()>>,
}

struct Cluster {
    ids: Vec<NodeId>,
    expect: usize,
    cfg: ConsensusConfig,
    cluster: ClusterConfig,
    router: MemRouter,
    discovery: MemDiscovery,
    inits: InitLog,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    running: BTreeMap<NodeId, Running>,
    /// Every applied log id seen, by index, with the node that applied it.
    applied: Mutex<BTreeMap<u64, (NodeId, openraft::LogId<NodeId>)>>,
    /// [`DriverConfig::listen_first`] of the nodes started from now on.
    listen_first: Duration,
    /// Nodes that keep `/var` in RAM (`Member::var_in_ram`).
    ram: BTreeSet<NodeId>,
}

impl Cluster {
    fn new(seed: u64, n: usize, expect: usize, cfg: ConsensusConfig, faults: Faults) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut ids = BTreeSet::new();
        while ids.len() < n {
            ids.insert(rng.gen_range(1..u64::MAX));
        }
        let ids: Vec<NodeId> = ids.into_iter().collect();
        let dirs = ids
            .iter()
            .map(|&id| (id, tempfile::tempdir().expect("tempdir")))
            .collect();
        let router = MemRouter::new(seed, faults);
        Cluster {
            ids,
            expect,
            cfg,
            cluster: cluster_config(expect),
            discovery: MemDiscovery::new(router.clone()),
            router,
            inits: InitLog::default(),
            dirs,
            running: BTreeMap::new(),
            applied: Mutex::default(),
            listen_first: Duration::ZERO,
            ram: BTreeSet::new(),
        }
    }

    /// Node `id`'s facts as its driver reports them.
    fn facts(&self, id: NodeId) -> Member {
        let index = self
            .ids
            .iter()
            .position(|i| *i == id)
            .expect("a node of the cluster");
        Member {
            var_in_ram: self.ram.contains(&id),
            ..member(id, index)
        }
    }

    /// A node that keeps `/var` in RAM rebooting: its directory is gone.
    async fn crash_and_forget(&mut self, id: NodeId) {
        self.crash(id).await;
        self.dirs.insert(id, tempfile::tempdir().expect("tempdir"));
    }

    fn dir(&self, id: NodeId) -> &Path {
        self.dirs[&id].path()
    }

    async fn start(&mut self, id: NodeId) -> ConsensusNode {
        let node = ConsensusNode::open(id, self.dir(id), &self.cfg, self.router.transport(id))
            .await
            .expect("open node");
        self.router.register(id, Arc::new(node.clone()));
        let boot = BootstrapState::load(self.dir(id)).expect("bootstrap state");
        let me = self.facts(id);
        let announced = first_announcement(&node, &boot, &me);
        let mut driver = Driver::new(
            DriverConfig {
                me,
                addr: mem_addr(id),
                cluster: self.cluster.clone(),
                state_dir: self.dir(id).to_path_buf(),
                token_seed: [7; 32],
                sbox: Arc::new(SecretBox::derive(&self.cluster.cluster.secret)),
                down_after: Duration::from_millis(self.cfg.down_after_ms),
                listen_first: self.listen_first,
            },
            node.clone(),
            boot,
            announced,
            self.discovery.view(id, announced),
            MemReporter::new(id, self.inits.clone()),
        );
        let init_gate = Arc::new(tokio::sync::Mutex::new(()));
        let gate = init_gate.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(25)).await;
                let _held = gate.lock().await;
                driver.step().await.expect("driver step");
            }
        });
        self.running.insert(
            id,
            Running {
                node: node.clone(),
                task,
                init_gate,
            },
        );
        node
    }

    async fn crash(&mut self, id: NodeId) {
        let Some(r) = self.running.remove(&id) else {
            return;
        };
        // Let an initialize() call finish and be counted: a crash inside it
        // is not what we count. Holding the gate across the abort keeps the
        // loop from starting another one in between.
        let gate = r.init_gate.clone();
        let held = gate.lock().await;
        r.task.abort();
        let _ = r.task.await;
        drop(held);
        self.router.unregister(id);
        self.discovery.remove(id);
        r.node.shutdown().await;
    }

    async fn stop_all(&mut self) {
        let ids: Vec<NodeId> = self.running.keys().copied().collect();
        for id in ids {
            self.crash(id).await;
        }
    }

    /// Checks that the cluster converged to one group; `Err(why not)` otherwise.
    fn converged(&self) -> Result<NodeId, String> {
        let all: BTreeSet<NodeId> = self.ids.iter().copied().collect();
        // nodes with /var in RAM are never voters
        let want_voters = want_voters(
            self.ids.len() - self.ram.len(),
            self.expect,
            self.cfg.max_voters,
        );
        let mut leader = None;
        let mut mem_log = None;
        let mut plans = None;
        for id in &self.ids {
            let r = self.running.get(id).ok_or(format!("{id:x} down"))?;
            let m = r.node.metrics();
            let l = m.current_leader.ok_or(format!("{id:x} has no leader"))?;
            if *leader.get_or_insert(l) != l {
                return Err(format!("leaders differ: {l:x} vs {:x}", leader.unwrap()));
            }
            let mc = m.membership_config.clone();
            if *mem_log.get_or_insert(*mc.log_id()) != *mc.log_id() {
                return Err(format!("{id:x} membership at {:?}", mc.log_id()));
            }
            let nodes: BTreeSet<NodeId> = mc.membership().nodes().map(|(n, _)| *n).collect();
            if nodes != all {
                return Err(format!(
                    "{id:x} sees {} of {} nodes in membership",
                    nodes.len(),
                    all.len()
                ));
            }
            if mc.membership().get_joint_config().len() != 1 {
                return Err(format!("{id:x} membership is joint"));
            }
            let voters = mc.membership().voter_ids().count();
            if voters != want_voters {
                return Err(format!("{id:x}: {voters} voters, want {want_voters}"));
            }
            let state = r.node.state();
            let members: BTreeSet<NodeId> = state.members.keys().copied().collect();
            if members != all {
                return Err(format!(
                    "{id:x} state has {} of {} members",
                    members.len(),
                    all.len()
                ));
            }
            if let Some(m) = state.members.values().find(|m| !m.healthy) {
                return Err(format!("{id:x} state has {:x} down", m.id));
            }
            // The leader duty: a committed plan that places every node.
            let plan = state.plan.ok_or(format!("{id:x} has no plan"))?;
            let placed: BTreeSet<NodeId> = plan
                .control_plane
                .iter()
                .chain(&plan.workers)
                .copied()
                .collect();
            if placed != all {
                return Err(format!(
                    "{id:x}: plan v{} places {} of {} nodes",
                    plan.version,
                    placed.len(),
                    all.len()
                ));
            }
            if *plans.get_or_insert(plan.clone()) != plan {
                return Err(format!("{id:x}: plan v{} differs", plan.version));
            }
        }
        Ok(leader.expect("non-empty"))
    }

    /// The safety invariants, checked all along.
    fn check_safety(&self) -> Result<(), String> {
        let inits = self.inits.calls();
        if inits.len() > 1 {
            return Err(format!(
                "initialize() called {} times: {inits:?}",
                inits.len()
            ));
        }
        // State machine safety: an applied entry is committed, and committed
        // entries at the same index are the same entry on every node, so
        // every applied log id seen at an index (on any node, at any sample
        // during the run) must be the same. One group per cluster makes this
        // hold; a second group (or a lost vote) would break it.
        //
        // Not checked: "at most one leader per term". openraft 0.9 runs in
        // its advanced leader-id mode by default, where a leader is
        // (term, node id) and a voter may grant (4, B) after (4, A); two
        // leaders in one term are legal there (seed 1061 showed it).
        let mut applied = self.applied.lock().unwrap();
        for (id, r) in &self.running {
            let Some(log_id) = r.node.metrics().last_applied else {
                continue;
            };
            let seen = applied.entry(log_id.index).or_insert((*id, log_id));
            if seen.1 != log_id {
                return Err(format!(
                    "applied entries differ at index {}: {:x} applied {}, {id:x} applied {log_id}",
                    log_id.index, seen.0, seen.1
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct RunOpts {
    n: usize,
    expect: usize,
    faults: bool,
    timeout: Duration,
}

#[derive(Debug)]
struct RunStats {
    /// From start until the whole cluster converged.
    converge: Duration,
    /// From start until the first leader.
    first_leader: Duration,
}

async fn run(seed: u64, o: RunOpts) -> Result<RunStats, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let faults = if o.faults {
        Faults {
            drop: rng.gen_range(0.0..0.15),
            delay: (Duration::ZERO, Duration::from_millis(rng.gen_range(1..25))),
        }
    } else {
        Faults::default()
    };
    let mut c = Cluster::new(seed, o.n, o.expect, ConsensusConfig::fast(), faults);
    let t0 = Instant::now();
    let ids = c.ids.clone();
    // Nodes boot in a random order, a little apart.
    let mut order = ids.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    for id in &order {
        c.start(*id).await;
        if o.faults {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
        }
    }
    let mut first_leader = None;
    let res: Result<(), String> = async {
        if o.faults {
            // Fault phase: partitions, crashes and restarts during bootstrap.
            let end = Instant::now() + Duration::from_millis(rng.gen_range(500..2500));
            while Instant::now() < end {
                match rng.gen_range(0..4) {
                    0 => {
                        // Only partitions under which the bootstrap guarantee holds (see
                        // consensus::bootstrap): at most one side can hold
                        // `expect` nodes. (With 2 * expect <= n and both sides
                        // >= expect, two groups can form: seed 1061 showed it.)
                        let max_side = if 2 * o.expect <= o.n {
                            o.expect - 1
                        } else {
                            o.n.div_ceil(2)
                        };
                        let k = rng.gen_range(1..=max_side.max(1));
                        let side: BTreeSet<NodeId> =
                            (0..k).map(|_| ids[rng.gen_range(0..o.n)]).collect();
                        let rest: BTreeSet<NodeId> =
                            ids.iter().copied().filter(|i| !side.contains(i)).collect();
                        c.router.partition(&[side, rest]);
                    }
                    1 => c.router.heal(),
                    2 => {
                        let victim = ids[rng.gen_range(0..o.n)];
                        c.crash(victim).await;
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
                        c.start(victim).await;
                    }
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
                c.check_safety()?;
                if first_leader.is_none()
                    && c.running
                        .values()
                        .any(|r| r.node.metrics().current_leader.is_some())
                {
                    first_leader = Some(t0.elapsed());
                }
            }
            // Then the network heals (liveness needs it), drops and delays stay.
            c.router.heal();
        }
        let deadline = Instant::now() + o.timeout;
        loop {
            c.check_safety()?;
            if first_leader.is_none()
                && c.running
                    .values()
                    .any(|r| r.node.metrics().current_leader.is_some())
            {
                first_leader = Some(t0.elapsed());
            }
            match c.converged() {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("not converged after {:?}: {e}", o.timeout))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let inits = c.inits.calls();
        if inits.len() != 1 || !inits[0].ok {
            return Err(format!(
                "want exactly one successful initialize(), got {inits:?}"
            ));
        }
        // Nodes boot one after another, so the first `expect` that see each
        // other form the group (not necessarily the lowest ids overall).
        let all: BTreeSet<NodeId> = ids.iter().copied().collect();
        if inits[0].voters.len() != o.expect || !inits[0].voters.is_subset(&all) {
            return Err(format!(
                "initial voters {:?}, want {} of the cluster's ids",
                inits[0].voters, o.expect
            ));
        }
        Ok(())
    }
    .await;
    let converge = t0.elapsed();
    c.stop_all().await;
    res.map(|()| RunStats {
        converge,
        first_leader: first_leader.unwrap_or(converge),
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn run_seed(seed: u64, o: RunOpts) -> RunStats {
    match run_one(seed, o) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// Run one seed on its own runtime; the error names the seed and how to
/// replay it.
fn run_one(seed: u64, o: RunOpts) -> Result<RunStats, String> {
    match runtime().block_on(run(seed, o)) {
        Ok(s) => {
            eprintln!(
                "seed {seed} n={} expect={} faults={}: first leader {:?}, converged {:?}",
                o.n, o.expect, o.faults, s.first_leader, s.converge
            );
            Ok(s)
        }
        Err(e) => Err(format!(
            "seed {seed} failed (n={}, expect={}, faults={}): {e}\n\
             replay: HABUILD_RAFT_SEED={seed} cargo test -p habuild-firstboot --test consensus_cluster",
            o.n, o.expect, o.faults
        )),
    }
}

/// Run seeds side by side: each seed is its own simulated cluster on its own
/// runtime, and a run spends nearly all its time waiting on Raft timers (a
/// 12-seed sweep measured 28 s wall for 1 s of CPU), so running several at
/// once shortens the sweep without changing what one seed does.
/// `HABUILD_RAFT_JOBS` sets how many (default 8; 1 runs them in order).
/// Every failing seed is reported, not only the first.
fn run_seeds(runs: Vec<(u64, RunOpts)>) {
    let jobs = env_u64("HABUILD_RAFT_JOBS").unwrap_or(8).max(1) as usize;
    let queue = Mutex::new(runs.into_iter());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let next = queue.lock().expect("queue").next();
                let Some((seed, o)) = next else { break };
                if let Err(e) = run_one(seed, o) {
                    failures.lock().expect("failures").push((seed, e));
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("failures");
    failures.sort_by_key(|(seed, _)| *seed);
    assert!(
        failures.is_empty(),
        "{} seed(s) failed:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|(_, e)| e.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn clean_bootstrap_3_5_7() {
    let clean = |n, expect| RunOpts {
        n,
        expect,
        faults: false,
        timeout: Duration::from_secs(30),
    };
    let mut runs: Vec<(u64, RunOpts)> = Vec::new();
    for n in [3, 5, 7] {
        for seed in [1, 2] {
            runs.push((seed, clean(n, 3)));
        }
    }
    // bootstrap_expect == N.
    runs.push((3, clean(5, 5)));
    run_seeds(runs);
}

#[test]
fn faulty_bootstrap_seeds() {
    let runs = env_u64("HABUILD_RAFT_RUNS").unwrap_or(200);
    let seeds: Vec<u64> = match env_u64("HABUILD_RAFT_SEED") {
        Some(s) => vec![s],
        None => (1000..1000 + runs).collect(),
    };
    let runs = seeds
        .into_iter()
        .map(|seed| {
            let n = [3, 5, 7][(seed % 3) as usize];
            let expect = if seed % 4 == 0 { n } else { 3 };
            let o = RunOpts {
                n,
                expect,
                faults: true,
                timeout: Duration::from_secs(60),
            };
            (seed, o)
        })
        .collect();
    run_seeds(runs);
}

#[test]
fn larger_clusters() {
    let sizes: Vec<usize> = match std::env::var("HABUILD_RAFT_SIZES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![31, 101],
    };
    for n in sizes {
        run_seed(
            7,
            RunOpts {
                n,
                expect: 3,
                faults: false,
                timeout: Duration::from_secs(300),
            },
        );
    }
}

#[test]
fn restarted_nodes_rejoin_their_group() {
    runtime().block_on(async {
        let mut c = Cluster::new(42, 3, 3, ConsensusConfig::fast(), Faults::default());
        let ids = c.ids.clone();
        for id in &ids {
            c.start(*id).await;
        }
        let wait = |c: &Cluster| c.converged();
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = wait(&c) {
            assert!(Instant::now() < deadline, "no convergence: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = c.running[&ids[0]].node.metrics().membership_config.clone();

        // Restart a follower, then the leader, each from its own directory.
        let leader = c.converged().unwrap();
        let follower = *ids.iter().find(|&&i| i != leader).unwrap();
        for victim in [follower, leader] {
            c.crash(victim).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let node = c.start(victim).await;
            assert!(node.had_state(), "restart must find its state");
            assert!(
                node.member_advert().is_some(),
                "restarted node must know its group at once"
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Err(e) = wait(&c) {
                assert!(
                    Instant::now() < deadline,
                    "no convergence after restarting {victim:x}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let after = c.running[&ids[0]].node.metrics().membership_config.clone();
        assert_eq!(
            before.membership(),
            after.membership(),
            "same group after restarts"
        );
        assert_eq!(c.inits.calls().len(), 1, "no re-initialization");

        // A full-cluster restart also comes back as the same group.
        c.stop_all().await;
        for id in &ids {
            let node = c.start(*id).await;
            assert!(node.had_state());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = wait(&c) {
            assert!(
                Instant::now() < deadline,
                "no convergence after full restart: {e}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(c.inits.calls().len(), 1, "no re-initialization");
        c.stop_all().await;
    });
}

/// A one-node cluster (`bootstrap_expect = 1`) gets a second machine
/// later, whose discovery does not see the first one at once (its first
/// mDNS answers are late: partitioned for 500 ms). Listening first (2 s),
/// it joins the existing group; it never forms a group of its own.
#[test]
fn a_node_added_later_listens_first_and_joins_the_existing_group() {
    runtime().block_on(async {
        let mut c = Cluster::new(5, 2, 1, ConsensusConfig::fast(), Faults::default());
        let (old, new) = (c.ids[0], c.ids[1]);
        c.start(old).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.running[&old].node.metrics().current_leader != Some(old) {
            assert!(Instant::now() < deadline, "the first node formed no group");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.router
            .partition(&[BTreeSet::from([old]), BTreeSet::from([new])]);
        c.listen_first = Duration::from_secs(2);
        c.start(new).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.router.heal();
        wait_converged(&c, "the late node in the existing group").await;
        assert_eq!(
            c.inits.calls().len(),
            1,
            "only the first node initialized a group: {:?}",
            c.inits.calls()
        );
        c.stop_all().await;
    });
}

/// Five nodes (`bootstrap_expect` 3), two of which keep `/var` in RAM: the
/// group forms from the other three, and the RAM nodes join as learners
/// that are never promoted (five voters otherwise). One RAM node then
/// reboots with its state gone and the same id (its SMBIOS UUID): it joins
/// again as the same learner and gets the whole log back.
#[test]
fn nodes_with_var_in_ram_never_vote_and_rejoin_under_their_id_after_losing_everything() {
    runtime().block_on(async {
        let mut c = Cluster::new(23, 5, 3, ConsensusConfig::fast(), Faults::default());
        let ids = c.ids.clone();
        // the two lowest ids: the ones every proposal would pick first
        c.ram = ids[..2].iter().copied().collect();
        for id in &ids {
            c.start(*id).await;
        }
        wait_converged(&c, "5 nodes, 2 of them with /var in RAM").await;
        let inits = c.inits.calls();
        assert_eq!(inits.len(), 1, "{inits:?}");
        let check_roles = |c: &Cluster| {
            for id in &ids {
                let m = c.running[id].node.metrics();
                let membership = m.membership_config.membership();
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
                assert_eq!(learners, c.ram, "on {id:x}: the RAM nodes are the learners");
                assert_eq!(voters.len(), 3, "on {id:x}");
                assert!(voters.is_disjoint(&c.ram), "on {id:x}: {voters:x?}");
            }
        };
        check_roles(&c);
        let ram = ids[0];
        let applied = c.running[&ids[4]].node.metrics().last_applied;
        c.crash_and_forget(ram).await;
        let node = c.start(ram).await;
        assert!(!node.had_state(), "the reboot lost everything");
        wait_converged(&c, "the RAM node back with its state gone").await;
        check_roles(&c);
        let back = c.running[&ram].node.metrics().last_applied;
        assert!(
            back >= applied,
            "the returning node applied the log again: {back:?} < {applied:?}"
        );
        assert_eq!(c.inits.calls().len(), 1, "no second group");
        c.check_safety().unwrap();
        c.stop_all().await;
    });
}

/// Waits until `c` converged (see `Cluster::converged`), or panics with `what`.
async fn wait_converged(c: &Cluster, what: &str) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.converged() {
            Ok(l) => return l,
            Err(e) => assert!(Instant::now() < deadline, "{what}: no convergence: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn voter_count_stays_odd() {
    for (n, voters, learners) in [(4, 3, 1), (5, 5, 0), (6, 5, 1)] {
        runtime().block_on(async {
            let mut c = Cluster::new(11, n, 3, ConsensusConfig::fast(), Faults::default());
            let ids = c.ids.clone();
            for id in &ids {
                c.start(*id).await;
            }
            wait_converged(&c, &format!("{n} nodes")).await;
            for id in &ids {
                let m = c.running[id].node.metrics();
                let membership = m.membership_config.membership();
                assert_eq!(
                    membership.voter_ids().count(),
                    voters,
                    "{n} nodes: voters on {id:x}"
                );
                assert_eq!(
                    membership.learner_ids().count(),
                    learners,
                    "{n} nodes: learners on {id:x}"
                );
            }
            c.stop_all().await;
        });
    }
}

#[test]
fn down_member_is_marked_and_recovers() {
    runtime().block_on(async {
        let mut c = Cluster::new(21, 3, 3, ConsensusConfig::fast(), Faults::default());
        let ids = c.ids.clone();
        for id in &ids {
            c.start(*id).await;
        }
        let leader = wait_converged(&c, "3 nodes").await;
        let victim = *ids.iter().find(|&&i| i != leader).unwrap();
        let health_everywhere = |c: &Cluster, want: bool| {
            c.running
                .values()
                .all(|r| r.node.state().members.get(&victim).map(|m| m.healthy) == Some(want))
        };
        c.crash(victim).await;
        let crashed = Instant::now();
        let deadline = crashed + Duration::from_secs(20);
        while !health_everywhere(&c, false) {
            assert!(
                Instant::now() < deadline,
                "{victim:x} still healthy 20 s after its crash"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            crashed.elapsed() >= Duration::from_millis(c.cfg.down_after_ms),
            "marked down before the threshold"
        );
        c.start(victim).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !health_everywhere(&c, true) {
            assert!(
                Instant::now() < deadline,
                "{victim:x} not healthy again 20 s after its restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Healthy in the restarted node's own state too (it is in `running`).
        wait_converged(&c, "after the restart").await;
        c.stop_all().await;
    });
}
