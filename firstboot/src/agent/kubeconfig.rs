//! The answer to [`Wire::AdminKubeconfig`](crate::protocol::Wire): the
//! cluster's admin kubeconfig, rendered from the replicated state as it is
//! applied on this node. The admin certificate and key (`kube/admin.crt`,
//! `kube/admin.key`, issued once by the Raft leader) and the cluster CA
//! (`pki/ca.crt`) are decrypted with the cluster secret; the server is the
//! plan's VIP on port 6443 (haproxy in front of every apiserver), the
//! cluster is `cluster.name`, the user `kubernetes-admin`. Pure: the agent's
//! request handler ([`super::rpc::handle`]) calls [`admin_kubeconfig`] with
//! its current state.

use crate::cluster::ClusterConfig;
use crate::kube::kubeconfig::{render, Kubeconfig};
use crate::kube::ADMIN_ITEM;
use crate::protocol::{AdminKubeconfig, KubeconfigRefusal};
use crate::secretbox::SecretBox;
use crate::state::ClusterState;

/// The admin user's name (kubeadm's `admin.conf`).
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The cluster CA certificate item.
pub const CA_ITEM: &str = "pki/ca.crt";
/// The port haproxy serves the API on at the VIP.
pub const API_PORT: u16 = 6443;

/// The admin kubeconfig from `state`, or why there is none (yet).
pub fn admin_kubeconfig(
    cfg: &ClusterConfig,
    state: &ClusterState,
    sbox: &SecretBox,
) -> Result<AdminKubeconfig, KubeconfigRefusal> {
    if !cfg.kubernetes.enabled {
        return Err(KubeconfigRefusal::KubernetesDisabled);
    }
    let plan = state.plan.as_ref().ok_or(KubeconfigRefusal::NoPlan)?;
    let names = [
        format!("{ADMIN_ITEM}.crt"),
        format!("{ADMIN_ITEM}.key"),
        CA_ITEM.to_string(),
    ];
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !state.secrets.contains_key(*n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(KubeconfigRefusal::NotIssued { missing });
    }
    let mut pem = Vec::with_capacity(names.len());
    for name in &names {
        let sealed = &state.secrets[name];
        let text = sbox
            .open(name, sealed)
            .map_err(|e| KubeconfigRefusal::Unreadable {
                item: name.clone(),
                error: e.to_string(),
            })
            .and_then(|pt| {
                String::from_utf8(pt).map_err(|e| KubeconfigRefusal::Unreadable {
                    item: name.clone(),
                    error: e.to_string(),
                })
            })?;
        pem.push(text);
    }
    let server = format!("https://{}:{API_PORT}", plan.vip);
    let kubeconfig = render(&Kubeconfig {
        cluster: &cfg.cluster.name,
        server: &server,
        ca_pem: &pem[2],
        user: ADMIN_USER,
        client_cert_pem: &pem[0],
        client_key_pem: &pem[1],
    });
    Ok(AdminKubeconfig {
        kubeconfig,
        server,
        cluster: cfg.cluster.name.clone(),
        plan: plan.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Secret;
    use crate::steps::testutil;

    fn sbox(cfg: &ClusterConfig) -> SecretBox {
        SecretBox::derive(&cfg.cluster.secret)
    }

    fn put(state: &mut ClusterState, sbox: &SecretBox, name: &str, text: &str) {
        state
            .secrets
            .insert(name.into(), sbox.seal(name, text.as_bytes()));
    }

    #[test]
    fn renders_from_the_items_with_the_vip() {
        let cfg = testutil::cfg();
        let b = sbox(&cfg);
        let mut state = testutil::state();
        put(&mut state, &b, "kube/admin.crt", "ADMIN CERT");
        put(&mut state, &b, "kube/admin.key", "ADMIN KEY");
        put(&mut state, &b, "pki/ca.crt", "CLUSTER CA");
        let got = admin_kubeconfig(&cfg, &state, &b).expect("issued items render");
        assert_eq!(got.server, "https://10.77.0.250:6443");
        assert_eq!(got.cluster, "lab");
        assert_eq!(got.plan, state.plan.as_ref().unwrap().version);
        assert_eq!(
            got.kubeconfig,
            render(&Kubeconfig {
                cluster: "lab",
                server: "https://10.77.0.250:6443",
                ca_pem: "CLUSTER CA",
                user: "kubernetes-admin",
                client_cert_pem: "ADMIN CERT",
                client_key_pem: "ADMIN KEY",
            })
        );
        assert!(got
            .kubeconfig
            .contains("current-context: kubernetes-admin@lab\n"));
    }

    #[test]
    fn refuses_with_what_is_missing() {
        let cfg = testutil::cfg();
        let b = sbox(&cfg);
        assert_eq!(
            admin_kubeconfig(&cfg, &ClusterState::default(), &b),
            Err(KubeconfigRefusal::NoPlan)
        );
        let mut state = testutil::state();
        put(&mut state, &b, "pki/ca.crt", "CLUSTER CA");
        assert_eq!(
            admin_kubeconfig(&cfg, &state, &b),
            Err(KubeconfigRefusal::NotIssued {
                missing: vec!["kube/admin.crt".into(), "kube/admin.key".into()]
            })
        );
        let mut off = cfg.clone();
        off.kubernetes.enabled = false;
        assert_eq!(
            admin_kubeconfig(&off, &state, &b),
            Err(KubeconfigRefusal::KubernetesDisabled)
        );
    }

    #[test]
    fn an_item_sealed_with_another_secret_is_unreadable() {
        let cfg = testutil::cfg();
        let b = sbox(&cfg);
        let other = SecretBox::derive(&Secret([5u8; 32]));
        let mut state = testutil::state();
        put(&mut state, &b, "kube/admin.crt", "ADMIN CERT");
        put(&mut state, &other, "kube/admin.key", "FOREIGN KEY");
        put(&mut state, &b, "pki/ca.crt", "CLUSTER CA");
        match admin_kubeconfig(&cfg, &state, &b) {
            Err(KubeconfigRefusal::Unreadable { item, .. }) => assert_eq!(item, "kube/admin.key"),
            other => panic!("expected unreadable, got {other:?}"),
        }
    }
}
