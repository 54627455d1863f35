//! The key schedule: every key derived from the cluster secret, in one place.
//!
//! The cluster secret (32 bytes in `cluster.toml`) is the root of trust of
//! a cluster. Nothing uses it directly: each purpose gets its own key,
//! derived under its own [`Label`], so that one key says nothing about
//! another and a label is never reused for two purposes.
//!
//! | label | derivation | used by |
//! |-------|------------|---------|
//! | [`Label::TransportPsk`] | HKDF-SHA256, 32 bytes | Noise PSK of [`crate::transport`] |
//! | [`Label::MdnsMac`] | HKDF-SHA256, 32 bytes | TXT record MAC of [`crate::discovery`] |
//! | [`Label::StateSecrets`] | HKDF-SHA256, 32 bytes | [`crate::secretbox`] (secrets in the replicated state) |
//! | [`Label::VrrpPassword`] | HKDF-SHA256, 4 bytes as 8 hex digits | keepalived `auth_pass` ([`crate::steps::vip`]) |
//! | [`Label::TokenSeed`] | SHA-256(label ‖ secret) | kubeadm bootstrap token ([`crate::plan`]) |
//! | [`Label::KubeEncryptionAtRest`] | HKDF-SHA256, 32 bytes | Kubernetes secrets encryption at rest (not used yet) |
//! | [`Label::KubeadmCertificateKey`] | HKDF-SHA256, 32 bytes | kubeadm `--certificate-key` (not used yet) |
//!
//! HKDF is used without salt, with the cluster secret as input key material
//! and the label as `info`. The token seed predates this module and is a
//! plain SHA-256 over the label (which ends in a NUL byte) followed by the
//! secret; it stays so, because changing any derivation changes the key
//! it yields, and nodes of one cluster running different versions would
//! then no longer understand each other (a split cluster). The golden
//! vectors in the tests pin every derivation: a change that alters one is a
//! breaking change of the on-wire and on-disk formats and needs a new label
//! (`v2`) and a migration, never an edit in place.

use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use crate::cluster::Secret;

/// How a key is computed from the cluster secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `HKDF-SHA256(salt = none, ikm = secret, info = label)`.
    Hkdf,
    /// `SHA-256(label ‖ secret)` (32 bytes at most).
    Sha256Prefix,
}

/// The purpose of a derived key; every key of the cluster has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Label {
    /// The Noise pre-shared key of the agent transport.
    TransportPsk,
    /// The HMAC key of mDNS announcements.
    MdnsMac,
    /// The key sealing secrets stored in the replicated state.
    StateSecrets,
    /// keepalived's VRRP `auth_pass`.
    VrrpPassword,
    /// The seed of the kubeadm bootstrap token.
    TokenSeed,
    /// The key of Kubernetes' encryption of Secrets at rest
    /// (`EncryptionConfiguration`, 32 bytes for `secretbox`/`aescbc`).
    KubeEncryptionAtRest,
    /// kubeadm's `--certificate-key` (32 bytes, AES-256-GCM), which
    /// encrypts the control-plane certificates kubeadm uploads for joining
    /// control-plane nodes.
    KubeadmCertificateKey,
}

impl Label {
    /// Every label, in one list (a test checks they are pairwise distinct).
    pub const ALL: [Label; 7] = [
        Label::TransportPsk,
        Label::MdnsMac,
        Label::StateSecrets,
        Label::VrrpPassword,
        Label::TokenSeed,
        Label::KubeEncryptionAtRest,
        Label::KubeadmCertificateKey,
    ];

    /// The label bytes mixed into the derivation. Never edit one: that
    /// changes the key (see the module docs).
    pub const fn bytes(self) -> &'static [u8] {
        match self {
            Label::TransportPsk => b"habuild transport psk v1",
            Label::MdnsMac => b"habuild mdns v1",
            Label::StateSecrets => b"habuild state secrets v1",
            Label::VrrpPassword => b"habuild vrrp password v1",
            Label::TokenSeed => b"habuild plan token seed v1\0",
            Label::KubeEncryptionAtRest => b"habuild kube encryption at rest v1",
            Label::KubeadmCertificateKey => b"habuild kubeadm certificate key v1",
        }
    }

    pub const fn method(self) -> Method {
        match self {
            Label::TokenSeed => Method::Sha256Prefix,
            _ => Method::Hkdf,
        }
    }

    /// `N` bytes of key for this label from `secret`.
    fn derive<const N: usize>(self, secret: &Secret) -> [u8; N] {
        let mut out = [0u8; N];
        match self.method() {
            Method::Hkdf => Hkdf::<Sha256>::new(None, &secret.0)
                .expand(self.bytes(), &mut out)
                .expect("the key lengths used here are valid HKDF-SHA256 output lengths"),
            Method::Sha256Prefix => {
                let d = Sha256::new()
                    .chain_update(self.bytes())
                    .chain_update(secret.0)
                    .finalize();
                out.copy_from_slice(&d[..N]);
            }
        }
        out
    }
}

