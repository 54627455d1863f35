//! The `kube-control-plane` step: on the planned control-plane nodes,
//! kube-apiserver, kube-controller-manager and kube-scheduler as services
//! (systemd units on a node) from the image's binaries, against the TLS etcd
//! of the `etcd` step, with kubeadm's file layout: the certificates the
//! `pki` step wrote under `/etc/kubernetes/pki`, and the kubeconfigs
//! `/etc/kubernetes/{admin,controller-manager,scheduler}.conf` this step
//! writes from the client certificates the leader issued (`kube/*` items).
//!
//! The apiserver binds this node's cluster address only (`--bind-address`):
//! haproxy of the `vip` step holds `VIP:6443` on the same hosts. The
//! controller-manager and the scheduler talk to their own node's apiserver
//! (`https://<node ip>:6443`) and elect a leader among the control-plane
//! nodes; `admin.conf` names the VIP, as kubeadm writes it. A second admin
//! kubeconfig, [`LOCAL_ADMIN`], names this node's apiserver: the health
//! check and the `kube-bootstrap` step use it, so they test this node and
//! not whichever node holds the VIP.
//!
//! Done when `kubectl get --raw /readyz` answers `ok` through this node's
//! apiserver (which needs etcd quorum), within [`GET_TIMEOUT_SECS`]. Once
//! it has answered, a failed probe does not undo that at once: the step
//! stays done (saying the last probe failed and when the apiserver last
//! answered) until failures persist, by the rule of
//! [`super::tolerance`] — so one slow probe of a starved apiserver no
//! longer sends the later steps of the chain back to waiting. The memory of
//! the last answer is [`HEALTH_MEMORY`], a file under `run/habuild` (gone
//! with a reboot: a rebooted node's apiserver must answer once again).
//!
//! Version skew ([`crate::kube::skew`]): while this node's kube-apiserver
//! is not running (before its first start, after a reboot — a new image),
//! the preflight asks the apiserver serving the cluster through the VIP for
//! its `/version` and refuses ("version skew: …") when this node's
//! `kube-apiserver --version` is more than 1 minor version apart (the HA
//! rule). It asks as the client identity this node's apiserver already has
//! on disk (`apiserver-kubelet-client`, written by the `pki` step): the
//! step's kubeconfigs are written only after the preflight, and kubectl
//! without credentials prompts for a password. No answer means nothing
//! serves yet (the first control-plane node): the apiserver starts. The
//! controller-manager and the scheduler come from the same image and talk
//! to their own node's apiserver, so they always match it.
//!
//! Flags: every flag rendered exists in Kubernetes 1.20 and in 1.28–1.31
//! (golden-tested). Differences kept out on purpose: 1.20's
//! controller-manager and scheduler also serve plain-HTTP healthz/metrics on
//! `--port` (10252/10251) unless `--port=0`, a flag 1.24+ no longer accepts
//! (kubeadm 1.20 sets it; here the metrics stay readable without
//! authentication on 1.20, nothing else is served there). The apiserver's
//! insecure port is off by default in 1.20 and gone later.

use std::net::Ipv4Addr;

use super::tolerance::{self, Verdict};
use super::{fingerprint, Chain, Check, Ctx, Gate, Rendered, Step, StepError};
use crate::host::{last_lines, Cmd, FileSpec, Host, ServiceSpec};
use crate::kube::kubeconfig::{self, Kubeconfig};
use crate::kube::skew::{self, Version};
use crate::kube::{self as k8s, request_timeout, DNS_DOMAIN, GET_TIMEOUT_SECS, KUBE_DIR};

pub struct KubeControlPlane;

/// The binaries, under the host root (`ctx.path`), as the preflight finds them.
pub const APISERVER_BIN: &str = "/usr/bin/kube-apiserver";
pub const CONTROLLER_MANAGER_BIN: &str = "/usr/bin/kube-controller-manager";
pub const SCHEDULER_BIN: &str = "/usr/bin/kube-scheduler";
pub const KUBECTL_BIN: &str = "/usr/bin/kubectl";
pub const API_PORT: u16 = super::vip::API_PORT;
/// The refusal of every Kubernetes step on an image without the binaries.
pub const NO_BINARIES: &str = "this image has no Kubernetes binaries (profile kube.source = none)";
/// An admin kubeconfig naming this node's own apiserver (not the VIP).
pub const LOCAL_ADMIN: &str = "etc/kubernetes/habuild/admin-local.conf";
const PKI: &str = "etc/kubernetes/pki";
/// What the health check remembers between rounds ([`tolerance::Memory`]):
/// when this node's apiserver last answered, and the run of failed probes
/// since.
pub const HEALTH_MEMORY: &str = "run/habuild/kube-apiserver-health";

/// Refuses with [`NO_BINARIES`] unless `bin` (absolute, e.g.
/// `/usr/bin/kubectl`) is there under the host root.
pub fn require_binary(host: &Host, bin: &str) -> Result<(), StepError> {
    if host.files.exists(bin.trim_start_matches('/')) {
        Ok(())
    } else {
        Err(StepError::Refused(NO_BINARIES.into()))
    }
}

/// The Kubernetes steps' common gate: off with `kubernetes.enabled =
/// false`, only on control-plane nodes, and only once this node's member
/// record is there. A node whose record says `kubernetes = false` (its
/// `[[nodes]]` entry) is not here either; the planner never makes it
/// control plane, but one planned before its site file changed stays there
/// (see [`crate::plan::roles::control_plane`]) and waits, saying why.
pub fn control_plane_gate(ctx: &Ctx) -> Option<Gate> {
    if !ctx.cfg.kubernetes.enabled || !ctx.is_control_plane() {
        return Some(Gate::NotHere);
    }
    if ctx.my_ip().is_none() {
        return Some(Gate::Wait("this node's member record".into()));
    }
    if !ctx.kubernetes_on(ctx.me) {
        return Some(Gate::Wait(
            "this node is in the control plane but its site file [[nodes]] entry says \
             kubernetes = false: remove that line, or remove this node from the cluster"
                .into(),
        ));
    }
    None
}

