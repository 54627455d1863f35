//! The cluster PKI, in kubeadm's file layout, issued once by the Raft leader.
//!
//! # Who makes what
//!
//! The Raft leader calls [`issue`] with the PKI items already in the
//! replicated state (decrypted) and the current control plane. It returns only
//! what is missing: the three CAs and the service-account key pair the first
//! time, then leaf certificates for control-plane nodes that have none yet.
//! The leader seals each returned item with [`crate::secretbox::SecretBox`]
//! and stores it with `PutSecret`. Nothing that exists is ever replaced: a CA
//! is made once for the life of the cluster, and a node that joins later gets
//! leaves signed by the CA already in the state.
//!
//! Every node then calls [`files_for_node`] and writes what it returns under
//! the host root (see [`PkiFile::write_under`]), before `kubeadm init/join`,
//! which finds the files in place and uses them instead of generating its own
//! ("using existing ... certificate and key on disk").
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
//! them. Workers get the three CA certificates only; their kubelet
//! bootstraps its client certificate with the bootstrap token.
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
//! `sa.pub` is its SubjectPublicKeyInfo.
//!
//! The SANs are those `kubeadm` checks when it reuses a certificate: for
//! `etcd/server` and `etcd/peer` the hostname, `localhost`, the node IP,
//! `127.0.0.1` and `::1` (plus the VIP for `etcd/server`); for `apiserver` the
//! hostname, `kubernetes`, `kubernetes.default`, `kubernetes.default.svc`,
//! `kubernetes.default.svc.<dns domain>`, the node IP, the VIP and the
//! kubernetes service IP (the first host of the service CIDR). The hostname
//! must be the node name kubeadm is given.
//!
//! # Re-creating an issuer from the state
//!
//! rcgen (without its `x509-parser` feature) cannot load a CA certificate. A
//! signature only needs the issuer's name and key, so the issuer is rebuilt
//! from the CA's parameters (the same function that made the CA) and the
//! stored key, and [`issue`] checks that the stored certificate has exactly
//! that subject and public key before signing with it.
//!
//! # Limitations
//!
//! - Leaves expire after a year and nothing renews them yet (`kubeadm certs
//!   renew` works on a node, but the state keeps the old ones).
//! - A leaf issued late in the CA's life is not capped at the CA's expiry.
//! - A node whose hostname or IP changes keeps its old certificates; its
//!   items must be deleted from the state to be re-issued.
//! - Writing the items one `PutSecret` at a time can be interrupted; store
//!   them in the order of [`in_write_order`] (keys first) so that the next
//!   `issue` can complete any prefix. A certificate whose private key is
//!   missing is an error ([`PkiError::KeyMissing`]), since re-creating the
//!   key would change an item others may already use.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::cluster::Ipv4Cidr;
use crate::state::NodeId;

/// Where the files go, relative to the host root (kubeadm's `certificatesDir`).
pub const PKI_DIR: &str = "etc/kubernetes/pki";

const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(365);
/// Certificates start this long before `now`, for clock skew between nodes.
const BACKDATE: Duration = Duration::minutes(5);

/// A control-plane node, as its certificates name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiNode {
    pub id: NodeId,
    pub hostname: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct PkiInputs {
    pub cluster_name: String,
    pub vip: Ipv4Addr,
    /// Its first host address is the `kubernetes` service IP.
    pub service_cidr: Ipv4Cidr,
    /// "cluster.local"
    pub dns_domain: String,
    /// The etcd + apiserver nodes.
    pub control_plane: Vec<PkiNode>,
    /// Validity start of what is issued now.
    pub now: OffsetDateTime,
}

/// A file for a node to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFile {
    /// Relative to the host root, e.g. "etc/kubernetes/pki/etcd/ca.crt".
    pub path: String,
    pub mode: u32,
    pub contents: String,
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
    #[error("{name} is not a PEM X.509 certificate")]
    BadCert { name: String },
    #[error(
        "{cert} does not match {key} (different key or subject name); \
         the CA in the state is not one habuild can sign with"
    )]
    CaMismatch { cert: String, key: String },
    #[error(
        "{cert} is in the state but its private key {key} is not \
         (a partial write? keys must be stored before certificates)"
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

// ---------------------------------------------------------------------------
// Names

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ca {
    Cluster,
    Etcd,
    FrontProxy,
}

impl Ca {
    const ALL: [Ca; 3] = [Ca::Cluster, Ca::Etcd, Ca::FrontProxy];

    fn common_name(self) -> &'static str {
        match self {
            Ca::Cluster => "kubernetes",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }

