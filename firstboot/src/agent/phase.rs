//! The agent's phase as shown on the console (one human line and one
//! `HABUILD-PHASE {json}` line per change) and in the status JSON.

use serde::Serialize;

use crate::state::{NodeId, Role};

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
