//! The `kubelet` step: containerd and the kubelet on every member, in
//! kubeadm's layout, so the node registers itself as
//! `system:node:<hostname>` with the client certificate the leader issued
//! (no TLS bootstrap, no CSR approval):
//!
//! - `/etc/kubernetes/kubelet.conf`: server `https://VIP:6443`, the item
//!   `kube/kubelet/<id>`;
//! - `/var/lib/kubelet/config.yaml`: a `KubeletConfiguration`
//!   (`kubelet.config.k8s.io/v1beta1`, the same in 1.20 and 1.28–1.31) with
//!   the systemd cgroup driver (cgroup v2; kubeadm 1.20 does not default
//!   it), webhook authentication/authorization against the cluster CA,
//!   cluster DNS at the service CIDR's tenth address, no certificate
//!   rotation (the leader issues the client certificate);
//! - `/var/lib/kubelet/kubeadm-flags.env`, read by kubeadm's drop-in that
//!   the image ships with `kubelet.service`: the CRI endpoint, the pause
//!   image (the same reference as containerd's `sandbox_image`, or kubelet
//!   1.20's image GC deletes it), node IP and hostname. It depends on the
//!   kubelet's version (`--container-runtime=remote` exists up to 1.26 and
//!   is required before 1.24), so it is written in [`Step::act`] after
//!   `kubelet --version`.
//!
//! Version skew ([`crate::kube::skew`]): before the kubelet is started, and
//! on every check, the step asks the control plane for its version
//! (`kubectl get --raw /version` with the node's own kubeconfig, so through
//! the VIP) and refuses (a [`StepError::Refused`] whose text starts with
//! "version skew:", shown as `refused` in `habuild cluster status`) when
//! the kubelet is newer than kube-apiserver or older than the policy
//! allows. The act compares the kubelet binary's `--version`; the check
//! the version the registered Node reports (the running kubelet's). A
//! control plane that does not answer `/version` is not a refusal: the act
//! then does not start a kubelet that is not running yet, and the check is
//! pending. A kubelet already running is never stopped by a refusal (it was
//! compared before it started; a control plane changed under it is shown,
//! not acted on). kube-proxy, the next step of the chain and from the same
//! image, waits while the kubelet is refused.
//!
//! The act part also starts containerd (the distribution's unit, enabled),
//! imports the image's archives listed in
//! `/usr/share/habuild/images/images.list` into containerd's `k8s.io`
//! namespace (the only one the CRI sees), only those whose reference
//! containerd does not have yet, and then makes the kubelet run as the
//! `kubelet` service, whose fingerprint covers its three files so a change
//! restarts it. On a systemd host the image's kubeadm drop-in still applies
//! to the unit and supplies the same command line.
//!
//! Check: this node's Node object is `Ready`, read with the kubelet's own
//! kubeconfig, and its kubelet version within the skew policy of the
//! control plane's.

use super::{api_server, base_gate, control_plane_gate, item, items_gate, require_binary, Ctx};
use super::{pod_network, CA_ITEM};
use crate::host::{last_lines, Cmd, FileSpec, Host, HostError, ServiceSpec};
use crate::kube::skew::{self, Component, Version};
use crate::kube::{
    kubeconfig, kubelet_item, request_timeout, DNS_DOMAIN, GET_TIMEOUT_SECS, IMAGES_DIR,
    KUBELET_DIR, KUBE_DIR, PAUSE_IMAGE,
};
use crate::steps::{fingerprint, Chain, Check, Gate, Rendered, Step, StepError};

pub struct Kubelet;

pub const KUBELET_BIN: &str = "usr/bin/kubelet";
pub const KUBELET_CONF: &str = "etc/kubernetes/kubelet.conf";
pub const CONFIG_YAML: &str = "var/lib/kubelet/config.yaml";
pub const FLAGS_ENV: &str = "var/lib/kubelet/kubeadm-flags.env";
pub const IMAGES_LIST: &str = "usr/share/habuild/images/images.list";
pub const CONTAINERD_SOCK: &str = "unix:///run/containerd/containerd.sock";
/// The kubelet hands pods the host's own resolv.conf: in the image a link
/// to systemd-resolved's list of the servers DHCP gave (not its 127.0.0.53
/// stub, which a pod cannot reach), made by `finalize-image`.
pub const RESOLV_CONF: &str = "etc/resolv.conf";