    /// The file name under `pki/`, without extension.
    fn file(self) -> &'static str {
        match self {
            Ca::Cluster => "ca",
            Ca::Etcd => "etcd/ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }

    fn cert_item(self) -> String {
        format!("pki/{}.crt", self.file())
    }

    fn key_item(self) -> String {
        format!("pki/{}.key", self.file())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    EtcdServer,
    EtcdPeer,
    EtcdHealthcheckClient,
    ApiserverEtcdClient,
    Apiserver,
    ApiserverKubeletClient,
    FrontProxyClient,
}

impl Leaf {
    const ALL: [Leaf; 7] = [
        Leaf::EtcdServer,
        Leaf::EtcdPeer,
        Leaf::EtcdHealthcheckClient,
        Leaf::ApiserverEtcdClient,
        Leaf::Apiserver,
        Leaf::ApiserverKubeletClient,
        Leaf::FrontProxyClient,
    ];

    /// The file name under `pki/`, without extension.
    fn file(self) -> &'static str {
        match self {
            Leaf::EtcdServer => "etcd/server",
            Leaf::EtcdPeer => "etcd/peer",
            Leaf::EtcdHealthcheckClient => "etcd/healthcheck-client",
            Leaf::ApiserverEtcdClient => "apiserver-etcd-client",
            Leaf::Apiserver => "apiserver",
            Leaf::ApiserverKubeletClient => "apiserver-kubelet-client",
            Leaf::FrontProxyClient => "front-proxy-client",
        }
    }

    fn ca(self) -> Ca {
        match self {
            Leaf::EtcdServer
            | Leaf::EtcdPeer
            | Leaf::EtcdHealthcheckClient
            | Leaf::ApiserverEtcdClient => Ca::Etcd,
            Leaf::Apiserver | Leaf::ApiserverKubeletClient => Ca::Cluster,
            Leaf::FrontProxyClient => Ca::FrontProxy,
        }
    }
}

/// The prefix of node `id`'s items: "pki/node/<id as 016x>/".
pub fn node_prefix(id: NodeId) -> String {
    format!("pki/node/{id:016x}/")
}

/// The shared items every control-plane node writes.
pub fn shared_items() -> Vec<String> {
    let mut v: Vec<String> = Ca::ALL
        .iter()
        .flat_map(|ca| [ca.cert_item(), ca.key_item()])
        .collect();
    v.extend(["pki/sa.key".to_string(), "pki/sa.pub".to_string()]);
    v
}

/// The per-node items of control-plane node `id`.
pub fn node_items(id: NodeId) -> Vec<String> {
    let prefix = node_prefix(id);
    Leaf::ALL
        .iter()
        .flat_map(|l| {
            [
                format!("{prefix}{}.crt", l.file()),
                format!("{prefix}{}.key", l.file()),
            ]
        })
        .collect()
}

/// The `kubernetes` service IP: the first host address of the service CIDR
/// (10.96.0.1 for 10.96.0.0/12).
pub fn kubernetes_service_ip(cidr: &Ipv4Cidr) -> Option<Ipv4Addr> {
    (cidr.prefix <= 30).then(|| Ipv4Addr::from(cidr.network() + 1))
}

/// The items of `issued` in the order to store them one by one: private keys
/// first. Interrupted at any point, what was stored is something [`issue`]
/// completes (a key without its certificate gets one).
pub fn in_write_order(issued: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    let (mut keys, certs): (Vec<_>, Vec<_>) = issued
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .partition(|(n, _)| n.ends_with(".key"));
    keys.extend(certs);
    keys
}

// ---------------------------------------------------------------------------
// Issuing

/// PEM items by name. `existing` are the items already in the state
/// (decrypted). Returns ONLY the items to add: CAs and keys that are
/// missing, and per-node items for control-plane nodes that lack them. Never
/// regenerates an existing item; a stored key without its certificate gets a
/// certificate for that key.
pub fn issue(
    existing: &BTreeMap<String, String>,
    inputs: &PkiInputs,
) -> Result<BTreeMap<String, String>, PkiError> {
    let service_ip = kubernetes_service_ip(&inputs.service_cidr)
        .ok_or(PkiError::NoServiceIp(inputs.service_cidr))?;
    if let Some(n) = inputs.control_plane.iter().find(|n| n.hostname.is_empty()) {
        return Err(PkiError::EmptyHostname { id: n.id });
    }
    let mut new = BTreeMap::new();

    let mut issuers = Vec::new();
    for ca in Ca::ALL {
        issuers.push((ca, load_or_create_ca(ca, existing, &mut new, inputs.now)?));
    }
    let issuer = |ca: Ca| &issuers.iter().find(|(c, _)| *c == ca).expect("all CAs").1;

    // Service-account signing key pair.
    let sa_key = match existing.get("pki/sa.key") {
        Some(pem) => parse_key("pki/sa.key", pem)?,
        None if existing.contains_key("pki/sa.pub") => {
            return Err(PkiError::KeyMissing {
                cert: "pki/sa.pub".into(),
                key: "pki/sa.key".into(),
            })
        }
        None => {
            let key = generate_key("pki/sa.key")?;
            new.insert("pki/sa.key".into(), key.serialize_pem());
            key
        }
    };
    if !existing.contains_key("pki/sa.pub") {
        new.insert("pki/sa.pub".into(), sa_key.public_key_pem());
    }

    for node in &inputs.control_plane {
        let prefix = node_prefix(node.id);
        for leaf in Leaf::ALL {
            let cert_name = format!("{prefix}{}.crt", leaf.file());
            let key_name = format!("{prefix}{}.key", leaf.file());
            if existing.contains_key(&cert_name) || new.contains_key(&cert_name) {
                if !existing.contains_key(&key_name) && !new.contains_key(&key_name) {
                    return Err(PkiError::KeyMissing {
                        cert: cert_name,
                        key: key_name,
                    });
                }
                continue;
            }
            let key = match existing.get(&key_name) {
                Some(pem) => parse_key(&key_name, pem)?,
                None => {
                    let key = generate_key(&key_name)?;
                    new.insert(key_name.clone(), key.serialize_pem());
                    key
                }
            };
            let params = leaf_params(leaf, node, inputs, service_ip, &cert_name)?;
            let (ca_cert, ca_key) = issuer(leaf.ca());
            let cert =
                params
                    .signed_by(&key, ca_cert, ca_key)
                    .map_err(|source| PkiError::Generate {
                        name: cert_name.clone(),
                        source,
                    })?;
            new.insert(cert_name, cert.pem());
        }
    }
    Ok(new)
}

/// The issuer for `ca`: from the state if its key is there (after checking
/// the stored certificate against it), else a new CA added to `new`.
fn load_or_create_ca(
    ca: Ca,
    existing: &BTreeMap<String, String>,
    new: &mut BTreeMap<String, String>,
    now: OffsetDateTime,
) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let (cert_name, key_name) = (ca.cert_item(), ca.key_item());
    let key = match existing.get(&key_name) {
        Some(pem) => parse_key(&key_name, pem)?,
        None => {
            if existing.contains_key(&cert_name) {
                return Err(PkiError::KeyMissing {
                    cert: cert_name,
                    key: key_name,
                });
            }
            // A fresh CA must not orphan leaves signed by a lost one.
            let signed_by_ca = |name: &String| {
                name.strip_prefix("pki/node/").is_some_and(|rest| {
                    Leaf::ALL
                        .iter()
                        .any(|l| l.ca() == ca && rest.ends_with(&format!("/{}.crt", l.file())))
                })
            };
            if let Some(leaf) = existing.keys().find(|n| signed_by_ca(n)) {
                return Err(PkiError::CaMissing {
                    leaf: leaf.clone(),
                    ca_key: key_name,
                });
            }
            let key = generate_key(&key_name)?;
            new.insert(key_name.clone(), key.serialize_pem());
            key
        }
    };
    let cert = ca_params(ca, now)
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            name: cert_name.clone(),
            source,
        })?;
    match existing.get(&cert_name) {
        // The rebuilt issuer must have the stored certificate's subject and key.
        Some(stored) => {
            let stored_der =
                der::from_pem(stored, "CERTIFICATE").ok_or_else(|| PkiError::BadCert {
                    name: cert_name.clone(),
                })?;
            let stored_id =
                der::subject_and_spki(&stored_der).ok_or_else(|| PkiError::BadCert {
                    name: cert_name.clone(),
                })?;
            let rebuilt_id = der::subject_and_spki(cert.der()).expect("rcgen output parses");
            if stored_id != rebuilt_id {
                return Err(PkiError::CaMismatch {
                    cert: cert_name,
                    key: key_name,
                });
            }
        }
        None => {
            new.insert(cert_name, cert.pem());
        }
    }
    Ok((cert, key))
}

