//! Bootstrap without split brain: the pure decision of when (and by whom) the
//! Raft group is initialized, modelled on Consul's `bootstrap_expect`.
//!
//! # Protocol
//!
//! A node with Raft state on disk never bootstraps: it starts Raft and
//! rejoins its group. A node without state advertises (through discovery) an
//! [`Advert`] and calls [`decide`] on every change of its view:
//!
//! 1. If any verified peer is already a [`Advert::Member`] of a group, the
//!    node asks that group to add it ([`Decision::JoinExisting`]): as a
//!    learner, promoted to voter while the group has fewer voters than
//!    configured.
//! 2. Otherwise it waits until it sees at least `bootstrap_expect` nodes
//!    (itself included). It then **proposes** the set `S` of the
//!    `bootstrap_expect` lowest ids it sees, advertising `H(S)`
//!    ([`voter_set_hash`]) ([`Decision::Propose`]). The caller records every
//!    set it proposes in [`BootstrapState::proposed`] (persisted *before*
//!    the advert goes out).
//! 3. A member of `S` **locks** `S` ([`Decision::Lock`]) when every other
//!    member of `S` is visible and advertises `H(S)`, and no visible peer is
//!    locked on a different hash; or when a visible peer is locked on `H(P)`
//!    for a set `P` it proposed earlier that contains it (adoption, so a node
//!    whose view moved on cannot strand those who locked on its old
//!    proposal). A lock is persisted before it is advertised and is **never
//!    changed** afterwards (until the node is a group member).
//! 4. The lowest id of a locked set `L` initializes Raft with voters `L`
//!    ([`Decision::Initialize`]) once every other member of `L` is visible and
//!    advertises `H(L)` *locked*. It is the only node that ever calls
//!    `initialize`; everyone else in `L` is brought in by the leader's
//!    replication.
//!
//! # Guarantees
//!
//! * **Overlapping sets never both initialize.** Initializing `L` needs every
//!   member of `L` locked on `L`; a node locks at most one set, ever (the lock
//!   survives restarts). So two initialized sets `S != T` must be disjoint.
//!   Each set is initialized by exactly one node (its lowest id), which also
//!   persists the lock, so a restart does not initialize twice (and openraft
//!   refuses `initialize` on a node that has log state).
//! * **No disjoint groups while views overlap.** Suppose disjoint `S` and `T`
//!   both initialize. If a member `s` of `S` saw a member `t` of `T` when it
//!   proposed `S` (the lowest `bootstrap_expect` ids of its view), then
//!   `max(S) < t <= max(T)`; symmetrically a member of `T` seeing a member of
//!   `S` gives `max(T) < max(S)`. So at least one side (`T`, say) proposed
//!   without seeing *any* member of the other side below `max(T)`, and both
//!   sides held `bootstrap_expect` mutually visible nodes. Hence: with
//!   `bootstrap_expect > N/2` of the `N` nodes booting fresh, split brain is
//!   impossible whatever the partitions; with a smaller `bootstrap_expect` it
//!   needs a discovery partition that keeps `bootstrap_expect` nodes on each
//!   side apart for the whole propose/lock phase (Consul has the same limit).
//!   Within one connected view every node computes the same `S`, so exactly
//!   one group forms.
//! * **Partial views.** A node that sees a different set proposes a
//!   different hash; no one locks `S` until every member of `S` proposes
//!   `H(S)`, so nothing is initialized until views converge (or a group
//!   exists, which everyone then joins).
//!
//! # When it cannot form (liveness)
//!
//! * Fewer than `bootstrap_expect` nodes are mutually visible: everyone waits.
//! * A member of a locked set is gone for good (dead disk, never boots
//!   again): the set never completes, and the others wait (an operator must
//!   clear the bootstrap state or lower `bootstrap_expect`).
//! * With *stale* adverts (a discovery cache showing an old proposal after
//!   the node locked something else), two nodes can lock different
//!   overlapping sets; neither completes. Safety holds; the cluster stalls
//!   until an operator intervenes. With fresh adverts this cannot happen:
//!   locking `S` needs every member of `S` to be advertising `H(S)` now.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::state::NodeId;

