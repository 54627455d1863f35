//! Encryption of secrets stored in the replicated state.
//!
//! The Raft log and snapshots are plain files under `/var`, and they are
//! shipped to every member, including workers. Secret values (CA keys, the
//! service-account key, ...) are therefore stored sealed with a key derived
//! from the cluster secret, which only lives in `cluster.toml` on each node's
//! ESP. The leader stores the PKI it issues as one
//! `Command::PutSecretsIfAbsent` whose map holds, for each item name, the
//! ciphertext `SecretBox::seal(name, ..)`.
//!
//! - key: the key schedule's state-secrets key
//!   ([`crate::keys::state_secrets_key`]: HKDF-SHA256 over the cluster secret,
//!   no salt, info `"habuild state secrets v1"`), independent of the
//!   transport PSK and the discovery MAC key, which have other labels;
//! - cipher: ChaCha20-Poly1305 with a random 96-bit nonce, stored as
//!   `nonce (12 bytes) || ciphertext || tag (16 bytes)`;
//! - the secret's name is the associated data, so a ciphertext copied to
//!   another name fails to open instead of silently standing in for it.
//!
//! Random nonces are fine here: a cluster seals a few dozen values, far from
//! the ~2^32 messages where 96-bit random nonces start to risk a collision.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::cluster::Secret;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Seals and opens secrets under the key derived from the cluster secret.
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(<key redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretBoxError {
    #[error(
        "secret {name:?}: ciphertext is {len} bytes, shorter than the {min} bytes of nonce and tag"
    )]
    TooShort {
        name: String,
        len: usize,
        min: usize,
    },
    #[error(
        "secret {name:?}: authentication failed (sealed with a different cluster secret, \
         stored under another name, or tampered with)"
    )]
    Authentication { name: String },
}

impl SecretBox {
    /// Derives the state-secrets key from the cluster secret.
    pub fn derive(secret: &Secret) -> Self {
        let mut key = crate::keys::state_secrets_key(secret);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
        key.fill(0);
        Self { cipher }
    }

    /// Encrypts `plaintext` to be stored under `name`: a fresh random nonce,
    /// then the ciphertext and tag.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: name.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption only fails for messages over 256 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a value sealed by [`SecretBox::seal`] under the same `name`
    /// with the same cluster secret.
    pub fn open(&self, name: &str, ciphertext: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        if ciphertext.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretBoxError::TooShort {
                name: name.to_string(),
                len: ciphertext.len(),
                min: NONCE_LEN + TAG_LEN,
            });
        }
        let (nonce, sealed) = ciphertext.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretBoxError::Authentication {
                name: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret([b; 32])
    }

    #[test]
    fn round_trip() {
        let sb = SecretBox::derive(&secret(1));
        let ct = sb.seal("pki/ca.key", b"the key");
        assert_eq!(ct.len(), NONCE_LEN + 7 + TAG_LEN);
        assert_eq!(sb.open("pki/ca.key", &ct).unwrap(), b"the key");
        // Empty plaintexts work too.
        let ct = sb.seal("empty", b"");
        assert_eq!(sb.open("empty", &ct).unwrap(), b"");
        // A fresh nonce each time: the same plaintext seals differently.
        assert_ne!(sb.seal("n", b"x"), sb.seal("n", b"x"));
        // Another instance from the same secret opens it.
        let ct = sb.seal("n", b"x");
        assert_eq!(SecretBox::derive(&secret(1)).open("n", &ct).unwrap(), b"x");
    }

    /// Sealed by the code before the key moved to [`crate::keys`], with the
    /// secret 0, 1, …, 31: state written by an older agent still opens.
    #[test]
    fn opens_what_the_previous_version_sealed() {
        let mut s = [0u8; 32];
        for (i, b) in s.iter_mut().enumerate() {
            *b = i as u8;
        }
        let ct = hex::decode(
            "74d3cc5ee74753b5908578055c54b5cbd50a163c1162ecdccec7da77381153f6\
             438d88d69031c3aedfddfc3e39fcd22f",
        )
        .unwrap();
        let sb = SecretBox::derive(&Secret(s));
        assert_eq!(
            sb.open("golden/vector", &ct).unwrap(),
            b"habuild key schedule"
        );
    }

    #[test]
    fn wrong_secret_fails() {
        let ct = SecretBox::derive(&secret(1)).seal("pki/ca.key", b"the key");
        let err = SecretBox::derive(&secret(2))
            .open("pki/ca.key", &ct)
            .unwrap_err();
        assert!(matches!(err, SecretBoxError::Authentication { .. }));
        let msg = err.to_string();
        assert!(msg.contains("\"pki/ca.key\""), "{msg}");
        assert!(msg.contains("different cluster secret"), "{msg}");
    }

    #[test]
    fn wrong_name_fails() {
        let sb = SecretBox::derive(&secret(1));
        let ct = sb.seal("pki/ca.key", b"the key");
        let err = sb.open("pki/etcd/ca.key", &ct).unwrap_err();
        assert!(
            matches!(err, SecretBoxError::Authentication { ref name } if name == "pki/etcd/ca.key")
        );
    }

    #[test]
    fn tampering_fails() {
        let sb = SecretBox::derive(&secret(1));
        let ct = sb.seal("s", b"some plaintext");
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(
                    sb.open("s", &bad),
                    Err(SecretBoxError::Authentication { .. })
                ),
                "flipping a bit of byte {i} was not detected"
            );
        }
        let mut longer = ct.clone();
        longer.push(0);
        assert!(sb.open("s", &longer).is_err());
    }

    #[test]
    fn truncated_fails() {
        let sb = SecretBox::derive(&secret(1));
        let ct = sb.seal("s", b"some plaintext");
        // Shorter than nonce + tag: a distinct error naming the secret.
        for len in [0, 1, NONCE_LEN, NONCE_LEN + TAG_LEN - 1] {
            let err = sb.open("s", &ct[..len]).unwrap_err();
            assert!(
                matches!(err, SecretBoxError::TooShort { len: l, .. } if l == len),
                "{err}"
            );
            assert!(err.to_string().starts_with("secret \"s\":"), "{err}");
        }
        // Long enough to parse but cut: authentication fails.
        for len in NONCE_LEN + TAG_LEN..ct.len() {
            assert!(matches!(
                sb.open("s", &ct[..len]),
                Err(SecretBoxError::Authentication { .. })
            ));
        }
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let s = format!("{:?}", SecretBox::derive(&secret(0xab)));
        assert_eq!(s, "SecretBox(<key redacted>)");
    }
}
