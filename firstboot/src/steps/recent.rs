//! Done steps trusted for a short while: what keeps a chain that waits on
//! one slow step (a kubelet coming Ready, a peer's etcd) from re-running
//! every earlier step's checks and commands on each of its rounds.
//!
//! A round while a step is pending comes every 0.5–2 s. Without this, each
//! such round re-ran the done steps before it (etcdctl, `kubectl apply`,
//! `kubectl get nodes`, …): about ten Go binaries every two seconds, which
//! on a one-vCPU emulated node competes with the apiserver and etcd they
//! check. A step found done is trusted — not re-rendered onto the host, not
//! re-acted, not re-checked — while:
//!
//! - its rendering (files, commands, services; a pure function of the
//!   state) is the one it was done with,
//! - the replicated state is the one it was done in (any change — a member,
//!   the plan, a secret, a step record — runs everything again at once),
//! - and for at most [`TRUST`], shorter than the settled cadence, so a
//!   settled chain still re-checks every step on each of its rounds and a
//!   node heals what it lost (a killed service) as before — or, when the
//!   step's last run took longer, for [`COST_FACTOR`] times that run (at
//!   most [`MAX_TRUST`]): a step whose checks take 8 s is re-checked every
//!   40 s, so re-checking done steps takes at most a fifth of a node's
//!   time. On a saturated emulated node a round of the VIP step's commands
//!   took 15-50 s, longer than [`TRUST`], so nothing was ever trusted and
//!   done steps ran their commands back to back while a later step waited.
//!
//! "The state" here is what a step's work can depend on: the members, the
//! plan, the secrets and every step's status. The text a step reports
//! (its detail) and its failed-attempt count are left out: pending steps
//! rewrite them on every round (a peer's "waiting: …", a retry), and with
//! them in, any node's waiting step made every node re-run all of its done
//! steps at once.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Rendered;
use crate::state::ClusterState;

/// How long a done step is trusted (see the module text).
pub const TRUST: Duration = Duration::from_secs(10);
/// A step whose run took `t` is trusted for up to this many times `t`.
pub const COST_FACTOR: u32 = 5;
/// The longest a done step is trusted however slow its run was: a settled
/// node heals what it lost within about this.
pub const MAX_TRUST: Duration = Duration::from_secs(60);

/// The done steps of one chain, with what they were done on.
#[derive(Debug)]
pub struct Recent {
    trust: Duration,
    done: BTreeMap<&'static str, Entry>,
}

#[derive(Debug)]
struct Entry {
    key: [u8; 32],
    at: Instant,
    /// How long it is trusted from `at`.
    window: Duration,
    detail: String,
}

impl Default for Recent {
    fn default() -> Self {
        Recent::new(TRUST)
    }
}

impl Recent {
    /// Trusts done steps for `trust` (zero: never, every round re-runs
    /// everything).
    pub fn new(trust: Duration) -> Self {
        Recent {
            trust,
            done: BTreeMap::new(),
        }
    }

    /// What the step's check said when it was found done, if it is still
    /// trusted under `key` at `now`.
    pub fn trusted(&self, step: &str, key: &[u8; 32], now: Instant) -> Option<&str> {
        let e = self.done.get(step)?;
        (e.key == *key && now.saturating_duration_since(e.at) < e.window)
            .then_some(e.detail.as_str())
    }

    /// Records the outcome of a step that ran for `took`: done under
    /// `key`, or not (forgotten).
    pub fn ran(
        &mut self,
        step: &'static str,
        key: [u8; 32],
        done: Option<&str>,
        now: Instant,
        took: Duration,
    ) {
        match done {
            Some(detail) => {
                let window = if self.trust.is_zero() {
                    Duration::ZERO
                } else {
                    self.trust.max((took * COST_FACTOR).min(MAX_TRUST))
                };
                self.done.insert(
                    step,
                    Entry {
                        key,
                        at: now,
                        window,
                        detail: detail.to_string(),
                    },
                );
            }
            None => {
                self.done.remove(step);
            }
        }
    }
}

