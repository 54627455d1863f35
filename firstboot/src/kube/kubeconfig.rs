//! kubeconfig files as kubeadm writes them (`admin.conf`, `kubelet.conf`,
//! `controller-manager.conf`, ...): one cluster, one user with an embedded
//! client certificate and key, one context, all PEM data base64-encoded.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// What a kubeconfig names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubeconfig<'a> {
    /// The cluster's name (`cluster.name` of the site file).
    pub cluster: &'a str,
    /// `https://VIP:6443`, or a node's own apiserver.
    pub server: &'a str,
    /// The cluster CA certificate (PEM).
    pub ca_pem: &'a str,
    /// The user's name (`kubernetes-admin`, `system:node:<hostname>`, ...).
    pub user: &'a str,
    pub client_cert_pem: &'a str,
    pub client_key_pem: &'a str,
}

/// Renders the kubeconfig (YAML; stable bytes for the same inputs).
pub fn render(k: &Kubeconfig) -> String {
    let b = |s: &str| STANDARD.encode(s.as_bytes());
    let context = format!("{}@{}", k.user, k.cluster);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: {cluster}\ncontexts:\n- context:\n    cluster: {cluster}\n    user: {user}\n  name: {context}\ncurrent-context: {context}\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = b(k.ca_pem),
        server = k.server,
        cluster = yaml_str(k.cluster),
        user = yaml_str(k.user),
        context = yaml_str(&context),
        cert = b(k.client_cert_pem),
        key = b(k.client_key_pem),
    )
}

/// A YAML scalar: plain when safe, double-quoted otherwise (names with
/// `:` such as `system:node:x` are quoted).
fn yaml_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if plain {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kubeadm_shape_with_embedded_data() {
        let text = render(&Kubeconfig {
            cluster: "site",
            server: "https://10.0.0.10:6443",
            ca_pem: "CA",
            user: "system:node:node-abc",
            client_cert_pem: "CERT",
            client_key_pem: "KEY",
        });
        assert_eq!(
            text,
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://10.0.0.10:6443\n  name: site\ncontexts:\n- context:\n    cluster: site\n    user: \"system:node:node-abc\"\n  name: \"system:node:node-abc@site\"\ncurrent-context: \"system:node:node-abc@site\"\npreferences: {}\nusers:\n- name: \"system:node:node-abc\"\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n"
        );
    }
}
