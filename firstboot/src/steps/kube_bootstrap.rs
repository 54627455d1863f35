//! The `kube-bootstrap` step: on the control-plane nodes, once this node's
//! apiserver is healthy, what `kubeadm init` would have put into the API so
//! that a plain `kubeadm join VIP:6443 --token … --discovery-token-ca-cert-hash
//! sha256:…` from a machine the agent does not manage works (1.20's join):
//!
//! - the bootstrap token of the plan as a `bootstrap.kubernetes.io/token`
//!   Secret (authentication and signing, group
//!   `system:bootstrappers:kubeadm:default-node-token`, no expiry);
//! - `cluster-info` in `kube-public` (CA and `https://VIP:6443`; the
//!   controller-manager's bootstrapsigner adds the token's JWS signature),
//!   readable by `system:anonymous`;
//! - the RBAC of kubeadm's `bootstrap-token` phase (TLS bootstrap, CSR
//!   auto-approval, certificate rotation, `get nodes`) and the readers of
//!   the `kubeadm-config` and `kubelet-config-1.20` ConfigMaps, which it
//!   also writes (ClusterConfiguration/ClusterStatus v1beta2 with the VIP
//!   as control-plane endpoint and external etcd; the KubeletConfiguration
//!   a joining kubelet gets).
//!
//! All of it is one YAML file ([`MANIFESTS`]), rendered purely and applied
//! with `kubectl apply --server-side` (idempotent, and race-free between
//! the control-plane nodes) on every round through this node's
//! apiserver. A re-apply that fails after this node applied the same
//! manifests since boot ([`APPLIED`] remembers their fingerprint) leaves
//! the step done and says so in its detail: the objects are in the
//! cluster, and on three emulated control planes a busy apiserver timed
//! out such re-applies, which sent `pod-network`, `kubelet` and
//! `kube-proxy` back to waiting on nodes whose kubelet was Ready. A first
//! apply, or one of changed manifests, that fails fails the step. Then
//! control-plane Node objects that are registered get the
//! `node-role.kubernetes.io/control-plane` and `.../master` labels, and the
//! `node-role.kubernetes.io/master:NoSchedule` taint exactly when
//! `kubernetes.control_plane_schedulable = false` (removed again when it
//! becomes true). Nodes not registered yet are labelled on a later round:
//! the step is done once the manifests are applied.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

use super::kube_control_plane::{
    api_url, control_plane_gate, kubectl, require_binary, KUBECTL_BIN,
};
use super::{Chain, Check, Ctx, Gate, Rendered, Step, StepError};
use crate::cluster::Ipv4Cidr;
use crate::host::{Cmd, FileSpec, Host};
use crate::kube::{APPLY_TIMEOUT_SECS, DNS_DOMAIN, GET_TIMEOUT_SECS};

pub struct KubeBootstrap;

/// The manifests this step applies (0600: it holds the bootstrap token).
pub const MANIFESTS: &str = "etc/kubernetes/habuild/bootstrap.yaml";
/// What this node applied since boot: the fingerprint
/// ([`super::fingerprint`]) of the manifests file last applied successfully, then (when the latest re-apply of those failed)
/// why.
pub const APPLIED: &str = "run/habuild/kube-bootstrap-applied";
/// The Kubernetes version kubeadm-config names (the image's binaries).
pub const KUBERNETES_VERSION: &str = "v1.20.2";
/// The ConfigMap `kubeadm join` 1.20 reads the kubelet's configuration from.
pub const KUBELET_CONFIG_MAP: &str = "kubelet-config-1.20";
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
pub const MASTER_LABEL: &str = "node-role.kubernetes.io/master";
pub const MASTER_TAINT: &str = "node-role.kubernetes.io/master";

/// The cluster DNS address: the tenth address of the service CIDR
/// (10.96.0.10), kubeadm's default.
pub fn cluster_dns(service: &Ipv4Cidr) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(service.network() + 10)
}

