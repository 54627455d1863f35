//! Issuing with rcgen: keys, the CAs, the service-account key pair and each
//! control-plane node's leaves, turning [`super::policy`] into certificates.
//!
//! A CA already in the state is loaded back as an issuer from its PEM
//! certificate (rcgen's `CertificateParams::from_ca_cert_der`, parsed by
//! `x509-parser`; the PEM armour by the `pem` crate) and its stored key,
//! after checking that the two belong together: the certificate's public key
//! is the key's, its subject is the CA's name, and its self-signature
//! verifies. Leaves are then signed with that subject and that subject key
//! identifier.

use std::collections::BTreeMap;

use rand::RngCore;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use super::policy::{
    is_leaf_of, kubelet_profile, kubernetes_service_ip, leaf_profile, node_prefix, Ca, KubeClient,
    Leaf, LeafProfile, Usage, BACKDATE, CA_VALIDITY, LEAF_VALIDITY,
};
use super::{PkiError, PkiInputs};

/// PEM items by name. `existing` are the items already in the state
/// (decrypted). Returns ONLY the items to add: CAs and keys that are
/// missing, per-node items for control-plane nodes that lack them, the
/// Kubernetes client certificates (`kube/*`, see [`crate::kube`]) and a
/// kubelet client certificate for every member that lacks one. Never
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
            let stem = format!("{prefix}{}", leaf.file());
            let profile = leaf_profile(leaf, node, inputs, service_ip);
            issue_leaf(
                &stem,
                &profile,
                issuer(leaf.ca()),
                existing,
                &mut new,
                inputs.now,
            )?;
        }
    }

    // Kubernetes client certificates: once for the cluster, and a kubelet
    // certificate for every member (workers too).
    for client in KubeClient::ALL {
        let profile = client.profile();
        issue_leaf(
            client.stem(),
            &profile,
            issuer(Ca::Cluster),
            existing,
            &mut new,
            inputs.now,
        )?;
    }
    // A member without a name yet gets its certificate once it has one.
    for node in inputs.members.iter().filter(|n| !n.hostname.is_empty()) {
        let profile = kubelet_profile(node);
        issue_leaf(
            &crate::kube::kubelet_item(node.id),
            &profile,
            issuer(Ca::Cluster),
            existing,
            &mut new,
            inputs.now,
        )?;
    }
    Ok(new)
}

/// Issues `<stem>.crt` (and its key when missing) into `new` unless the
/// certificate exists; a stored key without its certificate gets a
/// certificate for that key, a stored certificate without its key is an error.
fn issue_leaf(
    stem: &str,
    profile: &LeafProfile,
    (ca_cert, ca_key): &(Certificate, KeyPair),
    existing: &BTreeMap<String, String>,
    new: &mut BTreeMap<String, String>,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let cert_name = format!("{stem}.crt");
    let key_name = format!("{stem}.key");
    if existing.contains_key(&cert_name) || new.contains_key(&cert_name) {
        if !existing.contains_key(&key_name) && !new.contains_key(&key_name) {
            return Err(PkiError::KeyMissing {
                cert: cert_name,
                key: key_name,
            });
        }
        return Ok(());
    }
    let key = match existing.get(&key_name) {
        Some(pem) => parse_key(&key_name, pem)?,
        None => {
            let key = generate_key(&key_name)?;
            new.insert(key_name.clone(), key.serialize_pem());
            key
        }
    };
    let params = leaf_params(profile, now, &cert_name)?;
    let cert = params
        .signed_by(&key, ca_cert, ca_key)
        .map_err(|source| PkiError::Generate {
            name: cert_name.clone(),
            source,
        })?;
    new.insert(cert_name, cert.pem());
    Ok(())
}

/// The issuer for `ca`: from the state if its key is there (the stored
/// certificate checked against the key), else a new CA added to `new`.
fn load_or_create_ca(
    ca: Ca,
    existing: &BTreeMap<String, String>,
    new: &mut BTreeMap<String, String>,
    now: OffsetDateTime,
) -> Result<(Certificate, KeyPair), PkiError> {
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
            if let Some(leaf) = existing.keys().find(|n| is_leaf_of(n, ca)) {
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
    let params = match existing.get(&cert_name) {
        Some(stored) => stored_ca_params(ca, &cert_name, &key_name, stored, &key)?,
        None => ca_params(ca, now),
    };
    // For a stored CA this re-signs its parameters only to hold them as an
    // rcgen issuer (subject, key identifier, key usages); the stored PEM
    // stays the CA certificate.
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            name: cert_name.clone(),
            source,
        })?;
    if !existing.contains_key(&cert_name) {
        new.insert(cert_name, cert.pem());
    }
    Ok((cert, key))
}

/// The parameters of the CA certificate `pem_text` stored as `cert_name`,
/// checked to be the CA `ca` for `key`: one PEM certificate, whose public
/// key is `key`'s, whose subject is the CA's name and whose self-signature
/// verifies.
fn stored_ca_params(
    ca: Ca,
    cert_name: &str,
    key_name: &str,
    pem_text: &str,
    key: &KeyPair,
) -> Result<CertificateParams, PkiError> {
    let bad = |reason: String| PkiError::BadCert {
        name: cert_name.to_string(),
        reason,
    };
    let block = pem::parse(pem_text).map_err(|e| bad(format!("not PEM: {e}")))?;
    if block.tag() != "CERTIFICATE" {
        return Err(bad(format!(
            "a PEM {} block, not a CERTIFICATE",
            block.tag()
        )));
    }
    let der = block.contents();
    let (rest, x509) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate".into()));
    }
    let params = CertificateParams::from_ca_cert_der(&der.into())
        .map_err(|e| bad(format!("unreadable for rcgen: {e}")))?;
    let same_key = x509.public_key().raw == key.public_key_der().as_slice();
    if !same_key || params.distinguished_name != ca_name(ca) {
        return Err(PkiError::CaMismatch {
            cert: cert_name.to_string(),
            key: key_name.to_string(),
        });
    }
    x509.verify_signature(None).map_err(|e| {
        bad(format!(
            "its self-signature does not verify with its key ({e})"
        ))
    })?;
    Ok(params)
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

fn ca_name(ca: Ca) -> DistinguishedName {
    name(None, ca.common_name())
}

/// A new CA's parameters.
fn ca_params(ca: Ca, now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = ca_name(ca);
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

/// A leaf's parameters: ECDSA keys need digitalSignature only (kubeadm adds
/// keyEncipherment for RSA keys only); random serial; authority key
/// identifier.
fn leaf_params(
    profile: &LeafProfile,
    now: OffsetDateTime,
    cert_name: &str,
) -> Result<CertificateParams, PkiError> {
    let mut sans = Vec::new();
    for d in &profile.dns {
        let d = Ia5String::try_from(d.as_str()).map_err(|source| PkiError::Generate {
            name: cert_name.to_string(),
            source,
        })?;
        sans.push(SanType::DnsName(d));
    }
    sans.extend(profile.ips.iter().copied().map(SanType::IpAddress));

    let mut p = CertificateParams::default();
    p.distinguished_name = name(profile.organization, &profile.common_name);
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = profile
        .usages
        .iter()
        .map(|u| match u {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        })
        .collect();
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - BACKDATE;
    p.not_after = now + LEAF_VALIDITY;
    p.serial_number = Some(random_serial());
    Ok(p)
}