/// The pre-shared key of the Noise transport.
pub fn transport_psk(secret: &Secret) -> [u8; 32] {
    Label::TransportPsk.derive(secret)
}

/// The key of the mDNS announcement MAC.
pub fn mdns_mac_key(secret: &Secret) -> [u8; 32] {
    Label::MdnsMac.derive(secret)
}

/// The ChaCha20-Poly1305 key sealing secrets in the replicated state; the
/// caller wipes it once the cipher holds it.
pub fn state_secrets_key(secret: &Secret) -> [u8; 32] {
    Label::StateSecrets.derive(secret)
}

/// The VRRP password: 8 lowercase hex digits (keepalived's PASS maximum is
/// 8 characters).
pub fn vrrp_password(secret: &Secret) -> String {
    hex::encode(Label::VrrpPassword.derive::<4>(secret))
}

/// The seed the plan derives the kubeadm bootstrap token from.
pub fn token_seed(secret: &Secret) -> [u8; 32] {
    Label::TokenSeed.derive(secret)
}

/// The key of Kubernetes' encryption of Secrets at rest.
pub fn kube_encryption_key(secret: &Secret) -> [u8; 32] {
    Label::KubeEncryptionAtRest.derive(secret)
}

/// kubeadm's `--certificate-key`.
pub fn kubeadm_certificate_key(secret: &Secret) -> [u8; 32] {
    Label::KubeadmCertificateKey.derive(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The secret of the golden vectors: bytes 0, 1, …, 31.
    fn secret() -> Secret {
        let mut s = [0u8; 32];
        for (i, b) in s.iter_mut().enumerate() {
            *b = i as u8;
        }
        Secret(s)
    }

    /// Fails to compile when a label is added without being listed here;
    /// then add it to [`Label::ALL`] and give it a golden vector.
    fn listed(l: Label) -> bool {
        match l {
            Label::TransportPsk
            | Label::MdnsMac
            | Label::StateSecrets
            | Label::VrrpPassword
            | Label::TokenSeed
            | Label::KubeEncryptionAtRest
            | Label::KubeadmCertificateKey => Label::ALL.contains(&l),
        }
    }

    #[test]
    fn labels_are_pairwise_distinct() {
        for (i, a) in Label::ALL.iter().enumerate() {
            assert!(listed(*a));
            for b in &Label::ALL[i + 1..] {
                assert_ne!(a, b, "{a:?} listed twice");
                assert_ne!(a.bytes(), b.bytes(), "{a:?} and {b:?} share a label");
                // no label is a prefix of another: with SHA-256(label ‖ secret)
                // a prefix would let two purposes overlap on crafted input
                assert!(!a.bytes().starts_with(b.bytes()), "{a:?} / {b:?}");
                assert!(!b.bytes().starts_with(a.bytes()), "{a:?} / {b:?}");
            }
        }
    }

    /// Computed with the code as it was before the derivations were moved
    /// here (transport.rs, discovery.rs, secretbox.rs, steps/vip.rs,
    /// agent/mod.rs); the Kubernetes keys with this module when added.
    #[test]
    fn golden_vectors() {
        let s = secret();
        let h = hex::encode;
        assert_eq!(
            h(transport_psk(&s)),
            "f37833f2758092690e3890ff31bf286ae1e933eac06d12966331e3ef7b394650"
        );
        assert_eq!(
            h(mdns_mac_key(&s)),
            "0b38a7412a1a86aa0d3a5f06572677b1e7950af37de3863ebf40b5e09a61fce3"
        );
        assert_eq!(
            h(state_secrets_key(&s)),
            "d59566ce512446359e77a484ff8ebab28fe35d903b24cc4412959dc23e67f84d"
        );
        assert_eq!(vrrp_password(&s), "ea585926");
        assert_eq!(
            h(token_seed(&s)),
            "a5b4ee9b9eecf8dcac89261d00ba55c00201beebe128a711777f82f614e28a5e"
        );
        assert_eq!(
            h(kube_encryption_key(&s)),
            "12a6a3edaa44b7e3caaecdaca4a3a363219f6fd049bc059c1024890eba1e173e"
        );
        assert_eq!(
            h(kubeadm_certificate_key(&s)),
            "ae41362413d8ebc81f49898aff4872c69cfc2d482ced3d87a114a4ef6a85382f"
        );
    }

    #[test]
    fn keys_differ_per_label_and_per_secret() {
        let s = secret();
        let keys = [
            transport_psk(&s),
            mdns_mac_key(&s),
            state_secrets_key(&s),
            token_seed(&s),
            kube_encryption_key(&s),
            kubeadm_certificate_key(&s),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let other = Secret([7; 32]);
        assert_ne!(transport_psk(&s), transport_psk(&other));
        assert_ne!(token_seed(&s), token_seed(&other));
        assert_ne!(vrrp_password(&s), vrrp_password(&other));
        let pass = vrrp_password(&other);
        assert_eq!(pass.len(), 8);
        assert!(pass.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