/// Hash of a proposed initial voter set: hex of the first 16 bytes of
/// sha256 over the sorted ids (big-endian).
pub fn voter_set_hash(set: &BTreeSet<NodeId>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"habuild-voters-v1");
    for id in set {
        h.update(id.to_be_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// What a node advertises through discovery about its Raft state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Advert {
    /// Not in a group yet. `proposal` is the hash of the voter set it
    /// proposes; `locked` says it has committed to that set for good.
    Booting {
        proposal: Option<String>,
        locked: bool,
    },
    /// In a Raft group (voter or learner); `leader` as far as it knows.
    Member { leader: Option<NodeId> },
    /// Never a founder ([`decide_join_only`]): a node that keeps no state
    /// across reboots (`/var` in RAM) waits for a group and joins it. It is
    /// no candidate for the initial voter set, so the others leave it out
    /// of their proposals (else they would wait for its lock for ever).
    JoinOnly,
}

/// A verified peer as seen through discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub advert: Advert,
}

/// A node's own bootstrap progress; the caller persists it (see
/// [`BootstrapState::load`] / [`BootstrapState::save`]) before acting on a
/// [`Decision::Propose`] or [`Decision::Lock`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapState {
    /// Sets this node has advertised, oldest first (bounded, see [`BootstrapState::record`]).
    pub proposed: Vec<BTreeSet<NodeId>>,
    /// The set this node locked, if any. Never changes once set.
    pub locked: Option<BTreeSet<NodeId>>,
}

const MAX_HISTORY: usize = 64;
const STATE_FILE: &str = "bootstrap.json";

impl BootstrapState {
    /// Applies a decision to the state; returns whether it changed (and must be saved).
    pub fn record(&mut self, d: &Decision) -> bool {
        match d {
            Decision::Propose { set, .. } => {
                if self.proposed.last() == Some(set) {
                    return false;
                }
                self.proposed.retain(|s| s != set);
                self.proposed.push(set.clone());
                if self.proposed.len() > MAX_HISTORY {
                    self.proposed.remove(0);
                }
                true
            }
            Decision::Lock { set, .. } => {
                assert!(
                    self.locked.is_none() || self.locked.as_ref() == Some(set),
                    "lock changed"
                );
                let changed = self.locked.is_none();
                self.locked = Some(set.clone());
                changed
            }
            _ => false,
        }
    }

    /// What to advertise given this state (while not a group member).
    pub fn advert(&self) -> Advert {
        match (&self.locked, self.proposed.last()) {
            (Some(l), _) => Advert::Booting {
                proposal: Some(voter_set_hash(l)),
                locked: true,
            },
            (None, Some(p)) => Advert::Booting {
                proposal: Some(voter_set_hash(p)),
                locked: false,
            },
            (None, None) => Advert::Booting {
                proposal: None,
                locked: false,
            },
        }
    }