/// `kubectl get --raw /version` through the VIP, as this node's
/// apiserver's own client identity (`apiserver-kubelet-client`, on disk
/// before this step writes any kubeconfig; an empty kubeconfig, so nothing
/// else is read).
pub fn vip_version_probe(ctx: &Ctx) -> Cmd {
    let pki = |f: &str| ctx.path(&format!("{PKI}/{f}"));
    Cmd::new([
        ctx.path(KUBECTL_BIN),
        "--kubeconfig=/dev/null".into(),
        format!("--server={}", api_url(ctx.plan.vip)),
        format!("--certificate-authority={}", pki("ca.crt")),
        format!(
            "--client-certificate={}",
            pki("apiserver-kubelet-client.crt")
        ),
        format!("--client-key={}", pki("apiserver-kubelet-client.key")),
        request_timeout(GET_TIMEOUT_SECS),
        "get".into(),
        "--raw".into(),
        "/version".into(),
    ])
}

/// Refuses to start this node's kube-apiserver when the one serving the
/// cluster (through the VIP) is more than 1 minor version apart from it;
/// when none answers, there is nothing to compare with.
fn refuse_apiserver_skew(ctx: &Ctx, host: &Host) -> Result<(), StepError> {
    let o = host.exec.output(&vip_version_probe(ctx))?;
    if !o.success() {
        tracing::info!(
            stderr = %last_lines(&o.stderr, 2),
            "no kube-apiserver answers /version through the VIP: nothing to compare with"
        );
        return Ok(());
    }
    let serving = Version::from_version_json(&o.stdout).map_err(|e| {
        StepError::Render(format!(
            "the kube-apiserver serving the cluster (/version through the VIP): {e}"
        ))
    })?;
    let out = host
        .exec
        .run(&Cmd::new([ctx.path(APISERVER_BIN), "--version".into()]))?;
    let mine = Version::from_version_output(&out.stdout)
        .map_err(|e| StepError::Render(format!("{APISERVER_BIN} --version: {e}")))?;
    skew::between_apiservers(&mine, &serving).map_err(|s| StepError::Refused(s.to_string()))
}

/// The items the step renders its kubeconfigs from.
fn needed_items() -> Vec<String> {
    let mut v = vec!["pki/ca.crt".to_string()];
    for stem in [
        k8s::ADMIN_ITEM,
        k8s::CONTROLLER_MANAGER_ITEM,
        k8s::SCHEDULER_ITEM,
    ] {
        v.push(format!("{stem}.crt"));
        v.push(format!("{stem}.key"));
    }
    v
}

fn item<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a str, StepError> {
    ctx.items
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| StepError::Render(format!("{name} is not issued yet")))
}

/// A kubeconfig for the client certificate `stem`, as `user`, naming `server`.
pub fn kubeconfig_for(
    ctx: &Ctx,
    stem: &str,
    user: &str,
    server: &str,
) -> Result<String, StepError> {
    Ok(kubeconfig::render(&Kubeconfig {
        cluster: &ctx.cfg.cluster.name,
        server,
        ca_pem: item(ctx, "pki/ca.crt")?,
        user,
        client_cert_pem: item(ctx, &format!("{stem}.crt"))?,
        client_key_pem: item(ctx, &format!("{stem}.key"))?,
    }))
}

/// `https://<ip>:6443`.
pub fn api_url(ip: Ipv4Addr) -> String {
    format!("https://{ip}:{API_PORT}")
}

/// `https://<ip>:2379,...` for every planned control-plane member, in plan order.
fn etcd_servers(ctx: &Ctx) -> Result<String, StepError> {
    let urls: Result<Vec<String>, StepError> = ctx
        .plan
        .control_plane
        .iter()
        .map(|id| {
            let m = ctx.member(*id).ok_or_else(|| {
                StepError::Render(format!("control-plane node {id:016x} has no member record"))
            })?;
            Ok(format!("https://{}:{}", m.ip, super::etcd::CLIENT_PORT))
        })
        .collect();
    Ok(urls?.join(","))
}

/// kube-apiserver's command line (pure).
pub fn apiserver_argv(ctx: &Ctx, ip: Ipv4Addr) -> Result<Vec<String>, StepError> {
    let pki = |f: &str| ctx.path(&format!("{PKI}/{f}"));
    let mut argv = vec![
        ctx.path(APISERVER_BIN),
        format!("--advertise-address={ip}"),
        format!("--bind-address={ip}"),
        format!("--secure-port={API_PORT}"),
        "--allow-privileged=true".into(),
        "--authorization-mode=Node,RBAC".into(),
        format!("--client-ca-file={}", pki("ca.crt")),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--enable-bootstrap-token-auth=true".into(),
        "--endpoint-reconciler-type=lease".into(),
        format!("--etcd-cafile={}", pki("etcd/ca.crt")),
        format!("--etcd-certfile={}", pki("apiserver-etcd-client.crt")),
        format!("--etcd-keyfile={}", pki("apiserver-etcd-client.key")),
        format!("--etcd-servers={}", etcd_servers(ctx)?),
        format!(
            "--kubelet-client-certificate={}",
            pki("apiserver-kubelet-client.crt")
        ),
        format!(
            "--kubelet-client-key={}",
            pki("apiserver-kubelet-client.key")
        ),
        "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
        format!("--proxy-client-cert-file={}", pki("front-proxy-client.crt")),
        format!("--proxy-client-key-file={}", pki("front-proxy-client.key")),
        "--requestheader-allowed-names=front-proxy-client".into(),
        format!(
            "--requestheader-client-ca-file={}",
            pki("front-proxy-ca.crt")
        ),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        format!("--service-account-issuer=https://kubernetes.default.svc.{DNS_DOMAIN}"),
        format!("--service-account-key-file={}", pki("sa.pub")),
        format!("--service-account-signing-key-file={}", pki("sa.key")),
        format!(
            "--service-cluster-ip-range={}",
            ctx.cfg.network.service_cidr
        ),
        format!("--tls-cert-file={}", pki("apiserver.crt")),
        format!("--tls-private-key-file={}", pki("apiserver.key")),
    ];
    if ctx.emulated {
        // etcd's health check (`/readyz`, `/healthz`) gives etcd 2 s by
        // default; an emulated member busy with three apiservers' writes
        // answers slower, and each failed check made this apiserver
        // unready (seen on three booted control planes). The flag exists
        // from 1.20 on; 1.26+ reads `/readyz`'s etcd check from
        // `--etcd-readycheck-timeout`, which 1.20 does not have.
        argv.push("--etcd-healthcheck-timeout=10s".into());
    }
    Ok(argv)
}

