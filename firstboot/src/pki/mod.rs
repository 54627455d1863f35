//! The cluster PKI, in kubeadm's file layout, issued once by the Raft leader.
//!
//! - [`policy`]: what exists (three CAs, the service-account key pair, seven
//!   leaves per control-plane node), each certificate's subject, SANs, key
//!   usages and validity, and the item names in the replicated state;
//! - [`issue`](mod@issue): keys and certificates made with rcgen, and CAs
//!   loaded back from the state (parsed with the `pem` and `x509-parser`
//!   crates, checked against their keys);
//! - [`layout`]: the files a node writes, where, and with which mode.
//!
//! # Who makes what
//!
//! The Raft leader calls [`issue()`] with the PKI items already in the
//! replicated state (decrypted) and the current control plane. It returns only
//! what is missing: the three CAs and the service-account key pair the first
//! time, then leaf certificates for control-plane nodes that have none yet.
//! The leader seals each returned item with [`crate::secretbox::SecretBox`]
//! and proposes them all in one `PutSecretsIfAbsent` command (one Raft entry,
//! so a batch is stored whole or not at all, and an item that exists is never
//! replaced, even by two leaders racing). Nothing that exists is ever
//! replaced: a CA is made once for the life of the cluster, and a node that
//! joins later gets leaves signed by the CA already in the state.
//!
//! Every node's `pki` step ([`crate::steps::pki`]) then writes what
//! [`files_for_node`] returns under the host root, before `kubeadm
//! init/join`, which finds the files in place and uses them instead of
//! generating its own ("using existing ... certificate and key on disk").
//!
//! # Items in the state and files on disk
//!
//! An item's name maps to a path under `etc/kubernetes/pki/`:
//!
//! | item | file | holder |
//! | --- | --- | --- |
//! | `pki/ca.crt`, `pki/etcd/ca.crt`, `pki/front-proxy-ca.crt` | same path under `pki/` | every node |
//! | `pki/ca.key`, `pki/etcd/ca.key`, `pki/front-proxy-ca.key` | same | control plane |
//! | `pki/sa.key`, `pki/sa.pub` | same | control plane |
//! | `pki/node/<id as 016x>/<file>` | `<file>` | that control-plane node |
//!
//! where `<file>` is one of `etcd/server`, `etcd/peer`,
//! `etcd/healthcheck-client`, `apiserver-etcd-client` (signed by the etcd CA),
//! `apiserver`, `apiserver-kubelet-client` (cluster CA) and
//! `front-proxy-client` (front-proxy CA), each as `.crt` and `.key`.
//! Control-plane nodes hold the CA keys, as with `kubeadm join
//! --control-plane`: kubeadm signs the kubeconfigs (`admin.conf`,
//! `controller-manager.conf`, ...) and kubelet client certs locally with
//! them. Workers get the three CA certificates only.
//!
//! The Kubernetes client certificates are items too, outside `pki/` (they
//! go into kubeconfigs, not files of their own; see [`crate::kube`]), all
//! signed by the cluster CA with client auth only:
//!
//! | item stem (`.crt`, `.key`) | subject | issued |
//! | --- | --- | --- |
//! | `kube/admin` | `O=system:masters, CN=kubernetes-admin` | once |
//! | `kube/controller-manager` | `CN=system:kube-controller-manager` | once |
//! | `kube/scheduler` | `CN=system:kube-scheduler` | once |
//! | `kube/kube-proxy` | `CN=system:kube-proxy` | once |
//! | `kube/kubelet/<id as 016x>` | `O=system:nodes, CN=system:node:<hostname>` | per member, workers too (not `kubernetes = false` ones) |
//!
//! So no kubelet of an agent-managed node needs the bootstrap token or CSR
//! approval (the token stays for `kubeadm join` from unmanaged machines).
//!
//! Private keys are written 0600, certificates and `sa.pub` 0644.
//!
//! # Certificates
//!
//! They follow kubeadm (<https://kubernetes.io/docs/setup/best-practices/certificates/>):
//! CAs `kubernetes`, `etcd-ca` and `front-proxy-ca`, valid 10 years; leaves
//! valid 1 year, both starting 5 minutes before `now` to tolerate clock skew
//! between the leader and the other nodes. All keys are ECDSA P-256 (PKCS#8
//! PEM); leaves have key usage digitalSignature only (kubeadm adds
//! keyEncipherment for RSA keys only), random 128-bit serial numbers and an
//! authority key identifier. `sa.key` signs service-account tokens (ES256);
//! `sa.pub` is its SubjectPublicKeyInfo. The SANs are listed in
//! [`policy`].
//!
//! # Limitations
//!
//! - Leaves expire after a year and nothing renews them yet (`kubeadm certs
//!   renew` works on a node, but the state keeps the old ones).
//! - A leaf issued late in the CA's life is not capped at the CA's expiry.
//! - A node whose hostname or IP changes keeps its old certificates; its
//!   items must be deleted from the state to be re-issued.
//! - A certificate in the state whose private key is not is an error
//!   ([`PkiError::KeyMissing`]): re-creating the key would change an item
//!   others may already use. A key without its certificate gets one.

pub mod issue;
pub mod layout;
pub mod policy;

pub use issue::issue;
pub use layout::{files_for_node, PkiFile, PKI_DIR};
pub use policy::{kubernetes_service_ip, node_items, node_prefix, shared_items};

use std::net::Ipv4Addr;

use time::OffsetDateTime;

use crate::cluster::Ipv4Cidr;
use crate::state::NodeId;

/// A control-plane node, as its certificates name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiNode {
    pub id: NodeId,
    pub hostname: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct PkiInputs {
    pub vip: Ipv4Addr,
    /// Its first host address is the `kubernetes` service IP.
    pub service_cidr: Ipv4Cidr,
    /// "cluster.local"
    pub dns_domain: String,
    /// The etcd + apiserver nodes.
    pub control_plane: Vec<PkiNode>,
    /// Every member (control plane and workers) the agent runs Kubernetes
    /// on (the leader leaves out `kubernetes = false` members): each gets a
    /// kubelet client certificate `kube/kubelet/<id>`
    /// (`CN=system:node:<hostname>`).
    pub members: Vec<PkiNode>,
    /// Validity start of what is issued now.
    pub now: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("service CIDR {0} has no host address for the kubernetes service")]
    NoServiceIp(Ipv4Cidr),
    #[error("control-plane node {id:016x} has an empty hostname")]
    EmptyHostname { id: NodeId },
    #[error("generating {name}: {source}")]
    Generate {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{name} is not a PEM private key habuild can use: {source}")]
    BadKey {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{name} is not a CA certificate habuild can use: {reason}")]
    BadCert { name: String, reason: String },
    #[error(
        "{cert} does not match {key} (different key or subject name); \
         the CA in the state is not one habuild can sign with"
    )]
    CaMismatch { cert: String, key: String },
    #[error(
        "{cert} is in the state but its private key {key} is not; \
         a new key would not match what others may already use"
    )]
    KeyMissing { cert: String, key: String },
    #[error(
        "{leaf} is in the state but its CA key {ca_key} is not; \
         a new CA would not verify it"
    )]
    CaMissing { leaf: String, ca_key: String },
    #[error("node {node:016x}: PKI items not issued yet: {}", missing.join(", "))]
    Missing { node: NodeId, missing: Vec<String> },
}

#[cfg(test)]
mod tests;
