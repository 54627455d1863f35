//! Converge steps: what each node does to its own host once the plan gives
//! it a role.
//!
//! A step is small and idempotent. Every round the runner ([`converge`])
//! takes the steps in order and, for each:
//!
//! 1. [`Step::gate`] (pure, on the replicated state): does this step apply
//!    to this node, and is what it waits for there (e.g. its certificates)?
//! 2. [`Step::preflight`]: refuse to act when the host is in a state the step
//!    must not touch (etcd data of another cluster, a VIP someone else holds).
//! 3. [`Step::render`] (pure, golden-tested): the files, commands and
//!    services the step wants.
//! 4. apply through the [`Host`] traits: write the files that differ, run the
//!    commands (idempotent by construction), make the services run (restarted
//!    when their fingerprint — the hash of what they read — changed).
//! 5. [`Step::act`]: for steps whose commands depend on what the host
//!    already has (LVM, a Gluster volume): observe, decide (pure), run only
//!    what is missing.
//! 6. [`Step::check`]: "already done?" — the real health of what it started.
//!
//! Steps whose apply is costly (LVM, the gluster CLI) set
//! [`Step::check_first`]: when the check already passes, the round stops
//! there. Steps belong to a [`Step::chain`]: a step that is not done holds
//! back the later steps of its own chain only (storage does not wait for the
//! control plane, nor the other way round).
//!
//! Nothing is skipped because it was done before: a done step re-renders,
//! finds nothing changed, and re-checks, so a node heals what it lost (a
//! killed service, a reboot). The agent records each step's outcome in the
//! replicated state ([`crate::state::Command::RecordStep`]), which is how
//! steps on other nodes wait on it and how `habuild cluster status` shows
//! progress and errors. Failed steps are retried with backoff by the agent.
//! [`converge_timed`] also says when each step started and ended, for the
//! timeline in the status document. A done step whose rendering and state
//! have not changed is trusted for a few seconds ([`recent`]), so a chain
//! waiting on one slow step does not re-run every earlier step's checks on
//! each of its quick rounds.

pub mod etcd;
pub mod gluster;
pub mod kube_bootstrap;
pub mod kube_control_plane;
pub mod node;
pub mod pki;
pub mod recent;
pub mod tolerance;
pub mod vip;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

pub use recent::Recent;

use sha2::{Digest, Sha256};

use crate::cluster::ClusterConfig;
use crate::host::{Cmd, FileSpec, Host, HostError, ServiceSpec};
use crate::state::{ClusterState, Member, NodeId, Plan, StepStatus};

/// What a step sees: this node, the site config, the replicated state and
/// the decrypted secrets, and where this host's root is.
pub struct Ctx<'a> {
    pub me: NodeId,
    pub cfg: &'a ClusterConfig,
    pub state: &'a ClusterState,
    pub plan: &'a Plan,
    /// Decrypted secret items by name (PEM text), see [`crate::pki`].
    pub items: &'a BTreeMap<String, String>,
    /// The host root that files are written under (`/` on a node).
    pub root: &'a Path,
    /// The NIC that carries this node's cluster address.
    pub interface: &'a str,
    /// This agent's own executable (keepalived's health check calls it).
    pub agent_exe: &'a str,
    /// Whether this node's CPU is emulated (QEMU without KVM,
    /// [`crate::facts::emulated_cpu`]): ten to fifty times slower, so the
    /// services' own timers (etcd's heartbeat, keepalived's health check)
    /// are rendered slower there.
    pub emulated: bool,
}

