//! The `kube-proxy` step: Services (ClusterIP, NodePort) on every member,
//! kube-proxy in iptables mode on the host, as the `kube-proxy` service
//! (a unit written under `/etc/systemd/system` on a systemd host):
//!
//! - `/var/lib/kube-proxy/kubeconfig.conf`: server `https://VIP:6443`, the
//!   item `kube/kube-proxy` (`CN=system:kube-proxy`, which Kubernetes'
//!   default RBAC binds to `system:node-proxier`);
//! - `/var/lib/kube-proxy/config.conf`: a `KubeProxyConfiguration`
//!   (`kubeproxy.config.k8s.io/v1alpha1`, the same in 1.20 and 1.28–1.31),
//!   mode iptables, `clusterCIDR` = `network.pod_cidr` (traffic to a
//!   Service from outside the pod network is masqueraded), the node's
//!   hostname.
//!
//! Check: the service runs and its `KUBE-SERVICES` chain exists in the nat
//! table.

use super::CA_ITEM;
use super::{api_server, base_gate, control_plane_gate, item, items_gate, require_binary, Ctx};
use crate::host::{last_lines, Cmd, FileSpec, Host, ServiceSpec};
use crate::kube::{kubeconfig, KUBE_PROXY_ITEM};
use crate::steps::{fingerprint, Chain, Check, Gate, Rendered, Step, StepError};

pub struct KubeProxy;

pub const KUBE_PROXY_BIN: &str = "usr/bin/kube-proxy";
pub const KUBECONFIG: &str = "var/lib/kube-proxy/kubeconfig.conf";
pub const CONFIG: &str = "var/lib/kube-proxy/config.conf";
pub const SERVICE: &str = "kube-proxy";

/// `/var/lib/kube-proxy/kubeconfig.conf` (pure).
pub fn kubeconfig_conf(ctx: &Ctx) -> Result<String, StepError> {
    Ok(kubeconfig::render(&kubeconfig::Kubeconfig {
        cluster: &ctx.cfg.cluster.name,
        server: &api_server(ctx),
        ca_pem: item(ctx, CA_ITEM)?,
        user: "system:kube-proxy",
        client_cert_pem: item(ctx, &format!("{KUBE_PROXY_ITEM}.crt"))?,
        client_key_pem: item(ctx, &format!("{KUBE_PROXY_ITEM}.key"))?,
    }))
}

/// `/var/lib/kube-proxy/config.conf` (pure).
pub fn config_conf(ctx: &Ctx) -> Result<String, StepError> {
    let hostname = ctx
        .member(ctx.me)
        .map(|m| m.hostname.as_str())
        .ok_or_else(|| StepError::Render("no member record for this node".into()))?;
    Ok(format!(
        "# Written by habuild-agent (kube-proxy step); do not edit.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: {kubeconfig}
clusterCIDR: {cidr}
hostnameOverride: {hostname}
mode: iptables
",
        kubeconfig = ctx.path(KUBECONFIG),
        cidr = ctx.cfg.network.pod_cidr,
    ))
}