fn generate_key(name: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
        name: name.to_string(),
        source,
    })
}

fn parse_key(name: &str, pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|source| PkiError::BadKey {
        name: name.to_string(),
        source,
    })
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    // Positive and exactly 16 bytes long once DER-encoded.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn name(organization: Option<&str>, common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A CA's parameters. The subject, key usages and key-identifier method are
/// what an issuer rebuilt from the state must reproduce: keep them stable.
fn ca_params(ca: Ca, now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(None, ca.common_name());
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.key_identifier_method = rcgen::KeyIdMethod::Sha256;
    p.not_before = now - BACKDATE;
    p.not_after = now + CA_VALIDITY;
    p.serial_number = Some(random_serial());
    p
}

fn leaf_params(
    leaf: Leaf,
    node: &PkiNode,
    inputs: &PkiInputs,
    service_ip: Ipv4Addr,
    cert_name: &str,
) -> Result<CertificateParams, PkiError> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let host = node.hostname.as_str();
    let node_ip = IpAddr::V4(node.ip);
    let vip = IpAddr::V4(inputs.vip);
    let loopback4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let domain_svc = format!("kubernetes.default.svc.{}", inputs.dns_domain);

    let (dn, dns, ips, ekus): (_, Vec<&str>, Vec<IpAddr>, _) = match leaf {
        Leaf::EtcdServer => (
            name(None, host),
            vec![host, "localhost"],
            vec![node_ip, loopback4, loopback6, vip],
            vec![ServerAuth, ClientAuth],
        ),
        Leaf::EtcdPeer => (
            name(None, host),
            vec![host, "localhost"],
            vec![node_ip, loopback4, loopback6],
            vec![ServerAuth, ClientAuth],
        ),
        Leaf::EtcdHealthcheckClient => (
            name(None, "kube-etcd-healthcheck-client"),
            vec![],
            vec![],
            vec![ClientAuth],
        ),
        Leaf::ApiserverEtcdClient => (
            name(Some("system:masters"), "kube-apiserver-etcd-client"),
            vec![],
            vec![],
            vec![ClientAuth],
        ),
        Leaf::Apiserver => (
            name(None, "kube-apiserver"),
            vec![
                host,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                domain_svc.as_str(),
            ],
            vec![node_ip, vip, IpAddr::V4(service_ip)],
            vec![ServerAuth],
        ),
        Leaf::ApiserverKubeletClient => (
            name(Some("system:masters"), "kube-apiserver-kubelet-client"),
            vec![],
            vec![],
            vec![ClientAuth],
        ),
        Leaf::FrontProxyClient => (
            name(None, "front-proxy-client"),
            vec![],
            vec![],
            vec![ClientAuth],
        ),
    };

    let mut sans = Vec::new();
    for d in dns {
        let d = Ia5String::try_from(d).map_err(|source| PkiError::Generate {
            name: cert_name.to_string(),
            source,
        })?;
        sans.push(SanType::DnsName(d));
    }
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    let mut unique = Vec::new();
    for s in sans {
        if !unique.contains(&s) {
            unique.push(s);
        }
    }

    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.subject_alt_names = unique;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = ekus;
    p.use_authority_key_identifier_extension = true;
    p.not_before = inputs.now - BACKDATE;
    p.not_after = inputs.now + LEAF_VALIDITY;
    p.serial_number = Some(random_serial());
    Ok(p)
}

