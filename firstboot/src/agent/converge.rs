//! Drives the converge steps on this node and issues the PKI on the leader.
//!
//! [`run`] loops, one loop per chain of steps: wait until a round is due
//! ([`Pace`]) → read the replicated state → (nothing to do without a plan)
//! → decrypt the secret items → one round of [`steps::converge_timed`] on a
//! blocking thread → print a console line per step whose status changed →
//! record changed outcomes in the replicated state (forwarded to the
//! leader) and when each step first waited, started and became done (the
//! status timeline, [`StepTimes`]) → back off failed steps (5 s doubling to
//! 60 s).
//!
//! When the next round is due depends on what holds the chain back
//! ([`Next::after`]): a step waiting on others (its gate, a pure function
//! of the replicated state) runs again as soon as the state changes; a
//! step that is started but not healthy yet is re-checked after 0.5 s,
//! then 1 s, then every 2 s, and at once when the state changes; a failed
//! step when its backoff ends; a settled chain (every step done or not
//! here) every 15 s or when the state changes. "The state changes" is
//! noticed when Raft applies an entry (its metrics' `last_applied`), a
//! burst of entries taken together after 200 ms; nothing polls faster.
//!
//! [`issue_pki`] is the leader's part: once a plan exists, issue whatever
//! PKI items are missing for it and commit them encrypted, never replacing
//! one that exists.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::cluster::ClusterConfig;
use crate::consensus::types::RaftMetrics;
use crate::consensus::ConsensusNode;
use crate::host::real::{HostExec, HostNet, RootFiles, Supervisor, Systemd};
use crate::host::Host;
use crate::pki::{self, PkiInputs, PkiNode};
use crate::protocol::StepTimes;
use crate::secretbox::SecretBox;
use crate::state::{ClusterState, Command, NodeId, StepRecord, StepStatus};
use crate::steps::{self, Ctx, Outcome, StepRun};

use super::phase::unix_secs;

/// How long-running services are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceMode {
    /// systemd units (a booted node).
    Systemd,
    /// Child processes of the agent logging under this directory (agents
    /// run outside systemd, e.g. one per network namespace).
    Supervise(PathBuf),
    /// No converge steps at all: discovery, consensus and the plan only.
    Off,
}

#[derive(Debug, Clone)]
pub struct ConvergeConfig {
    pub me: NodeId,
    pub cluster: ClusterConfig,
    pub root: PathBuf,
    pub services: ServiceMode,
    pub interface: String,
    pub agent_exe: String,
    /// See [`crate::steps::Ctx::emulated`].
    pub emulated: bool,
}

/// This node's latest step outcomes, for the status document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepView {
    pub step: String,
    pub status: String,
    pub detail: String,
    pub attempts: u32,
    /// When the step first waited, started, became done (the timeline).
    pub times: StepTimes,
}

pub type StepViews = Arc<RwLock<Vec<StepView>>>;

/// The timeline of this node's steps that ever waited or ran, in run order.
pub fn step_times(views: &StepViews) -> Vec<StepTimes> {
    views
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|v| v.times.first_wait.is_some() || v.times.first_start.is_some())
        .map(|v| v.times.clone())
        .collect()
}

/// The longest a step that is started but not healthy yet waits for its
/// next check (the first checks come sooner, see [`Pace`]).
const ROUND: Duration = Duration::from_secs(2);
/// The first re-check of a step that is started but not healthy yet.
const PENDING_FIRST: Duration = Duration::from_millis(500);
/// How often a settled chain (or one waiting on others) is looked at again
/// while the replicated state stays the same.
const SETTLED: Duration = Duration::from_secs(15);
/// Raft entries applied within this long of the first are taken together.
const COALESCE: Duration = Duration::from_millis(200);

/// When the next round is due after one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Next {
    /// At once when the replicated state changes.
    on_change: bool,
    /// At the latest this long after the round.
    after: Duration,
}

