//! The `pod-network` step: pods on this node get addresses from its pod
//! CIDR in the plan, and reach pods on other nodes over plain routes
//! ("host-gw", no overlay, no images):
//!
//! - `/etc/cni/net.d/10-habuild.conflist`: Debian's containernetworking
//!   plugins (`bridge` on `cni0` as the pods' gateway, `host-local` IPAM over
//!   this node's CIDR, `portmap` for hostPort);
//! - a route to every other member's pod CIDR via that member's address on
//!   the cluster NIC (`ip route replace`), and the removal of routes into
//!   `network.pod_cidr` whose node left the plan (observed with `ip -j
//!   route`, decided purely by [`route_ops`]);
//! - masquerading of pod traffic leaving the pod network only. The bridge
//!   plugin's own `ipMasq` masquerades everything not destined to the pod's
//!   *own* subnet, i.e. also pod-to-pod traffic to other nodes, which
//!   Kubernetes' network model forbids (pods must see each other's
//!   addresses). So `ipMasq` is off and the step keeps its own nat chain
//!   `HABUILD-POD-MASQ` ([`masq_ops`]): from this node's pod CIDR, return
//!   for the whole cluster pod network and multicast, masquerade the rest;
//! - IPv4 forwarding and `br_netfilter` (bridged pod traffic through
//!   iptables, which kube-proxy's Services need).
//!
//! Refused without `/usr/bin/kubelet` (the Kubernetes steps' common text)
//! or without the CNI bridge plugin. Check: every wanted route is in place.

use std::net::Ipv4Addr;

use super::{base_gate, require_binary, Ctx};
use crate::cluster::Ipv4Cidr;
use crate::host::{Cmd, FileSpec, Host, HostError};
use crate::steps::{Chain, Check, Gate, Rendered, Step, StepError};

pub struct PodNetwork;

pub const CONFLIST: &str = "etc/cni/net.d/10-habuild.conflist";
/// The CNI bridge plugin; its absence means the image lacks the plugins.
pub const BRIDGE_BIN: &str = "usr/lib/cni/bridge";
pub const BRIDGE: &str = "cni0";
pub const MASQ_CHAIN: &str = "HABUILD-POD-MASQ";

/// This node's pod CIDR from the plan.
fn my_cidr(ctx: &Ctx) -> Result<Ipv4Cidr, StepError> {
    ctx.plan
        .pod_cidrs
        .get(&ctx.me)
        .copied()
        .ok_or_else(|| StepError::Render("this node has no pod CIDR in the plan".into()))
}

/// The CNI network configuration list (pure).
pub fn conflist(cidr: Ipv4Cidr) -> String {
    format!(
        r#"{{
  "cniVersion": "0.4.0",
  "name": "habuild",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{ "subnet": "{cidr}" }}]],
        "routes": [{{ "dst": "0.0.0.0/0" }}]
      }}
    }},
    {{
      "type": "portmap",
      "capabilities": {{ "portMappings": true }}
    }}
  ]
}}
"#
    )
}

/// The routes this node wants: every other member's pod CIDR via its
/// address, in plan order (members without a record are left out).
pub fn wanted_routes(ctx: &Ctx) -> Vec<(Ipv4Cidr, Ipv4Addr)> {
    ctx.plan
        .pod_cidrs
        .iter()
        .filter(|(id, _)| **id != ctx.me)
        .filter_map(|(id, cidr)| ctx.member(*id).map(|m| (*cidr, m.ip)))
        .collect()
}

/// One IPv4 route as `ip -j route` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Cidr,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
}

/// Parses `ip -j -4 route show` (the default route and unparsable entries
/// are left out; a bare address is a /32).
pub fn parse_routes(json: &str) -> Result<Vec<Route>, String> {
    let v: serde_json::Value = if json.trim().is_empty() {
        serde_json::Value::Array(vec![])
    } else {
        serde_json::from_str(json).map_err(|e| format!("cannot parse `ip -j route`: {e}"))?
    };
    let arr = v
        .as_array()
        .ok_or_else(|| "`ip -j route` is not a JSON array".to_string())?;
    Ok(arr
        .iter()
        .filter_map(|r| {
            let dst = r.get("dst")?.as_str()?;
            let dst: Ipv4Cidr = if dst.contains('/') {
                dst.parse().ok()?
            } else {
                format!("{dst}/32").parse().ok()?
            };
            Some(Route {
                dst,
                via: r
                    .get("gateway")
                    .and_then(|g| g.as_str())
                    .and_then(|g| g.parse().ok()),
                dev: r.get("dev").and_then(|d| d.as_str()).map(str::to_string),
            })
        })
        .collect())
}