impl Step for KubeProxy {
    fn name(&self) -> &'static str {
        "kube-proxy"
    }

    fn chain(&self) -> Chain {
        Chain::ControlPlane
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        if let Err(g) = base_gate(ctx) {
            return g;
        }
        if let Err(g) = control_plane_gate(ctx) {
            return g;
        }
        match items_gate(
            ctx,
            &[
                CA_ITEM.to_string(),
                format!("{KUBE_PROXY_ITEM}.crt"),
                format!("{KUBE_PROXY_ITEM}.key"),
            ],
        ) {
            Ok(()) => Gate::Run,
            Err(g) => g,
        }
    }

    fn preflight(&self, _ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        require_binary(host, KUBE_PROXY_BIN)
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        let kubeconfig = FileSpec::new(KUBECONFIG, 0o600, kubeconfig_conf(ctx)?);
        let config = FileSpec::new(CONFIG, 0o644, config_conf(ctx)?);
        let service = ServiceSpec {
            name: SERVICE.into(),
            description: "kube-proxy: Kubernetes Services on this node (habuild)".into(),
            argv: vec![
                format!("/{KUBE_PROXY_BIN}"),
                format!("--config={}", ctx.path(CONFIG)),
            ],
            fingerprint: fingerprint([kubeconfig.contents.as_slice(), config.contents.as_slice()]),
        };
        Ok(Rendered {
            files: vec![kubeconfig, config],
            commands: vec![],
            services: vec![service],
        })
    }

    fn check(&self, _ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        if !host.services.running(SERVICE) {
            return Ok(Check::Pending("kube-proxy is not running".into()));
        }
        let o = host.exec.output(&Cmd::new([
            "iptables",
            "-w",
            "5",
            "-t",
            "nat",
            "-S",
            "KUBE-SERVICES",
        ]))?;
        if o.success() {
            Ok(Check::Done(
                "kube-proxy running; nat chain KUBE-SERVICES present".into(),
            ))
        } else {
            Ok(Check::Pending(format!(
                "kube-proxy running, no nat chain KUBE-SERVICES yet: {}",
                last_lines(&o.stderr, 2)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::Recording;
    use crate::steps::node::testutil::with_kube_ctx;
    use crate::steps::node::CONTROL_PLANE_STEP;

    #[test]
    fn gate_waits_for_the_control_plane_and_its_items() {
        with_kube_ctx(4, &[], true, |ctx| {
            assert_eq!(
                KubeProxy.gate(ctx),
                Gate::Wait("kube-control-plane done on a control-plane node".into())
            );
        });
        with_kube_ctx(
            4,
            &[(1, CONTROL_PLANE_STEP)],
            false,
            |ctx| match KubeProxy.gate(ctx) {
                Gate::Wait(w) => assert!(w.contains("kube/kube-proxy.crt"), "{w}"),
                g => panic!("{g:?}"),
            },
        );
        with_kube_ctx(4, &[(1, CONTROL_PLANE_STEP)], true, |ctx| {
            assert_eq!(KubeProxy.gate(ctx), Gate::Run)
        });
        let mut cfg = crate::steps::testutil::cfg();
        cfg.kubernetes.enabled = false;
        with_kube_ctx(4, &[(1, CONTROL_PLANE_STEP)], true, |ctx| {
            let ctx = Ctx { cfg: &cfg, ..*ctx };
            assert_eq!(KubeProxy.gate(&ctx), Gate::NotHere);
        });
    }

    #[test]
    fn golden_config_and_unit() {
        with_kube_ctx(2, &[(1, CONTROL_PLANE_STEP)], true, |ctx| {
            assert_eq!(
                config_conf(ctx).unwrap(),
                "# Written by habuild-agent (kube-proxy step); do not edit.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
clusterCIDR: 10.244.0.0/16
hostnameOverride: n2
mode: iptables
"
            );
            let kc = kubeconfig_conf(ctx).unwrap();
            assert!(
                kc.contains("    server: https://10.77.0.250:6443\n"),
                "{kc}"
            );
            assert!(kc.contains("- name: \"system:kube-proxy\"\n"), "{kc}");
            let r = KubeProxy.render(ctx).unwrap();
            assert_eq!(r.files[0].mode, 0o600);
            let unit = crate::host::real::unit_file(&r.services[0]);
            assert!(
                unit.contains(
                    "ExecStart=/usr/bin/kube-proxy --config=/var/lib/kube-proxy/config.conf\n"
                ),
                "{unit}"
            );
            assert!(unit.contains("Restart=always\n"), "{unit}");
            assert_eq!(r.services[0].name, "kube-proxy");
        });
    }

    #[test]
    fn preflight_and_check() {
        with_kube_ctx(1, &[(1, CONTROL_PLANE_STEP)], true, |ctx| {
            let rec = Recording::default();
            let host = rec.host();
            assert_eq!(
                KubeProxy.preflight(ctx, &host).unwrap_err().to_string(),
                "this image has no Kubernetes binaries (profile kube.source = none)"
            );
            host.files
                .write(&FileSpec::new(KUBE_PROXY_BIN, 0o755, "elf"))
                .unwrap();
            KubeProxy.preflight(ctx, &host).unwrap();
            assert_eq!(
                KubeProxy.check(ctx, &host).unwrap(),
                Check::Pending("kube-proxy is not running".into())
            );
            crate::steps::apply(&KubeProxy.render(ctx).unwrap(), &host).unwrap();
            rec.answer(
                "iptables -w 5 -t nat -S KUBE-SERVICES",
                1,
                "",
                "iptables: No chain/target/match by that name.\n",
            );
            assert_eq!(
                KubeProxy.check(ctx, &host).unwrap(),
                Check::Pending(
                    "kube-proxy running, no nat chain KUBE-SERVICES yet: iptables: No chain/target/match by that name.".into()
                )
            );
            rec.lock().answers.clear();
            assert_eq!(
                KubeProxy.check(ctx, &host).unwrap(),
                Check::Done("kube-proxy running; nat chain KUBE-SERVICES present".into())
            );
        });
    }
}
