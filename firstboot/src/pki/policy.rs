//! What the cluster PKI contains, as plain data: the CAs, the certificates
//! each control-plane node gets, their subjects, SANs, extended key usages
//! and validity, and the names of the items in the replicated state. Nothing
//! here signs or encodes anything (that is [`super::issue`](mod@super::issue)); this is the
//! part to read against kubeadm's list
//! (<https://kubernetes.io/docs/setup/best-practices/certificates/>).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use time::Duration;

use super::{PkiInputs, PkiNode};
use crate::cluster::Ipv4Cidr;
use crate::state::NodeId;

/// CAs are valid 10 years.
pub(super) const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaves are valid 1 year.
pub(super) const LEAF_VALIDITY: Duration = Duration::days(365);
/// Certificates start this long before `now`, for clock skew between nodes.
pub(super) const BACKDATE: Duration = Duration::minutes(5);

/// The three CAs of a kubeadm cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ca {
    Cluster,
    Etcd,
    FrontProxy,
}

impl Ca {
    pub(super) const ALL: [Ca; 3] = [Ca::Cluster, Ca::Etcd, Ca::FrontProxy];

    /// The CA's subject CN (its whole subject name).
    pub(super) fn common_name(self) -> &'static str {
        match self {
            Ca::Cluster => "kubernetes",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }

    /// The file name under `pki/`, without extension.
    pub(super) fn file(self) -> &'static str {
        match self {
            Ca::Cluster => "ca",
            Ca::Etcd => "etcd/ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }

    pub(super) fn cert_item(self) -> String {
        format!("pki/{}.crt", self.file())
    }

    pub(super) fn key_item(self) -> String {
        format!("pki/{}.key", self.file())
    }
}

/// The leaf certificates of each control-plane node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leaf {
    EtcdServer,
    EtcdPeer,
    EtcdHealthcheckClient,
    ApiserverEtcdClient,
    Apiserver,
    ApiserverKubeletClient,
    FrontProxyClient,
}

impl Leaf {
    pub(super) const ALL: [Leaf; 7] = [
        Leaf::EtcdServer,
        Leaf::EtcdPeer,
        Leaf::EtcdHealthcheckClient,
        Leaf::ApiserverEtcdClient,
        Leaf::Apiserver,
        Leaf::ApiserverKubeletClient,
        Leaf::FrontProxyClient,
    ];

    /// The file name under `pki/`, without extension.
    pub(super) fn file(self) -> &'static str {
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

    /// The CA that signs it.
    pub(super) fn ca(self) -> Ca {
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

/// Which TLS role a leaf may take (its extended key usages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Usage {
    Server,
    Client,
}

/// What one leaf certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LeafProfile {
    /// The subject's O (kubeadm's `system:masters` for admin clients).
    pub organization: Option<&'static str>,
    pub common_name: String,
    /// DNS SANs, then IP SANs; no duplicates.
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub usages: Vec<Usage>,
}

/// The subject and SANs `kubeadm` checks when it reuses a certificate (the
/// hostname must be the node name kubeadm is given): for `etcd/server` and
/// `etcd/peer` the hostname, `localhost`, the node IP, `127.0.0.1` and `::1`
/// (plus the VIP for `etcd/server`); for `apiserver` the hostname,
/// `kubernetes`, `kubernetes.default`, `kubernetes.default.svc`,
/// `kubernetes.default.svc.<dns domain>`, the node IP, the VIP and the
/// kubernetes service IP.
pub(super) fn leaf_profile(
    leaf: Leaf,
    node: &PkiNode,
    inputs: &PkiInputs,
    service_ip: Ipv4Addr,
) -> LeafProfile {
    use Usage::{Client, Server};
    let host = node.hostname.clone();
    let node_ip = IpAddr::V4(node.ip);
    let vip = IpAddr::V4(inputs.vip);
    let loopback4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let s = |x: &str| x.to_string();

    let (organization, common_name, dns, ips, usages) = match leaf {
        Leaf::EtcdServer => (
            None,
            host.clone(),
            vec![host, s("localhost")],
            vec![node_ip, loopback4, loopback6, vip],
            vec![Server, Client],
        ),
        Leaf::EtcdPeer => (
            None,
            host.clone(),
            vec![host, s("localhost")],
            vec![node_ip, loopback4, loopback6],
            vec![Server, Client],
        ),
        Leaf::EtcdHealthcheckClient => (
            None,
            s("kube-etcd-healthcheck-client"),
            vec![],
            vec![],
            vec![Client],
        ),
        Leaf::ApiserverEtcdClient => (
            Some("system:masters"),
            s("kube-apiserver-etcd-client"),
            vec![],
            vec![],
            vec![Client],
        ),
        Leaf::Apiserver => (
            None,
            s("kube-apiserver"),
            vec![
                host,
                s("kubernetes"),
                s("kubernetes.default"),
                s("kubernetes.default.svc"),
                format!("kubernetes.default.svc.{}", inputs.dns_domain),
            ],
            vec![node_ip, vip, IpAddr::V4(service_ip)],
            vec![Server],
        ),
        Leaf::ApiserverKubeletClient => (
            Some("system:masters"),
            s("kube-apiserver-kubelet-client"),
            vec![],
            vec![],
            vec![Client],
        ),
        Leaf::FrontProxyClient => (None, s("front-proxy-client"), vec![], vec![], vec![Client]),
    };
    LeafProfile {
        organization,
        common_name,
        dns: dedup(dns),
        ips: dedup(ips),
        usages,
    }
}

fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
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

/// Whether item `name` is a leaf certificate signed by `ca` (of any node,
/// or a Kubernetes client certificate, all signed by the cluster CA).
pub(super) fn is_leaf_of(name: &str, ca: Ca) -> bool {
    let node_leaf = name.strip_prefix("pki/node/").is_some_and(|rest| {
        Leaf::ALL
            .iter()
            .any(|l| l.ca() == ca && rest.ends_with(&format!("/{}.crt", l.file())))
    });
    let kube_client = ca == Ca::Cluster && name.starts_with("kube/") && name.ends_with(".crt");
    node_leaf || kube_client
}

/// The Kubernetes client certificates issued once for the whole cluster
/// (signed by the cluster CA, client auth only), as kubeadm makes them for
/// `admin.conf`, `controller-manager.conf`, `scheduler.conf` and
/// kube-proxy's kubeconfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KubeClient {
    Admin,
    ControllerManager,
    Scheduler,
    KubeProxy,
}

impl KubeClient {
    pub(super) const ALL: [KubeClient; 4] = [
        KubeClient::Admin,
        KubeClient::ControllerManager,
        KubeClient::Scheduler,
        KubeClient::KubeProxy,
    ];

    /// The item stem (`<stem>.crt`, `<stem>.key`), see [`crate::kube`].
    pub(super) fn stem(self) -> &'static str {
        match self {
            KubeClient::Admin => crate::kube::ADMIN_ITEM,
            KubeClient::ControllerManager => crate::kube::CONTROLLER_MANAGER_ITEM,
            KubeClient::Scheduler => crate::kube::SCHEDULER_ITEM,
            KubeClient::KubeProxy => crate::kube::KUBE_PROXY_ITEM,
        }
    }

    pub(super) fn profile(self) -> LeafProfile {
        let (organization, cn) = match self {
            KubeClient::Admin => (Some("system:masters"), "kubernetes-admin"),
            KubeClient::ControllerManager => (None, "system:kube-controller-manager"),
            KubeClient::Scheduler => (None, "system:kube-scheduler"),
            KubeClient::KubeProxy => (None, "system:kube-proxy"),
        };
        client_profile(organization, cn.to_string())
    }
}

/// Node `node`'s kubelet client certificate: `CN=system:node:<hostname>`,
/// `O=system:nodes` (what the Node authorizer and NodeRestriction expect).
pub(super) fn kubelet_profile(node: &PkiNode) -> LeafProfile {
    client_profile(
        Some("system:nodes"),
        format!("system:node:{}", node.hostname),
    )
}

fn client_profile(organization: Option<&'static str>, common_name: String) -> LeafProfile {
    LeafProfile {
        organization,
        common_name,
        dns: vec![],
        ips: vec![],
        usages: vec![Usage::Client],
    }
}

/// The `kubernetes` service IP: the first host address of the service CIDR
/// (10.96.0.1 for 10.96.0.0/12).
pub fn kubernetes_service_ip(cidr: &Ipv4Cidr) -> Option<Ipv4Addr> {
    (cidr.prefix <= 30).then(|| Ipv4Addr::from(cidr.network() + 1))
}