fn same_net(a: &Ipv4Cidr, b: &Ipv4Cidr) -> bool {
    a.prefix == b.prefix && a.network() == b.network()
}

/// `inner` lies inside `outer`.
fn inside(outer: &Ipv4Cidr, inner: &Ipv4Cidr) -> bool {
    inner.prefix >= outer.prefix && outer.contains(inner.addr)
}

/// What to run so the routing table holds exactly the wanted pod routes
/// (pure): `ip route replace` for every wanted route missing or pointing
/// elsewhere, `ip route del` for every gateway route into `cluster` (the
/// whole pod network) that is neither wanted nor this node's own CIDR.
pub fn route_ops(
    wanted: &[(Ipv4Cidr, Ipv4Addr)],
    observed: &[Route],
    cluster: Ipv4Cidr,
    mine: Ipv4Cidr,
    iface: &str,
) -> Vec<Cmd> {
    let mut ops = Vec::new();
    for (cidr, via) in wanted {
        let present = observed.iter().any(|r| {
            same_net(&r.dst, cidr) && r.via == Some(*via) && r.dev.as_deref() == Some(iface)
        });
        if !present {
            ops.push(Cmd::new([
                "ip".to_string(),
                "route".into(),
                "replace".into(),
                cidr.to_string(),
                "via".into(),
                via.to_string(),
                "dev".into(),
                iface.to_string(),
            ]));
        }
    }
    for r in observed {
        let Some(via) = r.via else { continue };
        let stale = inside(&cluster, &r.dst)
            && !same_net(&r.dst, &mine)
            && !wanted.iter().any(|(c, _)| same_net(c, &r.dst));
        if stale {
            ops.push(Cmd::new([
                "ip".to_string(),
                "route".into(),
                "del".into(),
                r.dst.to_string(),
                "via".into(),
                via.to_string(),
            ]));
        }
    }
    ops
}

fn iptables(args: &[&str]) -> Cmd {
    let mut argv = vec!["iptables", "-w", "5", "-t", "nat"];
    argv.extend_from_slice(args);
    Cmd::new(argv)
}

/// The rules of [`MASQ_CHAIN`] as `iptables -S` prints them.
pub fn masq_chain_rules(cluster: Ipv4Cidr) -> Vec<String> {
    vec![
        format!("-N {MASQ_CHAIN}"),
        format!("-A {MASQ_CHAIN} -d {cluster} -j RETURN"),
        format!("-A {MASQ_CHAIN} -d 224.0.0.0/4 -j RETURN"),
        format!("-A {MASQ_CHAIN} -j MASQUERADE"),
    ]
}

/// The POSTROUTING rule sending this node's pod traffic through the chain.
pub fn masq_jump(mine: Ipv4Cidr) -> String {
    format!("-A POSTROUTING -s {mine} -j {MASQ_CHAIN}")
}

/// What to run so pod traffic is masqueraded only when it leaves the pod
/// network (pure). `chain` is `iptables -t nat -S HABUILD-POD-MASQ` (None
/// when the chain does not exist), `postrouting` is `iptables -t nat -S
/// POSTROUTING`.
pub fn masq_ops(
    chain: Option<&str>,
    postrouting: &str,
    mine: Ipv4Cidr,
    cluster: Ipv4Cidr,
) -> Vec<Cmd> {
    let want = masq_chain_rules(cluster);
    let mut ops = Vec::new();
    let have: Vec<&str> = chain
        .map(|c| c.lines().map(str::trim).filter(|l| !l.is_empty()).collect())
        .unwrap_or_default();
    if have != want.iter().map(String::as_str).collect::<Vec<_>>() {
        if chain.is_none() {
            ops.push(iptables(&["-N", MASQ_CHAIN]));
        } else {
            ops.push(iptables(&["-F", MASQ_CHAIN]));
        }
        for rule in &want[1..] {
            let args: Vec<&str> = rule.split_whitespace().collect();
            ops.push(iptables(&args));
        }
    }
    let jump = masq_jump(mine);
    let target = format!("-j {MASQ_CHAIN}");
    let mut has_jump = false;
    for line in postrouting.lines().map(str::trim) {
        if line == jump {
            has_jump = true;
        } else if line.starts_with("-A POSTROUTING ") && line.ends_with(&target) {
            let mut args: Vec<&str> = line.split_whitespace().collect();
            args[0] = "-D";
            ops.push(iptables(&args));
        }
    }
    if !has_jump {
        let args: Vec<&str> = jump.split_whitespace().collect();
        ops.push(iptables(&args));
    }
    ops
}