/// A digest of the replicated state as far as a step's work depends on
/// it (once per round): everything but the steps' details and attempt
/// counts (see the module text).
pub fn state_digest(state: &ClusterState) -> [u8; 32] {
    let mut h = HashWriter(Sha256::new());
    let _ = write!(h, "{:?}{:?}{:?}", state.members, state.plan, state.secrets);
    for ((node, step), r) in &state.steps {
        let _ = write!(h, "|{node:x} {step} {:?}", r.status);
    }
    h.0.finalize().into()
}

/// The key a step is trusted under: the state's digest and its rendering.
pub fn key(state: &[u8; 32], rendered: &Rendered) -> [u8; 32] {
    let mut h = HashWriter(Sha256::new());
    h.0.update(state);
    let _ = write!(h, "{rendered:?}");
    h.0.finalize().into()
}

/// Streams `Debug` output into the hash (no string of the whole state).
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FileSpec;

    fn rendered(text: &str) -> Rendered {
        Rendered {
            files: vec![FileSpec::new("etc/x", 0o644, text)],
            ..Rendered::default()
        }
    }

    #[test]
    fn trusted_only_with_the_same_key_and_within_the_window() {
        let t0 = Instant::now();
        let s = state_digest(&ClusterState::default());
        let k = key(&s, &rendered("a"));
        let mut r = Recent::new(Duration::from_secs(10));
        assert_eq!(r.trusted("etcd", &k, t0), None, "nothing recorded");
        r.ran("etcd", k, Some("healthy"), t0, Duration::from_secs(1));
        assert_eq!(
            r.trusted("etcd", &k, t0 + Duration::from_secs(9)),
            Some("healthy")
        );
        assert_eq!(
            r.trusted("etcd", &k, t0 + Duration::from_secs(10)),
            None,
            "expired"
        );
        assert_eq!(r.trusted("vip", &k, t0), None, "another step");
        let other = key(&s, &rendered("b"));
        assert_eq!(r.trusted("etcd", &other, t0), None, "another rendering");
        r.ran("etcd", k, None, t0, Duration::from_secs(1));
        assert_eq!(r.trusted("etcd", &k, t0), None, "not done: forgotten");
    }

    #[test]
    fn a_slow_step_is_trusted_for_longer_up_to_a_bound() {
        let t0 = Instant::now();
        let k = key(&state_digest(&ClusterState::default()), &rendered("a"));
        let mut r = Recent::new(Duration::from_secs(10));
        r.ran("vip", k, Some("up"), t0, Duration::from_secs(8));
        assert!(r.trusted("vip", &k, t0 + Duration::from_secs(39)).is_some());
        assert!(r.trusted("vip", &k, t0 + Duration::from_secs(40)).is_none());
        r.ran("vip", k, Some("up"), t0, Duration::from_secs(300));
        assert!(r
            .trusted("vip", &k, t0 + MAX_TRUST - Duration::from_secs(1))
            .is_some());
        assert!(r.trusted("vip", &k, t0 + MAX_TRUST).is_none(), "bounded");
        let mut never = Recent::new(Duration::ZERO);
        never.ran("vip", k, Some("up"), t0, Duration::from_secs(8));
        assert!(
            never.trusted("vip", &k, t0).is_none(),
            "zero: never trusted"
        );
    }

    #[test]
    fn details_and_attempts_do_not_change_the_state_a_step_is_trusted_in() {
        use crate::state::{StepRecord, StepStatus};
        let mut st = ClusterState::default();
        let mut rec = StepRecord {
            node: 1,
            step: "etcd".into(),
            status: StepStatus::Running,
            detail: "waiting: peers".into(),
            attempts: 0,
        };
        st.steps.insert((1, "etcd".into()), rec.clone());
        let before = state_digest(&st);
        rec.detail = "waiting: 1 of 3 peers".into();
        rec.attempts = 4;
        st.steps.insert((1, "etcd".into()), rec.clone());
        assert_eq!(state_digest(&st), before);
        rec.status = StepStatus::Done;
        st.steps.insert((1, "etcd".into()), rec);
        assert_ne!(state_digest(&st), before, "a status is part of it");
    }

    #[test]
    fn the_key_follows_the_state() {
        let mut st = ClusterState::default();
        let a = key(&state_digest(&st), &rendered("a"));
        assert_eq!(a, key(&state_digest(&st.clone()), &rendered("a")));
        st.members = crate::plan::testutil::n_members(1);
        assert_ne!(a, key(&state_digest(&st), &rendered("a")));
    }
}
