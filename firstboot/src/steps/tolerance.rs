//! How much a service that has been healthy is forgiven: the rule the
//! health checks of the `etcd` and `kube-control-plane` steps apply (the
//! rule is pure; [`judge`] keeps the [`Memory`] in a file under
//! `run/habuild`, one per step, gone with a reboot).
//!
//! A starved member (one vCPU, emulated, sharing it with etcd, three
//! apiservers and the agent) misses a probe now and then although it
//! serves: etcd answers "failed to commit proposal: context deadline
//! exceeded" to one health check while three apiservers start, an
//! apiserver misses one `/readyz`. Before this rule one missed probe made
//! the step pending, and every later step of its chain (for etcd: the VIP,
//! the control plane, the kubelet…) went back to waiting, round after
//! round. The rule:
//!
//! - Until a probe has answered, a failed probe is a failure (pending).
//! - Once a probe answered, failed probes are tolerated — the step stays
//!   done, its detail saying that the last probe failed, how many failed in
//!   a row, and how long ago the service last answered — until they
//!   persist: at least [`MIN_FAILED_PROBES`] in a row *and* for at least
//!   [`GRACE_SECS`] since the first of them. Then the step is pending again
//!   (and the memory of the last answer is dropped: the next failed probe is
//!   a plain failure, until a probe answers again).
//! - A probe that answers ends the run of failures.
//!
//! Both conditions, so that neither a single slow probe (however long it
//! took) nor a burst of quick refusals within a few seconds is enough.

use super::StepError;
use crate::host::{FileSpec, Host};

/// How long failed probes must persist, from the first of a run, before a
/// service that was healthy counts as down (three of the apiserver's 30 s
/// probe timeouts, [`crate::kube::GET_TIMEOUT_SECS`]).
pub const GRACE_SECS: u64 = 90;
/// How many failed probes in a row, at least, before it counts as down.
pub const MIN_FAILED_PROBES: u32 = 2;

/// What is remembered between rounds (unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// When a probe last answered; `None`: never, or forgotten after the
    /// failures persisted.
    pub last_ok: Option<u64>,
    /// When the first failed probe of the current run of failures was seen.
    pub failing_since: Option<u64>,
    /// Failed probes in a row since the last answer.
    pub failures: u32,
}

/// The judgement on one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The probe answered.
    Healthy,
    /// The probe failed, but the service answered before and the
    /// failures have not persisted yet: still done.
    Tolerated(Tolerated),
    /// The probe failed and nothing (any more) excuses it: pending.
    Down,
}

/// A failed probe that is forgiven ([`Verdict::Tolerated`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tolerated {
    /// Seconds since a probe last answered.
    pub last_ok_ago: u64,
    /// Seconds since the first failed probe of this run.
    pub failing_for: u64,
    /// Failed probes in a row, this one included.
    pub failures: u32,
}

impl Tolerated {
    /// The detail of a step kept done through this failed probe: "<what>
    /// last answered N s ago; the last probe failed (K in a row for S s,
    /// tolerated until 2 in a row for 90 s): <why>".
    pub fn detail(&self, what: &str, why: &str) -> String {
        format!(
            "{what} last answered {} s ago; the last probe failed \
             ({} in a row for {} s, tolerated until \
             {MIN_FAILED_PROBES} in a row for {GRACE_SECS} s): {why}",
            self.last_ok_ago, self.failures, self.failing_for
        )
    }
}

impl Memory {
    /// Reads what [`Memory::render`] wrote; anything unreadable is no memory.
    pub fn parse(text: &str) -> Memory {
        let mut m = Memory::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next().and_then(|w| w.parse().ok())) {
                (Some("last_ok"), Some(t)) => m.last_ok = Some(t),
                (Some("failing_since"), Some(t)) => m.failing_since = Some(t),
                (Some("failures"), Some(n)) => m.failures = n as u32,
                _ => {}
            }
        }
        m
    }

    /// One `key value` per line, the fields that are set.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(t) = self.last_ok {
            s += &format!("last_ok {t}\n");
        }
        if let Some(t) = self.failing_since {
            s += &format!("failing_since {t}\n");
        }
        if self.failures > 0 {
            s += &format!("failures {}\n", self.failures);
        }
        s
    }

    /// The verdict on a probe that `answered` (or not) at `now`, and what
    /// to remember for the next one (see the module text for the rule).
    pub fn observe(&self, now: u64, answered: bool) -> (Verdict, Memory) {
        if answered {
            let m = Memory {
                last_ok: Some(now),
                ..Memory::default()
            };
            return (Verdict::Healthy, m);
        }
        let Some(last_ok) = self.last_ok else {
            return (Verdict::Down, Memory::default());
        };
        // A time after now (the clock was stepped back) counts as now.
        let since = self.failing_since.unwrap_or(now).min(now);
        let failures = self.failures.saturating_add(1);
        let failing_for = now - since;
        if failures >= MIN_FAILED_PROBES && failing_for >= GRACE_SECS {
            return (Verdict::Down, Memory::default());
        }
        let verdict = Verdict::Tolerated(Tolerated {
            last_ok_ago: now.saturating_sub(last_ok),
            failing_for,
            failures,
        });
        let m = Memory {
            last_ok: Some(last_ok),
            failing_since: Some(since),
            failures,
        };
        (verdict, m)
    }
}

