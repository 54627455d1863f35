//! What every Kubernetes step shares: where kubeadm's layout puts things,
//! the names of the Kubernetes items in the replicated state, the pause
//! image's reference, kubeconfig rendering ([`kubeconfig`]), kubectl's
//! request timeouts and Kubernetes' version-skew policy ([`skew`]) (the
//! tolerance of the control plane's health probe is
//! [`crate::steps::tolerance`]).
//!
//! Design (see ARCHITECTURE.md, "Kubernetes"): the control plane
//! (kube-apiserver, kube-controller-manager, kube-scheduler) runs as systemd
//! units from the image's binaries, the kubelet and kube-proxy too, on every
//! node. The Raft leader issues every client certificate into the state
//! (the agent owns the CA), so no node depends on CSR approval; the files
//! on disk keep kubeadm's layout, so `kubeadm join` from a machine the agent
//! does not manage works against the same cluster.

pub mod kubeconfig;
pub mod skew;

use crate::state::NodeId;

/// kubeadm's directory of kubeconfigs and static-pod manifests, relative to
/// the host root.
pub const KUBE_DIR: &str = "etc/kubernetes";
/// The kubelet's directory (its `config.yaml`, `kubeadm-flags.env`).
pub const KUBELET_DIR: &str = "var/lib/kubelet";
/// Where the image carries the container images to seed into containerd's
/// `k8s.io` namespace: `*.tar` archives (OCI layout + `docker save`), and
/// `images.list`, one `<file name> <full reference>` per line.
pub const IMAGES_DIR: &str = "usr/share/habuild/images";
/// The pause (sandbox) image: the same reference in containerd's
/// `sandbox_image` (images/common/etc/containerd/config.toml) and the
/// kubelet's `--pod-infra-container-image`, or kubelet 1.20's image GC
/// deletes it.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.2";
/// Cluster DNS domain (kubeadm's default).
pub const DNS_DOMAIN: &str = "cluster.local";

/// `kubectl --request-timeout` of reads (`get`, the `/readyz` probe), in
/// seconds. Not kubectl's customary 10 s: on a one-vCPU emulated node the
/// apiserver, starved by etcd and its own start-up, takes longer than that
/// to answer a healthy get, and a probe cut short reads as "not ready".
pub const GET_TIMEOUT_SECS: u64 = 30;
/// `kubectl --request-timeout` of writes (`apply` of the bootstrap
/// manifests, `label`, `taint`), in seconds. A three-control-plane TCG run
/// had `kubectl apply` of the bootstrap manifests (fifteen objects, each a
/// write through etcd) fail at 10 s with "context cancellation while
/// reading body", then back off for up to a minute, round after round.
pub const APPLY_TIMEOUT_SECS: u64 = 60;

/// `--request-timeout=<secs>s`.
pub fn request_timeout(secs: u64) -> String {
    format!("--request-timeout={secs}s")
}

/// Client certificates the leader issues once for the whole cluster, by
/// item stem (`<stem>.crt` and `<stem>.key` in the state): the admin
/// (`O=system:masters`), the controller-manager, the scheduler and
/// kube-proxy (bound by Kubernetes' default RBAC to `system:node-proxier`).
pub const ADMIN_ITEM: &str = "kube/admin";
pub const CONTROLLER_MANAGER_ITEM: &str = "kube/controller-manager";
pub const SCHEDULER_ITEM: &str = "kube/scheduler";
pub const KUBE_PROXY_ITEM: &str = "kube/kube-proxy";

/// The stem of node `id`'s kubelet client certificate item
/// (`CN=system:node:<hostname>`, `O=system:nodes`), issued by the leader for
/// every member: `kube/kubelet/<id as 016x>`.
pub fn kubelet_item(id: NodeId) -> String {
    format!("kube/kubelet/{id:016x}")
}
