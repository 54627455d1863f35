//! The agent bench: how long until a plan is committed, and what an idle
//! agent costs. Run it with `scripts/bench-agent` (checks for root, builds
//! the release binaries, runs this) or directly:
//! `cargo bench -p habuild-firstboot --bench agent`.
//!
//! Two parts:
//!
//! - **inproc**: N consensus nodes in this process, each running the
//!   agent's own bootstrap component (`firstboot::agent::driver::Driver`:
//!   the `bootstrap_expect` decision, joins, and the leader duties: plan
//!   commit, PKI issue, member health) over [`MemRouter`] without faults and
//!   the in-memory discovery view of `firstboot::agent::sim`, as
//!   `tests/consensus_cluster.rs` does. Measured per run, from the
//!   first node's start: first leader, first plan committed, and the plan
//!   that covers all N nodes applied on every node. The harness runs on real
//!   tokio time (2 worker threads, real files and fsyncs in temp dirs), so
//!   these are wall-clock times; there is no simulated clock.
//! - **netns**: real `habuild-agent` processes (release build), each in its
//!   own network namespace on a bridge this bench creates (namespaces
//!   `hbbench<pid>-<n>`, made by `testlab`, subnet 10.91.0.0/24, mDNS only on `eth0`),
//!   consensus-only (`--services none`, `--root` in a temp dir: no converge
//!   steps, nothing written outside the temp dir).
//!   Time from spawning the agents to every agent reporting the same
//!   committed plan that covers all of them (as `tests/agent_netns.rs`
//!   checks it), over several fresh runs; then, after a settle time, a
//!   steady-state window on the last run: per agent, mDNS datagrams sent and
//!   received (the UDP counters of the agent's network namespace, in which
//!   the only UDP sockets are mdns-sd's on port 5353: checked), every packet
//!   on its `eth0` (all protocols), TCP segments and connections opened
//!   (the transport: one persistent connection per peer), the status JSON's
//!   `announcements_last_minute`, VmRSS, and CPU (utime+stime over the
//!   window, % of one core); then the leader's packets per minute and CPU
//!   and the steady-state mDNS rate (the periodic re-announcement included)
//!   on one line and as `BENCH` figures (`leader_*`,
//!   `mdns_steady_state_sent_per_node_per_min`).
//!
//! Every packet stays inside the namespaces created here. They and the
//! agents are removed on every path: Drop (also while unwinding from a
//! panic), SIGINT/SIGTERM/SIGHUP (a handler thread), and at start for
//! leftovers of runs that were SIGKILLed (namespaces whose creating pid is
//! gone, and the processes still inside them).
//!
//! Output: progress on stderr; on stdout a human table per part and one
//! `BENCH {json}` line per figure. Exit status 1 if a run failed.
//!
//! Environment (all optional):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `HABUILD_BENCH_PARTS` | `inproc,netns` | parts to run |
//! | `HABUILD_BENCH_SIZES` | `3,5,7,31,101` | in-process cluster sizes (at most 180) |
//! | `HABUILD_BENCH_SEEDS` | `3` | in-process seeds per size (seeds 1..=S) |
//! | `HABUILD_BENCH_EXPECT` | `3` | `bootstrap_expect` (both parts) |
//! | `HABUILD_BENCH_RAFT` | `fast` | in-process Raft timing: `fast` (heartbeat 50 ms, elections 150-300 ms, as the tests) or `default` (the agent's: 250 ms, 1-2 s) |
//! | `HABUILD_BENCH_TICK_MS` | `25` | in-process agent loop period (the test harness's) |
//! | `HABUILD_BENCH_TIMEOUT_SECS` | `300` | limit per in-process run |
//! | `HABUILD_BENCH_NETNS_NODES` | `5` | agents in namespaces (at most 180) |
//! | `HABUILD_BENCH_NETNS_RUNS` | `3` | fresh formations measured (one that does not converge in 120 s is counted and listed as failed); the last continues into the steady state (if it failed, up to 3 extra runs) |
//! | `HABUILD_BENCH_SETTLE_SECS` | `10` | wait after convergence before the steady-state window |
//! | `HABUILD_BENCH_STEADY_SECS` | `60` | steady-state window |
//! | `HABUILD_BENCH_AGENT` | cargo's `habuild-agent` | agent binary to run |
//! | `HABUILD_BENCH_AGENT_LOG` | `warn` | `RUST_LOG` of the agents |
//! | `HABUILD_BENCH_KEEP_LOGS` | (unset) | directory to copy every agent's log (and last status) into |

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use firstboot::cluster::ClusterConfig;
use firstboot::consensus::router::{Faults, MemRouter};
use firstboot::consensus::{ConsensusConfig, ConsensusNode};
use firstboot::source::SourceFile;
use firstboot::state::{Member, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SUBNET_PREFIX: [u8; 3] = [10, 91, 0];
const FIRST_HOST: usize = 10;
/// Hosts .10-.189: below the MetalLB range (.200-.215) and the VIP (.250).
const MAX_NODES: usize = 180;
const SECRET: &str = "3333333333333333333333333333333333333333333333333333333333333333";

fn cluster_toml(expect: usize) -> String {
    testlab::ClusterToml::lab("bench", SECRET, expect, SUBNET_PREFIX)
}

fn node_ip(i: usize) -> Ipv4Addr {
    let [a, b, c] = SUBNET_PREFIX;
    Ipv4Addr::new(a, b, c, (FIRST_HOST + i) as u8)
}

// ---------------------------------------------------------------- options

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match env_str(name) {
        None => default,
        Some(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| die(&format!("{name}={v:?} is not a number"))),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("bench agent: {msg}");
    std::process::exit(2)
}

#[derive(Debug, Clone)]
struct Opts {
    inproc: bool,
    netns: bool,
    sizes: Vec<usize>,
    seeds: u64,
    expect: usize,
    raft: &'static str,
    tick: Duration,
    timeout: Duration,
    netns_nodes: usize,
    netns_runs: usize,
    settle: Duration,
    steady: Duration,
    agent: PathBuf,
    agent_log: String,
    keep_logs: Option<PathBuf>,
}

impl Opts {
    fn from_env() -> Self {
        let parts = env_str("HABUILD_BENCH_PARTS").unwrap_or_else(|| "inproc,netns".into());
        let parts: BTreeSet<&str> = parts.split(',').map(str::trim).collect();
        for p in &parts {
            if !matches!(*p, "inproc" | "netns") {
                die(&format!(
                    "HABUILD_BENCH_PARTS: unknown part {p:?} (inproc, netns)"
                ));
            }
        }
        let sizes: Vec<usize> = env_str("HABUILD_BENCH_SIZES")
            .unwrap_or_else(|| "3,5,7,31,101".into())
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| die(&format!("HABUILD_BENCH_SIZES: {s:?}")))
            })
            .collect();
        let expect = env_num("HABUILD_BENCH_EXPECT", 3usize).max(1);
        let netns_nodes = env_num("HABUILD_BENCH_NETNS_NODES", 5usize);
        for &n in sizes.iter().chain([&netns_nodes]) {
            if n < expect || n > MAX_NODES {
                die(&format!(
                    "cluster size {n}: must be between bootstrap_expect ({expect}) and {MAX_NODES}"
                ));
            }
        }
        let raft = match env_str("HABUILD_BENCH_RAFT").as_deref() {
            None | Some("fast") => "fast",
            Some("default") => "default",
            Some(o) => die(&format!("HABUILD_BENCH_RAFT={o:?}: fast or default")),
        };
        Opts {
            inproc: parts.contains("inproc"),
            netns: parts.contains("netns"),
            sizes,
            seeds: env_num("HABUILD_BENCH_SEEDS", 3u64).max(1),
            expect,
            raft,
            tick: Duration::from_millis(env_num("HABUILD_BENCH_TICK_MS", 25u64).max(1)),
            timeout: Duration::from_secs(env_num("HABUILD_BENCH_TIMEOUT_SECS", 300u64)),
            netns_nodes,
            netns_runs: env_num("HABUILD_BENCH_NETNS_RUNS", 3usize).max(1),
            settle: Duration::from_secs(env_num("HABUILD_BENCH_SETTLE_SECS", 10u64)),
            steady: Duration::from_secs(env_num("HABUILD_BENCH_STEADY_SECS", 60u64).max(1)),
            agent: env_str("HABUILD_BENCH_AGENT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_habuild-agent"))),
            agent_log: env_str("HABUILD_BENCH_AGENT_LOG").unwrap_or_else(|| "warn".into()),
            keep_logs: env_str("HABUILD_BENCH_KEEP_LOGS").map(PathBuf::from),
        }
    }

    fn consensus(&self) -> ConsensusConfig {
        match self.raft {
            "default" => ConsensusConfig::default(),
            _ => ConsensusConfig::fast(),
        }
    }
}