/// The cluster DNS address: the service CIDR's tenth address (kubeadm's rule).
pub fn cluster_dns(ctx: &Ctx) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(ctx.cfg.network.service_cidr.network() + 10)
}

fn my_hostname<'a>(ctx: &'a Ctx) -> Result<&'a str, StepError> {
    ctx.member(ctx.me)
        .map(|m| m.hostname.as_str())
        .ok_or_else(|| StepError::Render("no member record for this node".into()))
}

/// `/etc/kubernetes/kubelet.conf` (pure).
pub fn kubelet_conf(ctx: &Ctx) -> Result<String, StepError> {
    let stem = kubelet_item(ctx.me);
    let user = format!("system:node:{}", my_hostname(ctx)?);
    Ok(kubeconfig::render(&kubeconfig::Kubeconfig {
        cluster: &ctx.cfg.cluster.name,
        server: &api_server(ctx),
        ca_pem: item(ctx, CA_ITEM)?,
        user: &user,
        client_cert_pem: item(ctx, &format!("{stem}.crt"))?,
        client_key_pem: item(ctx, &format!("{stem}.key"))?,
    }))
}

/// `/var/lib/kubelet/config.yaml` (pure; valid for kubelet 1.20 to 1.31).
pub fn config_yaml(ctx: &Ctx) -> String {
    format!(
        "# Written by habuild-agent (kubelet step); do not edit.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
    cacheTTL: 0s
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: systemd
clusterDNS:
- {dns}
clusterDomain: {DNS_DOMAIN}
failSwapOn: true
healthzBindAddress: 127.0.0.1
healthzPort: 10248
resolvConf: {resolv}
rotateCertificates: false
serverTLSBootstrap: false
staticPodPath: {manifests}
",
        ca = ctx.path(&format!("{KUBE_DIR}/pki/ca.crt")),
        dns = cluster_dns(ctx),
        resolv = ctx.path(RESOLV_CONF),
        manifests = ctx.path(&format!("{KUBE_DIR}/manifests")),
    )
}

/// The kubelet's minor version from `kubelet --version`
/// ("Kubernetes v1.20.2"), for Kubernetes 1.x.
pub fn parse_minor(version: &str) -> Option<u32> {
    Version::from_version_output(version)
        .ok()
        .filter(|v| v.major == 1)
        .map(|v| v.minor)
}

/// `kubectl` as this node's kubelet: its kubeconfig (server
/// `https://VIP:6443`), the read timeout.
fn kubectl_as_node(ctx: &Ctx, args: &[&str]) -> Cmd {
    let mut argv = vec![
        "kubectl".to_string(),
        format!("--kubeconfig={}", ctx.path(KUBELET_CONF)),
        request_timeout(GET_TIMEOUT_SECS),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    Cmd::new(argv)
}

/// What the control plane said of its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiVersion {
    /// kube-apiserver's `/version` (`gitVersion`).
    Known(Version),
    /// `/version` did not answer (why): not known yet, not a refusal.
    NoAnswer(String),
}

/// Asks the control plane (through the VIP) for its version. An answer
/// that is not a `/version` document is an error.
pub fn control_plane_version(ctx: &Ctx, host: &Host) -> Result<ApiVersion, StepError> {
    let o = host
        .exec
        .output(&kubectl_as_node(ctx, &["get", "--raw", "/version"]))?;
    if !o.success() {
        return Ok(ApiVersion::NoAnswer(format!(
            "/version did not answer (kubectl exit {}): {}",
            o.code,
            last_lines(&o.stderr, 3)
        )));
    }
    Version::from_version_json(&o.stdout)
        .map(ApiVersion::Known)
        .map_err(|e| StepError::Render(format!("the control plane's /version: {e}")))
}

/// The refusal when the kubelet at `kubelet` must not work with
/// kube-apiserver at `api` (pure).
pub fn refuse_skew(kubelet: &Version, api: &Version) -> Result<(), StepError> {
    skew::against_apiserver(Component::Kubelet, kubelet, api)
        .map_err(|s| StepError::Refused(s.to_string()))
}