// ---------------------------------------------------------------------------
// Files

/// The files node `node` writes. Control-plane nodes get everything in
/// kubeadm's layout, including the CA private keys; other nodes get only the
/// CA certificates (ca.crt, etcd/ca.crt, front-proxy-ca.crt). Errors, naming
/// every missing item, if something needed is not issued yet.
pub fn files_for_node(
    items: &BTreeMap<String, String>,
    node: NodeId,
    control_plane: bool,
) -> Result<Vec<PkiFile>, PkiError> {
    // (item, path under PKI_DIR)
    let mut wanted: Vec<(String, String)> = Vec::new();
    if control_plane {
        for item in shared_items() {
            let file = item.strip_prefix("pki/").expect("pki/ prefix").to_string();
            wanted.push((item, file));
        }
        let prefix = node_prefix(node);
        for item in node_items(node) {
            let file = item.strip_prefix(&prefix).expect("node prefix").to_string();
            wanted.push((item, file));
        }
    } else {
        for ca in Ca::ALL {
            wanted.push((ca.cert_item(), format!("{}.crt", ca.file())));
        }
    }

    let missing: Vec<String> = wanted
        .iter()
        .filter(|(item, _)| !items.contains_key(item))
        .map(|(item, _)| item.clone())
        .collect();
    if !missing.is_empty() {
        return Err(PkiError::Missing { node, missing });
    }
    Ok(wanted
        .into_iter()
        .map(|(item, file)| PkiFile {
            mode: if file.ends_with(".key") { 0o600 } else { 0o644 },
            path: format!("{PKI_DIR}/{file}"),
            contents: items[&item].clone(),
        })
        .collect())
}

impl PkiFile {
    /// Writes the file under `root` (the host root): parents created, the
    /// contents written to a temporary file created with the final mode (a
    /// key is never readable by others, even briefly), synced, then renamed
    /// into place.
    pub fn write_under(&self, root: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = root.join(&self.path);
        let dir = path.parent().expect("PKI paths have a parent");
        std::fs::create_dir_all(dir)?;
        let mut tmp_name = path
            .file_name()
            .expect("PKI paths have a file name")
            .to_owned();
        tmp_name.push(".habuild-tmp");
        let tmp = path.with_file_name(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.mode)
            .open(&tmp)?;
        // The umask may have cleared bits of the mode; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
        f.write_all(self.contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    }
}

// ---------------------------------------------------------------------------

/// Just enough PEM and DER to compare a stored certificate's subject and
/// public key with a rebuilt issuer's.
mod der {
    pub(super) fn from_pem(pem: &str, label: &str) -> Option<Vec<u8>> {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let start = pem.find(&begin)? + begin.len();
        let stop = start + pem[start..].find(&end)?;
        base64(&pem[start..stop])
    }

    fn base64(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in s.bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' | b'\r' | b'\n' | b' ' | b'\t' => continue,
                _ => return None,
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }

    /// One DER element: its tag, its whole encoding, its contents, and the
    /// bytes after it.
    struct Tlv<'a> {
        tag: u8,
        whole: &'a [u8],
        contents: &'a [u8],
        rest: &'a [u8],
    }