/// Indents every line of `text` by `n` spaces (for YAML block scalars).
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A Role (or ClusterRole when `namespace` is None) allowing `get` on
/// `resource` (named `names`, all when empty), bound to `subjects`
/// (`(kind, name)`).
fn rbac(
    name: &str,
    namespace: Option<&str>,
    resource: &str,
    names: &[&str],
    subjects: &[(&str, &str)],
) -> String {
    let (kind, meta_ns) = match namespace {
        Some(ns) => ("Role", format!("\n  namespace: {ns}")),
        None => ("ClusterRole", String::new()),
    };
    let names = if names.is_empty() {
        String::new()
    } else {
        format!(
            "\n  resourceNames:\n{}",
            names
                .iter()
                .map(|n| format!("  - {n}\n"))
                .collect::<String>()
                .trim_end()
        )
    };
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: {kind}
metadata:
  name: {name}{meta_ns}
rules:
- apiGroups:
  - \"\"
  resources:
  - {resource}{names}
  verbs:
  - get
---
{binding}",
        binding = binding(name, namespace, kind, name, subjects)
    )
}

/// A (Cluster)RoleBinding `name` of `role_kind` `role` to `subjects`.
fn binding(
    name: &str,
    namespace: Option<&str>,
    role_kind: &str,
    role: &str,
    subjects: &[(&str, &str)],
) -> String {
    let (kind, meta_ns) = match namespace {
        Some(ns) => ("RoleBinding", format!("\n  namespace: {ns}")),
        None => ("ClusterRoleBinding", String::new()),
    };
    let subjects: String = subjects
        .iter()
        .map(|(k, n)| format!("- apiGroup: rbac.authorization.k8s.io\n  kind: {k}\n  name: {n}\n"))
        .collect();
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: {kind}
metadata:
  name: {name}{meta_ns}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {role_kind}
  name: {role}
subjects:
{subjects}"
    )
}

/// The `cluster-info` kubeconfig: the CA and the VIP, no user (what kubeadm
/// publishes for token discovery).
pub fn cluster_info_kubeconfig(ca_pem: &str, server: &str) -> String {
    format!(
        "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: \"\"
contexts: null
current-context: \"\"
kind: Config
preferences: {{}}
users: null
",
        ca = STANDARD.encode(ca_pem.as_bytes()),
    )
}