/// kube-controller-manager's command line (pure).
pub fn controller_manager_argv(ctx: &Ctx) -> Vec<String> {
    let pki = |f: &str| ctx.path(&format!("{PKI}/{f}"));
    let conf = ctx.path(&format!("{KUBE_DIR}/controller-manager.conf"));
    vec![
        ctx.path(CONTROLLER_MANAGER_BIN),
        // Pod CIDRs are the plan's (the pod-network step), not the controller's.
        "--allocate-node-cidrs=false".into(),
        format!("--authentication-kubeconfig={conf}"),
        format!("--authorization-kubeconfig={conf}"),
        "--bind-address=127.0.0.1".into(),
        format!("--client-ca-file={}", pki("ca.crt")),
        format!("--cluster-name={}", ctx.cfg.cluster.name),
        format!("--cluster-signing-cert-file={}", pki("ca.crt")),
        format!("--cluster-signing-key-file={}", pki("ca.key")),
        "--controllers=*,bootstrapsigner,tokencleaner".into(),
        format!("--kubeconfig={conf}"),
        "--leader-elect=true".into(),
    ]
    .into_iter()
    .chain(leader_election_timings(ctx))
    .chain([
        format!(
            "--requestheader-client-ca-file={}",
            pki("front-proxy-ca.crt")
        ),
        format!("--root-ca-file={}", pki("ca.crt")),
        format!("--service-account-private-key-file={}", pki("sa.key")),
        "--use-service-account-credentials=true".into(),
    ])
    .collect()
}

/// Leader election's timings for the controller-manager and the
/// scheduler: the defaults (lease 15 s, renew deadline 10 s, retry 2 s)
/// except on an emulated CPU, where one lease renewal through a busy
/// apiserver can take longer than 10 s; missing the deadline makes the
/// process exit ("leaderelection lost") and start again, which on three
/// emulated control planes became a restart loop that never let the
/// controllers sync. There: lease 60 s, renew deadline 40 s, retry 8 s (a
/// dead leader is replaced within about a minute).
fn leader_election_timings(ctx: &Ctx) -> Vec<String> {
    if ctx.emulated {
        vec![
            "--leader-elect-lease-duration=60s".into(),
            "--leader-elect-renew-deadline=40s".into(),
            "--leader-elect-retry-period=8s".into(),
        ]
    } else {
        vec![]
    }
}

/// kube-scheduler's command line (pure).
pub fn scheduler_argv(ctx: &Ctx) -> Vec<String> {
    let conf = ctx.path(&format!("{KUBE_DIR}/scheduler.conf"));
    vec![
        ctx.path(SCHEDULER_BIN),
        format!("--authentication-kubeconfig={conf}"),
        format!("--authorization-kubeconfig={conf}"),
        "--bind-address=127.0.0.1".into(),
        format!("--kubeconfig={conf}"),
        "--leader-elect=true".into(),
    ]
    .into_iter()
    .chain(leader_election_timings(ctx))
    .collect()
}

/// `kubectl` with this node's local admin kubeconfig and a request timeout
/// of `timeout_secs` ([`GET_TIMEOUT_SECS`] for reads,
/// [`crate::kube::APPLY_TIMEOUT_SECS`] for writes).
pub fn kubectl(ctx: &Ctx, timeout_secs: u64, args: &[&str]) -> Cmd {
    let mut argv = vec![
        ctx.path(KUBECTL_BIN),
        format!("--kubeconfig={}", ctx.path(LOCAL_ADMIN)),
        request_timeout(timeout_secs),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    Cmd::new(argv)
}

/// The files a service reads that are not in its argv's values (the PKI
/// items of this node), for its restart fingerprint.
fn pki_parts<'a>(ctx: &'a Ctx) -> Vec<&'a [u8]> {
    ctx.items
        .iter()
        .filter(|(k, _)| {
            k.starts_with("pki/")
                && (!k.starts_with("pki/node/") || k.starts_with(&crate::pki::node_prefix(ctx.me)))
        })
        .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()])
        .collect()
}