    /// Splits the first element off `b`.
    fn tlv(b: &[u8]) -> Option<Tlv<'_>> {
        let tag = *b.first()?;
        let first = *b.get(1)?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let len = b
                .get(2..2 + n)?
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        Some(Tlv {
            tag,
            whole: b.get(..end)?,
            contents: b.get(header..end)?,
            rest: &b[end..],
        })
    }

    /// Splits the first element off `b` if it is a SEQUENCE.
    fn sequence(b: &[u8]) -> Option<Tlv<'_>> {
        tlv(b).filter(|t| t.tag == 0x30)
    }

    /// The encoded subject name and SubjectPublicKeyInfo of a DER certificate.
    pub(super) fn subject_and_spki(cert: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let tbs = sequence(sequence(cert)?.contents)?.contents;
        let mut rest = tbs;
        let version = tlv(rest)?;
        if version.tag == 0xa0 {
            rest = version.rest;
        }
        for _ in 0..4 {
            rest = tlv(rest)?.rest; // serial, signature algorithm, issuer, validity
        }
        let subject = sequence(rest)?;
        let spki = sequence(subject.rest)?;
        Some((subject.whole.to_vec(), spki.whole.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::process::Command;

    const CP: [u64; 3] = [
        0x1111_0000_0000_0001,
        0x2222_0000_0000_0002,
        0x3333_0000_0000_0003,
    ];
    const WORKER: u64 = 0x4444_0000_0000_0004;

    fn node(i: usize, id: NodeId) -> PkiNode {
        PkiNode {
            id,
            hostname: format!("cp{i}"),
            ip: Ipv4Addr::new(10, 0, 0, 10 + i as u8),
        }
    }

    fn inputs(nodes: Vec<PkiNode>, now: OffsetDateTime) -> PkiInputs {
        PkiInputs {
            cluster_name: "test".into(),
            vip: Ipv4Addr::new(10, 0, 0, 100),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            dns_domain: "cluster.local".into(),
            control_plane: nodes,
            now,
        }
    }

    fn three_nodes() -> PkiInputs {
        let nodes = CP
            .iter()
            .enumerate()
            .map(|(i, &id)| node(i + 1, id))
            .collect();
        inputs(nodes, OffsetDateTime::now_utc())
    }

    /// Runs openssl; (success, stdout, stderr).
    fn openssl(args: &[&str]) -> (bool, String, String) {
        let out = match Command::new("openssl").args(args).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("openssl not found: run scripts/setup")
            }
            Err(e) => panic!("running openssl: {e}"),
        };
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn openssl_ok(args: &[&str]) -> String {
        let (ok, out, err) = openssl(args);
        assert!(ok, "openssl {args:?} failed:\n{out}{err}");
        out
    }

    fn write_all(root: &Path, files: &[PkiFile]) {
        for f in files {
            f.write_under(root).unwrap();
        }
    }

    fn s(p: PathBuf) -> String {
        p.to_str().unwrap().to_string()
    }

    /// The SANs of a certificate, as openssl prints them ("DNS:x", "IP Address:y").
    fn sans(cert: &str) -> BTreeSet<String> {
        let out = openssl_ok(&["x509", "-noout", "-in", cert, "-ext", "subjectAltName"]);
        out.lines()
            .skip(1)
            .flat_map(|l| l.split(", "))
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    }

    fn ext(cert: &str, name: &str) -> String {
        openssl_ok(&["x509", "-noout", "-in", cert, "-ext", name])
    }

    fn subject(cert: &str) -> String {
        openssl_ok(&[
            "x509", "-noout", "-in", cert, "-subject", "-nameopt", "RFC2253",
        ])
        .trim()
        .to_string()
    }

    fn pubkey_of_key(key: &str) -> String {
        openssl_ok(&["pkey", "-in", key, "-pubout"])
    }

    /// What each leaf must look like: (file, CA file, subject, EKU text, verify purpose).
    const LEAVES: [(&str, &str, &str, &str, &str); 7] = [
        (
            "etcd/server",
            "etcd/ca",
            "",
            "TLS Web Server Authentication, TLS Web Client Authentication",
            "sslserver",
        ),
        (
            "etcd/peer",
            "etcd/ca",
            "",
            "TLS Web Server Authentication, TLS Web Client Authentication",
            "sslclient",
        ),
        (
            "etcd/healthcheck-client",
            "etcd/ca",
            "subject=CN=kube-etcd-healthcheck-client",
            "TLS Web Client Authentication",
            "sslclient",
        ),
        (
            "apiserver-etcd-client",
            "etcd/ca",
            "subject=CN=kube-apiserver-etcd-client,O=system:masters",
            "TLS Web Client Authentication",
            "sslclient",
        ),
        (
            "apiserver",
            "ca",
            "subject=CN=kube-apiserver",
            "TLS Web Server Authentication",
            "sslserver",
        ),
        (
            "apiserver-kubelet-client",
            "ca",
            "subject=CN=kube-apiserver-kubelet-client,O=system:masters",
            "TLS Web Client Authentication",
            "sslclient",
        ),
        (
            "front-proxy-client",
            "front-proxy-ca",
            "subject=CN=front-proxy-client",
            "TLS Web Client Authentication",
            "sslclient",
        ),
    ];

    /// Verifies every leaf of a control-plane node whose files are under `root`.
    fn check_node(root: &Path, n: &PkiNode, serials: &mut BTreeSet<String>) {
        let pki = root.join(PKI_DIR);
        for (file, ca, subj, eku, purpose) in LEAVES {
            let cert = s(pki.join(format!("{file}.crt")));
            let key = s(pki.join(format!("{file}.key")));
            let ca = s(pki.join(format!("{ca}.crt")));
            let out = openssl_ok(&["verify", "-purpose", purpose, "-CAfile", &ca, &cert]);
            assert_eq!(out.trim(), format!("{cert}: OK"));
            // Not against the other CAs.
            for other in ["ca", "etcd/ca", "front-proxy-ca"] {
                let other = s(pki.join(format!("{other}.crt")));
                if other != ca {
                    let (ok, ..) = openssl(&["verify", "-CAfile", &other, &cert]);
                    assert!(!ok, "{cert} verified against {other}");
                }
            }
            let expected_subject = if subj.is_empty() {
                format!("subject=CN={}", n.hostname)
            } else {
                subj.to_string()
            };
            assert_eq!(subject(&cert), expected_subject, "{cert}");
            let eku_out = ext(&cert, "extendedKeyUsage");
            assert_eq!(
                eku_out.lines().nth(1).map(str::trim),
                Some(eku),
                "{cert}: {eku_out}"
            );
            let bc = ext(&cert, "basicConstraints");
            assert!(bc.contains("CA:FALSE"), "{cert}: {bc}");
            // Valid now, expired in a year and a day.
            openssl_ok(&["x509", "-noout", "-in", &cert, "-checkend", "0"]);
            let (ok, ..) = openssl(&[
                "x509",
                "-noout",
                "-in",
                &cert,
                "-checkend",
                &(366 * 86400).to_string(),
            ]);
            assert!(!ok, "{cert} is valid for more than a year");
            // The key is the certificate's.
            let cert_pub = openssl_ok(&["x509", "-noout", "-in", &cert, "-pubkey"]);
            assert_eq!(cert_pub, pubkey_of_key(&key), "{cert} vs {key}");
            let serial = openssl_ok(&["x509", "-noout", "-in", &cert, "-serial"]);
            assert!(serials.insert(serial.clone()), "serial {serial} repeated");
        }

        let ip = format!("IP Address:{}", n.ip);
        let host = format!("DNS:{}", n.hostname);
        let vip = "IP Address:10.0.0.100".to_string();
        let set = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        let mut etcd = set(&[
            "DNS:localhost",
            "IP Address:127.0.0.1",
            "IP Address:0:0:0:0:0:0:0:1",
        ]);
        etcd.extend([ip.clone(), host.clone()]);
        assert_eq!(sans(&s(pki.join("etcd/peer.crt"))), etcd);
        etcd.insert(vip.clone());
        assert_eq!(sans(&s(pki.join("etcd/server.crt"))), etcd);
        let mut api = set(&[
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
            "IP Address:10.96.0.1",
        ]);
        api.extend([ip, host, vip]);
        assert_eq!(sans(&s(pki.join("apiserver.crt"))), api);
        for client in [
            "apiserver-etcd-client",
            "front-proxy-client",
            "etcd/healthcheck-client",
        ] {
            let out = ext(&s(pki.join(format!("{client}.crt"))), "subjectAltName");
            assert!(out.trim().is_empty(), "{client} has SANs: {out}");
        }
    }

    fn check_cas(pki: &Path) {
        for (file, cn) in [
            ("ca", "kubernetes"),
            ("etcd/ca", "etcd-ca"),
            ("front-proxy-ca", "front-proxy-ca"),
        ] {
            let cert = s(pki.join(format!("{file}.crt")));
            assert_eq!(subject(&cert), format!("subject=CN={cn}"));
            let bc = ext(&cert, "basicConstraints");
            assert!(bc.contains("CA:TRUE"), "{cert}: {bc}");
            let ku = ext(&cert, "keyUsage");
            for u in ["Digital Signature", "Key Encipherment", "Certificate Sign"] {
                assert!(ku.contains(u), "{cert}: {ku}");
            }
            // Self-signed, valid for 9 years and not for 11.
            openssl_ok(&["verify", "-CAfile", &cert, &cert]);
            openssl_ok(&[
                "x509",
                "-noout",
                "-in",
                &cert,
                "-checkend",
                &(9 * 365 * 86400).to_string(),
            ]);
            let (ok, ..) = openssl(&[
                "x509",
                "-noout",
                "-in",
                &cert,
                "-checkend",
                &(11 * 365 * 86400).to_string(),
            ]);
            assert!(!ok, "{cert} valid for more than 10 years");
            let key = s(pki.join(format!("{file}.key")));
            let cert_pub = openssl_ok(&["x509", "-noout", "-in", &cert, "-pubkey"]);
            assert_eq!(cert_pub, pubkey_of_key(&key), "{cert} vs {key}");
        }
    }

    fn union(
        a: &BTreeMap<String, String>,
        b: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut u = a.clone();
        for (k, v) in b {
            assert!(u.insert(k.clone(), v.clone()).is_none(), "{k} issued twice");
        }
        u
    }

    #[test]
    fn three_control_plane_nodes_verify_with_openssl() {
        let inputs = three_nodes();
        let items = issue(&BTreeMap::new(), &inputs).unwrap();
        let mut expected: BTreeSet<String> = shared_items().into_iter().collect();
        for id in CP {
            expected.extend(node_items(id));
        }
        assert_eq!(items.keys().cloned().collect::<BTreeSet<_>>(), expected);
        assert_eq!(items.len(), 8 + 3 * 14);

        let tmp = tempfile::tempdir().unwrap();
        let mut serials = BTreeSet::new();
        for n in &inputs.control_plane {
            let root = tmp.path().join(&n.hostname);
            let files = files_for_node(&items, n.id, true).unwrap();
            assert_eq!(files.len(), 22);
            write_all(&root, &files);
            check_node(&root, n, &mut serials);
            check_cas(&root.join(PKI_DIR));

            // Modes, in the list and on disk; the kubeadm layout.
            use std::os::unix::fs::PermissionsExt;
            let mut paths = BTreeSet::new();
            for f in &files {
                let private = f.path.ends_with(".key");
                assert_eq!(f.mode, if private { 0o600 } else { 0o644 }, "{}", f.path);
                assert_eq!(
                    private,
                    f.contents.contains("-----BEGIN PRIVATE KEY-----"),
                    "{}",
                    f.path
                );
                let meta = std::fs::metadata(root.join(&f.path)).unwrap();
                assert_eq!(meta.permissions().mode() & 0o7777, f.mode, "{}", f.path);
                paths.insert(
                    f.path
                        .strip_prefix("etc/kubernetes/pki/")
                        .unwrap()
                        .to_string(),
                );
            }
            let layout: BTreeSet<String> = [
                "ca.crt",
                "ca.key",
                "sa.key",
                "sa.pub",
                "front-proxy-ca.crt",
                "front-proxy-ca.key",
                "front-proxy-client.crt",
                "front-proxy-client.key",
                "apiserver.crt",
                "apiserver.key",
                "apiserver-kubelet-client.crt",
                "apiserver-kubelet-client.key",
                "apiserver-etcd-client.crt",
                "apiserver-etcd-client.key",
                "etcd/ca.crt",
                "etcd/ca.key",
                "etcd/server.crt",
                "etcd/server.key",
                "etcd/peer.crt",
                "etcd/peer.key",
                "etcd/healthcheck-client.crt",
                "etcd/healthcheck-client.key",
            ]
            .iter()
            .map(|x| x.to_string())
            .collect();
            assert_eq!(paths, layout);
        }
        // The CA certificates' serials are random too.
        for file in ["ca.crt", "etcd/ca.crt", "front-proxy-ca.crt"] {
            let cert = s(tmp.path().join("cp1").join(PKI_DIR).join(file));
            assert!(serials.insert(openssl_ok(&["x509", "-noout", "-in", &cert, "-serial"])));
        }
    }

    #[test]
    fn service_account_key_pair_matches() {
        let items = issue(&BTreeMap::new(), &three_nodes()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        write_all(tmp.path(), &files_for_node(&items, CP[0], true).unwrap());
        let pki = tmp.path().join(PKI_DIR);
        let key = s(pki.join("sa.key"));
        assert!(items["pki/sa.key"].starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(items["pki/sa.pub"].starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(pubkey_of_key(&key), items["pki/sa.pub"]);
        let text = openssl_ok(&["pkey", "-in", &key, "-noout", "-text"]);
        assert!(text.contains("prime256v1"), "{text}");
        openssl_ok(&["pkey", "-pubin", "-in", &s(pki.join("sa.pub")), "-noout"]);
    }

    #[test]
    fn worker_gets_only_ca_certificates() {
        let items = issue(&BTreeMap::new(), &three_nodes()).unwrap();
        let files = files_for_node(&items, WORKER, false).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "etc/kubernetes/pki/ca.crt",
                "etc/kubernetes/pki/etcd/ca.crt",
                "etc/kubernetes/pki/front-proxy-ca.crt"
            ]
        );
        for f in &files {
            assert_eq!(f.mode, 0o644);
            assert!(f.contents.starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(!f.contents.contains("PRIVATE KEY"));
        }
        // A control-plane node asked as a worker gets the same.
        assert_eq!(files_for_node(&items, CP[0], false).unwrap(), files);
        // The CA key files exist only for control_plane = true.
        let cp = files_for_node(&items, CP[0], true).unwrap();
        for key in ["ca.key", "etcd/ca.key", "front-proxy-ca.key"] {
            let path = format!("{PKI_DIR}/{key}");
            assert!(cp.iter().any(|f| f.path == path && f.mode == 0o600));
            assert!(!files.iter().any(|f| f.path == path));
        }
    }

    #[test]
    fn second_issue_adds_nothing() {
        let inputs = three_nodes();
        let items = issue(&BTreeMap::new(), &inputs).unwrap();
        assert!(issue(&items, &inputs).unwrap().is_empty());
        // Nor does a smaller control plane (a node left): nothing is removed either.
        let mut fewer = inputs.clone();
        fewer.control_plane.truncate(1);
        assert!(issue(&items, &fewer).unwrap().is_empty());
    }

    #[test]
    fn fourth_node_is_signed_by_the_existing_cas() {
        let mut inputs = three_nodes();
        let items = issue(&BTreeMap::new(), &inputs).unwrap();
        let n4 = node(4, WORKER);
        inputs.control_plane.push(n4.clone());
        let added = issue(&items, &inputs).unwrap();
        assert_eq!(
            added.keys().cloned().collect::<Vec<_>>(),
            node_items(n4.id)
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        let all = union(&items, &added);
        let tmp = tempfile::tempdir().unwrap();
        write_all(tmp.path(), &files_for_node(&all, n4.id, true).unwrap());
        // The CA files written are the ones issued first.
        let pki = tmp.path().join(PKI_DIR);
        assert_eq!(
            std::fs::read_to_string(pki.join("etcd/ca.crt")).unwrap(),
            items["pki/etcd/ca.crt"]
        );
        check_node(tmp.path(), &n4, &mut BTreeSet::new());
        assert!(issue(&all, &inputs).unwrap().is_empty());
    }

    #[test]
    fn missing_items_are_named() {
        let inputs = three_nodes();
        let mut items = issue(&BTreeMap::new(), &inputs).unwrap();
        items.remove("pki/etcd/ca.key");
        let apiserver = format!("{}apiserver.crt", node_prefix(CP[1]));
        items.remove(&apiserver);
        let err = files_for_node(&items, CP[1], true).unwrap_err();
        assert!(matches!(&err, PkiError::Missing { node, missing }
            if *node == CP[1] && missing == &["pki/etcd/ca.key".to_string(), apiserver.clone()]));
        assert_eq!(
            err.to_string(),
            format!(
                "node {:016x}: PKI items not issued yet: pki/etcd/ca.key, {apiserver}",
                CP[1]
            )
        );
        // A worker needs no keys.
        assert_eq!(files_for_node(&items, CP[1], false).unwrap().len(), 3);
        items.remove("pki/front-proxy-ca.crt");
        let err = files_for_node(&items, WORKER, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pki/front-proxy-ca.crt"), "{err}");
        // A node that is not (yet) in the control plane has no leaves.
        let err = files_for_node(&issue(&BTreeMap::new(), &inputs).unwrap(), WORKER, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("pki/node/{WORKER:016x}/etcd/server.crt")),
            "{err}"
        );
        // Nothing issued at all.
        let err = files_for_node(&BTreeMap::new(), WORKER, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pki/ca.crt, pki/etcd/ca.crt, pki/front-proxy-ca.crt"),
            "{err}"
        );
    }

    #[test]
    fn validity_follows_now() {
        // 2030-01-02 03:04:05 UTC.
        let now = time::Date::from_calendar_date(2030, time::Month::January, 2)
            .unwrap()
            .with_hms(3, 4, 5)
            .unwrap()
            .assume_utc();
        let items = issue(&BTreeMap::new(), &inputs(vec![node(1, CP[0])], now)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        write_all(tmp.path(), &files_for_node(&items, CP[0], true).unwrap());
        let pki = tmp.path().join(PKI_DIR);
        let dates = |f: &str| {
            openssl_ok(&[
                "x509",
                "-noout",
                "-in",
                &s(pki.join(f)),
                "-startdate",
                "-enddate",
            ])
        };
        assert_eq!(
            dates("apiserver.crt"),
            "notBefore=Jan  2 02:59:05 2030 GMT\nnotAfter=Jan  2 03:04:05 2031 GMT\n"
        );
        assert_eq!(
            dates("etcd/ca.crt"),
            "notBefore=Jan  2 02:59:05 2030 GMT\nnotAfter=Dec 31 03:04:05 2039 GMT\n"
        );
        // Not yet valid today; valid at `now`.
        let cert = s(pki.join("apiserver.crt"));
        let ca = s(pki.join("ca.crt"));
        let (ok, ..) = openssl(&["verify", "-CAfile", &ca, &cert]);
        assert!(!ok);
        let at = now.unix_timestamp().to_string();
        openssl_ok(&["verify", "-attime", &at, "-CAfile", &ca, &cert]);
    }

    #[test]
    fn partial_state_is_completed_or_refused() {
        let inputs = three_nodes();
        let items = issue(&BTreeMap::new(), &inputs).unwrap();

        // Keys first: every prefix of the write order is completed by issue().
        let order = in_write_order(&items);
        let keys = order
            .iter()
            .take_while(|(n, _)| n.ends_with(".key"))
            .count();
        assert_eq!(keys, 4 + 3 * 7);
        assert!(order[keys..].iter().all(|(n, _)| !n.ends_with(".key")));
        for cut in [1, 4, 10, 24, 25, 30, order.len() - 1] {
            let stored: BTreeMap<String, String> = order[..cut]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let added = issue(&stored, &inputs).unwrap();
            for (n, v) in &added {
                assert!(!stored.contains_key(n), "{n} re-issued");
                if n.ends_with(".key") {
                    assert_ne!(v, &items[n]);
                }
            }
            let all = union(&stored, &added);
            assert_eq!(all.len(), items.len(), "cut at {cut}");
        }

        // The CA key without its certificate: the certificate is re-created
        // for the same key and name, so existing leaves still verify.
        let mut stored = items.clone();
        stored.remove("pki/etcd/ca.crt");
        let added = issue(&stored, &inputs).unwrap();
        assert_eq!(added.keys().collect::<Vec<_>>(), ["pki/etcd/ca.crt"]);
        let all = union(&stored, &added);
        let tmp = tempfile::tempdir().unwrap();
        write_all(tmp.path(), &files_for_node(&all, CP[0], true).unwrap());
        check_node(tmp.path(), &inputs.control_plane[0], &mut BTreeSet::new());

        // A certificate without its key is refused, naming both.
        for (cert, key) in [
            ("pki/ca.crt".to_string(), "pki/ca.key".to_string()),
            ("pki/sa.pub".to_string(), "pki/sa.key".to_string()),
            (
                format!("{}etcd/peer.crt", node_prefix(CP[2])),
                format!("{}etcd/peer.key", node_prefix(CP[2])),
            ),
        ] {
            let mut stored = items.clone();
            stored.remove(&key);
            let err = issue(&stored, &inputs).unwrap_err();
            assert!(
                matches!(&err, PkiError::KeyMissing { cert: c, key: k } if *c == cert && *k == key),
                "{err}"
            );
        }

        // A CA certificate that is not the key's.
        let mut stored = items.clone();
        stored.insert("pki/etcd/ca.crt".into(), items["pki/ca.crt"].clone());
        let err = issue(&stored, &inputs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pki/etcd/ca.crt does not match pki/etcd/ca.key (different key or subject name); \
             the CA in the state is not one habuild can sign with"
        );
        stored.insert("pki/etcd/ca.crt".into(), "garbage".into());
        assert!(matches!(
            issue(&stored, &inputs),
            Err(PkiError::BadCert { .. })
        ));

        // Leaves whose CA is gone: no new CA.
        let mut stored = items.clone();
        stored.remove("pki/front-proxy-ca.crt");
        stored.remove("pki/front-proxy-ca.key");
        let err = issue(&stored, &inputs).unwrap_err().to_string();
        assert!(err.contains("front-proxy-client.crt is in the state but its CA key pki/front-proxy-ca.key is not"), "{err}");
    }

    #[test]
    fn bad_inputs() {
        let mut i = three_nodes();
        i.service_cidr = "10.96.0.0/31".parse().unwrap();
        assert_eq!(
            issue(&BTreeMap::new(), &i).unwrap_err().to_string(),
            "service CIDR 10.96.0.0/31 has no host address for the kubernetes service"
        );
        let mut i = three_nodes();
        i.control_plane[1].hostname.clear();
        assert!(
            matches!(issue(&BTreeMap::new(), &i), Err(PkiError::EmptyHostname { id }) if id == CP[1])
        );
        let mut i = three_nodes();
        i.control_plane[0].hostname = "cp\u{e9}".into();
        let err = issue(&BTreeMap::new(), &i).unwrap_err().to_string();
        assert!(
            err.starts_with("generating pki/node/1111000000000001/etcd/server.crt"),
            "{err}"
        );
        assert_eq!(
            kubernetes_service_ip(&"10.96.0.0/12".parse().unwrap()),
            Some(Ipv4Addr::new(10, 96, 0, 1))
        );
        assert_eq!(
            kubernetes_service_ip(&"10.100.7.9/16".parse().unwrap()),
            Some(Ipv4Addr::new(10, 100, 0, 1))
        );
    }
}
