//! The agent's phase as shown on the console (one human line and one
//! `HABUILD-PHASE {json}` line per change) and in the status JSON, and
//! when this boot first reached each milestone ([`Milestones`]: power-on,
//! agent start, discovery, Raft group, plan), for the status timeline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::protocol::{StatusDoc, StepTimes, Timeline};
use crate::state::{NodeId, Role};

/// Clock ticks per second of `/proc/<pid>/stat` times (the kernel's fixed
/// `USER_HZ` on Linux).
const USER_HZ: f64 = 100.0;

/// When this boot first reached each milestone, in unix seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Milestones {
    pub power_on: Option<f64>,
    pub agent_start: Option<f64>,
    pub discovered: Option<f64>,
    pub raft_group: Option<f64>,
    pub plan: Option<f64>,
}

impl Milestones {
    /// Power-on and agent start of this process, from `/proc/uptime` and
    /// `/proc/self/stat` (agent start is now when they cannot be read).
    pub fn at_start() -> Self {
        let now = unix_secs(SystemTime::now());
        let read = |p: &str| std::fs::read_to_string(p).ok();
        Self::from_proc(
            now,
            read("/proc/uptime").as_deref(),
            read("/proc/self/stat").as_deref(),
        )
    }

    /// [`Milestones::at_start`] from the two files' text, read at `now`.
    pub fn from_proc(now: f64, uptime: Option<&str>, self_stat: Option<&str>) -> Self {
        let power_on = uptime.and_then(parse_uptime).map(|u| now - u);
        let started = self_stat.and_then(parse_start_ticks);
        let agent_start = match (power_on, started) {
            (Some(p), Some(ticks)) if p + ticks as f64 / USER_HZ <= now => {
                Some(p + ticks as f64 / USER_HZ)
            }
            _ => Some(now),
        };
        Self {
            power_on,
            agent_start,
            ..Self::default()
        }
    }

    /// Marks, at `now`, the milestones `doc` (this agent's own status) shows
    /// reached for the first time: a verified peer, membership of a Raft
    /// group with a leader, a plan.
    pub fn observe(&mut self, doc: &StatusDoc, now: f64) {
        let mark = |slot: &mut Option<f64>, reached: bool| {
            if reached && slot.is_none() {
                *slot = Some(now);
            }
        };
        mark(&mut self.discovered, !doc.peers.is_empty());
        mark(
            &mut self.raft_group,
            doc.raft.member && doc.raft.leader.is_some(),
        );
        mark(&mut self.plan, doc.plan.is_some());
    }

    /// The status document's timeline with this node's step times.
    ///
    /// Milestones are observed on the agent's status tick (300 ms), while
    /// the step loops start as soon as Raft applies the plan, so a step can
    /// start before the tick sees the plan. A step only runs once there is a
    /// plan, and a plan only reaches a Raft member: the plan is reported no
    /// later than the first step's start, and the Raft group no later than
    /// the plan.
    pub fn timeline(&self, steps: Vec<StepTimes>) -> Timeline {
        let first_step = steps
            .iter()
            .flat_map(|s| [s.first_wait, s.first_start])
            .flatten()
            .reduce(f64::min);
        let earliest = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        };
        let plan = earliest(self.plan, first_step);
        let raft_group = earliest(self.raft_group, plan);
        Timeline {
            power_on: self.power_on,
            agent_start: self.agent_start,
            discovered: self.discovered,
            raft_group,
            plan,
            steps,
        }
    }
}

/// Unix seconds of `t` (0 before the epoch), millisecond precision.
pub fn unix_secs(t: SystemTime) -> f64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    (d.as_millis() as f64) / 1000.0
}

/// Seconds since boot, the first field of `/proc/uptime`.
fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks
/// since boot. Counted after the command name's closing parenthesis (the
/// name may hold spaces and parentheses).
fn parse_start_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    // fields 3.. follow the name; starttime is field 22
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Where the agent is in its first-boot flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting to see `bootstrap_expect` verified peers (itself included).
    Discovering { seen: usize, expected: usize },
    /// Agreeing on the initial voter set (propose / lock / initialize).
    Forming,
    /// A group exists; asking it to add this node.
    Joining,
    /// In the Raft group, no plan committed yet.
    Member {
        #[serde(serialize_with = "hex_opt")]
        leader: Option<NodeId>,
        term: u64,
    },
    /// In the group and a plan is committed (role `None`: not in the plan yet).
    Planned { role: Option<Role>, plan: u64 },
}

fn hex_opt<S: serde::Serializer>(v: &Option<NodeId>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(id) => s.serialize_str(&format!("{id:016x}")),
        None => s.serialize_none(),
    }
}