impl Step for KubeControlPlane {
    fn name(&self) -> &'static str {
        "kube-control-plane"
    }

    fn chain(&self) -> Chain {
        Chain::ControlPlane
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        if let Some(g) = control_plane_gate(ctx) {
            return g;
        }
        let missing: Vec<String> = needed_items()
            .into_iter()
            .filter(|i| !ctx.items.contains_key(i))
            .collect();
        if missing.is_empty() {
            Gate::Run
        } else {
            Gate::Wait(format!(
                "Kubernetes client certificates from the leader: {}",
                missing.join(", ")
            ))
        }
    }

    fn preflight(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        for bin in [
            APISERVER_BIN,
            CONTROLLER_MANAGER_BIN,
            SCHEDULER_BIN,
            KUBECTL_BIN,
        ] {
            require_binary(host, bin)?;
        }
        if !host.services.running("kube-apiserver") {
            refuse_apiserver_skew(ctx, host)?;
        }
        Ok(())
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        let ip = ctx
            .my_ip()
            .ok_or_else(|| StepError::Render("no member record for this node".into()))?;
        let local = api_url(ip);
        let vip = api_url(ctx.plan.vip);
        let conf = |name: &str, text: String| {
            FileSpec::new(format!("{KUBE_DIR}/{name}.conf"), 0o600, text)
        };
        let admin = conf(
            "admin",
            kubeconfig_for(ctx, k8s::ADMIN_ITEM, "kubernetes-admin", &vip)?,
        );
        let local_admin = FileSpec::new(
            LOCAL_ADMIN,
            0o600,
            kubeconfig_for(ctx, k8s::ADMIN_ITEM, "kubernetes-admin", &local)?,
        );
        let cm = conf(
            "controller-manager",
            kubeconfig_for(
                ctx,
                k8s::CONTROLLER_MANAGER_ITEM,
                "system:kube-controller-manager",
                &local,
            )?,
        );
        let sched = conf(
            "scheduler",
            kubeconfig_for(ctx, k8s::SCHEDULER_ITEM, "system:kube-scheduler", &local)?,
        );
        let pki = pki_parts(ctx);
        let service = |name: &str, description: &str, argv: Vec<String>, files: &[&FileSpec]| {
            let fp = fingerprint(
                argv.iter()
                    .map(|a| a.as_bytes())
                    .chain(files.iter().map(|f| f.contents.as_slice()))
                    .chain(pki.iter().copied()),
            );
            ServiceSpec {
                name: name.into(),
                description: description.into(),
                argv,
                fingerprint: fp,
            }
        };
        let services = vec![
            service(
                "kube-apiserver",
                "Kubernetes API server (habuild)",
                apiserver_argv(ctx, ip)?,
                &[],
            ),
            service(
                "kube-controller-manager",
                "Kubernetes controller manager (habuild)",
                controller_manager_argv(ctx),
                &[&cm],
            ),
            service(
                "kube-scheduler",
                "Kubernetes scheduler (habuild)",
                scheduler_argv(ctx),
                &[&sched],
            ),
        ];
        Ok(Rendered {
            files: vec![admin, local_admin, cm, sched],
            commands: vec![],
            services,
        })
    }

    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        // the wall clock: [`HEALTH_MEMORY`] outlives the agent's process
        check_readyz(ctx, host, &super::unix_now)
    }
}