// ---------------------------------------------------------------- stats and output

/// Median (mean of the two middle values for an even count), max, min.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let m = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    };
    (median, v[v.len() - 1], v[0])
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// `BENCH {json}` lines, printed after the human table they belong to.
#[derive(Default)]
struct BenchLines(Vec<String>);

impl BenchLines {
    fn push(&mut self, v: Value) {
        self.0.push(format!("BENCH {v}"));
    }

    fn print(self) {
        for l in self.0 {
            println!("{l}");
        }
    }
}

mod inproc;
mod netns;

fn main() {
    let o = Opts::from_env();
    let mut failed: Vec<String> = Vec::new();
    eprintln!("bench agent: {o:?}");
    if o.netns {
        netns::install_signal_cleanup();
    }
    if o.inproc {
        let (runs, errs) = inproc::run_all(&o);
        failed.extend(errs);
        inproc::report(&o, &runs);
    }
    if o.netns {
        // A panic inside unwinds through the Lab's Drop (agents killed,
        // namespaces deleted) before it gets here.
        match std::panic::catch_unwind(|| netns::run_all(&o)) {
            Ok(Ok(r)) => {
                netns::report(&o, &r);
                failed.extend(r.failures.iter().map(|f| format!("netns {f}")));
            }
            Ok(Err(e)) => {
                eprintln!("netns: FAILED: {e}");
                failed.push(format!("netns: {}", e.lines().next().unwrap_or("")));
            }
            Err(_) => failed.push("netns: panicked".into()),
        }
    }
    if !failed.is_empty() {
        println!();
        println!("FAILED:");
        for f in &failed {
            println!("  {f}");
        }
        std::process::exit(1);
    }
}