/// kubeadm's ClusterConfiguration (v1beta2, 1.20) for this cluster.
pub fn cluster_configuration(ctx: &Ctx) -> Result<String, StepError> {
    let etcd: Vec<String> = ctx
        .plan
        .control_plane
        .iter()
        .map(|id| {
            ctx.member(*id)
                .map(|m| format!("    - https://{}:{}\n", m.ip, super::etcd::CLIENT_PORT))
                .ok_or_else(|| {
                    StepError::Render(format!("control-plane node {id:016x} has no member record"))
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(format!(
        "apiServer:
  extraArgs:
    authorization-mode: Node,RBAC
  timeoutForControlPlane: 4m0s
apiVersion: kubeadm.k8s.io/v1beta2
certificatesDir: /etc/kubernetes/pki
clusterName: {name}
controlPlaneEndpoint: {vip}:{port}
controllerManager: {{}}
dns:
  type: CoreDNS
etcd:
  external:
    caFile: /etc/kubernetes/pki/etcd/ca.crt
    certFile: /etc/kubernetes/pki/apiserver-etcd-client.crt
    endpoints:
{etcd}    keyFile: /etc/kubernetes/pki/apiserver-etcd-client.key
imageRepository: k8s.gcr.io
kind: ClusterConfiguration
kubernetesVersion: {KUBERNETES_VERSION}
networking:
  dnsDomain: {DNS_DOMAIN}
  podSubnet: {pods}
  serviceSubnet: {services}
scheduler: {{}}
",
        name = ctx.cfg.cluster.name,
        vip = ctx.plan.vip,
        port = super::vip::API_PORT,
        etcd = etcd.concat(),
        pods = ctx.cfg.network.pod_cidr,
        services = ctx.cfg.network.service_cidr,
    ))
}

/// kubeadm's ClusterStatus (v1beta2): every planned apiserver by node name.
pub fn cluster_status(ctx: &Ctx) -> String {
    let endpoints: String = ctx
        .plan
        .control_plane
        .iter()
        .filter_map(|id| ctx.member(*id))
        .map(|m| {
            format!(
                "  {}:\n    advertiseAddress: {}\n    bindPort: {}\n",
                m.hostname,
                m.ip,
                super::vip::API_PORT
            )
        })
        .collect();
    format!("apiEndpoints:\n{endpoints}apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterStatus\n")
}

/// The KubeletConfiguration a node joining with kubeadm gets.
pub fn kubelet_configuration(ctx: &Ctx) -> String {
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
cgroupDriver: systemd
clusterDNS:
- {dns}
clusterDomain: {DNS_DOMAIN}
kind: KubeletConfiguration
rotateCertificates: true
staticPodPath: /etc/kubernetes/manifests
",
        dns = cluster_dns(&ctx.cfg.network.service_cidr),
    )
}

/// Every object this step applies, as one multi-document YAML (pure).
pub fn manifests(ctx: &Ctx) -> Result<String, StepError> {
    let (id, secret) = ctx.plan.bootstrap_token.split_once('.').ok_or_else(|| {
        StepError::Render(
            "the plan's bootstrap token has no '.' (want abcdef.0123456789abcdef)".into(),
        )
    })?;
    let ca = ctx
        .items
        .get("pki/ca.crt")
        .ok_or_else(|| StepError::Render("pki/ca.crt is not issued yet".into()))?;
    let vip = api_url(ctx.plan.vip);
    // `data`, not `stringData`: a re-apply then finds the Secret unchanged.
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    let group = ("Group", BOOTSTRAP_GROUP);
    let nodes = ("Group", "system:nodes");
    let docs = [
        format!(
            "apiVersion: v1
kind: Secret
metadata:
  name: bootstrap-token-{id}
  namespace: kube-system
type: bootstrap.kubernetes.io/token
data:
  auth-extra-groups: {}
  description: {}
  token-id: {}
  token-secret: {}
  usage-bootstrap-authentication: {yes}
  usage-bootstrap-signing: {yes}
",
            b64(BOOTSTRAP_GROUP),
            b64("habuild bootstrap token (kubeadm join)"),
            b64(id),
            b64(secret),
            yes = b64("true"),
        ),
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata:
  name: cluster-info
  namespace: kube-public
data:
  kubeconfig: |
{}",
            indent(&cluster_info_kubeconfig(ca, &vip), 4)
        ),
        rbac(
            "kubeadm:bootstrap-signer-clusterinfo",
            Some("kube-public"),
            "configmaps",
            &["cluster-info"],
            &[("User", "system:anonymous")],
        ),
        binding(
            "kubeadm:kubelet-bootstrap",
            None,
            "ClusterRole",
            "system:node-bootstrapper",
            &[group],
        ),
        binding(
            "kubeadm:node-autoapprove-bootstrap",
            None,
            "ClusterRole",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[group],
        ),
        binding(
            "kubeadm:node-autoapprove-certificate-rotation",
            None,
            "ClusterRole",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[nodes],
        ),
        rbac("kubeadm:get-nodes", None, "nodes", &[], &[group]),
        rbac(
            "kubeadm:nodes-kubeadm-config",
            Some("kube-system"),
            "configmaps",
            &["kubeadm-config"],
            &[group, nodes],
        ),
        rbac(
            &format!("kubeadm:{KUBELET_CONFIG_MAP}"),
            Some("kube-system"),
            "configmaps",
            &[KUBELET_CONFIG_MAP],
            &[group, nodes],
        ),
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata:
  name: kubeadm-config
  namespace: kube-system
data:
  ClusterConfiguration: |
{}  ClusterStatus: |
{}",
            indent(&cluster_configuration(ctx)?, 4),
            indent(&cluster_status(ctx), 4)
        ),
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata:
  name: {KUBELET_CONFIG_MAP}
  namespace: kube-system
data:
  kubelet: |
{}",
            indent(&kubelet_configuration(ctx), 4)
        ),
    ];
    Ok(format!(
        "# Written by habuild-agent (kube-bootstrap step); do not edit.\n{}",
        docs.join("---\n")
    ))
}

