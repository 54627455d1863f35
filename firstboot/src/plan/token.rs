//! The kubeadm bootstrap token agreed in the plan, so `kubeadm init` and
//! every `kubeadm join` use the same one without another round trip.

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A token of kubeadm's form `[a-z0-9]{6}.[a-z0-9]{16}`, derived from
/// sha256 of a domain-separation tag and `seed` (the same seed gives the
/// same token).
pub fn bootstrap_token(seed: &[u8; 32]) -> String {
    let d = Sha256::new()
        .chain_update(b"habuild kubeadm bootstrap token\0")
        .chain_update(seed)
        .finalize();
    let mut s: String = d[..22]
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    s.insert(6, '.');
    s
}

/// Whether `s` has kubeadm's bootstrap token form `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn is_bootstrap_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(s.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_well_formed_and_seeded() {
        let t = bootstrap_token(&[0; 32]);
        assert!(is_bootstrap_token(&t), "{t}");
        assert_eq!(t, bootstrap_token(&[0; 32]));
        assert_ne!(t, bootstrap_token(&[1; 32]));
        assert!(is_bootstrap_token("abcdef.0123456789abcdef"));
        for bad in [
            "abcdef0123456789abcdef",
            "abcde.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde_",
            "abcdef.0123456789abcdef.",
        ] {
            assert!(!is_bootstrap_token(bad), "{bad}");
        }
    }
}
