//! Drives the converge steps on this node and issues the PKI on the leader.
//!
//! [`run`] loops, one loop per chain of steps: read the replicated state → (nothing to do without a plan)
//! → decrypt the secret items → one round of [`steps::converge`] on a
//! blocking thread → print a console line per step whose status changed →
//! record changed outcomes in the replicated state (forwarded to the
//! leader) → back off failed steps (5 s doubling to 60 s). A settled chain
//! (every step done or not here) waits [`SETTLED`] between rounds unless
//! the replicated state changes ([`Pace`]).
//!
//! [`issue_pki`] is the leader's part: once a plan exists, issue whatever
//! PKI items are missing for it and commit them encrypted, never replacing
//! one that exists.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::ClusterConfig;
use crate::consensus::ConsensusNode;
use crate::host::real::{HostExec, HostNet, RootFiles, Supervisor, Systemd};
use crate::host::Host;
use crate::pki::{self, PkiInputs, PkiNode};
use crate::secretbox::SecretBox;
use crate::state::{ClusterState, Command, NodeId, StepRecord, StepStatus};
use crate::steps::{self, Ctx, Outcome};

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
}

/// This node's latest step outcomes, for the status document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StepView {
    pub step: String,
    pub status: String,
    pub detail: String,
    pub attempts: u32,
}

pub type StepViews = Arc<RwLock<Vec<StepView>>>;

const ROUND: Duration = Duration::from_secs(2);
/// How often a settled chain is looked at again while the replicated state
/// stays the same (see [`Pace`]).
const SETTLED: Duration = Duration::from_secs(15);

/// When a chain's next round is due. A round runs every [`ROUND`] while
/// something on the chain is not done; once every step is done (or not for
/// this node) and the replicated state has not changed since, only every
/// [`SETTLED`]. A settled chain's checks (four etcdctl calls, the gluster
/// CLI) otherwise run every 2 s for ever, which on a small VM competes with
/// the work other chains still have to do. Any change of the state (a new
/// plan, secrets, a member, another node's step record) makes the next round
/// due at once.
#[derive(Debug, Default)]
struct Pace {
    /// The state the last round saw, when that round left the chain settled.
    settled_on: Option<(ClusterState, Instant)>,
}

impl Pace {
    fn due(&self, state: &ClusterState, now: Instant) -> bool {
        match &self.settled_on {
            Some((seen, at)) => seen != state || now.duration_since(*at) >= SETTLED,
            None => true,
        }
    }

    fn ran(&mut self, state: ClusterState, outcomes: &[(&'static str, Outcome)], now: Instant) {
        let settled = outcomes.iter().all(|(_, o)| o.is_settled());
        self.settled_on = settled.then_some((state, now));
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
    let mut pace = Pace::default();
    loop {
        tokio::time::sleep(ROUND).await;
        let state = node.state();
        if state.plan.is_none() || !pace.due(&state, Instant::now()) {
            continue;
        }
        let items = decrypt_items(&state, &sbox);
        let now = Instant::now();
        let skip: Vec<String> = backoff
            .iter()
            .filter(|(_, (until, _))| *until > now)
            .map(|(k, _)| k.clone())
            .collect();
        let (h, c, s, st) = (host.clone(), cfg.clone(), steps.clone(), state.clone());
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
            };
            steps::converge(&s, &ctx, &h, &|n| skip.iter().any(|k| k == n))
        })
        .await;
        let outcomes = match round {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "converge round panicked");
                continue;
            }
        };
        pace.ran(state.clone(), &outcomes, Instant::now());
        let mut view = Vec::new();
        for (name, outcome) in outcomes {
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
                    view.push(v.clone());
                }
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
            });
            record(&node, &state, cfg.me, name, &outcome, attempts).await;
        }
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
    fn a_chain_with_work_left_runs_every_round() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        let st = ClusterState::default();
        assert!(pace.due(&st, t0), "first round");
        for o in [
            Outcome::Pending("starting".into()),
            Outcome::Waiting("pki".into()),
            Outcome::Failed("boom".into()),
            Outcome::Skipped,
        ] {
            pace.ran(
                st.clone(),
                &[("pki", Outcome::Done(String::new())), ("etcd", o)],
                t0,
            );
            assert!(pace.due(&st, t0), "not settled: due at once");
        }
    }

    #[test]
    fn a_settled_chain_waits_until_the_state_changes_or_settled_passes() {
        let mut pace = Pace::default();
        let t0 = Instant::now();
        let st = ClusterState::default();
        pace.ran(
            st.clone(),
            &[
                ("pki", Outcome::Done(String::new())),
                ("vip", Outcome::NotHere),
            ],
            t0,
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
    }
}
