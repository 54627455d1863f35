//! A storage node's view of whether the volume is safe to lose another
//! node: its own brick's state (serving, or untrusted / rebuilding after
//! an unclean shutdown), the bricks gluster reports offline, pending heal
//! entries and split-brain entries. The `gluster-brick` step appends it to
//! its status detail ([`Health::to_detail`]) and `habuild cluster status
//! --gluster` reads it back ([`Health::from_detail`]) from each node.
//!
//! Gluster's own counts are index based: they cannot see a replica that
//! silently differs after a power loss, which is why the brick state (the
//! agent's own "untrusted" marker) is part of the verdict.

use std::collections::BTreeMap;

/// The brick of this node: `serving`, `untrusted` (after an unclean
/// shutdown, not served), `rebuilding` (wiped, back in the volume, healing).
pub const SERVING: &str = "serving";
pub const UNTRUSTED: &str = "untrusted";
pub const REBUILDING: &str = "rebuilding";

const PREFIX: &str = "safety: ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub brick: String,
    /// Bricks of the volume gluster does not report online (None:
    /// unknown, `volume status` did not answer, e.g. glusterd waiting on a
    /// dead peer).
    pub offline: Option<Vec<String>>,
    /// Pending heal entries over the bricks that answered (None: unknown).
    pub heal_pending: Option<u64>,
    /// Split-brain entries (None: unknown).
    pub split_brain: Option<u64>,
}

impl Health {
    /// From what gluster said: `bricks` of the volume, `online` from
    /// `volume status detail` (empty when it did not answer: which bricks
    /// are online is then unknown, not "none"), `heal` from `heal-count`, and the
    /// split-brain count (asked only when something is pending: a
    /// split-brain entry is always also a pending one).
    pub fn observe(
        brick: &str,
        bricks: &[String],
        online: &BTreeMap<String, bool>,
        heal: &BTreeMap<String, Option<u64>>,
        split_brain: Option<u64>,
    ) -> Health {
        let known: Vec<u64> = heal.values().filter_map(|c| *c).collect();
        let heal_pending = (!known.is_empty()).then(|| known.iter().sum());
        Health {
            brick: brick.into(),
            offline: (!online.is_empty()).then(|| {
                bricks
                    .iter()
                    .filter(|b| !online.get(*b).copied().unwrap_or(false))
                    .cloned()
                    .collect()
            }),
            heal_pending,
            split_brain: if heal_pending == Some(0) {
                Some(0)
            } else {
                split_brain
            },
        }
    }

    /// Safe = this brick serving, every brick known online, nothing
    /// pending, no split brain.
    pub fn safe(&self) -> bool {
        self.brick == SERVING
            && self.offline.as_ref().is_some_and(|o| o.is_empty())
            && self.heal_pending == Some(0)
            && self.split_brain == Some(0)
    }

    /// `safety: brick serving; bricks offline: none; heal pending: 0; split-brain: 0`
    /// (`?` for what is unknown).
    pub fn to_detail(&self) -> String {
        let n = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        let offline = match &self.offline {
            None => "?".to_string(),
            Some(o) if o.is_empty() => "none".to_string(),
            Some(o) => o.join(" "),
        };
        format!(
            "{PREFIX}brick {}; bricks offline: {offline}; heal pending: {}; split-brain: {}",
            self.brick,
            n(self.heal_pending),
            n(self.split_brain)
        )
    }

    /// The health at the end of a step detail, if it carries one.
    pub fn from_detail(detail: &str) -> Option<Health> {
        let (_, rest) = detail.rsplit_once(PREFIX)?;
        let mut h = Health {
            brick: String::new(),
            offline: None,
            heal_pending: None,
            split_brain: None,
        };
        for part in rest.split("; ") {
            if let Some(b) = part.strip_prefix("brick ") {
                h.brick = b.trim().into();
            } else if let Some(o) = part.strip_prefix("bricks offline: ") {
                h.offline = match o.trim() {
                    "?" => None,
                    "none" => Some(Vec::new()),
                    o => Some(o.split_whitespace().map(String::from).collect()),
                };
            } else if let Some(n) = part.strip_prefix("heal pending: ") {
                h.heal_pending = n.trim().parse().ok();
            } else if let Some(n) = part.strip_prefix("split-brain: ") {
                h.split_brain = n.trim().parse().ok();
            }
        }
        (!h.brick.is_empty()).then_some(h)
    }
}

/// The split-brain entries `gluster volume heal VOL info split-brain`
/// lists, summed over the bricks that answered (None when none did).
pub fn parse_split_brain(text: &str) -> Option<u64> {
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Number of entries in split-brain:"))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}