/// When a chain's next round is due, from what held it back in the last
/// one (its first step not settled):
///
/// - nothing (every step done or not for this node), or no plan yet: when
///   the state changes, else after [`SETTLED`]. A settled chain's checks
///   (four etcdctl calls, the gluster CLI) otherwise run every round for
///   ever, which on a small VM competes with the work other chains still
///   have to do;
/// - a step waiting on others (its gate: a pure function of the state):
///   when the state changes (another node's step record, the plan, the
///   secrets), else after [`SETTLED`] as a safety net;
/// - a step started but not healthy yet (a service coming up, a peer's
///   etcd): after [`PENDING_FIRST`], doubling to [`ROUND`] while it stays
///   so, and at once when the state changes;
/// - a failed step backing off: when its backoff ends.
///
/// And never sooner after a round than that round took (at most
/// [`MAX_GAP`]), a state change or not: a round that took 10 s is
/// followed by at least 10 s of rest, so the checks of a chain take at
/// most about half of a node's time. On an emulated node the control
/// plane's pending check (`kubectl get --raw /readyz`, 4-18 s there) ran
/// back to back while the apiserver it waited for started on the same
/// vCPU.
#[derive(Debug, Default)]
struct Pace {
    /// The state the last round saw, when it ran, and what is due next.
    last: Option<(ClusterState, Instant, Next)>,
    /// Consecutive rounds that ended on a pending step.
    pending_rounds: u32,
    /// How long the last round took.
    took: Duration,
}

/// The longest rest [`Pace`] keeps after a slow round.
const MAX_GAP: Duration = Duration::from_secs(30);

impl Pace {
    fn due(&self, state: &ClusterState, now: Instant) -> bool {
        match &self.last {
            Some((seen, at, next)) => {
                let since = now.duration_since(*at);
                since >= next.after.max(self.gap())
                    || (next.on_change && seen != state && since >= self.gap())
            }
            None => true,
        }
    }

    /// The rest after the last round: as long as it took, at most
    /// [`MAX_GAP`].
    fn gap(&self) -> Duration {
        self.took.min(MAX_GAP)
    }

    /// How long until the round is due without a state change.
    fn left(&self, now: Instant) -> Duration {
        match &self.last {
            Some((_, at, next)) => {
                (*at + next.after.max(self.gap())).saturating_duration_since(now)
            }
            None => Duration::ZERO,
        }
    }

    /// Whether a state change makes the next round due.
    fn on_change(&self) -> bool {
        match &self.last {
            Some((_, _, next)) => next.on_change,
            None => true,
        }
    }

    /// No plan yet: the next round when one arrives.
    fn idle(&mut self, state: ClusterState, now: Instant) {
        self.pending_rounds = 0;
        self.last = Some((
            state,
            now,
            Next {
                on_change: true,
                after: SETTLED,
            },
        ));
    }