/// The kubectl arguments that bring the registered control-plane nodes in
/// `nodes_json` (`kubectl get nodes -o json`) to their labels and taint
/// (pure). `control_plane` are the planned control-plane hostnames; returns
/// the argument lists to run and the planned names not registered yet.
pub fn node_updates(
    nodes_json: &str,
    control_plane: &[String],
    schedulable: bool,
) -> (Vec<Vec<String>>, Vec<String>) {
    let v: Value = serde_json::from_str(nodes_json).unwrap_or_default();
    let items = v["items"].as_array().cloned().unwrap_or_default();
    let mut cmds = Vec::new();
    let mut missing = Vec::new();
    for name in control_plane {
        let Some(node) = items
            .iter()
            .find(|n| n["metadata"]["name"].as_str() == Some(name))
        else {
            missing.push(name.clone());
            continue;
        };
        let labels = &node["metadata"]["labels"];
        if [CONTROL_PLANE_LABEL, MASTER_LABEL]
            .iter()
            .any(|l| labels[*l].as_str() != Some(""))
        {
            cmds.push(vec![
                "label".into(),
                "--overwrite".into(),
                "node".into(),
                name.clone(),
                format!("{CONTROL_PLANE_LABEL}="),
                format!("{MASTER_LABEL}="),
            ]);
        }
        let tainted = node["spec"]["taints"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                t["key"].as_str() == Some(MASTER_TAINT)
                    && t["effect"].as_str() == Some("NoSchedule")
            })
        });
        if !schedulable && !tainted {
            cmds.push(vec![
                "taint".into(),
                "--overwrite".into(),
                "node".into(),
                name.clone(),
                format!("{MASTER_TAINT}=:NoSchedule"),
            ]);
        } else if schedulable && tainted {
            cmds.push(vec![
                "taint".into(),
                "node".into(),
                name.clone(),
                format!("{MASTER_TAINT}:NoSchedule-"),
            ]);
        }
    }
    (cmds, missing)
}

/// The planned control-plane nodes' hostnames (their Kubernetes node names).
fn control_plane_names(ctx: &Ctx) -> Vec<String> {
    ctx.plan
        .control_plane
        .iter()
        .filter_map(|id| ctx.member(*id))
        .map(|m| m.hostname.clone())
        .collect()
}

impl Step for KubeBootstrap {
    fn name(&self) -> &'static str {
        "kube-bootstrap"
    }

    fn chain(&self) -> Chain {
        Chain::ControlPlane
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        if let Some(g) = control_plane_gate(ctx) {
            return g;
        }
        if ctx.done_on("kube-control-plane", &[ctx.me]) {
            Gate::Run
        } else {
            Gate::Wait("kube-control-plane on this node".into())
        }
    }

    fn preflight(&self, _ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        require_binary(host, KUBECTL_BIN)
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        Ok(Rendered {
            files: vec![FileSpec::new(MANIFESTS, 0o600, manifests(ctx)?)],
            commands: vec![],
            services: vec![],
        })
    }

    /// Applies the manifests ([`apply_manifests`]), then labels (and
    /// taints or untaints) the registered control-plane nodes. Listing or
    /// labelling failures do not fail the step: the manifests are applied,
    /// and the next round tries the nodes again.
    fn act(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        apply_manifests(ctx, host)?;
        let list = host.exec.output(&kubectl(
            ctx,
            GET_TIMEOUT_SECS,
            &["get", "nodes", "-o", "json"],
        ))?;
        if !list.success() {
            tracing::warn!(stderr = %list.stderr.trim(), "listing nodes to label them");
            return Ok(());
        }
        let (cmds, _) = node_updates(
            &list.stdout,
            &control_plane_names(ctx),
            ctx.cfg.kubernetes.control_plane_schedulable,
        );
        for args in cmds {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let cmd = kubectl(ctx, APPLY_TIMEOUT_SECS, &args);
            let o = host.exec.output(&cmd)?;
            if !o.success() {
                tracing::warn!(command = %cmd.display(), stderr = %o.stderr.trim(), "node update");
            }
        }
        Ok(())
    }

    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        let (_, missing) = match host.exec.output(&kubectl(
            ctx,
            GET_TIMEOUT_SECS,
            &["get", "nodes", "-o", "json"],
        )) {
            Ok(o) if o.success() => node_updates(
                &o.stdout,
                &control_plane_names(ctx),
                ctx.cfg.kubernetes.control_plane_schedulable,
            ),
            _ => (vec![], control_plane_names(ctx)),
        };
        let token_id = ctx
            .plan
            .bootstrap_token
            .split_once('.')
            .map_or("", |(id, _)| id);
        let mut text = format!("bootstrap token {token_id}, cluster-info and join RBAC applied");
        if !missing.is_empty() {
            text += &format!(
                "; not registered yet (labelled later): {}",
                missing.join(", ")
            );
        }
        if let Some(why) = applied(host)?.and_then(|(_, failed)| failed) {
            text += &format!("; the last re-apply failed (applied before, unchanged): {why}");
        }
        Ok(Check::Done(text))
    }
}