/// The flags kubeadm would put in `kubeadm-flags.env` for kubelet 1.`minor`
/// (pure). `--container-runtime=remote` is required before 1.24 and gone
/// in 1.27; `--container-runtime-endpoint` and
/// `--pod-infra-container-image` exist (deprecated late) through 1.31.
pub fn kubelet_flags(ctx: &Ctx, minor: u32) -> Result<Vec<String>, StepError> {
    let ip = ctx
        .my_ip()
        .ok_or_else(|| StepError::Render("no member record for this node".into()))?;
    let mut flags = Vec::new();
    if minor < 24 {
        flags.push("--container-runtime=remote".to_string());
    }
    flags.extend([
        format!("--container-runtime-endpoint={CONTAINERD_SOCK}"),
        format!("--pod-infra-container-image={PAUSE_IMAGE}"),
        format!("--node-ip={ip}"),
        format!("--hostname-override={}", my_hostname(ctx)?),
    ]);
    Ok(flags)
}

/// `kubeadm-flags.env` (pure).
pub fn flags_env(flags: &[String]) -> String {
    format!("KUBELET_KUBEADM_ARGS=\"{}\"\n", flags.join(" "))
}

/// The kubelet service: the drop-in's command line, and a fingerprint over
/// every file it reads (pure).
pub fn service(ctx: &Ctx, flags: &[String], files: &[&FileSpec]) -> ServiceSpec {
    let mut argv = vec![
        format!("/{KUBELET_BIN}"),
        format!("--kubeconfig={}", ctx.path(KUBELET_CONF)),
        format!("--config={}", ctx.path(CONFIG_YAML)),
    ];
    argv.extend(flags.iter().cloned());
    ServiceSpec {
        name: "kubelet".into(),
        description: "kubelet: The Kubernetes Node Agent (habuild)".into(),
        argv,
        fingerprint: fingerprint(files.iter().map(|f| f.contents.as_slice())),
    }
}

