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
//! kubeconfig.

use super::{api_server, base_gate, control_plane_gate, item, items_gate, require_binary, Ctx};
use super::{pod_network, CA_ITEM};
use crate::host::{last_lines, Cmd, FileSpec, Host, HostError, ServiceSpec};
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
/// The image has no systemd-resolved (configs/debian-12.toml): the
/// kubelet hands pods the host's own resolv.conf.
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
/// ("Kubernetes v1.20.2").
pub fn parse_minor(version: &str) -> Option<u32> {
    let v = version.split_whitespace().find(|w| w.starts_with("v1."))?;
    v.trim_start_matches("v1.").split('.').next()?.parse().ok()
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
        let minor = parse_minor(&version.stdout).ok_or_else(|| {
            StepError::Render(format!(
                "cannot read the kubelet's version from {:?}",
                version.stdout.trim()
            ))
        })?;
        let flags = kubelet_flags(ctx, minor)?;
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
        host.services.ensure(&service(ctx, &flags, &files))?;
        Ok(())
    }

    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        let name = my_hostname(ctx)?;
        let o = host.exec.output(&Cmd::new([
            "kubectl".to_string(),
            format!("--kubeconfig={}", ctx.path(KUBELET_CONF)),
            request_timeout(GET_TIMEOUT_SECS),
            "get".into(),
            "node".into(),
            name.to_string(),
            "-o".into(),
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#.into(),
        ]))?;
        let status = o.stdout.trim();
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
                "kubectl --kubeconfig=/etc/kubernetes/kubelet.conf --request-timeout=30s get node n4 -o 'jsonpath={.status.conditions[?(@.type==\"Ready\")].status}'"
            );
            rec.lock().answers.clear();
            rec.answer("kubectl", 0, "False", "");
            assert_eq!(
                Kubelet.check(ctx, &host).unwrap(),
                Check::Pending("node n4 Ready=False".into())
            );
            rec.lock().answers.clear();
            rec.answer("kubectl", 0, "True", "");
            assert_eq!(
                Kubelet.check(ctx, &host).unwrap(),
                Check::Done("node n4 Ready".into())
            );
        });
    }
}