impl Ctx<'_> {
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.state.members.get(&id)
    }

    pub fn my_ip(&self) -> Option<Ipv4Addr> {
        self.member(self.me).map(|m| m.ip)
    }

    pub fn is_control_plane(&self) -> bool {
        self.plan.control_plane.contains(&self.me)
    }

    /// Whether the agent runs Kubernetes on node `id`: `kubernetes.enabled`,
    /// and its member record does not say `kubernetes = false` (its
    /// `[[nodes]]` entry in the site file). A node without a record counts
    /// as yes; the steps wait for the record anyway.
    pub fn kubernetes_on(&self, id: NodeId) -> bool {
        self.cfg.kubernetes.enabled && !matches!(self.member(id), Some(m) if !m.kubernetes)
    }

    /// Absolute host path of `rel` under the root, for configs and argv.
    pub fn path(&self, rel: &str) -> String {
        crate::host::join_root(self.root, rel).display().to_string()
    }

    /// Whether `step` is recorded done on every node of `nodes`.
    pub fn done_on(&self, step: &str, nodes: &[NodeId]) -> bool {
        self.state.step_done_on(step, nodes)
    }
}

/// Whether a step runs on this node now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Run,
    /// Waiting for something in the replicated state (said in the text).
    Wait(String),
    /// Not this node's business (e.g. etcd on a worker).
    NotHere,
}

/// What a step wants on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub files: Vec<FileSpec>,
    /// Run on every round after the files; must be idempotent.
    pub commands: Vec<Cmd>,
    pub services: Vec<ServiceSpec>,
}

/// Result of a step's check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Done; the text is what the check observed (shown in status), may be empty.
    Done(String),
    /// Started, not healthy yet (says what is missing).
    Pending(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The step must not act (says why and what the operator can do).
    #[error("{0}")]
    Refused(String),
    /// The step cannot render from the state (e.g. a missing certificate).
    #[error("{0}")]
    Render(String),
    /// Something on this host the step needs is still starting (another
    /// step started it): not a failure, the step is pending (re-checked
    /// soon and on every state change, with no backoff growing meanwhile).
    #[error("{0}")]
    NotYet(String),
    #[error(transparent)]
    Host(#[from] HostError),
}

pub trait Step: Send + Sync {
    fn name(&self) -> &'static str;
    fn gate(&self, ctx: &Ctx) -> Gate;
    fn preflight(&self, _ctx: &Ctx, _host: &Host) -> Result<(), StepError> {
        Ok(())
    }
    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError>;
    /// Observe-decide-act, after the rendering is applied (default: nothing).
    fn act(&self, _ctx: &Ctx, _host: &Host) -> Result<(), StepError> {
        Ok(())
    }
    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError>;
    /// Check before applying, and stop there when done.
    fn check_first(&self) -> bool {
        false
    }
    /// The chain this step belongs to: a not-done step holds back the later
    /// steps of its own chain only. No default: every step says where it
    /// belongs.
    fn chain(&self) -> Chain;
}

/// The independent sequences of steps on a node. Each chain runs in its own
/// loop in the agent ([`by_chain`]); a step that is not done holds back only
/// the later steps of its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    /// Certificates, etcd, the Kubernetes control plane, then every node's
    /// pod network, kubelet and kube-proxy.
    ControlPlane,
    /// The API VIP (keepalived + haproxy). Its own chain: it needs neither
    /// the certificates nor etcd, so it comes up beside etcd instead of
    /// after it (on three emulated VMs that is ~50 s sooner), and a slow
    /// etcd never holds back the address clients use.
    Vip,
    /// The Gluster brick of a storage node (rebuilt here after an unclean
    /// shutdown, which takes as long as the heal).
    Storage,
    /// The storage leader's Gluster volume, then every node's mount of it.
    /// Not behind the brick: the volume is served by the other replicas
    /// while this node's brick is rebuilt, so a node back from a power loss
    /// mounts it at once instead of after its heal (seen in `cluster_qemu`:
    /// the power-cycled node's mount waited out its whole rebuild).
    StorageVolume,
    /// The storage leader's Gluster trusted pool (peer probes): it needs
    /// the peers' glusterd, not their bricks, so it forms while the bricks
    /// are made; the volume waits for it.
    StoragePool,
}