/// The step's check with the clock `now` (read once the probe returned):
/// probes `/readyz` through this node's apiserver and judges the answer
/// with the memory of earlier probes ([`tolerance`]), which it updates.
fn check_readyz(ctx: &Ctx, host: &Host, now: &dyn Fn() -> u64) -> Result<Check, StepError> {
    let o = host.exec.output(&kubectl(
        ctx,
        GET_TIMEOUT_SECS,
        &["get", "--raw", "/readyz"],
    ))?;
    let answered = o.success() && o.stdout.trim() == "ok";
    let verdict = tolerance::judge(host, HEALTH_MEMORY, now, answered)?;
    let addr = ctx
        .my_ip()
        .map(|ip| format!("{ip}:{API_PORT}"))
        .unwrap_or_default();
    let why = || last_lines(&format!("{}\n{}", o.stdout, o.stderr), 3);
    Ok(match verdict {
        Verdict::Healthy => Check::Done(format!("apiserver healthy at {addr}")),
        Verdict::Tolerated(t) => Check::Done(t.detail(&format!("apiserver at {addr}"), &why())),
        Verdict::Down => Check::Pending(format!("apiserver at {addr} not ready yet: {}", why())),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::host::fake::Recording;
    use crate::steps::testutil;
    use crate::steps::tolerance::Memory;

    /// Placeholder PEM text for every item the Kubernetes steps read.
    pub fn items() -> BTreeMap<String, String> {
        let mut items: BTreeMap<String, String> = needed_items()
            .into_iter()
            .map(|n| (n.clone(), format!("PEM {n}")))
            .collect();
        for id in 1..=4 {
            let stem = k8s::kubelet_item(id);
            items.insert(format!("{stem}.crt"), format!("PEM {stem}"));
        }
        items
    }

    /// Runs `f` with node `me`'s context over the test state, with
    /// [`items`] and `cfg` edited by `edit`.
    pub fn with_items<R>(
        me: u64,
        edit: impl FnOnce(&mut crate::cluster::ClusterConfig),
        f: impl FnOnce(&Ctx) -> R,
    ) -> R {
        let state = testutil::state();
        let mut cfg = testutil::cfg();
        edit(&mut cfg);
        let items = items();
        let ctx = Ctx {
            me,
            cfg: &cfg,
            state: &state,
            plan: state.plan.as_ref().unwrap(),
            items: &items,
            root: Path::new("/"),
            interface: "eth0",
            agent_exe: "/usr/lib/habuild/habuild-agent",
            emulated: false,
        };
        f(&ctx)
    }

    #[test]
    fn golden_apiserver_command_line() {
        let argv = with_items(
            2,
            |_| {},
            |ctx| {
                assert_eq!(KubeControlPlane.gate(ctx), Gate::Run);
                KubeControlPlane.render(ctx).unwrap().services[0]
                    .argv
                    .join("\n")
            },
        );
        assert_eq!(
            argv,
            "/usr/bin/kube-apiserver
--advertise-address=10.77.0.2
--bind-address=10.77.0.2
--secure-port=6443
--allow-privileged=true
--authorization-mode=Node,RBAC
--client-ca-file=/etc/kubernetes/pki/ca.crt
--enable-admission-plugins=NodeRestriction
--enable-bootstrap-token-auth=true
--endpoint-reconciler-type=lease
--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt
--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt
--etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key
--etcd-servers=https://10.77.0.1:2379,https://10.77.0.2:2379,https://10.77.0.3:2379
--kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt
--kubelet-client-key=/etc/kubernetes/pki/apiserver-kubelet-client.key
--kubelet-preferred-address-types=InternalIP,Hostname
--proxy-client-cert-file=/etc/kubernetes/pki/front-proxy-client.crt
--proxy-client-key-file=/etc/kubernetes/pki/front-proxy-client.key
--requestheader-allowed-names=front-proxy-client
--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt
--requestheader-extra-headers-prefix=X-Remote-Extra-
--requestheader-group-headers=X-Remote-Group
--requestheader-username-headers=X-Remote-User
--service-account-issuer=https://kubernetes.default.svc.cluster.local
--service-account-key-file=/etc/kubernetes/pki/sa.pub
--service-account-signing-key-file=/etc/kubernetes/pki/sa.key
--service-cluster-ip-range=10.96.0.0/12
--tls-cert-file=/etc/kubernetes/pki/apiserver.crt
--tls-private-key-file=/etc/kubernetes/pki/apiserver.key"
        );
    }

    #[test]
    fn golden_controller_manager_and_scheduler_command_lines() {
        let (cm, sched) = with_items(
            1,
            |_| {},
            |ctx| {
                let r = KubeControlPlane.render(ctx).unwrap();
                (r.services[1].argv.join("\n"), r.services[2].argv.join("\n"))
            },
        );
        assert_eq!(
            cm,
            "/usr/bin/kube-controller-manager
--allocate-node-cidrs=false
--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf
--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf
--bind-address=127.0.0.1
--client-ca-file=/etc/kubernetes/pki/ca.crt
--cluster-name=lab
--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt
--cluster-signing-key-file=/etc/kubernetes/pki/ca.key
--controllers=*,bootstrapsigner,tokencleaner
--kubeconfig=/etc/kubernetes/controller-manager.conf
--leader-elect=true
--requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt
--root-ca-file=/etc/kubernetes/pki/ca.crt
--service-account-private-key-file=/etc/kubernetes/pki/sa.key
--use-service-account-credentials=true"
        );
        assert_eq!(
            sched,
            "/usr/bin/kube-scheduler
--authentication-kubeconfig=/etc/kubernetes/scheduler.conf
--authorization-kubeconfig=/etc/kubernetes/scheduler.conf
--bind-address=127.0.0.1
--kubeconfig=/etc/kubernetes/scheduler.conf
--leader-elect=true"
        );
    }

    #[test]
    fn emulated_control_planes_hold_their_leases_longer_and_wait_longer_for_etcd() {
        let flags = [
            "--leader-elect-lease-duration=60s",
            "--leader-elect-renew-deadline=40s",
            "--leader-elect-retry-period=8s",
        ];
        for emulated in [false, true] {
            let (cm, sched) = with_items(
                1,
                |_| {},
                |ctx| {
                    let ctx = Ctx { emulated, ..*ctx };
                    let r = KubeControlPlane.render(&ctx).unwrap();
                    (r.services[1].argv.clone(), r.services[2].argv.clone())
                },
            );
            let api = with_items(
                1,
                |_| {},
                |ctx| {
                    let ctx = Ctx { emulated, ..*ctx };
                    KubeControlPlane.render(&ctx).unwrap().services[0]
                        .argv
                        .clone()
                },
            );
            assert_eq!(
                api.iter().any(|a| a == "--etcd-healthcheck-timeout=10s"),
                emulated,
                "{api:?}"
            );
            for argv in [cm, sched] {
                for f in flags {
                    assert_eq!(argv.iter().any(|a| a == f), emulated, "{f} in {argv:?}");
                }
                // no other leader-election flag, emulated or not
                let other = argv
                    .iter()
                    .filter(|a| a.starts_with("--leader-elect") && *a != "--leader-elect=true")
                    .count();
                assert_eq!(other, if emulated { 3 } else { 0 }, "{argv:?}");
            }
        }
    }

    /// Flags 1.20 has that current releases removed (or the other way
    /// round) must not be rendered: a unit with an unknown flag does not
    /// start.
    #[test]
    fn no_flag_of_only_one_end_of_the_supported_range() {
        let argv = with_items(
            1,
            |_| {},
            |ctx| {
                let r = KubeControlPlane.render(ctx).unwrap();
                r.services
                    .iter()
                    .flat_map(|s| s.argv.clone())
                    .collect::<Vec<_>>()
            },
        );
        // Removed after 1.20 (1.24+ refuse them), or added after 1.20.
        for gone in [
            "--insecure-port",
            "--port=",
            "--address=",
            "--kubelet-https",
            "--experimental-cluster-signing-duration",
            "--feature-gates",
            "--service-account-api-audiences",
            "--cluster-signing-duration",
        ] {
            assert!(
                !argv.iter().any(|a| a.starts_with(gone)),
                "{gone} in {argv:?}"
            );
        }
    }

    #[test]
    fn kubeconfigs_name_the_local_apiserver_and_admin_conf_the_vip() {
        let files = with_items(3, |_| {}, |ctx| KubeControlPlane.render(ctx).unwrap().files);
        let text = |path: &str| {
            let f = files.iter().find(|f| f.path == path).expect(path);
            assert_eq!(f.mode, 0o600, "{path}");
            String::from_utf8(f.contents.clone()).unwrap()
        };
        let admin = text("etc/kubernetes/admin.conf");
        assert!(
            admin.contains("server: https://10.77.0.250:6443\n"),
            "{admin}"
        );
        assert!(admin.contains("user: kubernetes-admin\n"), "{admin}");
        let local = text(LOCAL_ADMIN);
        assert!(
            local.contains("server: https://10.77.0.3:6443\n"),
            "{local}"
        );
        for (name, user) in [
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
        ] {
            let t = text(&format!("etc/kubernetes/{name}.conf"));
            assert!(t.contains("server: https://10.77.0.3:6443\n"), "{t}");
            assert!(t.contains(&format!("user: \"{user}\"\n")), "{t}");
            use base64::Engine as _;
            let cert =
                base64::engine::general_purpose::STANDARD.encode(format!("PEM kube/{name}.crt"));
            assert!(t.contains(&cert), "{t}");
        }
    }

    #[test]
    fn a_node_the_site_file_keeps_out_of_kubernetes_is_never_control_plane_here() {
        use crate::steps::kube_bootstrap::KubeBootstrap;
        with_items(
            4,
            |_| {},
            |ctx| {
                let mut state = ctx.state.clone();
                state.members.get_mut(&4).unwrap().kubernetes = false;
                let off = Ctx {
                    state: &state,
                    ..*ctx
                };
                assert_eq!(KubeControlPlane.gate(&off), Gate::NotHere);
                assert_eq!(KubeBootstrap.gate(&off), Gate::NotHere);
                // Planned before its site file changed: it waits, saying why.
                state.members.get_mut(&2).unwrap().kubernetes = false;
                let two = Ctx {
                    me: 2,
                    state: &state,
                    ..*ctx
                };
                for g in [KubeControlPlane.gate(&two), KubeBootstrap.gate(&two)] {
                    match g {
                        Gate::Wait(w) => assert!(w.contains("kubernetes = false"), "{w}"),
                        g => panic!("{g:?}"),
                    }
                }
                // The other control-plane nodes are not affected.
                let one = Ctx {
                    me: 1,
                    state: &state,
                    ..*ctx
                };
                assert_eq!(KubeControlPlane.gate(&one), Gate::Run);
            },
        );
    }

    #[test]
    fn gates_and_refusals() {
        // Workers, and everyone with kubernetes.enabled = false: not here.
        with_items(
            4,
            |_| {},
            |ctx| assert_eq!(KubeControlPlane.gate(ctx), Gate::NotHere),
        );
        with_items(
            1,
            |c| c.kubernetes.enabled = false,
            |ctx| assert_eq!(KubeControlPlane.gate(ctx), Gate::NotHere),
        );
        // Without the client certificates: waiting, naming them.
        testutil::with_ctx(1, |ctx| match KubeControlPlane.gate(ctx) {
            Gate::Wait(w) => assert!(w.contains("kube/admin.crt"), "{w}"),
            g => panic!("{g:?}"),
        });
        // No binaries: refused with the contract's text.
        with_items(
            1,
            |_| {},
            |ctx| {
                let rec = Recording::default();
                let host = rec.host();
                assert_eq!(
                    KubeControlPlane.preflight(ctx, &host),
                    Err(StepError::Refused(NO_BINARIES.into()))
                );
                install_binaries(&host);
                nothing_serves_through_the_vip(&rec);
                assert_eq!(KubeControlPlane.preflight(ctx, &host), Ok(()));
            },
        );
    }

    #[test]
    fn health_comes_from_readyz_through_the_local_apiserver() {
        with_items(
            1,
            |_| {},
            |ctx| {
                let rec = Recording::default();
                let host = rec.host();
                probes_answer(&rec, false);
                assert_eq!(
                    KubeControlPlane.check(ctx, &host).unwrap(),
                    Check::Pending(
                        "apiserver at 10.77.0.1:6443 not ready yet: The connection to the server \
                     10.77.0.1:6443 was refused - did you specify the right host or port?"
                            .into()
                    )
                );
                probes_answer(&rec, true);
                assert_eq!(
                    KubeControlPlane.check(ctx, &host).unwrap(),
                    Check::Done("apiserver healthy at 10.77.0.1:6443".into())
                );
                assert_eq!(
                    rec.commands().last().unwrap(),
                    "/usr/bin/kubectl --kubeconfig=/etc/kubernetes/habuild/admin-local.conf \
                 --request-timeout=30s get --raw /readyz"
                );
            },
        );
    }

    const REFUSED: &str = "The connection to the server 10.77.0.1:6443 was refused - did you specify the right host or port?\n";

    /// Makes the next probes answer `ok` (or be refused); the `/version`
    /// probe through the VIP gets no answer.
    fn probes_answer(rec: &Recording, ok: bool) {
        rec.lock().answers.clear();
        nothing_serves_through_the_vip(rec);
        if ok {
            rec.answer("/usr/bin/kubectl", 0, "ok", "");
        } else {
            rec.answer("/usr/bin/kubectl", 1, "", REFUSED);
        }
    }

    #[test]
    fn a_control_plane_that_answered_stays_done_until_failures_persist() {
        use std::cell::Cell;
        with_items(
            1,
            |_| {},
            |ctx| {
                let rec = Recording::default();
                let host = rec.host();
                let clock = Cell::new(1_000u64);
                let check = || check_readyz(ctx, &host, &|| clock.get()).unwrap();
                // Never answered: a failure is pending, and nothing is kept.
                probes_answer(&rec, false);
                assert!(matches!(check(), Check::Pending(_)));
                assert_eq!(rec.file(HEALTH_MEMORY), None);
                probes_answer(&rec, true);
                assert_eq!(
                    check(),
                    Check::Done("apiserver healthy at 10.77.0.1:6443".into())
                );
                assert_eq!(rec.file(HEALTH_MEMORY).unwrap(), "last_ok 1000\n");
                // One failed probe, 40 s later: still done, saying so.
                clock.set(1_040);
                probes_answer(&rec, false);
                assert_eq!(
                    check(),
                    Check::Done(
                        "apiserver at 10.77.0.1:6443 last answered 40 s ago; the last probe \
                         failed (1 in a row for 0 s, tolerated until 2 in a row for 90 s): The \
                         connection to the server 10.77.0.1:6443 was refused - did you specify \
                         the right host or port?"
                            .into()
                    )
                );
                // Still failing 89 s after the first failure: done.
                clock.set(1_129);
                let Check::Done(d) = check() else {
                    panic!("within the grace")
                };
                assert!(
                    d.starts_with(
                        "apiserver at 10.77.0.1:6443 last answered 129 s ago; the last probe \
                         failed (2 in a row for 89 s"
                    ),
                    "{d}"
                );
                // 90 s: the failures persisted; pending, and forgotten.
                clock.set(1_130);
                assert_eq!(
                    check(),
                    Check::Pending(
                        "apiserver at 10.77.0.1:6443 not ready yet: The connection to the \
                         server 10.77.0.1:6443 was refused - did you specify the right host \
                         or port?"
                            .into()
                    )
                );
                assert_eq!(rec.file(HEALTH_MEMORY).unwrap(), "");
                clock.set(1_131);
                assert!(matches!(check(), Check::Pending(_)), "no memory any more");
                // It answers again: done, and the tolerance is back.
                probes_answer(&rec, true);
                assert!(matches!(check(), Check::Done(_)));
                clock.set(1_140);
                probes_answer(&rec, false);
                assert!(matches!(check(), Check::Done(_)));
                // A probe that answers in between ends a run of failures.
                clock.set(1_200);
                probes_answer(&rec, true);
                assert!(matches!(check(), Check::Done(_)));
                clock.set(1_400);
                probes_answer(&rec, false);
                assert!(matches!(check(), Check::Done(_)), "a new run starts at 1");
            },
        );
    }

    /// The chain's view: a failed probe after the apiserver answered leaves
    /// the step done (its replicated record too: kube-bootstrap's gate and
    /// other nodes' kubelets read it) and the later steps run; persisting
    /// failures make it pending and hold them back, as before.
    #[test]
    fn one_failed_probe_does_not_hold_back_the_later_steps() {
        struct Later;
        impl Step for Later {
            fn name(&self) -> &'static str {
                "later"
            }
            fn chain(&self) -> Chain {
                Chain::ControlPlane
            }
            fn gate(&self, _: &Ctx) -> Gate {
                Gate::Run
            }
            fn render(&self, _: &Ctx) -> Result<Rendered, StepError> {
                Ok(Rendered::default())
            }
            fn check(&self, _: &Ctx, _: &Host) -> Result<Check, StepError> {
                Ok(Check::Done("later done".into()))
            }
        }
        with_items(
            1,
            |_| {},
            |ctx| {
                let rec = Recording::default();
                let host = rec.host();
                install_binaries(&host);
                let steps: Vec<Box<dyn Step>> = vec![Box::new(KubeControlPlane), Box::new(Later)];
                let round = || crate::steps::converge(&steps, ctx, &host, &|_| false);
                probes_answer(&rec, true);
                let out = round();
                assert_eq!(
                    out[0].1,
                    crate::steps::Outcome::Done("apiserver healthy at 10.77.0.1:6443".into())
                );
                // One refused probe: still done, recorded done, the later step runs.
                probes_answer(&rec, false);
                let out = round();
                let crate::steps::Outcome::Done(d) = &out[0].1 else {
                    panic!("{out:?}")
                };
                assert!(d.contains("the last probe failed (1 in a row"), "{d}");
                assert_eq!(
                    out[0].1.status(),
                    Some((crate::state::StepStatus::Done, String::new()))
                );
                assert_eq!(
                    out[1],
                    ("later", crate::steps::Outcome::Done("later done".into()))
                );
                // Failing since 100 s ago (the memory says so): pending, and
                // the later step waits.
                let now = super::super::unix_now();
                let kept = Memory {
                    last_ok: Some(now - 200),
                    failing_since: Some(now - 100),
                    failures: 1,
                };
                host.files
                    .write(&FileSpec::new(HEALTH_MEMORY, 0o644, kept.render()))
                    .unwrap();
                let out = round();
                assert!(
                    matches!(&out[0].1, crate::steps::Outcome::Pending(p) if p.starts_with("apiserver at 10.77.0.1:6443 not ready yet")),
                    "{out:?}"
                );
                assert_eq!(
                    out[1],
                    (
                        "later",
                        crate::steps::Outcome::Waiting("an earlier step on this node".into())
                    )
                );
            },
        );
    }

    #[test]
    fn services_restart_when_their_kubeconfig_changes() {
        let fps = |name: &str| {
            let name = name.to_string();
            with_items(
                1,
                move |c| c.cluster.name = name,
                |ctx| {
                    KubeControlPlane
                        .render(ctx)
                        .unwrap()
                        .services
                        .iter()
                        .map(|s| s.fingerprint.clone())
                        .collect::<Vec<_>>()
                },
            )
        };
        let (a, b) = (fps("lab"), fps("prod"));
        assert_ne!(a[1], b[1], "controller-manager.conf names the cluster");
        assert_ne!(a[2], b[2], "scheduler.conf names the cluster");
        assert_eq!(a, fps("lab"), "stable");
    }

    const VIP_VERSION: &str =
        "/usr/bin/kubectl --kubeconfig=/dev/null --server=https://10.77.0.250:6443 \
         --certificate-authority=/etc/kubernetes/pki/ca.crt \
         --client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt \
         --client-key=/etc/kubernetes/pki/apiserver-kubelet-client.key --request-timeout=30s \
         get --raw /version";

    /// The binaries the step's preflight wants, on `host`.
    fn install_binaries(host: &Host) {
        for bin in [
            APISERVER_BIN,
            CONTROLLER_MANAGER_BIN,
            SCHEDULER_BIN,
            KUBECTL_BIN,
        ] {
            host.files.write(&FileSpec::new(bin, 0o755, "elf")).unwrap();
        }
    }

    /// No kube-apiserver answers `/version` through the VIP (the first
    /// control-plane node of a new cluster).
    fn nothing_serves_through_the_vip(rec: &Recording) {
        rec.answer(
            "/usr/bin/kubectl --kubeconfig=/dev/null",
            1,
            "",
            "The connection to the server 10.77.0.250:6443 was refused\n",
        );
    }

    /// A host with the binaries: this node's kube-apiserver at `mine`, the
    /// one serving the cluster through the VIP at `serving` (JSON
    /// `/version`).
    fn skew_host(mine: &str, serving: &str) -> (Recording, Host) {
        let rec = Recording::default();
        let host = rec.host();
        install_binaries(&host);
        rec.answer(
            VIP_VERSION,
            0,
            &format!(r#"{{"major":"1","gitVersion":"{serving}","platform":"linux/amd64"}}"#),
            "",
        );
        rec.answer(
            "/usr/bin/kube-apiserver --version",
            0,
            &format!("Kubernetes {mine}\n"),
            "",
        );
        (rec, host)
    }

    /// Under a root other than `/` (an agent of the namespace tests) every
    /// program the control-plane steps run is the one under that root, as
    /// the preflight finds it; with `/` (a node, the goldens above) the
    /// argv is `/usr/bin/...`.
    #[test]
    fn programs_run_from_under_the_host_root() {
        with_items(
            2,
            |_| {},
            |ctx| {
                let root = Path::new("/srv/node2");
                let ctx = Ctx { root, ..*ctx };
                let programs: Vec<String> = KubeControlPlane
                    .render(&ctx)
                    .unwrap()
                    .services
                    .into_iter()
                    .map(|s| s.argv[0].clone())
                    .chain([
                        kubectl(&ctx, GET_TIMEOUT_SECS, &["get", "nodes"]).argv[0].clone(),
                        vip_version_probe(&ctx).argv[0].clone(),
                        crate::steps::kube_bootstrap::apply_command(&ctx).argv[0].clone(),
                    ])
                    .collect();
                assert_eq!(
                    programs,
                    [
                        "/srv/node2/usr/bin/kube-apiserver",
                        "/srv/node2/usr/bin/kube-controller-manager",
                        "/srv/node2/usr/bin/kube-scheduler",
                        "/srv/node2/usr/bin/kubectl",
                        "/srv/node2/usr/bin/kubectl",
                        "/srv/node2/usr/bin/kubectl",
                    ]
                );
                let check = kubectl(&ctx, GET_TIMEOUT_SECS, &[]);
                assert!(
                    check.argv[1]
                        == "--kubeconfig=/srv/node2/etc/kubernetes/habuild/admin-local.conf",
                    "{:?}",
                    check.argv
                );
            },
        );
    }

    #[test]
    fn the_vip_version_probe_has_credentials_and_no_kubeconfig() {
        with_items(
            1,
            |_| {},
            |ctx| assert_eq!(vip_version_probe(ctx).display(), VIP_VERSION),
        );
    }

    #[test]
    fn an_apiserver_more_than_one_minor_from_the_serving_one_is_refused() {
        let steps: Vec<Box<dyn Step>> = vec![Box::new(KubeControlPlane)];
        with_items(
            2,
            |_| {},
            |ctx| {
                let text = "version skew: this node's kube-apiserver v1.22.0 is 2 minor versions \
                            newer than the kube-apiserver v1.20.2 serving the cluster (in an HA \
                            control plane the kube-apiservers may differ by at most 1 minor \
                            version)";
                let (rec, host) = skew_host("v1.22.0", "v1.20.2");
                let out = crate::steps::converge(&steps, ctx, &host, &|_| false);
                assert_eq!(out[0].1, crate::steps::Outcome::Failed(text.into()));
                assert!(
                    rec.lock().services.is_empty(),
                    "nothing started: {:?}",
                    rec.events()
                );
                // Older by 2: refused too.
                let (_, host) = skew_host("v1.18.0", "v1.20.2");
                assert!(matches!(
                    KubeControlPlane.preflight(ctx, &host),
                    Err(StepError::Refused(t)) if t.contains("2 minor versions older")
                ));
                // One minor apart, either way, and patch versions: allowed.
                for (mine, serving) in [
                    ("v1.21.0", "v1.20.2"),
                    ("v1.20.2", "v1.21.0"),
                    ("v1.20.9", "v1.20.2"),
                ] {
                    let (_, host) = skew_host(mine, serving);
                    assert_eq!(
                        KubeControlPlane.preflight(ctx, &host),
                        Ok(()),
                        "{mine} beside {serving}"
                    );
                }
            },
        );
    }

    #[test]
    fn the_apiserver_skew_is_judged_only_when_something_serves_and_before_it_starts() {
        with_items(
            2,
            |_| {},
            |ctx| {
                // Nothing answers through the VIP: start, without even
                // reading this node's version.
                let (rec, host) = skew_host("v1.22.0", "v1.20.2");
                rec.lock().answers.clear();
                nothing_serves_through_the_vip(&rec);
                assert_eq!(KubeControlPlane.preflight(ctx, &host), Ok(()));
                assert_eq!(rec.commands(), vec![VIP_VERSION.to_string()]);
                // This node's apiserver already runs: nothing is asked.
                let (rec, host) = skew_host("v1.22.0", "v1.20.2");
                crate::steps::apply(&KubeControlPlane.render(ctx).unwrap(), &host).unwrap();
                assert_eq!(KubeControlPlane.preflight(ctx, &host), Ok(()));
                assert!(rec.commands().is_empty(), "{:?}", rec.commands());
                // An answer that is no /version document: an error saying so.
                let (rec, host) = skew_host("v1.20.2", "v1.20.2");
                rec.lock().answers[0].1.stdout = "<html>".into();
                let e = KubeControlPlane.preflight(ctx, &host).unwrap_err();
                assert!(
                    matches!(&e, StepError::Render(t) if t.starts_with(
                        "the kube-apiserver serving the cluster (/version through the VIP): \
                         cannot read a Kubernetes version"
                    )),
                    "{e:?}"
                );
            },
        );
    }
}