/// `images.list`: `(file, reference)` per non-empty, non-comment line.
pub fn parse_images_list(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The archives to import: those whose reference is not among `present`
/// (`ctr images ls -q`, one reference per line) (pure).
pub fn missing_images(list: &[(String, String)], present: &str) -> Vec<(String, String)> {
    let have: Vec<&str> = present.lines().map(str::trim).collect();
    list.iter()
        .filter(|(_, r)| !have.contains(&r.as_str()))
        .cloned()
        .collect()
}

fn ctr(args: &[&str]) -> Cmd {
    let mut argv = vec!["ctr", "-n", "k8s.io"];
    argv.extend_from_slice(args);
    Cmd::new(argv)
}

/// Imports the image's archives whose references containerd lacks, and
/// fails if one is still missing afterwards.
fn seed_images(ctx: &Ctx, host: &Host) -> Result<(), StepError> {
    let Some(list) = host.files.read(IMAGES_LIST)? else {
        tracing::warn!("no {IMAGES_LIST}: no images to seed");
        return Ok(());
    };
    let list = parse_images_list(&String::from_utf8_lossy(&list));
    let ls = ctr(&["images", "ls", "-q"]);
    let missing = missing_images(&list, &host.exec.run(&ls)?.stdout);
    if missing.is_empty() {
        return Ok(());
    }
    for (file, _) in &missing {
        let path = ctx.path(&format!("{IMAGES_DIR}/{file}"));
        host.exec.run(&ctr(&["images", "import", &path]))?;
    }
    let still = missing_images(&missing, &host.exec.run(&ls)?.stdout);
    match still.first() {
        None => Ok(()),
        Some((file, reference)) => Err(StepError::Host(HostError::Command {
            command: format!("ctr -n k8s.io images import {file}"),
            message: format!("containerd has no {reference} after importing {file}"),
        })),
    }
}

impl Step for Kubelet {
    fn name(&self) -> &'static str {
        "kubelet"
    }

    fn chain(&self) -> Chain {
        Chain::ControlPlane
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        if let Err(g) = base_gate(ctx) {
            return g;
        }
        if !ctx.done_on("pod-network", &[ctx.me]) {
            return Gate::Wait("pod-network done on this node".into());
        }
        if let Err(g) = control_plane_gate(ctx) {
            return g;
        }
        let stem = kubelet_item(ctx.me);
        match items_gate(
            ctx,
            &[
                CA_ITEM.to_string(),
                format!("{stem}.crt"),
                format!("{stem}.key"),
            ],
        ) {
            Ok(()) => Gate::Run,
            Err(g) => g,
        }
    }

    fn preflight(&self, _ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        require_binary(host, KUBELET_BIN)?;
        if host.files.exists(pod_network::CONFLIST) {
            Ok(())
        } else {
            Err(StepError::Render(format!(
                "/{} is missing (pod-network step)",
                pod_network::CONFLIST
            )))
        }
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        Ok(Rendered {
            files: vec![
                FileSpec::new(KUBELET_CONF, 0o600, kubelet_conf(ctx)?),
                FileSpec::new(CONFIG_YAML, 0o644, config_yaml(ctx)),
            ],
            commands: vec![Cmd::new([
                "install",
                "-d",
                "-m",
                "0755",
                &ctx.path(&format!("{KUBE_DIR}/manifests")),
                &ctx.path(KUBELET_DIR),
            ])],
            services: vec![],
        })
    }

    fn act(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        let version = host
            .exec
            .run(&Cmd::new([format!("/{KUBELET_BIN}"), "--version".into()]))?;
        let kubelet = Version::from_version_output(&version.stdout).map_err(|e| {
            StepError::Render(format!(
                "cannot read the kubelet's version from {:?}: {}",
                version.stdout.trim(),
                e.why
            ))
        })?;
        // Before anything is started: a kubelet the control plane's version
        // does not allow is refused.
        let api = control_plane_version(ctx, host)?;
        if let ApiVersion::Known(api) = &api {
            refuse_skew(&kubelet, api)?;
        }
        let flags = kubelet_flags(ctx, kubelet.minor)?;
        let env = FileSpec::new(FLAGS_ENV, 0o644, flags_env(&flags));
        host.files.write(&env)?;
        if !host.services.running("containerd") {
            host.exec.run(&Cmd::new([
                "systemctl",
                "enable",
                "--no-reload",
                "--now",
                "containerd.service",
            ]))?;
        }
        seed_images(ctx, host)?;
        let rendered = self.render(ctx)?;
        let mut files: Vec<&FileSpec> = rendered.files.iter().collect();
        files.push(&env);
        if let ApiVersion::NoAnswer(why) = &api {
            if !host.services.running("kubelet") {
                // The check says pending; the next round asks again.
                tracing::info!(%why, "kubelet not started: the control plane's version is unknown");
                return Ok(());
            }
        }
        host.services.ensure(&service(ctx, &flags, &files))?;
        Ok(())
    }

    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        let name = my_hostname(ctx)?;
        let o = host.exec.output(&kubectl_as_node(
            ctx,
            &[
                "get",
                "node",
                name,
                "-o",
                r#"jsonpath={.status.nodeInfo.kubeletVersion} {.status.conditions[?(@.type=="Ready")].status}"#,
            ],
        ))?;
        // "<kubelet version> <Ready status>"; either may be empty.
        let mut words = o.stdout.splitn(2, ' ');
        let reported = words.next().unwrap_or("").trim();
        let status = words.next().unwrap_or("").trim();
        if o.success() {
            // On every check: the running kubelet against the control plane.
            match control_plane_version(ctx, host)? {
                ApiVersion::NoAnswer(why) => {
                    return Ok(Check::Pending(format!(
                        "node {name} Ready={}; the control plane's version is unknown: {why}",
                        if status.is_empty() { "unknown" } else { status }
                    )))
                }
                ApiVersion::Known(api) => {
                    let kubelet = Version::parse(reported).map_err(|e| {
                        StepError::Render(format!(
                            "node {name} reports no readable kubelet version: {e}"
                        ))
                    })?;
                    refuse_skew(&kubelet, &api)?;
                }
            }
        }
        if o.success() && status == "True" {
            Ok(Check::Done(format!("node {name} Ready")))
        } else if o.success() {
            Ok(Check::Pending(format!(
                "node {name} Ready={}",
                if status.is_empty() { "unknown" } else { status }
            )))
        } else {
            Ok(Check::Pending(format!(
                "node {name} not registered yet (kubectl exit {}): {}",
                o.code,
                last_lines(&o.stderr, 3)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{Event, Recording};
    use crate::steps::node::testutil::with_kube_ctx;
    use crate::steps::node::CONTROL_PLANE_STEP;

    const READY: &[(u64, &str)] = &[(4, "pod-network"), (2, CONTROL_PLANE_STEP)];

    #[test]
    fn gates_wait_for_pod_network_here_the_control_plane_and_the_items() {
        with_kube_ctx(4, &[], true, |ctx| {
            assert_eq!(
                Kubelet.gate(ctx),
                Gate::Wait("pod-network done on this node".into())
            );
        });
        with_kube_ctx(
            4,
            &[(4, "pod-network"), (4, CONTROL_PLANE_STEP)],
            true,
            |ctx| {
                assert_eq!(
                    Kubelet.gate(ctx),
                    Gate::Wait("kube-control-plane done on a control-plane node".into()),
                    "the worker's own record does not count"
                );
            },
        );
        with_kube_ctx(4, READY, false, |ctx| match Kubelet.gate(ctx) {
            Gate::Wait(w) => assert!(w.contains("kube/kubelet/0000000000000004.crt"), "{w}"),
            g => panic!("{g:?}"),
        });
        with_kube_ctx(4, READY, true, |ctx| {
            assert_eq!(Kubelet.gate(ctx), Gate::Run)
        });
        let mut cfg = crate::steps::testutil::cfg();
        cfg.kubernetes.enabled = false;
        with_kube_ctx(4, READY, true, |ctx| {
            let ctx = Ctx { cfg: &cfg, ..*ctx };
            assert_eq!(Kubelet.gate(&ctx), Gate::NotHere);
        });
    }

    #[test]
    fn golden_files_and_flags() {
        with_kube_ctx(4, READY, true, |ctx| {
            let conf = kubelet_conf(ctx).unwrap();
            assert!(
                conf.contains("    server: https://10.77.0.250:6443\n"),
                "{conf}"
            );
            assert!(conf.contains("- name: \"system:node:n4\"\n"), "{conf}");
            let yaml = config_yaml(ctx);
            assert_eq!(
                yaml,
                "# Written by habuild-agent (kubelet step); do not edit.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
    cacheTTL: 0s
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
failSwapOn: true
healthzBindAddress: 127.0.0.1
healthzPort: 10248
resolvConf: /etc/resolv.conf
rotateCertificates: false
serverTLSBootstrap: false
staticPodPath: /etc/kubernetes/manifests
"
            );
            // 1.20: the remote runtime must be named; 1.28-1.31: the flag is gone.
            assert_eq!(
                flags_env(&kubelet_flags(ctx, 20).unwrap()),
                "KUBELET_KUBEADM_ARGS=\"--container-runtime=remote \
                 --container-runtime-endpoint=unix:///run/containerd/containerd.sock \
                 --pod-infra-container-image=registry.k8s.io/pause:3.2 \
                 --node-ip=10.77.0.4 --hostname-override=n4\"\n"
            );
            for minor in [28, 31] {
                assert_eq!(
                    kubelet_flags(ctx, minor).unwrap(),
                    vec![
                        "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
                        "--pod-infra-container-image=registry.k8s.io/pause:3.2",
                        "--node-ip=10.77.0.4",
                        "--hostname-override=n4",
                    ]
                );
            }
        });
        assert_eq!(parse_minor("Kubernetes v1.20.2\n"), Some(20));
        assert_eq!(parse_minor("Kubernetes v1.31.0-rc.1"), Some(31));
        assert_eq!(parse_minor("garbage"), None);
    }

    #[test]
    fn images_missing_from_containerd_are_imported_once() {
        let list = parse_images_list(
            "# seeded\npause.tar registry.k8s.io/pause:3.2\n\nhttpd.tar example.org/httpd:1\n",
        );
        assert_eq!(list.len(), 2);
        assert_eq!(
            missing_images(&list, "registry.k8s.io/pause:3.2\nsha256:abc\n"),
            vec![("httpd.tar".to_string(), "example.org/httpd:1".to_string())]
        );
        assert!(
            missing_images(&list, "example.org/httpd:1\nregistry.k8s.io/pause:3.2\n").is_empty()
        );
    }

    #[test]
    fn act_starts_containerd_seeds_images_and_runs_the_kubelet() {
        with_kube_ctx(4, READY, true, |ctx| {
            let rec = Recording::default();
            let host = rec.host();
            assert_eq!(
                Kubelet.preflight(ctx, &host).unwrap_err().to_string(),
                "this image has no Kubernetes binaries (profile kube.source = none)"
            );
            host.files
                .write(&FileSpec::new(KUBELET_BIN, 0o755, "elf"))
                .unwrap();
            host.files
                .write(&FileSpec::new(pod_network::CONFLIST, 0o644, "{}"))
                .unwrap();
            host.files
                .write(&FileSpec::new(
                    IMAGES_LIST,
                    0o644,
                    "pause.tar registry.k8s.io/pause:3.2\n",
                ))
                .unwrap();
            Kubelet.preflight(ctx, &host).unwrap();
            rec.answer("/usr/bin/kubelet --version", 0, "Kubernetes v1.20.2\n", "");
            rec.answer(VERSION_CMD, 0, &version_json("v1.20.2"), "");
            // containerd lacks the pause image: import, then it is there.
            rec.answer("ctr -n k8s.io images ls -q", 0, "", "");
            crate::steps::apply(&Kubelet.render(ctx).unwrap(), &host).unwrap();
            let e = Kubelet.act(ctx, &host).unwrap_err().to_string();
            assert!(
                e.contains("containerd has no registry.k8s.io/pause:3.2"),
                "{e}"
            );
            rec.lock().answers.retain(|(p, _)| !p.starts_with("ctr"));
            rec.answer(
                "ctr -n k8s.io images ls -q",
                0,
                "registry.k8s.io/pause:3.2\n",
                "",
            );
            Kubelet.act(ctx, &host).unwrap();
            let cmds = rec.commands();
            assert!(
                cmds.contains(&"systemctl enable --no-reload --now containerd.service".to_string())
            );
            assert_eq!(
                cmds.iter()
                    .filter(|c| c.starts_with("ctr -n k8s.io images import"))
                    .collect::<Vec<_>>(),
                vec!["ctr -n k8s.io images import /usr/share/habuild/images/pause.tar"],
                "imported once, and only while missing"
            );
            assert!(rec
                .file(FLAGS_ENV)
                .unwrap()
                .contains("--container-runtime=remote "));
            assert_eq!(rec.lock().files[KUBELET_CONF].mode, 0o600);
            let svc = rec.lock().services["kubelet"].clone();
            assert_eq!(svc.argv[0], "/usr/bin/kubelet");
            assert!(svc
                .argv
                .contains(&"--config=/var/lib/kubelet/config.yaml".to_string()));
            assert!(svc.argv.contains(&"--hostname-override=n4".to_string()));
            // Same files: the service is left alone; another node IP would restart it.
            let n = rec.events().len();
            Kubelet.act(ctx, &host).unwrap();
            assert!(
                !rec.events()[n..]
                    .iter()
                    .any(|e| matches!(e, Event::Ensured(_))),
                "{:?}",
                &rec.events()[n..]
            );
        });
    }

    #[test]
    fn done_only_when_the_node_is_ready() {
        with_kube_ctx(4, READY, true, |ctx| {
            let rec = Recording::default();
            let host = rec.host();
            rec.answer(
                "kubectl",
                1,
                "",
                "Error from server (NotFound): nodes \"n4\" not found\n",
            );
            assert_eq!(
                Kubelet.check(ctx, &host).unwrap(),
                Check::Pending(
                    "node n4 not registered yet (kubectl exit 1): Error from server (NotFound): nodes \"n4\" not found".into()
                )
            );
            assert_eq!(
                rec.commands()[0],
                "kubectl --kubeconfig=/etc/kubernetes/kubelet.conf --request-timeout=30s get node n4 -o 'jsonpath={.status.nodeInfo.kubeletVersion} {.status.conditions[?(@.type==\"Ready\")].status}'"
            );
            assert_eq!(rec.commands().len(), 1, "an unregistered node: no /version");
            rec.lock().answers.clear();
            rec.answer(VERSION_CMD, 0, &version_json("v1.20.2"), "");
            rec.answer("kubectl", 0, "v1.20.2 False", "");
            assert_eq!(
                Kubelet.check(ctx, &host).unwrap(),
                Check::Pending("node n4 Ready=False".into())
            );
            rec.lock().answers.clear();
            rec.answer(VERSION_CMD, 0, &version_json("v1.20.2"), "");
            rec.answer("kubectl", 0, "v1.20.2 True", "");
            assert_eq!(
                Kubelet.check(ctx, &host).unwrap(),
                Check::Done("node n4 Ready".into())
            );
        });
    }

    const VERSION_CMD: &str =
        "kubectl --kubeconfig=/etc/kubernetes/kubelet.conf --request-timeout=30s get --raw /version";
    const NODE_CMD: &str =
        "kubectl --kubeconfig=/etc/kubernetes/kubelet.conf --request-timeout=30s get node n4 ";
    const UNREACHABLE: &str =
        "Unable to connect to the server: dial tcp 10.77.0.250:6443: connect: connection refused\n";

    /// kube-apiserver's `/version` document for `git_version`.
    fn version_json(git_version: &str) -> String {
        format!(
            r#"{{"major":"1","minor":"x","gitVersion":"{git_version}","gitTreeState":"clean","platform":"linux/amd64"}}"#
        )
    }

    /// A host with the kubelet binary (answering `--version` with
    /// `kubelet`), the pod network's conflist and no images to seed.
    fn node_host(kubelet: &str) -> (Recording, Host) {
        let rec = Recording::default();
        let host = rec.host();
        host.files
            .write(&FileSpec::new(KUBELET_BIN, 0o755, "elf"))
            .unwrap();
        host.files
            .write(&FileSpec::new(pod_network::CONFLIST, 0o644, "{}"))
            .unwrap();
        rec.answer(
            "/usr/bin/kubelet --version",
            0,
            &format!("Kubernetes {kubelet}\n"),
            "",
        );
        (rec, host)
    }

    fn round(ctx: &Ctx, host: &Host) -> crate::steps::Outcome {
        let steps: Vec<Box<dyn Step>> = vec![Box::new(Kubelet)];
        crate::steps::converge(&steps, ctx, host, &|_| false)
            .remove(0)
            .1
    }

    fn kubelet_started(rec: &Recording) -> bool {
        rec.events()
            .iter()
            .any(|e| matches!(e, Event::Ensured(n) if n == "kubelet"))
    }

    #[test]
    fn the_same_minor_as_the_control_plane_proceeds() {
        with_kube_ctx(4, READY, true, |ctx| {
            let (rec, host) = node_host("v1.20.2");
            // Patch versions do not matter, either way.
            rec.answer(VERSION_CMD, 0, &version_json("v1.20.5"), "");
            rec.answer(NODE_CMD, 0, "v1.20.2 True", "");
            assert_eq!(
                round(ctx, &host),
                crate::steps::Outcome::Done("node n4 Ready".into())
            );
            assert!(kubelet_started(&rec));
            assert_eq!(
                rec.commands()
                    .iter()
                    .filter(|c| c.as_str() == VERSION_CMD)
                    .count(),
                2,
                "asked before starting and on the check: {:?}",
                rec.commands()
            );
        });
    }

    #[test]
    fn a_kubelet_newer_than_the_control_plane_is_refused_and_never_started() {
        let text = "version skew: kubelet v1.31.0 is newer than the control plane's \
                    kube-apiserver v1.28.3 (a kubelet may be up to 3 minor versions older than \
                    kube-apiserver, never newer)";
        with_kube_ctx(4, READY, true, |ctx| {
            let (rec, host) = node_host("v1.31.0");
            rec.answer(VERSION_CMD, 0, &version_json("v1.28.3"), "");
            rec.answer(NODE_CMD, 0, "v1.31.0 True", "");
            assert_eq!(
                Kubelet.act(ctx, &host),
                Err(StepError::Refused(text.into()))
            );
            let out = round(ctx, &host);
            assert_eq!(out, crate::steps::Outcome::Failed(text.into()));
            // The replicated record carries the text status shows as a refusal.
            assert_eq!(
                out.status(),
                Some((crate::state::StepStatus::Failed, text.into()))
            );
            assert!(!kubelet_started(&rec), "{:?}", rec.events());
            assert!(
                rec.file(FLAGS_ENV).is_none(),
                "nothing of the kubelet's written"
            );
            assert!(
                !rec.commands().iter().any(|c| c.starts_with("systemctl")),
                "{:?}",
                rec.commands()
            );
            // The check refuses too (a node that registered before).
            assert_eq!(
                Kubelet.check(ctx, &host),
                Err(StepError::Refused(text.into()))
            );
        });
    }

    #[test]
    fn a_kubelet_too_old_for_the_control_plane_is_refused() {
        let text = "version skew: kubelet v1.20.2 is 3 minor versions older than the control \
                    plane's kube-apiserver v1.23.0 (a kubelet older than 1.25 may be up to 2 \
                    minor versions older than kube-apiserver, never newer)";
        with_kube_ctx(4, READY, true, |ctx| {
            let (rec, host) = node_host("v1.20.2");
            rec.answer(VERSION_CMD, 0, &version_json("v1.23.0"), "");
            assert_eq!(
                round(ctx, &host),
                crate::steps::Outcome::Failed(text.into())
            );
            assert!(!kubelet_started(&rec));
            // 1.28-era: 3 older is allowed, 4 is not.
            let (rec, host) = node_host("v1.28.3");
            rec.answer(VERSION_CMD, 0, &version_json("v1.31.0"), "");
            rec.answer(NODE_CMD, 0, "v1.28.3 True", "");
            assert_eq!(
                round(ctx, &host),
                crate::steps::Outcome::Done("node n4 Ready".into())
            );
            rec.lock().answers.retain(|(p, _)| p != VERSION_CMD);
            rec.lock()
                .answers
                .insert(0, (VERSION_CMD.into(), output(&version_json("v1.32.0"))));
            // The control plane moved on under a running kubelet: the check
            // refuses, the kubelet is left running.
            let e = Kubelet.check(ctx, &host).unwrap_err();
            assert!(
                matches!(&e, StepError::Refused(t) if t.starts_with(
                    "version skew: kubelet v1.28.3 is 4 minor versions older than the control \
                     plane's kube-apiserver v1.32.0"
                )),
                "{e:?}"
            );
            assert!(
                !rec.events().iter().any(|e| matches!(e, Event::Stopped(_))),
                "{:?}",
                rec.events()
            );
        });
    }

    fn output(stdout: &str) -> crate::host::Output {
        crate::host::Output {
            code: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn a_control_plane_whose_version_is_unknown_is_waited_for_not_refused() {
        with_kube_ctx(4, READY, true, |ctx| {
            let (rec, host) = node_host("v1.20.2");
            rec.answer(VERSION_CMD, 1, "", UNREACHABLE);
            rec.answer(NODE_CMD, 1, "", UNREACHABLE);
            let out = round(ctx, &host);
            assert!(
                matches!(&out, crate::steps::Outcome::Pending(p) if p.starts_with("node n4 not registered yet")),
                "{out:?}"
            );
            assert!(!kubelet_started(&rec), "not started on an unknown version");
            assert!(
                rec.commands()
                    .contains(&"systemctl enable --no-reload --now containerd.service".to_string()),
                "containerd and the images are prepared meanwhile"
            );
            // The node answers but /version does not: pending, saying why.
            rec.lock().answers.retain(|(p, _)| p != NODE_CMD);
            rec.answer(NODE_CMD, 0, "v1.20.2 True", "");
            assert_eq!(
                Kubelet.check(ctx, &host).unwrap(),
                Check::Pending(
                    "node n4 Ready=True; the control plane's version is unknown: /version did \
                     not answer (kubectl exit 1): Unable to connect to the server: dial tcp \
                     10.77.0.250:6443: connect: connection refused"
                        .into()
                )
            );
            // It answers: the kubelet starts and the step is done.
            rec.lock().answers.retain(|(p, _)| p != VERSION_CMD);
            rec.lock()
                .answers
                .insert(0, (VERSION_CMD.into(), output(&version_json("v1.20.2"))));
            assert_eq!(
                round(ctx, &host),
                crate::steps::Outcome::Done("node n4 Ready".into())
            );
            assert!(kubelet_started(&rec));
            // A running kubelet is kept (not stopped, not restarted) while
            // /version does not answer.
            rec.lock().answers.retain(|(p, _)| p != VERSION_CMD);
            rec.answer(VERSION_CMD, 1, "", UNREACHABLE);
            let n = rec.events().len();
            assert!(matches!(
                round(ctx, &host),
                crate::steps::Outcome::Pending(_)
            ));
            assert!(
                !rec.events()[n..]
                    .iter()
                    .any(|e| matches!(e, Event::Stopped(_) | Event::Ensured(_))),
                "{:?}",
                &rec.events()[n..]
            );
        });
    }

    #[test]
    fn an_unreadable_version_is_an_error_that_says_so() {
        with_kube_ctx(4, READY, true, |ctx| {
            let (rec, host) = node_host("v1.20.2");
            rec.answer(VERSION_CMD, 0, "<html>not kubernetes</html>", "");
            let e = Kubelet.act(ctx, &host).unwrap_err();
            assert!(
                matches!(&e, StepError::Render(t) if t.starts_with(
                    "the control plane's /version: cannot read a Kubernetes version"
                )),
                "{e:?}"
            );
            let (rec, host) = node_host("");
            rec.lock().answers.clear();
            rec.answer(
                "/usr/bin/kubelet --version",
                0,
                "kubelet built from nowhere\n",
                "",
            );
            let e = Kubelet.act(ctx, &host).unwrap_err().to_string();
            assert_eq!(
                e,
                "cannot read the kubelet's version from \"kubelet built from nowhere\": no word \
                 like v1.20.2"
            );
            assert!(!kubelet_started(&rec));
        });
    }
}