impl Chain {
    pub fn name(self) -> &'static str {
        match self {
            Chain::ControlPlane => "control-plane",
            Chain::Vip => "api-vip",
            Chain::Storage => "storage",
            Chain::StorageVolume => "storage-volume",
            Chain::StoragePool => "storage-pool",
        }
    }
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The steps in the order they run on a node.
pub fn all() -> Vec<Box<dyn Step>> {
    vec![
        Box::new(pki::Pki),
        Box::new(etcd::Etcd),
        Box::new(vip::Vip),
        Box::new(kube_control_plane::KubeControlPlane),
        Box::new(kube_bootstrap::KubeBootstrap),
        Box::new(gluster::Brick),
        Box::new(gluster::Pool),
        Box::new(gluster::Volume),
        Box::new(gluster::Mount),
        Box::new(node::PodNetwork),
        Box::new(node::Kubelet),
        Box::new(node::KubeProxy),
    ]
}

/// One step's result in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    NotHere,
    Waiting(String),
    Pending(String),
    /// Done, with what the check observed.
    Done(String),
    Failed(String),
    /// Not run this round (backing off after a failure).
    Skipped,
}

impl Outcome {
    /// Done, or not for this node: the later steps of its chain may build
    /// on it, and a chain of only such outcomes has nothing left to do.
    pub fn is_settled(&self) -> bool {
        matches!(self, Outcome::Done(_) | Outcome::NotHere)
    }

    /// The step ran this round (its gate let it through): it is pending,
    /// done or failed.
    pub fn ran(&self) -> bool {
        matches!(
            self,
            Outcome::Pending(_) | Outcome::Done(_) | Outcome::Failed(_)
        )
    }

    /// The record kept in the replicated state, if this outcome is one.
    pub fn status(&self) -> Option<(StepStatus, String)> {
        match self {
            Outcome::Done(_) => Some((StepStatus::Done, String::new())),
            Outcome::Failed(e) => Some((StepStatus::Failed, e.clone())),
            Outcome::Pending(w) | Outcome::Waiting(w) => Some((StepStatus::Running, w.clone())),
            Outcome::NotHere | Outcome::Skipped => None,
        }
    }
}

/// One round over `steps`: each gated, preflighted, rendered, applied and
/// checked, in order; a step that is not done stops the round for the steps
/// after it in its chain (they build on it). `skip` names steps to leave alone this round
/// (backing off after a failure). The agent runs one loop per chain
/// ([`by_chain`]), so chains progress side by side.
pub fn converge(
    steps: &[Box<dyn Step>],
    ctx: &Ctx,
    host: &Host,
    skip: &dyn Fn(&str) -> bool,
) -> Vec<(&'static str, Outcome)> {
    converge_timed(steps, ctx, host, skip, &mut Recent::new(Duration::ZERO))
        .into_iter()
        .map(|r| (r.name, r.outcome))
        .collect()
}

/// One step's part of a round: its outcome and when it ran (wall clock,
/// for the status timeline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRun {
    pub name: &'static str,
    pub outcome: Outcome,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// [`converge`], with when each step started and ended, trusting the done
/// steps `recent` holds (and recording this round's into it).
pub fn converge_timed(
    steps: &[Box<dyn Step>],
    ctx: &Ctx,
    host: &Host,
    skip: &dyn Fn(&str) -> bool,
    recent: &mut Recent,
) -> Vec<StepRun> {
    let state = recent::state_digest(ctx.state);
    let mut out = Vec::new();
    let mut blocked: Vec<Chain> = Vec::new();
    for step in steps {
        let name = step.name();
        let start = SystemTime::now();
        let outcome = if blocked.contains(&step.chain()) {
            Outcome::Waiting("an earlier step on this node".into())
        } else if skip(name) {
            Outcome::Skipped
        } else {
            run_trusting(step.as_ref(), ctx, host, &state, recent)
        };
        if !outcome.is_settled() {
            blocked.push(step.chain());
        }
        out.push(StepRun {
            name,
            outcome,
            start,
            end: SystemTime::now(),
        });
    }
    out
}

