//! kubeadm's file layout: which items a node writes, where under
//! `etc/kubernetes/pki`, and with which mode (private keys 0600,
//! certificates and `sa.pub` 0644). The `pki` step
//! ([`crate::steps::pki`]) hands these files to the host's file writer.

use std::collections::BTreeMap;

use super::policy::{node_items, node_prefix, shared_items, Ca};
use super::PkiError;
use crate::state::NodeId;

/// Where the files go, relative to the host root (kubeadm's `certificatesDir`).
pub const PKI_DIR: &str = "etc/kubernetes/pki";

/// A file for a node to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFile {
    /// Relative to the host root, e.g. "etc/kubernetes/pki/etcd/ca.crt".
    pub path: String,
    pub mode: u32,
    pub contents: String,
}

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
