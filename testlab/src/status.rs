//! An agent's status document, read from its unix socket (the agent
//! writes the document and closes) and parsed into
//! [`firstboot::protocol::StatusDoc`], the type the agent builds it from.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub use firstboot::protocol::{PlanView, StatusDoc};

use crate::{Error, Result};

/// How long one read of the socket may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The document as the agent sent it (for dumps, and for checks that
/// must see every byte, such as "no secret in the status").
pub fn fetch_text(socket: &Path) -> Result<String> {
    let mut out = String::new();
    UnixStream::connect(socket)
        .and_then(|mut s| {
            s.set_read_timeout(Some(READ_TIMEOUT))?;
            s.read_to_string(&mut out)
        })
        .map_err(Error::io(socket))?;
    Ok(out)
}

/// The document, parsed; a document that does not parse is an error
/// quoting it.
pub fn fetch(socket: &Path) -> Result<StatusDoc> {
    let text = fetch_text(socket)?;
    StatusDoc::parse(&text).map_err(|e| {
        Error::Process(format!(
            "status from {} does not parse: {e}: {text}",
            socket.display()
        ))
    })
}

/// Pretty JSON of a document, for failure messages.
pub fn pretty(doc: &StatusDoc) -> String {
    serde_json::to_string_pretty(doc).unwrap_or_else(|e| format!("(unprintable status: {e})"))
}

/// What every agent agrees on once a cluster has formed.
#[derive(Clone, Debug, PartialEq)]
pub struct Converged {
    pub leader: String,
    pub voters: BTreeSet<String>,
    pub plan: PlanView,
}

/// `Some` when every document is there and says: a member, in phase
/// `planned`, with a role; and all name the same leader, the same voters
/// and the same plan (version 1 or later) placing exactly the nodes `ids`
/// (as control plane or workers).
pub fn converged(statuses: &[Option<StatusDoc>], ids: &BTreeSet<String>) -> Option<Converged> {
    let mut seen: Option<Converged> = None;
    for s in statuses {
        let s = s.as_ref()?;
        if !s.raft.member || s.phase != "planned" || s.role.is_none() {
            return None;
        }
        let plan = s.plan.clone()?;
        if plan.version < 1 {
            return None;
        }
        let placed: BTreeSet<String> = plan
            .control_plane
            .iter()
            .chain(&plan.workers)
            .cloned()
            .collect();
        if &placed != ids {
            return None;
        }
        let this = Converged {
            leader: s.raft.leader.clone()?,
            voters: s.raft.voters.iter().cloned().collect(),
            plan,
        };
        match &seen {
            None => seen = Some(this),
            Some(c) if *c == this => {}
            Some(_) => return None,
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use firstboot::protocol::RaftRole;

    /// Today's agents write `raft.state` as openraft's `Debug` name and no
    /// `version`: that parses.
    #[test]
    fn parses_an_unversioned_document() {
        let doc = StatusDoc::parse(
            r#"{"node_id":"0000000000001000","phase":"planned","role":"control-plane",
                "raft":{"member":true,"state":"Leader","leader":"0000000000001000",
                        "voters":["0000000000001000"]},
                "plan":{"version":2,"control_plane":["0000000000001000"],"workers":[]},
                "rejected":{"bad_mac":3}}"#,
        )
        .unwrap();
        assert_eq!(doc.version, 0);
        assert!(doc.raft.member && doc.raft.state == RaftRole::Leader);
        assert_eq!(doc.plan.as_ref().unwrap().version, 2);
        assert_eq!(doc.rejected.bad_mac, 3);
        assert!(doc.role.is_some());
        let ids: BTreeSet<String> = ["0000000000001000".to_string()].into();
        let c = converged(&[Some(doc.clone()), Some(doc.clone())], &ids).unwrap();
        assert_eq!(c.leader, "0000000000001000");
        let mut other = doc.clone();
        other.raft.leader = Some("0000000000002000".into());
        assert!(converged(&[Some(doc.clone()), Some(other)], &ids).is_none());
        assert!(converged(&[Some(doc), None], &ids).is_none());
        assert!(converged(&[], &ids).is_none());
    }
}