/// One step's round: gated, then — unless it is still trusted done
/// ([`recent`]) — preflighted, applied, acted and checked. Gate and
/// rendering are computed once: the rendering is both what is applied and
/// part of the key the step is trusted under.
fn run_trusting(
    step: &dyn Step,
    ctx: &Ctx,
    host: &Host,
    state: &[u8; 32],
    recent: &mut Recent,
) -> Outcome {
    match step.gate(ctx) {
        Gate::NotHere => return Outcome::NotHere,
        Gate::Wait(why) => return Outcome::Waiting(why),
        Gate::Run => {}
    }
    let name = step.name();
    let rendered = step.render(ctx);
    let key = rendered.as_ref().ok().map(|r| recent::key(state, r));
    if let Some(k) = &key {
        if let Some(detail) = recent.trusted(name, k, Instant::now()) {
            return Outcome::Done(detail.to_string());
        }
    }
    let started = Instant::now();
    let outcome = run_gated(step, ctx, host, rendered);
    if let Some(k) = key {
        let done = match &outcome {
            Outcome::Done(d) => Some(d.as_str()),
            _ => None,
        };
        let now = Instant::now();
        recent.ran(name, k, done, now, now - started);
    }
    outcome
}

/// `steps` split by [`Step::chain`], chains in order of their first step.
pub fn by_chain(steps: Vec<Box<dyn Step>>) -> Vec<Vec<Box<dyn Step>>> {
    let mut chains: Vec<Vec<Box<dyn Step>>> = Vec::new();
    for step in steps {
        match chains.iter_mut().find(|c| c[0].chain() == step.chain()) {
            Some(chain) => chain.push(step),
            None => chains.push(vec![step]),
        }
    }
    chains
}

/// A step its gate let through, with its rendering: check first (for
/// [`Step::check_first`] steps), preflight, apply, act, check.
fn run_gated(
    step: &dyn Step,
    ctx: &Ctx,
    host: &Host,
    rendered: Result<Rendered, StepError>,
) -> Outcome {
    let result = (|| {
        if step.check_first() {
            if let Ok(Check::Done(d)) = step.check(ctx, host) {
                return Ok(Check::Done(d));
            }
        }
        step.preflight(ctx, host)?;
        apply(&rendered?, host)?;
        step.act(ctx, host)?;
        step.check(ctx, host)
    })();
    match result {
        Ok(Check::Done(d)) => Outcome::Done(d),
        Ok(Check::Pending(w)) | Err(StepError::NotYet(w)) => Outcome::Pending(w),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Applies a rendering: files that differ, then commands, then services.
pub fn apply(r: &Rendered, host: &Host) -> Result<(), StepError> {
    for f in &r.files {
        if host.files.write(f)? {
            tracing::info!(path = %f.path, "wrote");
        }
    }
    for c in &r.commands {
        host.exec.run(c)?;
    }
    host.services.ensure_all(&r.services)?;
    Ok(())
}

/// Seconds since the epoch, now (wall clock), for what a step keeps
/// between rounds in files (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fingerprint of the files a service reads (for restart-on-change).
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..8])
}

/// Where supervised services' pid files and sockets go, under the root.
pub const RUN_DIR: &str = "run/habuild";

/// The etcd member name of a node (stable, unique, DNS-safe).
pub fn node_name(id: NodeId) -> String {
    format!("node-{id:016x}")
}