    /// A round ran on `state`, ended at `now` and took `took`;
    /// `retry_in`: the soonest end of a backoff.
    fn ran(
        &mut self,
        state: ClusterState,
        outcomes: &[(&'static str, Outcome)],
        retry_in: Option<Duration>,
        now: Instant,
        took: Duration,
    ) {
        let blocker = outcomes.iter().map(|(_, o)| o).find(|o| !o.is_settled());
        let next = match blocker {
            None | Some(Outcome::Waiting(_)) | Some(Outcome::NotHere) => Next {
                on_change: true,
                after: SETTLED,
            },
            Some(Outcome::Pending(_)) => Next {
                on_change: true,
                after: (PENDING_FIRST * (1 << self.pending_rounds.min(4))).min(ROUND),
            },
            Some(Outcome::Failed(_) | Outcome::Skipped | Outcome::Done(_)) => Next {
                on_change: false,
                after: retry_in.unwrap_or(ROUND),
            },
        };
        self.pending_rounds = match blocker {
            Some(Outcome::Pending(_)) => self.pending_rounds + 1,
            _ => 0,
        };
        self.last = Some((state, now, next));
        self.took = took;
    }
}

/// Waits until `pace` says a round is due and returns the state to run it
/// on: at its deadline, or (when it waits on the state) once Raft applied
/// an entry and the state differs from the last round's.
async fn until_due(
    node: &ConsensusNode,
    metrics: &mut watch::Receiver<RaftMetrics>,
    pace: &Pace,
) -> ClusterState {
    loop {
        // read before the state: an entry applied after this wakes the wait
        let applied = metrics.borrow_and_update().last_applied;
        let state = node.state();
        if pace.due(&state, Instant::now()) {
            return state;
        }
        wait_for_change(metrics, pace, applied).await;
    }
}

/// Sleeps until `pace`'s deadline or, when it waits on the state, until Raft
/// has applied an entry after `applied` (then [`COALESCE`] more, to take a
/// burst together): `true` when an entry ended the wait. Other metrics
/// changes (heartbeats, terms) cost one comparison each.
async fn wait_for_change(
    metrics: &mut watch::Receiver<RaftMetrics>,
    pace: &Pace,
    applied: Option<openraft::LogId<NodeId>>,
) -> bool {
    let deadline = tokio::time::sleep(pace.left(Instant::now()));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return false,
            changed = metrics.changed(), if pace.on_change() => {
                if changed.is_err() {
                    // Raft stopped: only the deadline is left
                    (&mut deadline).await;
                    return false;
                }
                if metrics.borrow_and_update().last_applied != applied {
                    tokio::time::sleep(COALESCE).await;
                    return true;
                }
            }
        }
    }
}

/// Updates a step's times with its part of one round.
fn note(times: &mut StepTimes, run: &StepRun) {
    let (start, end) = (unix_secs(run.start), unix_secs(run.end));
    match &run.outcome {
        Outcome::Waiting(_) => {
            times.first_wait.get_or_insert(start);
        }
        o if o.ran() => {
            times.first_start.get_or_insert(start);
            times.last_end = Some(end);
            times.rounds += 1;
            if matches!(o, Outcome::Done(_)) {
                times.done.get_or_insert(end);
                times.first_done.get_or_insert(end);
            } else {
                times.done = None;
            }
        }
        _ => {}
    }
}

/// The real host for `cfg` (files under the root, systemd or a supervisor).
pub fn host(cfg: &ConvergeConfig) -> Host {
    let files = RootFiles {
        root: cfg.root.clone(),
    };
    let services: Box<dyn crate::host::Services> = match &cfg.services {
        ServiceMode::Systemd => Box::new(Systemd {
            files: files.clone(),
            exec: HostExec,
        }),
        ServiceMode::Supervise(dir) => Box::new(Supervisor::new(dir)),
        ServiceMode::Off => Box::new(Supervisor::new(&cfg.root)),
    };
    Host {
        files: Box::new(files),
        exec: Box::new(HostExec),
        services,
        net: Box::new(HostNet),
    }
}

/// Decrypts every secret item in the state; undecryptable ones are skipped
/// (and logged): they cannot come from a node with our cluster secret.
pub fn decrypt_items(state: &ClusterState, sbox: &SecretBox) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, ct) in &state.secrets {
        match sbox.open(name, ct) {
            Ok(pt) => {
                out.insert(name.clone(), String::from_utf8_lossy(&pt).into_owned());
            }
            Err(e) => tracing::warn!(secret = %name, error = %e, "undecryptable secret"),
        }
    }
    out
}

