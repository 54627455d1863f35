//! Network-namespace part of the agent bench (see main.rs).

use super::*;

use firstboot::protocol::{hex, StatusDoc};
use testlab::status::{converged, Converged};
use testlab::{AgentArgs, Lab};

pub const NS_PREFIX: &str = "hbbench";
const FORM_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);

/// On SIGINT/SIGTERM/SIGHUP: remove every namespace of the lab (the
/// agents inside are killed with them) and exit.
pub fn install_signal_cleanup() {
    let spawned = std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(|| {
            use tokio::signal::unix::{signal, SignalKind};
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            let code = rt.block_on(async {
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
                tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                    _ = hup.recv() => 129,
                }
            });
            eprintln!("bench agent: signal: deleting the namespaces and the agents in them");
            testlab::netns::teardown_all();
            std::process::exit(code);
        });
    if let Err(e) = spawned {
        eprintln!("bench agent: no signal cleanup thread: {e}");
    }
}

fn node_id(i: usize) -> u64 {
    0x1000 + i as u64
}

/// Starts every agent of the run: discovery, consensus and the plan only,
/// no converge steps (no etcd/keepalived/haproxy, no writes to the host's
/// /etc or /var); any file a step would write stays in the lab's temp dir.
fn start_agents(lab: &mut Lab, o: &Opts, cluster_file: &Path) -> Result<(), String> {
    for i in 0..o.netns_nodes {
        let mut args = AgentArgs::new(&o.agent, cluster_file, node_id(i), &format!("node{i}"))
            .args(["--services", "none"])
            .args(["--root".as_ref(), lab.node_dir(i).join("root").as_os_str()]);
        args.rust_log = o.agent_log.clone();
        lab.start(i, &args).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// An agent that exited is an error worth stopping for.
fn check_alive(lab: &mut Lab) -> Result<(), String> {
    match lab.exited() {
        Some((i, st)) => Err(format!("agent node{i} exited: {st}")),
        None => Ok(()),
    }
}

/// One line per agent: phase, what it waits for, rejected announcements
/// (full logs: `HABUILD_BENCH_KEEP_LOGS`).
fn agents_summary(lab: &Lab, nodes: usize) -> String {
    let mut s = String::new();
    for i in 0..nodes {
        s += &match lab.status(i) {
            None => format!("  node{i}: no status\n"),
            Some(v) => format!(
                "  node{i}: phase {} waiting for {:?} peers {} rejected {:?}\n",
                v.phase,
                v.waiting_for,
                v.peers.len(),
                v.rejected
            ),
        };
    }
    s
}

fn all(nodes: usize) -> Vec<usize> {
    (0..nodes).collect()
}

#[derive(Debug, Clone)]
pub struct Formation {
    pub first_leader: f64,
    pub first_plan: f64,
    pub full_plan: f64,
    pub plan_version: u64,
    /// "initializing the group" lines in the logs (all from one agent).
    pub initialize_calls: usize,
}

/// Counters of one agent at one instant, all from /proc.
#[derive(Debug, Clone, Default)]
struct Sample {
    udp4_in: u64,
    udp4_out: u64,
    udp6_in: u64,
    udp6_out: u64,
    link_rx: u64,
    link_tx: u64,
    /// TCP ActiveOpens + PassiveOpens (connections made, either side).
    tcp_opens: u64,
    /// TCP InSegs + OutSegs.
    tcp_segs: u64,
    cpu_ticks: u64,
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

/// The `<proto>:` header/value rows of /proc/<pid>/net/snmp (the agent's
/// network namespace) as a map.
fn snmp(pid: u32, proto: &str) -> Result<BTreeMap<String, u64>, String> {
    let text = read(&format!("/proc/{pid}/net/snmp"))?;
    let prefix = format!("{proto}: ");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    let [head, vals] = rows[..] else {
        return Err(format!("no {proto} rows in snmp"));
    };
    Ok(head
        .split_whitespace()
        .zip(vals.split_whitespace())
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect())
}

/// `Udp:` InDatagrams / OutDatagrams.
fn udp4(pid: u32) -> Result<(u64, u64), String> {
    let map = snmp(pid, "Udp")?;
    match (map.get("InDatagrams"), map.get("OutDatagrams")) {
        (Some(i), Some(o)) => Ok((*i, *o)),
        _ => Err("Udp InDatagrams/OutDatagrams missing".into()),
    }
}

/// `Tcp:` (ActiveOpens + PassiveOpens, InSegs + OutSegs), IPv4 and IPv6
/// together (the kernel counts both in these rows).
fn tcp(pid: u32) -> Result<(u64, u64), String> {
    let map = snmp(pid, "Tcp")?;
    let get = |k: &str| map.get(k).copied().ok_or(format!("Tcp {k} missing"));
    Ok((
        get("ActiveOpens")? + get("PassiveOpens")?,
        get("InSegs")? + get("OutSegs")?,
    ))
}

fn udp6(pid: u32) -> Result<(u64, u64), String> {
    let text = read(&format!("/proc/{pid}/net/snmp6"))?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
            })
            .ok_or_else(|| format!("{key} missing in snmp6"))
    };
    Ok((get("Udp6InDatagrams")?, get("Udp6OutDatagrams")?))
}