/// `PathBuf` of `rel` under `root` (for tests and callers outside steps).
pub fn under(root: &Path, rel: &str) -> PathBuf {
    crate::host::join_root(root, rel)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::cluster::{Auto, Ipv4Range};

    pub fn cfg() -> ClusterConfig {
        let mut c = crate::plan::testutil::cfg(3);
        c.cluster.name = "lab".into();
        c.network.vip = Auto::Value(Ipv4Addr::new(10, 77, 0, 250));
        c.network.metallb_range =
            Auto::Value("10.77.0.200-10.77.0.210".parse::<Ipv4Range>().unwrap());
        c
    }

    /// Members 1..=4 at 10.77.0.1..=4; control plane 1, 2, 3; worker 4.
    pub fn state() -> ClusterState {
        let members = crate::plan::testutil::n_members(4);
        let plan = crate::plan::plan(&members, &cfg(), None, &crate::plan::testutil::SEED).unwrap();
        let mut s = ClusterState {
            members,
            ..Default::default()
        };
        assert_eq!(
            s.apply(crate::state::Command::SetPlan(plan)),
            crate::state::Response::Ok
        );
        s
    }

    /// `ctx` as on an emulated CPU ([`Ctx::emulated`]).
    pub fn emulated<'a>(ctx: &Ctx<'a>) -> Ctx<'a> {
        Ctx {
            emulated: true,
            ..*ctx
        }
    }

    /// Runs `f` with node `me`'s context over [`state`] (root `/`, eth0).
    pub fn with_ctx<R>(me: NodeId, f: impl FnOnce(&Ctx) -> R) -> R {
        let state = state();
        let cfg = cfg();
        let items = BTreeMap::new();
        let ctx = Ctx {
            me,
            cfg: &cfg,
            state: &state,
            plan: state.plan.as_ref().unwrap(),
            items: &items,
            root: Path::new("/"),
            interface: "eth0",
            agent_exe: "/usr/lib/habuild/habuild-agent",
            emulated: false,
        };
        f(&ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{Event, Recording};

    struct Fake(&'static str, Gate, Check);
    impl Step for Fake {
        fn name(&self) -> &'static str {
            self.0
        }
        fn gate(&self, _: &Ctx) -> Gate {
            self.1.clone()
        }
        fn render(&self, _: &Ctx) -> Result<Rendered, StepError> {
            Ok(Rendered {
                files: vec![FileSpec::new(format!("etc/{}", self.0), 0o644, "x")],
                commands: vec![Cmd::new(["true", self.0])],
                services: vec![],
            })
        }
        fn check(&self, _: &Ctx, _: &Host) -> Result<Check, StepError> {
            Ok(self.2.clone())
        }
        fn chain(&self) -> Chain {
            Chain::ControlPlane
        }
    }

    #[test]
    fn rounds_stop_at_the_first_step_not_done_and_reapply_nothing_unchanged() {
        testutil::with_ctx(1, |ctx| {
            let steps: Vec<Box<dyn Step>> = vec![
                Box::new(Fake("a", Gate::Run, Check::Done(String::new()))),
                Box::new(Fake("b", Gate::NotHere, Check::Done(String::new()))),
                Box::new(Fake("c", Gate::Run, Check::Pending("warming".into()))),
                Box::new(Fake("d", Gate::Run, Check::Done(String::new()))),
            ];
            let rec = Recording::default();
            let host = rec.host();
            let out = converge(&steps, ctx, &host, &|_| false);
            assert_eq!(
                out,
                vec![
                    ("a", Outcome::Done(String::new())),
                    ("b", Outcome::NotHere),
                    ("c", Outcome::Pending("warming".into())),
                    ("d", Outcome::Waiting("an earlier step on this node".into())),
                ]
            );
            assert_eq!(
                rec.events(),
                vec![
                    Event::Wrote("etc/a".into()),
                    Event::Ran("true a".into()),
                    Event::Wrote("etc/c".into()),
                    Event::Ran("true c".into()),
                ]
            );
            converge(&steps, ctx, &host, &|s| s == "c");
            assert_eq!(
                rec.events().len(),
                5,
                "second round writes nothing new: {:?}",
                rec.events()
            );
        });
    }
    #[test]
    fn a_done_step_is_trusted_while_its_rendering_and_the_state_stay_the_same() {
        testutil::with_ctx(1, |ctx| {
            let steps: Vec<Box<dyn Step>> = vec![
                Box::new(Fake("a", Gate::Run, Check::Done("fine".into()))),
                Box::new(Fake("c", Gate::Run, Check::Pending("warming".into()))),
            ];
            let rec = Recording::default();
            let host = rec.host();
            let mut recent = Recent::new(Duration::from_secs(3600));
            let outcomes = |runs: Vec<StepRun>| -> Vec<Outcome> {
                runs.into_iter().map(|r| r.outcome).collect()
            };
            let first = converge_timed(&steps, ctx, &host, &|_| false, &mut recent);
            let ran = |rec: &Recording| -> Vec<Event> {
                rec.events()
                    .into_iter()
                    .filter(|e| matches!(e, Event::Ran(_)))
                    .collect()
            };
            assert_eq!(
                ran(&rec),
                vec![Event::Ran("true a".into()), Event::Ran("true c".into())]
            );
            let second = converge_timed(&steps, ctx, &host, &|_| false, &mut recent);
            assert_eq!(outcomes(first), outcomes(second), "the same outcomes");
            assert_eq!(
                ran(&rec),
                vec![
                    Event::Ran("true a".into()),
                    Event::Ran("true c".into()),
                    Event::Ran("true c".into())
                ],
                "the done step is trusted, the pending one runs again"
            );
            // another state: everything runs again
            let mut state = ctx.state.clone();
            state.members.remove(&4);
            let changed = Ctx {
                state: &state,
                ..*ctx
            };
            converge_timed(&steps, &changed, &host, &|_| false, &mut recent);
            assert_eq!(ran(&rec).len(), 5, "{:?}", rec.events());
            assert_eq!(ran(&rec)[3], Event::Ran("true a".into()));
            // never trusted: every round runs every step
            let mut never = Recent::new(Duration::ZERO);
            converge_timed(&steps, ctx, &host, &|_| false, &mut never);
            converge_timed(&steps, ctx, &host, &|_| false, &mut never);
            assert_eq!(ran(&rec).len(), 9);
        });
    }

    #[test]
    fn a_step_not_done_holds_back_only_its_own_chain() {
        struct Storage(Fake);
        impl Step for Storage {
            fn name(&self) -> &'static str {
                self.0.name()
            }
            fn gate(&self, ctx: &Ctx) -> Gate {
                self.0.gate(ctx)
            }
            fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
                self.0.render(ctx)
            }
            fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
                self.0.check(ctx, host)
            }
            fn chain(&self) -> Chain {
                Chain::Storage
            }
        }
        testutil::with_ctx(1, |ctx| {
            let steps: Vec<Box<dyn Step>> = vec![
                Box::new(Fake("a", Gate::Run, Check::Pending("slow".into()))),
                Box::new(Storage(Fake("s1", Gate::Run, Check::Done(String::new())))),
                Box::new(Fake("b", Gate::Run, Check::Done(String::new()))),
                Box::new(Storage(Fake("s2", Gate::Run, Check::Done(String::new())))),
            ];
            let rec = Recording::default();
            let out = converge(&steps, ctx, &rec.host(), &|_| false);
            let waiting = Outcome::Waiting("an earlier step on this node".into());
            assert_eq!(
                out,
                vec![
                    ("a", Outcome::Pending("slow".into())),
                    ("s1", Outcome::Done(String::new())),
                    ("b", waiting),
                    ("s2", Outcome::Done(String::new())),
                ]
            );
            let names: Vec<Vec<&str>> = by_chain(steps)
                .iter()
                .map(|c| c.iter().map(|s| s.name()).collect())
                .collect();
            assert_eq!(names, vec![vec!["a", "b"], vec!["s1", "s2"]]);
        });
        let names: Vec<Vec<&str>> = by_chain(all())
            .iter()
            .map(|c| c.iter().map(|s| s.name()).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec![
                    "pki",
                    "etcd",
                    "kube-control-plane",
                    "kube-bootstrap",
                    "pod-network",
                    "kubelet",
                    "kube-proxy"
                ],
                vec!["vip"],
                vec!["gluster-brick"],
                vec!["gluster-pool"],
                vec!["gluster-volume", "gluster-mount"],
            ]
        );
    }
}