    /// Loads `dir/bootstrap.json` (default when absent).
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        match std::fs::read(dir.join(STATE_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Saves to `dir/bootstrap.json` (temp file, fsync, rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        super::store::write_atomic(dir, STATE_FILE, &bytes)
    }
}

/// Why a node waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// Sees `seen` nodes (itself included), needs `expected`.
    NotEnoughPeers { seen: usize, expected: usize },
    /// Locked; waiting for these members of the locked set to lock too.
    WaitingForLocks { missing: Vec<NodeId> },
    /// Locked and complete; `initializer` (the lowest id) initializes.
    InitializerIs(NodeId),
    /// A join-only node ([`Advert::JoinOnly`]) sees no group yet.
    NoGroupToJoin,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep the current advert and wait.
    Wait(WaitReason),
    /// Record `set` as proposed, then advertise `hash` (unlocked).
    Propose { set: BTreeSet<NodeId>, hash: String },
    /// Persist the lock on `set`, then advertise `hash` locked.
    Lock { set: BTreeSet<NodeId>, hash: String },
    /// Call Raft `initialize` with these voters (only the lowest id of an
    /// agreed, fully locked set gets this).
    Initialize(BTreeSet<NodeId>),
    /// A group exists: ask `via` (its leader if advertised, else a member) to add us.
    JoinExisting { via: NodeId },
}

/// The member to ask for admission when a group is visible: its leader if a
/// visible member names a visible leader, else the lowest member id.
fn join_via(peers: &[&Peer]) -> Option<NodeId> {
    let members: Vec<&Peer> = peers
        .iter()
        .copied()
        .filter(|p| matches!(p.advert, Advert::Member { .. }))
        .collect();
    let visible = |id: NodeId| members.iter().any(|p| p.id == id);
    let leader = members.iter().find_map(|p| match p.advert {
        Advert::Member { leader: Some(l) } if visible(l) => Some(l),
        _ => None,
    });
    leader.or_else(|| members.iter().map(|p| p.id).min())
}

/// The decision of a join-only node ([`Advert::JoinOnly`]): join a group
/// once one is visible, never found one. Such a node forgets everything on
/// a reboot; a founding voter that forgot its vote and log could elect a
/// second leader.
pub fn decide_join_only(me: NodeId, peers: &[Peer]) -> Decision {
    let peers: Vec<&Peer> = peers.iter().filter(|p| p.id != me).collect();
    match join_via(&peers) {
        Some(via) => Decision::JoinExisting { via },
        None => Decision::Wait(WaitReason::NoGroupToJoin),
    }
}

/// The bootstrap decision for node `me` given `bootstrap_expect`, its own
/// persisted [`BootstrapState`], and the verified peers it sees (itself
/// excluded; duplicates are ignored). See the module docs for the rules and
/// what they guarantee.
pub fn decide(
    me: NodeId,
    bootstrap_expect: usize,
    state: &BootstrapState,
    peers: &[Peer],
) -> Decision {
    let expect = bootstrap_expect.max(1);
    // Join-only nodes are not candidates: they never propose nor lock.
    let peers: Vec<&Peer> = peers
        .iter()
        .filter(|p| p.id != me && p.advert != Advert::JoinOnly)
        .collect();

    // 1. A group exists: join it.
    if let Some(via) = join_via(&peers) {
        return Decision::JoinExisting { via };
    }

    let advert_of = |id: NodeId| peers.iter().find(|p| p.id == id).map(|p| &p.advert);
    let locked_hashes: BTreeSet<&str> = peers
        .iter()
        .filter_map(|p| match &p.advert {
            Advert::Booting {
                proposal: Some(h),
                locked: true,
            } => Some(h.as_str()),
            _ => None,
        })
        .collect();

    // 2. Locked: initialize when every member is locked on the same set.
    if let Some(l) = &state.locked {
        let h = voter_set_hash(l);
        let missing: Vec<NodeId> = l
            .iter()
            .copied()
            .filter(|&id| id != me)
            .filter(|&id| {
                advert_of(id)
                    != Some(&Advert::Booting {
                        proposal: Some(h.clone()),
                        locked: true,
                    })
            })
            .collect();
        if !missing.is_empty() {
            return Decision::Wait(WaitReason::WaitingForLocks { missing });
        }
        let first = *l.iter().next().expect("non-empty set");
        return if first == me {
            Decision::Initialize(l.clone())
        } else {
            Decision::Wait(WaitReason::InitializerIs(first))
        };
    }

    // 3. Adoption: a peer locked on a set I proposed (and belong to).
    for p in state.proposed.iter().rev() {
        if p.contains(&me) {
            let h = voter_set_hash(p);
            if locked_hashes.contains(h.as_str()) {
                return Decision::Lock {
                    set: p.clone(),
                    hash: h,
                };
            }
        }
    }

    // 4. Propose the lowest `expect` ids seen; lock when all of them agree.
    let mut view: BTreeSet<NodeId> = peers.iter().map(|p| p.id).collect();
    view.insert(me);
    if view.len() < expect {
        return Decision::Wait(WaitReason::NotEnoughPeers {
            seen: view.len(),
            expected: expect,
        });
    }
    let set: BTreeSet<NodeId> = view.into_iter().take(expect).collect();
    let hash = voter_set_hash(&set);
    let all_agree = set.iter().all(|&id| {
        id == me
            || matches!(advert_of(id), Some(Advert::Booting { proposal: Some(h), .. }) if *h == hash)
    });
    let foreign_lock = locked_hashes.iter().any(|h| *h != hash);
    // Only lock a set we have already advertised (recorded), so adoption works for others.
    let advertised = state.proposed.last() == Some(&set);
    if set.contains(&me) && all_agree && !foreign_lock && advertised {
        Decision::Lock { set, hash }
    } else {
        Decision::Propose { set, hash }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booting(id: NodeId, set: Option<&BTreeSet<NodeId>>, locked: bool) -> Peer {
        Peer {
            id,
            advert: Advert::Booting {
                proposal: set.map(voter_set_hash),
                locked,
            },
        }
    }

    fn s(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    /// Runs the protocol for nodes that all see each other; returns who initialized.
    fn converge(ids: &[NodeId], expect: usize) -> Vec<(NodeId, BTreeSet<NodeId>)> {
        let mut states: Vec<BootstrapState> =
            ids.iter().map(|_| BootstrapState::default()).collect();
        let mut inits = Vec::new();
        for _round in 0..10 {
            let adverts: Vec<Peer> = ids
                .iter()
                .zip(&states)
                .map(|(&id, st)| Peer {
                    id,
                    advert: st.advert(),
                })
                .collect();
            for (i, &id) in ids.iter().enumerate() {
                let d = decide(id, expect, &states[i], &adverts);
                if let Decision::Initialize(set) = &d {
                    inits.push((id, set.clone()));
                    return inits;
                }
                states[i].record(&d);
            }
        }
        inits
    }

    #[test]
    fn waits_for_expected_count() {
        let d = decide(5, 3, &BootstrapState::default(), &[booting(7, None, false)]);
        assert_eq!(
            d,
            Decision::Wait(WaitReason::NotEnoughPeers {
                seen: 2,
                expected: 3
            })
        );
    }

    #[test]
    fn full_view_initializes_once_with_lowest_ids() {
        let inits = converge(&[40, 10, 30, 20, 50], 3);
        assert_eq!(inits, vec![(10, s(&[10, 20, 30]))]);
    }

    #[test]
    fn disagreeing_views_do_not_lock() {
        // 2 sees {1,2,3}; 3 proposes {2,3,4} (it does not see 1).
        let mut st = BootstrapState::default();
        let p = [
            booting(1, Some(&s(&[1, 2, 3])), false),
            booting(3, Some(&s(&[2, 3, 4])), false),
        ];
        let d = decide(2, 3, &st, &p);
        assert!(matches!(d, Decision::Propose { .. }), "{d:?}");
        st.record(&d);
        assert!(matches!(decide(2, 3, &st, &p), Decision::Propose { .. }));
    }

    #[test]
    fn group_exists_means_join_via_leader() {
        let p = [
            Peer {
                id: 3,
                advert: Advert::Member { leader: Some(1) },
            },
            Peer {
                id: 1,
                advert: Advert::Member { leader: Some(1) },
            },
        ];
        assert_eq!(
            decide(9, 3, &BootstrapState::default(), &p),
            Decision::JoinExisting { via: 1 }
        );
        // Leader not visible: ask the lowest visible member.
        assert_eq!(
            decide(9, 3, &BootstrapState::default(), &p[..1]),
            Decision::JoinExisting { via: 3 }
        );
    }

    #[test]
    fn lock_is_adopted_from_history() {
        // 3 proposed {1,2,3}, then saw 0 and moved on; 1 locked {1,2,3}.
        let st = BootstrapState {
            proposed: vec![s(&[1, 2, 3]), s(&[0, 1, 2])],
            locked: None,
        };
        let p = [
            booting(1, Some(&s(&[1, 2, 3])), true),
            booting(0, None, false),
            booting(2, None, false),
        ];
        assert_eq!(
            decide(3, 3, &st, &p),
            Decision::Lock {
                set: s(&[1, 2, 3]),
                hash: voter_set_hash(&s(&[1, 2, 3]))
            }
        );
    }

    #[test]
    fn only_lowest_initializes_and_only_when_all_locked() {
        let l = s(&[1, 2, 3]);
        let st = BootstrapState {
            proposed: vec![l.clone()],
            locked: Some(l.clone()),
        };
        let p = [booting(2, Some(&l), true), booting(3, Some(&l), false)];
        assert_eq!(
            decide(1, 3, &st, &p),
            Decision::Wait(WaitReason::WaitingForLocks { missing: vec![3] })
        );
        let p = [booting(2, Some(&l), true), booting(3, Some(&l), true)];
        assert_eq!(decide(1, 3, &st, &p), Decision::Initialize(l.clone()));
        let p = [booting(1, Some(&l), true), booting(3, Some(&l), true)];
        assert_eq!(
            decide(2, 3, &st, &p),
            Decision::Wait(WaitReason::InitializerIs(1))
        );
    }

    proptest::proptest! {
        /// Random partial views and random schedules never lock two
        /// overlapping sets, and at most one node initializes per set.
        #[test]
        fn no_two_overlapping_initializations(
            n in 3usize..9,
            expect in 1usize..5,
            seed in 0u64..u64::MAX,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let ids: Vec<NodeId> = (1..=n as u64).collect();
            let mut states: Vec<BootstrapState> = ids.iter().map(|_| BootstrapState::default()).collect();
            let mut inits: Vec<BTreeSet<NodeId>> = Vec::new();
            for _ in 0..200 {
                let i = rng.gen_range(0..n);
                // A random partial view (fresh adverts).
                let peers: Vec<Peer> = ids.iter().zip(&states)
                    .filter(|(&id, _)| id != ids[i] && rng.gen_bool(0.7))
                    .map(|(&id, st)| Peer { id, advert: st.advert() })
                    .collect();
                let d = decide(ids[i], expect, &states[i], &peers);
                if let Decision::Initialize(set) = &d {
                    if !inits.contains(set) { inits.push(set.clone()); }
                }
                states[i].record(&d);
            }
            for (a, x) in inits.iter().enumerate() {
                for y in &inits[a + 1..] {
                    proptest::prop_assert!(x.is_disjoint(y), "overlapping groups {:?} {:?}", x, y);
                }
            }
        }
    }

    #[test]
    fn join_only_nodes_never_found_a_group_and_are_left_out_of_proposals() {
        let join_only = |id| Peer {
            id,
            advert: Advert::JoinOnly,
        };
        // Nodes 1 and 2 (expect 2) with join-only node 0 beside them: the
        // lowest two ids they propose are 1 and 2, never 0.
        let peers = vec![join_only(0), booting(2, None, false)];
        match decide(1, 2, &BootstrapState::default(), &peers) {
            Decision::Propose { set, .. } => assert_eq!(set, s(&[1, 2])),
            d => panic!("{d:?}"),
        }
        // With only a join-only peer, a node sees too few to form.
        assert_eq!(
            decide(1, 2, &BootstrapState::default(), &[join_only(0)]),
            Decision::Wait(WaitReason::NotEnoughPeers {
                seen: 1,
                expected: 2
            })
        );
        // The join-only node waits for a group, whatever booting peers it sees…
        assert_eq!(
            decide_join_only(0, &[booting(1, Some(&s(&[1, 2])), true), join_only(5)]),
            Decision::Wait(WaitReason::NoGroupToJoin)
        );
        // …and joins one through its leader once it is visible.
        let member = |id, leader| Peer {
            id,
            advert: Advert::Member { leader },
        };
        assert_eq!(
            decide_join_only(0, &[member(1, Some(2)), member(2, Some(2))]),
            Decision::JoinExisting { via: 2 }
        );
        assert_eq!(
            decide_join_only(0, &[member(3, None), member(1, Some(9))]),
            Decision::JoinExisting { via: 1 },
            "the leader it names is not visible: the lowest member"
        );
    }
}