impl Phase {
    /// The phase's name as used in the status JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Discovering { .. } => "discovering",
            Phase::Forming => "forming",
            Phase::Joining => "joining",
            Phase::Member { .. } => "member",
            Phase::Planned { .. } => "planned",
        }
    }

    /// The human console line.
    pub fn line(&self) -> String {
        let detail = match self {
            Phase::Discovering { seen, expected } => format!(" (sees {seen}/{expected})"),
            Phase::Forming | Phase::Joining => String::new(),
            Phase::Member { leader, term } => format!(
                " leader={} term={term}",
                leader.map_or("-".to_string(), |l| format!("{l:016x}"))
            ),
            Phase::Planned { role, plan } => format!(
                " role={} plan=v{plan}",
                match role {
                    Some(Role::ControlPlane) => "control-plane",
                    Some(Role::Worker) => "worker",
                    None => "none",
                }
            ),
        };
        format!("habuild-agent: phase={}{detail}", self.name())
    }
}

/// Prints the two console lines for `next` when it differs from `*current`.
pub fn report(current: &mut Option<Phase>, next: Phase, node: NodeId) {
    if current.as_ref() == Some(&next) {
        return;
    }
    println!("{}", next.line());
    let mut json = serde_json::to_value(&next).unwrap_or_default();
    if let Some(o) = json.as_object_mut() {
        o.insert("node".into(), format!("{node:016x}").into());
    }
    println!("HABUILD-PHASE {json}");
    *current = Some(next);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_on_and_agent_start_from_proc() {
        let stat = "4242 (habuild agent (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    12 3 0 0 20 0 9 0 2150 123456789 2000 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(2150));
        assert_eq!(parse_uptime("35.20 60.11\n"), Some(35.2));
        let m = Milestones::from_proc(1000.0, Some("35.20 60.11\n"), Some(stat));
        assert_eq!(m.power_on, Some(964.8));
        let start = m.agent_start.unwrap();
        assert!((start - 986.3).abs() < 1e-9, "{start}");
        // unreadable /proc: no power-on, agent start is now
        let m = Milestones::from_proc(1000.0, None, Some(stat));
        assert_eq!((m.power_on, m.agent_start), (None, Some(1000.0)));
        assert_eq!(parse_uptime("garbage"), None);
        assert_eq!(parse_start_ticks("no parenthesis"), None);
        // a start after now (clock stepped) is not believed
        let m = Milestones::from_proc(1000.0, Some("1.0 1.0"), Some(stat));
        assert_eq!(m.agent_start, Some(1000.0));
    }

    #[test]
    fn a_step_seen_before_the_status_tick_saw_the_plan_moves_the_plan_and_group_earlier() {
        let m = Milestones {
            raft_group: Some(10.3),
            plan: Some(10.5),
            ..Milestones::default()
        };
        let step = |first_wait, first_start| StepTimes {
            step: "pki".into(),
            first_wait,
            first_start,
            rounds: 1,
            ..StepTimes::default()
        };
        let t = m.timeline(vec![step(None, Some(10.4)), step(Some(10.2), None)]);
        assert_eq!((t.raft_group, t.plan), (Some(10.2), Some(10.2)));
        let t = m.timeline(vec![step(None, Some(11.0))]);
        assert_eq!((t.raft_group, t.plan), (Some(10.3), Some(10.5)));
        let t = Milestones::default().timeline(vec![]);
        assert_eq!((t.raft_group, t.plan), (None, None));
    }

    #[test]
    fn milestones_are_marked_once_when_first_reached() {
        let mut m = Milestones::default();
        let mut doc = StatusDoc::default();
        m.observe(&doc, 1.0);
        assert_eq!(m, Milestones::default());
        doc.peers.push(crate::protocol::PeerView::default());
        m.observe(&doc, 2.0);
        doc.raft.member = true;
        m.observe(&doc, 3.0);
        assert_eq!(
            m.raft_group, None,
            "a member without a leader is no group yet"
        );
        doc.raft.leader = Some("0000000000000001".into());
        m.observe(&doc, 4.0);
        doc.plan = Some(crate::protocol::PlanView::default());
        m.observe(&doc, 5.0);
        doc.peers.clear();
        m.observe(&doc, 6.0);
        assert_eq!(
            (m.discovered, m.raft_group, m.plan),
            (Some(2.0), Some(4.0), Some(5.0))
        );
        let t = m.timeline(vec![]);
        assert_eq!(t.plan, Some(5.0));
        assert_eq!(unix_secs(UNIX_EPOCH + Duration::from_millis(1500)), 1.5);
    }

    #[test]
    fn lines() {
        assert_eq!(
            Phase::Discovering {
                seen: 2,
                expected: 3
            }
            .line(),
            "habuild-agent: phase=discovering (sees 2/3)"
        );
        assert_eq!(
            Phase::Planned {
                role: Some(Role::ControlPlane),
                plan: 1
            }
            .line(),
            "habuild-agent: phase=planned role=control-plane plan=v1"
        );
        assert_eq!(
            Phase::Member {
                leader: Some(1),
                term: 2
            }
            .line(),
            "habuild-agent: phase=member leader=0000000000000001 term=2"
        );
    }
}