/// Judges one probe that `answered` (or not) at `now()` (read after the
/// probe returned) with the memory kept in `memory_file` (relative to the
/// host root), and keeps the updated memory there.
pub fn judge(
    host: &Host,
    memory_file: &str,
    now: &dyn Fn() -> u64,
    answered: bool,
) -> Result<Verdict, StepError> {
    let memory = host
        .files
        .read(memory_file)?
        .map(|b| Memory::parse(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let (verdict, next) = memory.observe(now(), answered);
    if next != memory {
        host.files
            .write(&FileSpec::new(memory_file, 0o644, next.render()))?;
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_healthy_failures_are_down_and_remember_nothing() {
        let (v, m) = Memory::default().observe(1000, false);
        assert_eq!(v, Verdict::Down);
        assert_eq!(m, Memory::default());
    }

    #[test]
    fn one_failed_probe_after_an_answer_is_tolerated_however_long_it_took() {
        let (v, m) = Memory::default().observe(1000, true);
        assert_eq!(v, Verdict::Healthy);
        // 500 s later (a long settled gap and a slow probe): one failure.
        let (v, m) = m.observe(1500, false);
        assert_eq!(
            v,
            Verdict::Tolerated(Tolerated {
                last_ok_ago: 500,
                failing_for: 0,
                failures: 1
            })
        );
        // Even a single failure reported long after the run began is one.
        let (v, _) = Memory {
            failing_since: Some(1000),
            failures: 0,
            ..m.clone()
        }
        .observe(1200, false);
        assert!(
            matches!(v, Verdict::Tolerated(Tolerated { failures: 1, .. })),
            "{v:?}"
        );
        // An answer ends the run.
        let (v, m) = m.observe(1510, true);
        assert_eq!(v, Verdict::Healthy);
        assert_eq!(
            m,
            Memory {
                last_ok: Some(1510),
                failing_since: None,
                failures: 0
            }
        );
    }

    #[test]
    fn failures_go_down_only_when_both_many_and_long() {
        let (_, m) = Memory::default().observe(0, true);
        // Quick refusals: many, but within the grace.
        let mut m = m;
        for t in 10..20 {
            let (v, next) = m.observe(t, false);
            assert!(matches!(v, Verdict::Tolerated(_)), "{t}: {v:?}");
            m = next;
        }
        assert_eq!(m.failing_since, Some(10));
        assert_eq!(m.failures, 10);
        let (v, _) = m.observe(10 + GRACE_SECS - 1, false);
        assert_eq!(
            v,
            Verdict::Tolerated(Tolerated {
                last_ok_ago: 10 + GRACE_SECS - 1,
                failing_for: GRACE_SECS - 1,
                failures: 11
            })
        );
        let (v, after) = m.observe(10 + GRACE_SECS, false);
        assert_eq!(v, Verdict::Down);
        assert_eq!(after, Memory::default(), "forgotten");
        // Once down, the next failure is a plain failure.
        assert_eq!(after.observe(200, false).0, Verdict::Down);
    }

    #[test]
    fn a_clock_stepped_back_does_not_go_down_early_or_panic() {
        let m = Memory {
            last_ok: Some(5000),
            failing_since: Some(5000),
            failures: 1,
        };
        let (v, m) = m.observe(100, false);
        assert_eq!(
            v,
            Verdict::Tolerated(Tolerated {
                last_ok_ago: 0,
                failing_for: 0,
                failures: 2
            })
        );
        assert_eq!(m.failing_since, Some(100));
    }

    #[test]
    fn memory_round_trips_and_garbage_is_no_memory() {
        let m = Memory {
            last_ok: Some(7),
            failing_since: Some(9),
            failures: 3,
        };
        assert_eq!(m.render(), "last_ok 7\nfailing_since 9\nfailures 3\n");
        assert_eq!(Memory::parse(&m.render()), m);
        assert_eq!(Memory::parse(""), Memory::default());
        assert_eq!(Memory::parse("last_ok x\n\u{0}"), Memory::default());
    }
}
