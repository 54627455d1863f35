//! Carrying a bootstrap [`Advert`] in discovery's [`RaftState`].
//!
//! Discovery's `forming:<32 hex>` record has room for a 16-byte hash and no
//! lock flag; the bootstrap protocol needs both. The top bit of the first
//! byte carries `locked`; the other 127 bits are the bootstrap
//! [`voter_set_hash`](crate::consensus::bootstrap::voter_set_hash). A
//! receiver maps the 127 bits back to the full hash of a set it knows (its
//! own proposals, its lock, its current candidate set): those are the only
//! comparisons [`decide`](crate::consensus::bootstrap::decide) makes; an
//! unknown hash stays a distinct string. All zeros means "no proposal".

use crate::consensus::bootstrap::Advert;
use crate::discovery::RaftState;

fn bytes_of(hash: &str) -> Option<[u8; 16]> {
    hex::decode(hash).ok()?.try_into().ok()
}

fn masked(mut b: [u8; 16]) -> [u8; 16] {
    b[0] &= 0x7f;
    b
}

/// The `forming:` value of a join-only node ([`Advert::JoinOnly`]): all
/// ones, which no proposal hash takes (its 127 bits would all have to be
/// ones).
pub const JOIN_ONLY: [u8; 16] = [0xff; 16];

/// The discovery state announcing a join-only node.
pub fn join_only() -> RaftState {
    RaftState::Forming { voters: JOIN_ONLY }
}

/// The discovery state announcing a booting node's advert.
pub fn encode(proposal: Option<&str>, locked: bool) -> RaftState {
    let voters = match proposal.and_then(bytes_of) {
        Some(b) => {
            let mut b = masked(b);
            if b == masked(JOIN_ONLY) {
                // 2^-127: never the join-only value
                b[15] = 0xfe;
            }
            if locked {
                b[0] |= 0x80;
            }
            b
        }
        None => [0; 16],
    };
    RaftState::Forming { voters }
}

/// The advert of a peer announcing `forming:<voters>`, with `known` the full
/// hashes this node can compare against.
pub fn decode(voters: [u8; 16], known: &[String]) -> Advert {
    if voters == JOIN_ONLY {
        return Advert::JoinOnly;
    }
    if voters == [0; 16] {
        return Advert::Booting {
            proposal: None,
            locked: false,
        };
    }
    let locked = voters[0] & 0x80 != 0;
    let m = masked(voters);
    let proposal = known
        .iter()
        .find(|h| bytes_of(h).map(masked) == Some(m))
        .cloned()
        .unwrap_or_else(|| format!("unknown:{}", hex::encode(m)));
    Advert::Booting {
        proposal: Some(proposal),
        locked,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::consensus::bootstrap::voter_set_hash;

    #[test]
    fn round_trip() {
        let known: Vec<String> = (1..20u64)
            .map(|i| voter_set_hash(&BTreeSet::from([i, i + 1, i + 2])))
            .collect();
        for h in &known {
            for locked in [false, true] {
                let RaftState::Forming { voters } = encode(Some(h), locked) else {
                    panic!()
                };
                assert_eq!(
                    decode(voters, &known),
                    Advert::Booting {
                        proposal: Some(h.clone()),
                        locked
                    }
                );
                let Advert::Booting { proposal, .. } = decode(voters, &[]) else {
                    panic!()
                };
                assert_ne!(proposal.as_ref(), Some(h));
            }
        }
        let RaftState::Forming { voters } = encode(None, false) else {
            panic!()
        };
        assert_eq!(
            decode(voters, &known),
            Advert::Booting {
                proposal: None,
                locked: false
            }
        );
    }

    #[test]
    fn join_only_round_trips_and_no_proposal_takes_its_value() {
        let RaftState::Forming { voters } = join_only() else {
            panic!()
        };
        assert_eq!(decode(voters, &[]), Advert::JoinOnly);
        let all_ones = hex::encode([0xffu8; 16]);
        let RaftState::Forming { voters } = encode(Some(&all_ones), true) else {
            panic!()
        };
        assert_ne!(voters, JOIN_ONLY);
        assert!(matches!(
            decode(voters, &[]),
            Advert::Booting { locked: true, .. }
        ));
    }
}