/// Leader: the PKI items the current plan still needs, sealed, as one command.
pub fn issue_pki(
    state: &ClusterState,
    cfg: &ClusterConfig,
    sbox: &SecretBox,
) -> Result<Option<Command>, pki::PkiError> {
    let Some(plan) = &state.plan else {
        return Ok(None);
    };
    let items = decrypt_items(state, sbox);
    let inputs = PkiInputs {
        vip: plan.vip,
        service_cidr: cfg.network.service_cidr,
        dns_domain: "cluster.local".into(),
        control_plane: plan
            .control_plane
            .iter()
            .filter_map(|id| state.members.get(id))
            .map(|m| PkiNode {
                id: m.id,
                hostname: m.hostname.clone(),
                ip: m.ip,
            })
            .collect(),
        // No kubelet certificate for a member whose site file keeps the
        // agent out of Kubernetes (`[[nodes]] kubernetes = false`).
        members: state
            .members
            .values()
            .filter(|m| m.kubernetes)
            .map(|m| PkiNode {
                id: m.id,
                hostname: m.hostname.clone(),
                ip: m.ip,
            })
            .collect(),
        now: time::OffsetDateTime::now_utc(),
    };
    let new = pki::issue(&items, &inputs)?;
    if new.is_empty() {
        return Ok(None);
    }
    Ok(Some(Command::PutSecretsIfAbsent(
        new.iter()
            .map(|(k, v)| (k.clone(), sbox.seal(k, v.as_bytes())))
            .collect(),
    )))
}

/// Runs the steps forever (until the task is dropped): one loop per chain
/// of steps, so a chain's slow round (LVM, mkfs under a slow hypervisor)
/// never delays another chain's progress or its records.
pub async fn run(node: ConsensusNode, cfg: ConvergeConfig, sbox: Arc<SecretBox>, views: StepViews) {
    if cfg.services == ServiceMode::Off {
        return;
    }
    let host = Arc::new(host(&cfg));
    let cfg = Arc::new(cfg);
    let all = steps::all();
    let order: Vec<&'static str> = all.iter().map(|s| s.name()).collect();
    let loops: Vec<_> = steps::by_chain(all)
        .into_iter()
        .map(|chain| {
            tokio::spawn(run_chain(
                node.clone(),
                cfg.clone(),
                host.clone(),
                sbox.clone(),
                views.clone(),
                Arc::new(chain),
                order.clone(),
            ))
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
}

async fn run_chain(
    node: ConsensusNode,
    cfg: Arc<ConvergeConfig>,
    host: Arc<Host>,
    sbox: Arc<SecretBox>,
    views: StepViews,
    steps: Arc<Vec<Box<dyn steps::Step>>>,
    order: Vec<&'static str>,
) {
    let mut backoff: BTreeMap<String, (Instant, u32)> = BTreeMap::new();
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut times: BTreeMap<&'static str, StepTimes> = BTreeMap::new();
    let mut pace = Pace::default();
    let recent = Arc::new(std::sync::Mutex::new(steps::Recent::default()));
    let mut metrics = node.raft().metrics();
    loop {
        let state = until_due(&node, &mut metrics, &pace).await;
        if state.plan.is_none() {
            pace.idle(state, Instant::now());
            continue;
        }
        let round_start = Instant::now();
        let items = decrypt_items(&state, &sbox);
        let skip: Vec<String> = backoff
            .iter()
            .filter(|(_, (until, _))| *until > round_start)
            .map(|(k, _)| k.clone())
            .collect();
        let (h, c, s, st, r) = (
            host.clone(),
            cfg.clone(),
            steps.clone(),
            state.clone(),
            recent.clone(),
        );
        let round = tokio::task::spawn_blocking(move || {
            let Some(plan) = st.plan.as_ref() else {
                return Vec::new();
            };
            let ctx = Ctx {
                me: c.me,
                cfg: &c.cluster,
                state: &st,
                plan,
                items: &items,
                root: &c.root,
                interface: &c.interface,
                agent_exe: &c.agent_exe,
                emulated: c.emulated,
            };
            let mut recent = r.lock().unwrap_or_else(|e| e.into_inner());
            steps::converge_timed(&s, &ctx, &h, &|n| skip.iter().any(|k| k == n), &mut recent)
        })
        .await;
        let runs = match round {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "converge round panicked");
                pace.idle(state, Instant::now());
                continue;
            }
        };
        let mut outcomes = Vec::new();
        let mut view = Vec::new();
        for run in runs {
            let name = run.name;
            let t = times.entry(name).or_insert_with(|| StepTimes {
                step: name.into(),
                ..StepTimes::default()
            });
            note(t, &run);
            let outcome = run.outcome;
            let attempts = match &outcome {
                Outcome::Failed(_) => {
                    let n = backoff.get(name).map_or(0, |(_, n)| *n) + 1;
                    let wait = Duration::from_secs((5u64 << (n - 1).min(4)).min(60));
                    backoff.insert(name.to_string(), (Instant::now() + wait, n));
                    n
                }
                Outcome::Skipped => backoff.get(name).map_or(0, |(_, n)| *n),
                _ => {
                    backoff.remove(name);
                    0
                }
            };
            if matches!(outcome, Outcome::Skipped) {
                if let Some(v) = views
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .find(|v| v.step == name)
                {
                    view.push(StepView {
                        times: t.clone(),
                        ..v.clone()
                    });
                }
                outcomes.push((name, outcome));
                continue;
            }
            let (label, detail) = describe(&outcome);
            let line = if detail.is_empty() {
                format!("habuild-agent: step {name} {label}")
            } else {
                format!("habuild-agent: step {name} {label}: {detail}")
            };
            if shown.get(name).map(|s| s.as_str()) != Some(label) {
                println!("{line}");
                shown.insert(name.to_string(), label.to_string());
            }
            view.push(StepView {
                step: name.into(),
                status: label.into(),
                detail: detail.clone(),
                attempts,
                times: t.clone(),
            });
            record(&node, &state, cfg.me, name, &outcome, attempts).await;
            outcomes.push((name, outcome));
        }
        let now = Instant::now();
        let retry_in = backoff
            .values()
            .map(|(until, _)| until.saturating_duration_since(now))
            .min();
        pace.ran(
            state,
            &outcomes,
            retry_in,
            now,
            now.saturating_duration_since(round_start),
        );
        let mut all = views.write().unwrap_or_else(|e| e.into_inner());
        all.retain(|v| !steps.iter().any(|s| s.name() == v.step));
        all.extend(view);
        all.sort_by_key(|v| order.iter().position(|n| *n == v.step));
    }
}