/// What [`APPLIED`] remembers: the fingerprint of the manifests last applied
/// and, when the latest re-apply of them failed, why.
fn applied(host: &Host) -> Result<Option<(String, Option<String>)>, StepError> {
    let Some(bytes) = host.files.read(APPLIED)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let mut lines = text.lines();
    let fingerprint = lines.next().unwrap_or_default().to_string();
    let why = lines.next().filter(|l| !l.is_empty()).map(str::to_string);
    Ok(Some((fingerprint, why)))
}

/// `kubectl apply` of the manifests ([`apply_command`]). Remembers their
/// fingerprint in [`APPLIED`] when it succeeds; when it fails, the step fails
/// unless this node applied the same manifests before (since boot), in
/// which case the failure is remembered, logged and shown by the check.
fn apply_manifests(ctx: &Ctx, host: &Host) -> Result<(), StepError> {
    // what kubectl reads: the file as the rendering wrote it
    let file = host.files.read(MANIFESTS)?.unwrap_or_default();
    let want = super::fingerprint([file.as_slice()]);
    let remember = |why: &str| {
        host.files
            .write(&FileSpec::new(APPLIED, 0o644, format!("{want}\n{why}\n")))
    };
    match host.exec.run(&apply_command(ctx)) {
        Ok(_) => {
            remember("")?;
            Ok(())
        }
        Err(e) => match applied(host)? {
            Some((before, _)) if before == want => {
                let why = e.to_string().replace('\n', " ");
                tracing::warn!(error = %why, "re-applying the bootstrap manifests (applied before, unchanged)");
                remember(&why)?;
                Ok(())
            }
            _ => Err(e.into()),
        },
    }
}