/// eth0 (rx_packets, tx_packets) from /proc/<pid>/net/dev.
fn link(pid: u32) -> Result<(u64, u64), String> {
    let text = read(&format!("/proc/{pid}/net/dev"))?;
    for l in text.lines() {
        if let Some(rest) = l.trim_start().strip_prefix("eth0:") {
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() >= 10 {
                return Ok((f[1], f[9]));
            }
        }
    }
    Err("eth0 not in net/dev".into())
}

/// utime + stime (clock ticks) from /proc/<pid>/stat.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let text = read(&format!("/proc/{pid}/stat"))?;
    let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // fields after the command: state is field 3, utime 14, stime 15
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| -> Result<u64, String> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "short /proc/pid/stat".to_string())
    };
    Ok(get(11)? + get(12)?)
}

/// A `Key:  N kB` (or plain number) line of /proc/<pid>/status.
fn status_field(pid: u32, key: &str) -> Result<u64, String> {
    let text = read(&format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{key} missing in /proc/{pid}/status"))
}

/// Local UDP ports open in the agent's namespace (v4 and v6).
fn udp_ports(pid: u32) -> Result<BTreeSet<u16>, String> {
    let mut ports = BTreeSet::new();
    for f in ["udp", "udp6"] {
        let text = read(&format!("/proc/{pid}/net/{f}"))?;
        for l in text.lines().skip(1) {
            let local = l.split_whitespace().nth(1).unwrap_or("");
            if let Some((_, p)) = local.rsplit_once(':') {
                if let Ok(p) = u16::from_str_radix(p, 16) {
                    ports.insert(p);
                }
            }
        }
    }
    Ok(ports)
}

fn sample(pid: u32) -> Result<Sample, String> {
    let (udp4_in, udp4_out) = udp4(pid)?;
    let (udp6_in, udp6_out) = udp6(pid)?;
    let (link_rx, link_tx) = link(pid)?;
    let (tcp_opens, tcp_segs) = tcp(pid)?;
    Ok(Sample {
        tcp_opens,
        tcp_segs,
        udp4_in,
        udp4_out,
        udp6_in,
        udp6_out,
        link_rx,
        link_tx,
        cpu_ticks: cpu_ticks(pid)?,
    })
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// One agent's steady-state figures.
#[derive(Debug, Clone)]
pub struct Steady {
    pub node: usize,
    pub id: String,
    pub leader: bool,
    pub mdns_sent: f64,
    pub mdns_recv: f64,
    pub mdns_sent_v4: f64,
    pub mdns_sent_v6: f64,
    pub mdns_delivered: f64,
    /// Announcements the agent rejected as malformed, per minute.
    pub malformed: f64,
    pub link_tx: f64,
    pub link_rx: f64,
    pub tcp_opens: f64,
    pub tcp_segs: f64,
    pub announcements_last_minute: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub cpu_pct: f64,
    pub other_udp_ports: Vec<u16>,
}

/// (figure name, unit, value of one agent, how it is measured)
type Figure = (&'static str, &'static str, fn(&Steady) -> f64, &'static str);

pub struct NetnsResult {
    pub formations: Vec<Formation>,
    /// Runs that did not converge, with the reason.
    pub failures: Vec<String>,
    pub steady: Vec<Steady>,
    pub window: f64,
}

/// One fresh formation: spawn all agents, poll their status sockets
/// until the plan is everywhere. The Lab stays up for the caller.
enum FormError {
    /// The namespaces could not be made: nothing else will work.
    Setup(String),
    /// This run did not converge (or broke a rule); others may.
    Run(String),
}

/// One fresh formation in a new lab: spawn all agents, poll their status
/// sockets until the plan is everywhere. The lab is handed to the caller,
/// still up.
fn form(o: &Opts) -> Result<(Lab, Formation, String), FormError> {
    let n = o.netns_nodes;
    let mut lab = Lab::new(NS_PREFIX, SUBNET_PREFIX, n).map_err(|e| {
        FormError::Setup(format!(
            "{e} (run scripts/bench-agent as root, or HABUILD_BENCH_PARTS=inproc)"
        ))
    })?;
    // The in-process part numbers nodes the same way (main.rs's node_ip).
    if let Some(i) = (0..n).find(|i| lab.node_ip(*i) != node_ip(*i)) {
        return Err(FormError::Setup(format!(
            "node{i}: the lab put it at {}, the bench expects {}",
            lab.node_ip(i),
            node_ip(i)
        )));
    }
    if let Some(keep) = &o.keep_logs {
        lab.keep_logs(keep.clone());
    }
    let cluster_file = lab.dir().join("cluster.toml");
    std::fs::write(&cluster_file, cluster_toml(o.expect))
        .map_err(|e| FormError::Setup(e.to_string()))?;
    let ids: BTreeSet<String> = (0..n).map(|i| hex(node_id(i))).collect();
    let t0 = Instant::now();
    start_agents(&mut lab, o, &cluster_file).map_err(FormError::Setup)?;
    let mut first_leader = None;
    let mut first_plan = None;
    loop {
        check_alive(&mut lab)
            .map_err(|e| FormError::Run(format!("{e}\n{}", agents_summary(&lab, n))))?;
        let st = lab.statuses(&all(n));
        let t = t0.elapsed().as_secs_f64();
        let flat = st.iter().flatten();
        if first_leader.is_none() && flat.clone().any(|s| s.raft.leader.is_some()) {
            first_leader = Some(t);
        }
        if first_plan.is_none()
            && flat
                .clone()
                .any(|s| s.plan.as_ref().is_some_and(|p| p.version >= 1))
        {
            first_plan = Some(t);
        }
        if let Some(Converged { leader, plan, .. }) = converged(&st, &ids) {
            // `initialize()` calls per agent: one agent must be the
            // only initializer (it may call more than once: a repeat on
            // an initialized node is refused by openraft, harmless).
            let inits: Vec<usize> = (0..n)
                .map(|i| lab.log(i).matches("initializing the group").count())
                .collect();
            let initializers = inits.iter().filter(|c| **c > 0).count();
            if initializers != 1 {
                return Err(FormError::Run(format!(
                    "{initializers} agents initialized a group (calls per agent {inits:?}), \
                     want exactly 1\n{}",
                    agents_summary(&lab, n)
                )));
            }
            let f = Formation {
                first_leader: first_leader.unwrap_or(t),
                first_plan: first_plan.unwrap_or(t),
                full_plan: t,
                plan_version: plan.version,
                initialize_calls: inits.iter().sum(),
            };
            return Ok((lab, f, leader));
        }
        if t0.elapsed() > FORM_TIMEOUT {
            return Err(FormError::Run(format!(
                "no common plan after {FORM_TIMEOUT:?}\n{}",
                agents_summary(&lab, n)
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn rejected_malformed(st: &Option<StatusDoc>) -> u64 {
    st.as_ref().map_or(0, |s| s.rejected.malformed)
}

fn steady_state(lab: &mut Lab, leader: &str, o: &Opts) -> Result<(Vec<Steady>, f64), String> {
    let n = o.netns_nodes;
    eprintln!(
        "netns: settling {} s, then a {} s steady-state window",
        o.settle.as_secs(),
        o.steady.as_secs()
    );
    std::thread::sleep(o.settle);
    check_alive(lab)?;
    let pids: Vec<u32> = (0..n).map(|i| lab.agent_pid(i).unwrap_or(0)).collect();
    for (i, pid) in pids.iter().enumerate() {
        let comm = read(&format!("/proc/{pid}/comm"))?;
        if comm.trim() != "habuild-agent" {
            return Err(format!(
                "node{i}: pid {pid} is {:?}, not the agent",
                comm.trim()
            ));
        }
    }
    let st0 = lab.statuses(&all(n));
    let t0 = Instant::now();
    let before: Vec<Sample> = pids.iter().map(|p| sample(*p)).collect::<Result<_, _>>()?;
    std::thread::sleep(o.steady);
    let after: Vec<Sample> = pids.iter().map(|p| sample(*p)).collect::<Result<_, _>>()?;
    let window = t0.elapsed().as_secs_f64();
    check_alive(lab)?;
    let st = lab.statuses(&all(n));
    if converged(&st, &(0..n).map(|i| hex(node_id(i))).collect()).is_none() {
        return Err(format!(
            "the cluster is no longer converged after the window\n{}",
            agents_summary(lab, n)
        ));
    }
    let hz = clock_ticks_per_sec() as f64;
    let per_min = |d: u64| d as f64 * 60.0 / window;
    let mut out = Vec::new();
    for i in 0..n {
        let (b, a, pid) = (&before[i], &after[i], pids[i]);
        let sent_v4 = a.udp4_out - b.udp4_out;
        let sent_v6 = a.udp6_out - b.udp6_out;
        let delivered = (a.udp4_in - b.udp4_in) + (a.udp6_in - b.udp6_in);
        let sent = sent_v4 + sent_v6;
        let ports = udp_ports(pid)?;
        let id = hex(node_id(i));
        out.push(Steady {
            node: i,
            leader: id == leader,
            id,
            mdns_sent: per_min(sent),
            // mdns-sd keeps IP_MULTICAST_LOOP on: each multicast datagram
            // it sends is also delivered to its own socket once.
            mdns_recv: per_min(delivered.saturating_sub(sent)),
            mdns_sent_v4: per_min(sent_v4),
            mdns_sent_v6: per_min(sent_v6),
            mdns_delivered: per_min(delivered),
            malformed: per_min(
                rejected_malformed(&st[i]).saturating_sub(rejected_malformed(&st0[i])),
            ),
            link_tx: per_min(a.link_tx - b.link_tx),
            link_rx: per_min(a.link_rx - b.link_rx),
            tcp_opens: per_min(a.tcp_opens - b.tcp_opens),
            tcp_segs: per_min(a.tcp_segs - b.tcp_segs),
            announcements_last_minute: st[i].as_ref().map_or(0, |s| s.announcements_last_minute),
            rss_kib: status_field(pid, "VmRSS:")?,
            hwm_kib: status_field(pid, "VmHWM:")?,
            threads: status_field(pid, "Threads:")?,
            cpu_pct: (a.cpu_ticks - b.cpu_ticks) as f64 / hz / window * 100.0,
            other_udp_ports: ports.into_iter().filter(|p| *p != 5353).collect(),
        });
    }
    Ok((out, window))
}

/// `HABUILD_BENCH_NETNS_RUNS` fresh formations (a run that does not
/// converge is counted and reported, not fatal); the steady state is
/// measured on the last run, or, if that one failed, on the first of at
/// most 3 extra runs that converges (those count as runs too).
pub fn run_all(o: &Opts) -> Result<NetnsResult, String> {
    // Leftovers of SIGKILLed runs go first (Lab::new sweeps them too).
    if let Err(e) = testlab::sweep_stale(NS_PREFIX) {
        eprintln!("bench agent: sweeping stale namespaces: {e}");
    }
    if !o.agent.exists() {
        return Err(format!("agent binary {} not found", o.agent.display()));
    }
    let mut r = NetnsResult {
        formations: Vec::new(),
        failures: Vec::new(),
        steady: Vec::new(),
        window: 0.0,
    };
    for run in 1..=o.netns_runs + 3 {
        match form(o) {
            Ok((mut lab, f, leader)) => {
                eprintln!(
                    "netns run {run}: {} agents: leader {:.2}s, first plan {:.2}s, plan on all \
                     {:.2}s (v{}, leader {leader}, initialize() called {}x by one agent)",
                    o.netns_nodes,
                    f.first_leader,
                    f.first_plan,
                    f.full_plan,
                    f.plan_version,
                    f.initialize_calls
                );
                r.formations.push(f);
                if run >= o.netns_runs {
                    let (steady, window) = steady_state(&mut lab, &leader, o)?;
                    r.steady = steady;
                    r.window = window;
                    return Ok(r);
                }
            }
            Err(FormError::Setup(e)) => return Err(e),
            Err(FormError::Run(e)) => {
                eprintln!("netns run {run}: FAILED: {e}");
                r.failures.push(format!(
                    "run {run}: {}",
                    e.lines().next().unwrap_or_default()
                ));
            }
        }
    }
    Err(format!(
        "no converged run for the steady state after {} runs",
        o.netns_runs + 3
    ))
}

pub fn report(o: &Opts, r: &NetnsResult) {
    let mut lines = BenchLines::default();
    let n = o.netns_nodes;
    let fs = &r.formations;
    let s = |g: fn(&Formation) -> f64| {
        let v: Vec<f64> = fs.iter().map(g).collect();
        (summary(&v), v)
    };
    let runs = fs.len() + r.failures.len();
    println!();
    println!(
        "(b) {n} habuild-agent processes ({}) in network namespaces on one bridge, \
         bootstrap_expect {}, agent Raft timing (heartbeat 250 ms, election 1-2 s); \
         wall-clock seconds from spawning the agents; {} of {runs} fresh runs converged \
         (times are of those)",
        o.agent.display(),
        o.expect,
        fs.len()
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8}  per run",
        "", "median", "max", "min"
    );
    let rows = [
        ("first leader (s)", "first_leader_s", s(|f| f.first_leader)),
        ("first plan (s)", "first_plan_s", s(|f| f.first_plan)),
        (
            "plan on all agents (s)",
            "time_to_committed_plan_s",
            s(|f| f.full_plan),
        ),
    ];
    for (label, figure, ((med, max, min), values)) in &rows {
        println!(
            "{label:<28} {med:>8.2} {max:>8.2} {min:>8.2}  {}",
            values
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        lines.push(json!({
            "part": "netns",
            "figure": figure,
            "n": n,
            "runs": runs,
            "converged": fs.len(),
            "failed": r.failures,
            "initialize_calls": fs.iter().map(|f| f.initialize_calls).collect::<Vec<_>>(),
            "median": round(*med, 3),
            "max": round(*max, 3),
            "min": round(*min, 3),
            "values": values.iter().map(|v| round(*v, 3)).collect::<Vec<_>>(),
            "unit": "s",
            "clock": "wall",
            "bootstrap_expect": o.expect,
        }));
    }
    println!(
        "{:<28} {}",
        "initialize() calls",
        fs.iter()
            .map(|f| f.initialize_calls.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for f in &r.failures {
        println!("FAILED {f}");
    }

    println!();
    println!(
        "steady state of the last run: {:.1} s window after {} s settling; per agent, per minute",
        r.window,
        o.settle.as_secs()
    );
    println!(
        "{:<6} {:<6} | {:>9} {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>8} {:>6} | {:>8} {:>8} {:>4} | {:>7}",
        "node",
        "role",
        "mdns sent",
        "(v4/v6)",
        "mdns recv",
        "announce",
        "malformed",
        "eth0 tx",
        "eth0 rx",
        "tcp seg",
        "tcp con",
        "RSS KiB",
        "peak KiB",
        "thr",
        "CPU %"
    );
    for a in &r.steady {
        println!(
            "{:<6} {:<6} | {:>9.1} {:>9} {:>9.1} | {:>9} {:>9.1} | {:>9.1} {:>9.1} | {:>8.1} {:>6.1} | {:>8} {:>8} {:>4} | {:>7.3}",
            format!("node{}", a.node),
            if a.leader { "leader" } else { "follow" },
            a.mdns_sent,
            format!("{:.0}/{:.0}", a.mdns_sent_v4, a.mdns_sent_v6),
            a.mdns_recv,
            a.announcements_last_minute,
            a.malformed,
            a.link_tx,
            a.link_rx,
            a.tcp_segs,
            a.tcp_opens,
            a.rss_kib,
            a.hwm_kib,
            a.threads,
            a.cpu_pct
        );
    }
    let col = |g: fn(&Steady) -> f64| summary(&r.steady.iter().map(g).collect::<Vec<_>>());
    let figures: [Figure; 11] = [
        (
            "mdns_sent_per_node_per_min",
            "packets/min",
            |a| a.mdns_sent,
            "UDP datagrams sent from the agent's network namespace (Udp OutDatagrams + \
             Udp6OutDatagrams of /proc/<pid>/net/snmp{,6}); the only UDP sockets there are \
             mdns-sd's on :5353, so these are mDNS packets put on eth0 (IPv4 and IPv6); \
             in the steady state: the periodic re-announcement of the unchanged record \
             set (every 60 +- 10 s) and answers to others' queries",
        ),
        (
            "mdns_received_per_node_per_min",
            "packets/min",
            |a| a.mdns_recv,
            "UDP datagrams delivered to the agent's mDNS sockets (Udp InDatagrams + \
             Udp6InDatagrams) minus its own sent datagrams, which mdns-sd's \
             IP_MULTICAST_LOOP hands back to itself once each",
        ),
        (
            "mdns_sent_plus_received_per_node_per_min",
            "packets/min",
            |a| a.mdns_sent + a.mdns_recv,
            "sum of the two figures above",
        ),
        (
            "announcements_last_minute",
            "resolved announcements in the trailing 60 s",
            |a| a.announcements_last_minute as f64,
            "status JSON announcements_last_minute at the end of the window: \
             ServiceResolved events of mdns-sd (new or changed record sets, own \
             included), not packets",
        ),
        (
            "mdns_rejected_malformed_per_node_per_min",
            "announcements/min",
            |a| a.malformed,
            "growth of the status JSON's rejected.malformed over the window (e.g. \
             instances renamed by mdns-sd's conflict handling to '<name> (N)', which \
             no longer match their records)",
        ),
        (
            "eth0_packets_per_node_per_min",
            "packets/min",
            |a| a.link_tx + a.link_rx,
            "all packets (tx + rx) on the agent's eth0 from /proc/<pid>/net/dev: mDNS, \
             Raft/transport TCP, ARP, IPv6 ND/MLD",
        ),
        (
            "tcp_segments_per_node_per_min",
            "segments/min",
            |a| a.tcp_segs,
            "TCP InSegs + OutSegs of the agent's network namespace (/proc/<pid>/net/snmp): \
             the transport's traffic (Raft, joins, status), handshakes and ACKs included",
        ),
        (
            "tcp_connections_opened_per_node_per_min",
            "connections/min",
            |a| a.tcp_opens,
            "TCP ActiveOpens + PassiveOpens of the agent's network namespace: connections \
             it made or accepted (one per peer with persistent connections, one per RPC \
             without)",
        ),
        (
            "rss_kib",
            "KiB",
            |a| a.rss_kib as f64,
            "VmRSS of /proc/<pid>/status at the end of the window",
        ),
        (
            "peak_rss_kib",
            "KiB",
            |a| a.hwm_kib as f64,
            "VmHWM of /proc/<pid>/status (peak RSS since start)",
        ),
        (
            "idle_cpu_percent_of_one_core",
            "%",
            |a| a.cpu_pct,
            "(utime+stime) delta of /proc/<pid>/stat over the window / CLK_TCK / window",
        ),
    ];
    println!();
    println!("{:<42} {:>10} {:>10} {:>10}", "", "median", "max", "min");
    for (figure, unit, g, how) in figures {
        let (med, max, min) = col(g);
        println!("{figure:<42} {med:>10.2} {max:>10.2} {min:>10.2}");
        lines.push(json!({
            "part": "netns",
            "figure": figure,
            "n": n,
            "median": round(med, 3),
            "max": round(max, 3),
            "min": round(min, 3),
            "per_node": r.steady.iter().map(|a| json!({
                "node": a.id,
                "leader": a.leader,
                "value": round(g(a), 3),
            })).collect::<Vec<_>>(),
            "unit": unit,
            "window_s": round(r.window, 1),
            "how": how,
        }));
    }
    // The figures issue 13 asks for, of the leader (which sends the Raft
    // heartbeats and replication to everyone) and of mDNS.
    println!();
    if let Some(l) = r.steady.iter().find(|a| a.leader) {
        let (mdns, _, _) = col(|a| a.mdns_sent);
        println!(
            "leader node{}, per minute: {:.0} packets on eth0 ({:.0} TCP segments, {:.1} TCP \
             connections opened), CPU {:.2} % of one core; mDNS in the steady state (periodic \
             re-announcement every 60 +- 10 s included): {:.1} packets sent per agent (median)",
            l.node,
            l.link_tx + l.link_rx,
            l.tcp_segs,
            l.tcp_opens,
            l.cpu_pct,
            mdns
        );
        for (figure, unit, value) in [
            (
                "leader_eth0_packets_per_min",
                "packets/min",
                l.link_tx + l.link_rx,
            ),
            ("leader_tcp_segments_per_min", "segments/min", l.tcp_segs),
            (
                "leader_tcp_connections_opened_per_min",
                "connections/min",
                l.tcp_opens,
            ),
            ("leader_cpu_percent_of_one_core", "%", l.cpu_pct),
            (
                "mdns_steady_state_sent_per_node_per_min",
                "packets/min",
                mdns,
            ),
        ] {
            lines.push(json!({
                "part": "netns",
                "figure": figure,
                "n": n,
                "node": l.id,
                "value": round(value, 3),
                "unit": unit,
                "window_s": round(r.window, 1),
                "agent": o.agent.display().to_string(),
            }));
        }
    } else {
        println!("WARNING: no agent was the leader at the end of the window");
    }
    let (_, _, quietest) = col(|a| a.mdns_sent);
    let noisy: Vec<String> = r
        .steady
        .iter()
        .filter(|a| a.mdns_sent > 10.0 * quietest.max(1.0))
        .map(|a| format!("node{} ({:.0}/min)", a.node, a.mdns_sent))
        .collect();
    if !noisy.is_empty() {
        println!(
            "WARNING: {} send more than 10x the mDNS of the quietest agent ({quietest:.0}/min): \
             the median and max above are not an idle agent's cost; to see why, rerun with \
             HABUILD_BENCH_KEEP_LOGS=<dir> HABUILD_BENCH_AGENT_LOG=warn,mdns_sd=debug",
            noisy.join(", ")
        );
    }
    let strays: Vec<String> = r
        .steady
        .iter()
        .filter(|a| !a.other_udp_ports.is_empty())
        .map(|a| format!("node{}: {:?}", a.node, a.other_udp_ports))
        .collect();
    if strays.is_empty() {
        println!("(checked: the agents' namespaces have UDP sockets on port 5353 only)");
    } else {
        println!(
            "WARNING: UDP sockets other than 5353 in agent namespaces ({}): the mDNS \
             figures include their traffic",
            strays.join(", ")
        );
    }
    let sent_total: f64 = r.steady.iter().map(|a| a.mdns_sent).sum();
    let check: Vec<String> = r
        .steady
        .iter()
        .map(|a| {
            format!(
                "node{}: delivered {:.0} = own {:.0} + others' {:.0}?",
                a.node,
                a.mdns_delivered,
                a.mdns_sent,
                sent_total - a.mdns_sent
            )
        })
        .collect();
    println!(
        "(cross-check, per minute: datagrams delivered to each agent's mDNS sockets vs its own \
         sent (looped back) + those the other agents sent (multicast, flooded by the bridge): {})",
        check.join("; ")
    );
    lines.print();
}