fn describe(o: &Outcome) -> (&'static str, String) {
    match o {
        Outcome::NotHere => ("not-here", String::new()),
        Outcome::Waiting(w) => ("waiting", w.clone()),
        Outcome::Pending(w) => ("running", w.clone()),
        Outcome::Done(d) => ("done", d.clone()),
        Outcome::Failed(e) => ("failed", e.clone()),
        Outcome::Skipped => ("backing-off", String::new()),
    }
}

/// Records `outcome` when its status (or a failure's text) differs from the state's record.
async fn record(
    node: &ConsensusNode,
    state: &ClusterState,
    me: NodeId,
    name: &str,
    outcome: &Outcome,
    attempts: u32,
) {
    let Some((status, detail)) = outcome.status() else {
        return;
    };
    let current = state.steps.get(&(me, name.to_string()));
    let same = current.is_some_and(|r| {
        r.status == status && (status != StepStatus::Failed || r.detail == detail)
    });
    if same {
        return;
    }
    let rec = StepRecord {
        node: me,
        step: name.into(),
        status,
        detail,
        attempts,
    };
    if let Err(e) = node.propose(Command::RecordStep(rec)).await {
        tracing::debug!(step = name, error = %e, "recording step outcome");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_kubelet_certificate_for_a_member_kept_out_of_kubernetes() {
        let cfg = crate::steps::testutil::cfg();
        let mut state = crate::steps::testutil::state();
        state.members.get_mut(&4).unwrap().kubernetes = false;
        let sbox = SecretBox::derive(&cfg.cluster.secret);
        let Some(Command::PutSecretsIfAbsent(items)) = issue_pki(&state, &cfg, &sbox).unwrap()
        else {
            panic!("the PKI is issued")
        };
        for id in 1..=3 {
            let name = format!("{}.crt", crate::kube::kubelet_item(id));
            assert!(items.contains_key(&name), "{name}");
        }
        let four = crate::kube::kubelet_item(4);
        assert!(!items.keys().any(|k| k.starts_with(&four)), "{four}");
    }

    fn done() -> Outcome {
        Outcome::Done(String::new())
    }

    #[test]
    fn a_chain_with_work_left_runs_every_round() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        let st = ClusterState::default();
        assert!(pace.due(&st, t0), "first round");
        // started, not healthy yet: re-checked within ROUND, sooner at first
        let pending = Outcome::Pending("starting".into());
        pace.ran(
            st.clone(),
            &[("pki", done()), ("etcd", pending)],
            None,
            t0,
            Duration::ZERO,
        );
        assert!(!pace.due(&st, t0), "not at once");
        assert!(pace.due(&st, t0 + PENDING_FIRST), "the first re-check");
        assert!(pace.due(&st, t0 + ROUND), "not settled: due every round");
        // waiting on others: due when the state changes (only that can let
        // its gate through); failed: when its backoff ends
        pace.ran(
            st.clone(),
            &[("pki", done()), ("etcd", Outcome::Waiting("pki".into()))],
            None,
            t0,
            Duration::ZERO,
        );
        assert!(!pace.due(&st, t0 + ROUND), "nothing it waits on changed");
        let mut changed = st.clone();
        changed.secrets.insert("etcd/ca.crt".into(), vec![1]);
        assert!(pace.due(&changed, t0), "what it waits on changed: at once");
        for o in [Outcome::Failed("boom".into()), Outcome::Skipped] {
            pace.ran(
                st.clone(),
                &[("pki", done()), ("etcd", o)],
                Some(Duration::from_secs(5)),
                t0,
                Duration::ZERO,
            );
            assert!(!pace.due(&changed, t0 + ROUND), "backing off");
            assert!(pace.due(&st, t0 + Duration::from_secs(5)), "backoff over");
            assert!(!pace.on_change());
        }
    }

    #[test]
    fn a_pending_step_is_checked_sooner_at_first_then_every_round() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        let st = ClusterState::default();
        let pending = [("etcd", Outcome::Pending("starting".into()))];
        let mut waits = Vec::new();
        for _ in 0..5 {
            pace.ran(st.clone(), &pending, None, t0, Duration::ZERO);
            waits.push(pace.left(t0).as_millis());
        }
        assert_eq!(waits, [500, 1000, 2000, 2000, 2000]);
        pace.ran(st.clone(), &[("etcd", done())], None, t0, Duration::ZERO);
        pace.ran(st.clone(), &pending, None, t0, Duration::ZERO);
        assert_eq!(pace.left(t0), PENDING_FIRST, "a new wait starts short");
    }

    #[test]
    fn a_slow_round_is_followed_by_as_long_a_rest() {
        let t0 = Instant::now();
        let st = ClusterState::default();
        let mut changed = st.clone();
        changed.members = crate::plan::testutil::n_members(1);
        let mut pace = Pace::default();
        let pending = [("etcd", Outcome::Pending("not ready".into()))];
        pace.ran(st.clone(), &pending, None, t0, Duration::from_secs(8));
        assert!(
            !pace.due(&st, t0 + ROUND),
            "pending, but the round took 8 s"
        );
        assert!(
            !pace.due(&changed, t0 + Duration::from_secs(7)),
            "not even on a change"
        );
        assert!(pace.due(&st, t0 + Duration::from_secs(8)));
        assert_eq!(pace.left(t0), Duration::from_secs(8));
        pace.ran(st.clone(), &pending, None, t0, Duration::from_secs(600));
        assert!(pace.due(&st, t0 + MAX_GAP), "the rest is bounded");
        pace.ran(st.clone(), &pending, None, t0, Duration::from_millis(20));
        assert!(
            pace.due(&changed, t0 + Duration::from_millis(20)),
            "quick rounds: as before"
        );
    }

    #[test]
    fn a_settled_chain_waits_until_the_state_changes_or_settled_passes() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        let st = ClusterState::default();
        pace.ran(
            st.clone(),
            &[("pki", done()), ("vip", Outcome::NotHere)],
            None,
            t0,
            Duration::ZERO,
        );
        assert!(!pace.due(&st, t0 + ROUND), "settled, same state");
        assert!(!pace.due(&st, t0 + SETTLED - ROUND));
        assert!(pace.due(&st, t0 + SETTLED), "re-checked every SETTLED");
        let mut changed = st.clone();
        changed.secrets.insert("etcd/ca.crt".into(), vec![1]);
        assert!(
            pace.due(&changed, t0 + ROUND),
            "a state change is due at once"
        );
        assert!(pace.due(&changed, t0), "a state change is due at once");
        pace.idle(st.clone(), t0);
        assert!(!pace.due(&st, t0 + ROUND), "no plan: wait for one");
        assert!(pace.due(&changed, t0));
    }

    #[test]
    fn step_times_record_first_wait_first_start_and_done() {
        let at = |s: u64| std::time::UNIX_EPOCH + Duration::from_secs(s);
        let run = |o: Outcome, s: u64, e: u64| StepRun {
            name: "etcd",
            outcome: o,
            start: at(s),
            end: at(e),
        };
        let mut t = StepTimes::default();
        note(&mut t, &run(Outcome::NotHere, 1, 1));
        assert_eq!(t, StepTimes::default());
        note(&mut t, &run(Outcome::Waiting("pki".into()), 10, 10));
        note(&mut t, &run(Outcome::Waiting("pki".into()), 12, 12));
        note(&mut t, &run(Outcome::Pending("starting".into()), 20, 21));
        note(&mut t, &run(Outcome::Skipped, 22, 22));
        note(&mut t, &run(Outcome::Failed("x".into()), 23, 24));
        note(&mut t, &run(done(), 30, 33));
        note(&mut t, &run(done(), 40, 41));
        let want = StepTimes {
            step: String::new(),
            first_wait: Some(10.0),
            first_start: Some(20.0),
            done: Some(33.0),
            first_done: Some(33.0),
            last_end: Some(41.0),
            rounds: 4,
        };
        assert_eq!(t, want);
        // not healthy any more: not done until the next done round
        note(&mut t, &run(Outcome::Pending("restarting".into()), 50, 51));
        assert_eq!((t.done, t.first_done), (None, Some(33.0)));
        note(&mut t, &run(done(), 60, 62));
        assert_eq!(
            (t.first_start, t.done, t.first_done, t.rounds),
            (Some(20.0), Some(62.0), Some(33.0), 6)
        );
    }

    #[tokio::test]
    async fn a_waiting_chain_wakes_on_an_applied_entry_not_on_heartbeats() {
        let (tx, mut rx) = watch::channel(RaftMetrics::new_initial(1));
        let mut pace = Pace::default();
        let t0 = Instant::now();
        pace.ran(
            ClusterState::default(),
            &[("etcd", Outcome::Pending("x".into()))],
            None,
            t0,
            Duration::ZERO,
        );
        // metrics changes that apply nothing (heartbeats) do not wake it
        let spam = tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tx.send_modify(|m| m.current_term += 1);
            }
            tx
        });
        let woke = wait_for_change(&mut rx, &pace, None).await;
        assert!(!woke, "only the deadline ended the wait");
        assert!(t0.elapsed() >= PENDING_FIRST);
        let tx = spam.await.unwrap();
        let started = Instant::now();
        pace.ran(
            ClusterState::default(),
            &[("etcd", Outcome::Waiting("pki".into()))],
            None,
            started,
            Duration::ZERO,
        );
        let waiting = tokio::spawn(async move {
            let woke = wait_for_change(&mut rx, &pace, None).await;
            (woke, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let entry = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 3);
        tx.send_modify(|m| m.last_applied = Some(entry));
        let (woke, took) = waiting.await.unwrap();
        assert!(woke, "an applied entry ends the wait");
        assert!(took >= COALESCE && took < ROUND, "{took:?}");
    }
}