/// `kubectl apply --server-side` of [`MANIFESTS`] through this node's
/// apiserver. Server-side: every control-plane node applies the same
/// objects at about the same time, and a client-side apply (get, then
/// create) lost that race with "AlreadyExists" and went into backoff
/// (seen on three booted control planes); the apiserver creates or
/// updates atomically. `--force-conflicts`: the agent owns these objects,
/// including fields an older agent set with a client-side apply.
pub fn apply_command(ctx: &Ctx) -> Cmd {
    kubectl(
        ctx,
        APPLY_TIMEOUT_SECS,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &ctx.path(MANIFESTS),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::Recording;
    use crate::steps::kube_control_plane::tests::with_items;
    use crate::steps::kube_control_plane::NO_BINARIES;

    #[test]
    fn golden_manifests() {
        let (text, token) = with_items(
            1,
            |_| {},
            |ctx| (manifests(ctx).unwrap(), ctx.plan.bootstrap_token.clone()),
        );
        let (id, secret) = token.split_once('.').unwrap();
        let ca = STANDARD.encode("PEM pki/ca.crt");
        let want = include_str!("kube_bootstrap.golden.yaml")
            .replace("@ID@", id)
            .replace("@ID64@", &STANDARD.encode(id))
            .replace("@SECRET64@", &STANDARD.encode(secret))
            .replace("@CA@", &ca);
        if text != want {
            // Shows the first difference by line.
            for (i, (a, b)) in text.lines().zip(want.lines()).enumerate() {
                assert_eq!(a, b, "line {}", i + 1);
            }
            assert_eq!(text, want);
        }
        // Every document parses as YAML with a kind and a name.
        let docs: Vec<&str> = text.split("\n---\n").collect();
        assert_eq!(docs.len(), 15, "{text}");
        for d in docs {
            assert!(d.contains("\nkind: ") || d.starts_with("kind: "), "{d}");
        }
    }

    #[test]
    fn applied_with_kubectl_through_the_local_apiserver() {
        with_items(
            2,
            |_| {},
            |ctx| {
                let r = KubeBootstrap.render(ctx).unwrap();
                assert_eq!(r.files[0].path, MANIFESTS);
                assert_eq!(r.files[0].mode, 0o600);
                assert!(r.commands.is_empty(), "applied by act: {:?}", r.commands);
                let rec = Recording::default();
                KubeBootstrap.act(ctx, &rec.host()).unwrap();
                assert_eq!(
                    rec.commands()[0],
                    "/usr/bin/kubectl --kubeconfig=/etc/kubernetes/habuild/admin-local.conf \
                 --request-timeout=60s apply --server-side --force-conflicts -f /etc/kubernetes/habuild/bootstrap.yaml"
                );
            },
        );
    }

    /// A failed first apply fails the step; once applied, a failed re-apply
    /// of the same manifests leaves it done (saying so) until one succeeds;
    /// a failed apply of changed manifests fails it again.
    #[test]
    fn a_failed_re_apply_of_applied_manifests_keeps_the_step_done() {
        const APPLY: &str =
            "/usr/bin/kubectl --kubeconfig=/etc/kubernetes/habuild/admin-local.conf \
                             --request-timeout=60s apply";
        const TIMEOUT: &str =
            "Unable to connect to the server: net/http: request canceled (Client.Timeout exceeded)";
        let check =
            |ctx: &Ctx, rec: &Recording| match KubeBootstrap.check(ctx, &rec.host()).unwrap() {
                Check::Done(d) => d,
                other => panic!("{other:?}"),
            };
        let rec = Recording::default();
        with_items(
            1,
            |_| {},
            |ctx| {
                crate::steps::apply(&KubeBootstrap.render(ctx).unwrap(), &rec.host()).unwrap();
                rec.answer_once(APPLY, 1, "", TIMEOUT);
                let e = KubeBootstrap.act(ctx, &rec.host()).unwrap_err();
                assert!(e.to_string().contains("Client.Timeout exceeded"), "{e}");
                assert_eq!(
                    rec.file(APPLIED),
                    None,
                    "nothing applied, nothing remembered"
                );

                KubeBootstrap.act(ctx, &rec.host()).unwrap();
                assert!(!check(ctx, &rec).contains("re-apply failed"));

                rec.answer_once(APPLY, 1, "", TIMEOUT);
                KubeBootstrap.act(ctx, &rec.host()).unwrap();
                let d = check(ctx, &rec);
                assert!(
                    d.contains("the last re-apply failed (applied before, unchanged): ")
                        && d.contains("Client.Timeout exceeded"),
                    "{d}"
                );

                KubeBootstrap.act(ctx, &rec.host()).unwrap();
                assert!(
                    !check(ctx, &rec).contains("re-apply failed"),
                    "a success clears it"
                );
            },
        );
        // the same node, the manifests it applied before not the ones on
        // disk now (the plan changed them): a failed apply fails the step
        with_items(
            1,
            |c| c.kubernetes.control_plane_schedulable = false,
            |ctx| {
                let before = rec.file(APPLIED).unwrap();
                rec.lock().files.insert(
                    APPLIED.into(),
                    FileSpec::new(APPLIED, 0o644, format!("{}\n", "0".repeat(16))),
                );
                rec.answer_once(APPLY, 1, "", TIMEOUT);
                assert!(KubeBootstrap.act(ctx, &rec.host()).is_err(), "{before}");
            },
        );
    }

    #[test]
    fn gates_and_refusals() {
        with_items(
            4,
            |_| {},
            |ctx| assert_eq!(KubeBootstrap.gate(ctx), Gate::NotHere),
        );
        with_items(
            1,
            |c| c.kubernetes.enabled = false,
            |ctx| assert_eq!(KubeBootstrap.gate(ctx), Gate::NotHere),
        );
        with_items(
            1,
            |_| {},
            |ctx| {
                assert_eq!(
                    KubeBootstrap.gate(ctx),
                    Gate::Wait("kube-control-plane on this node".into())
                );
                let rec = Recording::default();
                assert_eq!(
                    KubeBootstrap.preflight(ctx, &rec.host()),
                    Err(StepError::Refused(NO_BINARIES.into()))
                );
            },
        );
    }

    fn node(name: &str, labels: &str, taints: &str) -> String {
        format!(
            r#"{{"metadata":{{"name":"{name}","labels":{{{labels}}}}},"spec":{{"taints":[{taints}]}}}}"#
        )
    }

    #[test]
    fn labels_and_taints_only_registered_control_plane_nodes() {
        let names: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let labelled = format!(r#""{CONTROL_PLANE_LABEL}":"","{MASTER_LABEL}":"""#);
        let taint = format!(r#"{{"key":"{MASTER_TAINT}","effect":"NoSchedule"}}"#);
        let json = format!(
            r#"{{"items":[{},{},{}]}}"#,
            node("n1", "", ""),
            node("n2", &labelled, ""),
            node("n4", "", "")
        );
        let (cmds, missing) = node_updates(&json, &names, true);
        assert_eq!(missing, ["n3"]);
        assert_eq!(
            cmds,
            vec![vec![
                "label",
                "--overwrite",
                "node",
                "n1",
                "node-role.kubernetes.io/control-plane=",
                "node-role.kubernetes.io/master="
            ]]
        );
        let (cmds, _) = node_updates(&json, &names, false);
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert_eq!(
            cmds[2],
            vec![
                "taint",
                "--overwrite",
                "node",
                "n2",
                "node-role.kubernetes.io/master=:NoSchedule"
            ]
        );
        // Tainted and labelled: nothing to do when not schedulable; the
        // taint comes off when schedulable again.
        let json = format!(r#"{{"items":[{}]}}"#, node("n1", &labelled, &taint));
        assert!(node_updates(&json, &names[..1], false).0.is_empty());
        assert_eq!(
            node_updates(&json, &names[..1], true).0,
            vec![vec![
                "taint",
                "node",
                "n1",
                "node-role.kubernetes.io/master:NoSchedule-"
            ]]
        );
        // The API not answering: everyone is "not registered".
        assert_eq!(node_updates("", &names, true), (vec![], names.clone()));
    }

    #[test]
    fn act_runs_the_updates_and_check_reports_unregistered_nodes() {
        with_items(
            1,
            |c| c.kubernetes.control_plane_schedulable = false,
            |ctx| {
                let rec = Recording::default();
                let host = rec.host();
                rec.answer(
                "/usr/bin/kubectl --kubeconfig=/etc/kubernetes/habuild/admin-local.conf --request-timeout=30s get nodes",
                0,
                &format!(r#"{{"items":[{}]}}"#, node("n1", "", "")),
                "",
            );
                KubeBootstrap.act(ctx, &host).unwrap();
                let cmds = rec.commands();
                // Reads with the get timeout, writes with the apply timeout.
                assert!(
                    cmds.iter().any(|c| c.starts_with(
                        "/usr/bin/kubectl --kubeconfig=/etc/kubernetes/habuild/admin-local.conf \
                         --request-timeout=60s label --overwrite node n1 "
                    )),
                    "{cmds:?}"
                );
                assert!(
                    cmds.iter().any(|c| c.starts_with(
                        "/usr/bin/kubectl --kubeconfig=/etc/kubernetes/habuild/admin-local.conf \
                         --request-timeout=60s taint --overwrite node n1 "
                    )),
                    "{cmds:?}"
                );
                assert!(cmds.iter().any(|c| c.ends_with("label --overwrite node n1 node-role.kubernetes.io/control-plane= node-role.kubernetes.io/master=")), "{cmds:?}");
                assert!(
                    cmds.iter().any(|c| c.ends_with(
                        "taint --overwrite node n1 node-role.kubernetes.io/master=:NoSchedule"
                    )),
                    "{cmds:?}"
                );
                let Check::Done(text) = KubeBootstrap.check(ctx, &host).unwrap() else {
                    panic!("applied: done")
                };
                assert!(
                    text.ends_with("not registered yet (labelled later): n2, n3"),
                    "{text}"
                );
            },
        );
    }

    #[test]
    fn cluster_dns_is_the_tenth_service_address() {
        assert_eq!(
            cluster_dns(&"10.96.0.0/12".parse().unwrap()),
            std::net::Ipv4Addr::new(10, 96, 0, 10)
        );
    }
}