fn observe_routes(host: &Host) -> Result<Vec<Route>, StepError> {
    let cmd = Cmd::new(["ip", "-j", "-4", "route", "show"]);
    let o = host.exec.run(&cmd)?;
    parse_routes(&o.stdout).map_err(|message| {
        StepError::Host(HostError::Command {
            command: cmd.display(),
            message,
        })
    })
}

impl Step for PodNetwork {
    fn name(&self) -> &'static str {
        "pod-network"
    }

    fn chain(&self) -> Chain {
        Chain::ControlPlane
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        if let Err(g) = base_gate(ctx) {
            return g;
        }
        if ctx.plan.pod_cidrs.contains_key(&ctx.me) {
            Gate::Run
        } else {
            Gate::Wait("this node's pod CIDR in the plan".into())
        }
    }

    /// Refuses on an image without the kubelet (pod routes without pods are
    /// pointless; the same text as every Kubernetes step) or without the
    /// CNI plugins.
    fn preflight(&self, _ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        require_binary(host, super::kubelet::KUBELET_BIN)?;
        if host.files.exists(BRIDGE_BIN) {
            Ok(())
        } else {
            Err(StepError::Refused(format!(
                "this image has no CNI plugins (/{BRIDGE_BIN} is missing): add \
                 containernetworking-plugins to the profile's runtime packages"
            )))
        }
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        Ok(Rendered {
            files: vec![FileSpec::new(CONFLIST, 0o644, conflist(my_cidr(ctx)?))],
            commands: vec![
                Cmd::new(["modprobe", "br_netfilter"]),
                Cmd::new(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
                Cmd::new(["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"]),
            ],
            services: vec![],
        })
    }

    fn act(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        let mine = my_cidr(ctx)?;
        let cluster = ctx.cfg.network.pod_cidr;
        let routes = observe_routes(host)?;
        for op in route_ops(&wanted_routes(ctx), &routes, cluster, mine, ctx.interface) {
            host.exec.run(&op)?;
        }
        let chain = host.exec.output(&iptables(&["-S", MASQ_CHAIN]))?;
        let postrouting = host.exec.run(&iptables(&["-S", "POSTROUTING"]))?;
        let chain = chain.success().then_some(chain.stdout.as_str());
        for op in masq_ops(chain, &postrouting.stdout, mine, cluster) {
            host.exec.run(&op)?;
        }
        Ok(())
    }

    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        let mine = my_cidr(ctx)?;
        let wanted = wanted_routes(ctx);
        let ops = route_ops(
            &wanted,
            &observe_routes(host)?,
            ctx.cfg.network.pod_cidr,
            mine,
            ctx.interface,
        );
        if ops.is_empty() {
            Ok(Check::Done(format!(
                "pods on {mine}; routes to {} other pod CIDRs",
                wanted.len()
            )))
        } else {
            Ok(Check::Pending(format!(
                "routes not in place yet: {}",
                ops.iter().map(Cmd::display).collect::<Vec<_>>().join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::Recording;
    use crate::steps::node::testutil::with_kube_ctx;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn golden_conflist() {
        let text = conflist(cidr("10.244.1.0/24"));
        assert_eq!(
            text,
            r#"{
  "cniVersion": "0.4.0",
  "name": "habuild",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.244.1.0/24" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    }
  ]
}
"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.1.0/24"
        );
    }

    #[test]
    fn routes_are_replaced_when_missing_and_stale_ones_removed() {
        let json = r#"[
          {"dst":"default","gateway":"10.77.0.254","dev":"eth0","flags":[]},
          {"dst":"10.77.0.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.77.0.1","flags":[]},
          {"dst":"10.244.0.0/24","dev":"cni0","protocol":"kernel","scope":"link","prefsrc":"10.244.0.1","flags":[]},
          {"dst":"10.244.1.0/24","gateway":"10.77.0.2","dev":"eth0","flags":[]},
          {"dst":"10.244.2.0/24","gateway":"10.77.0.9","dev":"eth0","flags":[]},
          {"dst":"10.244.7.0/24","gateway":"10.77.0.7","dev":"eth0","flags":[]},
          {"dst":"192.168.5.0/24","gateway":"10.77.0.254","dev":"eth0","flags":[]}
        ]"#;
        let observed = parse_routes(json).unwrap();
        assert_eq!(observed.len(), 6, "default left out");
        let wanted = vec![
            (cidr("10.244.1.0/24"), Ipv4Addr::new(10, 77, 0, 2)),
            (cidr("10.244.2.0/24"), Ipv4Addr::new(10, 77, 0, 3)),
            (cidr("10.244.3.0/24"), Ipv4Addr::new(10, 77, 0, 4)),
        ];
        let ops: Vec<String> = route_ops(
            &wanted,
            &observed,
            cidr("10.244.0.0/16"),
            cidr("10.244.0.0/24"),
            "eth0",
        )
        .iter()
        .map(Cmd::display)
        .collect();
        assert_eq!(
            ops,
            vec![
                "ip route replace 10.244.2.0/24 via 10.77.0.3 dev eth0",
                "ip route replace 10.244.3.0/24 via 10.77.0.4 dev eth0",
                "ip route del 10.244.7.0/24 via 10.77.0.7",
            ]
        );
        // Once in place, nothing to do; outside routes are never touched.
        let settled = vec![
            observed[1].clone(),
            observed[2].clone(),
            Route {
                dst: cidr("10.244.2.0/24"),
                via: Some(Ipv4Addr::new(10, 77, 0, 3)),
                dev: Some("eth0".into()),
            },
            Route {
                dst: cidr("10.244.3.0/24"),
                via: Some(Ipv4Addr::new(10, 77, 0, 4)),
                dev: Some("eth0".into()),
            },
            observed[5].clone(),
        ];
        assert!(route_ops(
            &wanted,
            &settled,
            cidr("10.244.0.0/16"),
            cidr("10.244.0.0/24"),
            "eth0"
        )
        .is_empty());
        assert_eq!(parse_routes("").unwrap(), vec![]);
        assert!(parse_routes("nonsense").is_err());
    }

    #[test]
    fn masquerade_only_traffic_leaving_the_pod_network() {
        let mine = cidr("10.244.1.0/24");
        let cluster = cidr("10.244.0.0/16");
        let ops: Vec<String> = masq_ops(None, "-P POSTROUTING ACCEPT\n", mine, cluster)
            .iter()
            .map(Cmd::display)
            .collect();
        assert_eq!(
            ops,
            vec![
                "iptables -w 5 -t nat -N HABUILD-POD-MASQ",
                "iptables -w 5 -t nat -A HABUILD-POD-MASQ -d 10.244.0.0/16 -j RETURN",
                "iptables -w 5 -t nat -A HABUILD-POD-MASQ -d 224.0.0.0/4 -j RETURN",
                "iptables -w 5 -t nat -A HABUILD-POD-MASQ -j MASQUERADE",
                "iptables -w 5 -t nat -A POSTROUTING -s 10.244.1.0/24 -j HABUILD-POD-MASQ",
            ]
        );
        let chain = masq_chain_rules(cluster).join("\n") + "\n";
        let post = format!(
            "-P POSTROUTING ACCEPT\n-A POSTROUTING -m comment --comment \"kube\" -j KUBE-POSTROUTING\n{}\n",
            masq_jump(mine)
        );
        assert!(masq_ops(Some(&chain), &post, mine, cluster).is_empty());
        // A stale jump (an old CIDR) goes, a changed chain is flushed and refilled.
        let post_old = "-A POSTROUTING -s 10.244.9.0/24 -j HABUILD-POD-MASQ\n";
        let ops: Vec<String> = masq_ops(
            Some("-N HABUILD-POD-MASQ\n-A HABUILD-POD-MASQ -j MASQUERADE\n"),
            post_old,
            mine,
            cluster,
        )
        .iter()
        .map(Cmd::display)
        .collect();
        assert_eq!(ops[0], "iptables -w 5 -t nat -F HABUILD-POD-MASQ");
        assert_eq!(ops.len(), 6);
        assert_eq!(
            ops[4],
            "iptables -w 5 -t nat -D POSTROUTING -s 10.244.9.0/24 -j HABUILD-POD-MASQ"
        );
        assert_eq!(
            ops[5],
            "iptables -w 5 -t nat -A POSTROUTING -s 10.244.1.0/24 -j HABUILD-POD-MASQ"
        );
    }

    #[test]
    fn gate_preflight_render_act_and_check() {
        with_kube_ctx(1, &[], false, |ctx| {
            assert_eq!(PodNetwork.gate(ctx), Gate::Run);
            let mine = ctx.plan.pod_cidrs[&1];
            let rec = Recording::default();
            let host = rec.host();
            assert_eq!(
                PodNetwork.preflight(ctx, &host).unwrap_err().to_string(),
                crate::steps::node::NO_KUBE_BINARIES
            );
            host.files
                .write(&FileSpec::new("usr/bin/kubelet", 0o755, "elf"))
                .unwrap();
            let e = PodNetwork.preflight(ctx, &host).unwrap_err().to_string();
            assert!(e.contains("/usr/lib/cni/bridge is missing"), "{e}");
            host.files
                .write(&FileSpec::new(BRIDGE_BIN, 0o755, "elf"))
                .unwrap();
            PodNetwork.preflight(ctx, &host).unwrap();
            let r = PodNetwork.render(ctx).unwrap();
            assert_eq!(r.files[0].path, CONFLIST);
            assert_eq!(
                String::from_utf8(r.files[0].contents.clone()).unwrap(),
                conflist(mine)
            );
            rec.answer(
                "iptables -w 5 -t nat -S HABUILD-POD-MASQ",
                1,
                "",
                "No chain",
            );
            PodNetwork.act(ctx, &host).unwrap();
            let cmds = rec.commands();
            assert_eq!(cmds[0], "ip -j -4 route show");
            let replaced: Vec<&String> = cmds
                .iter()
                .filter(|c| c.starts_with("ip route replace"))
                .collect();
            assert_eq!(replaced.len(), 3, "one per other member: {cmds:?}");
            for id in [2u64, 3, 4] {
                let want = format!(
                    "ip route replace {} via 10.77.0.{id} dev eth0",
                    ctx.plan.pod_cidrs[&id]
                );
                assert!(cmds.contains(&want), "{want} in {cmds:?}");
            }
            assert!(cmds.contains(&format!(
                "iptables -w 5 -t nat -A POSTROUTING -s {mine} -j HABUILD-POD-MASQ"
            )));
            // The fake's routing table is empty: still pending.
            match PodNetwork.check(ctx, &host).unwrap() {
                Check::Pending(w) => assert!(w.contains("ip route replace"), "{w}"),
                c => panic!("{c:?}"),
            }
            let table: Vec<String> = [2u64, 3, 4]
                .iter()
                .map(|id| {
                    format!(
                        r#"{{"dst":"{}","gateway":"10.77.0.{id}","dev":"eth0","flags":[]}}"#,
                        ctx.plan.pod_cidrs[id]
                    )
                })
                .collect();
            rec.answer(
                "ip -j -4 route show",
                0,
                &format!("[{}]", table.join(",")),
                "",
            );
            assert_eq!(
                PodNetwork.check(ctx, &host).unwrap(),
                Check::Done(format!("pods on {mine}; routes to 3 other pod CIDRs"))
            );
        });
    }

    #[test]
    fn not_here_without_kubernetes() {
        let mut cfg = crate::steps::testutil::cfg();
        cfg.kubernetes.enabled = false;
        crate::steps::testutil::with_ctx(1, |ctx| {
            let ctx = Ctx { cfg: &cfg, ..*ctx };
            assert_eq!(PodNetwork.gate(&ctx), Gate::NotHere);
        });
    }
}
