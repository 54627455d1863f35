//! The `vip` step: the API VIP on the control-plane nodes, kubeadm's HA
//! recipe. keepalived (VRRP) moves the VIP between control-plane nodes:
//! unicast peers from the plan (no multicast needed), priorities by plan
//! order, `nopreempt` so a returning node does not take the VIP back, a VRRP
//! password derived from the cluster secret, and a health check that drops
//! a node whose haproxy is down. haproxy on every control-plane node binds
//! the VIP (`net.ipv4.ip_nonlocal_bind=1`, as in the seed articles) and
//! balances:
//!
//! - `VIP:6443` across every planned apiserver (`GET /healthz` checks);
//! - `VIP:2379` across every planned etcd member (TCP checks; TLS passes
//!   through, the etcd server certificates carry the VIP);
//! - `VIP:8404/healthz` answers `habuild-vip <node>` from haproxy itself, so
//!   the VIP can be proven (and its holder named) before Kubernetes runs.
//!
//! Before anyone in the cluster holds the VIP, the step probes it with ARP
//! duplicate-address detection and refuses to take an address another host
//! on the L2 answers for.

use std::net::{Ipv4Addr, SocketAddr};

use sha2::{Digest, Sha256};

use super::{fingerprint, node_name, Chain, Check, Ctx, Gate, Rendered, Step, StepError, RUN_DIR};
use crate::host::{Cmd, FileSpec, Host, ServiceSpec};

pub struct Vip;

pub const API_PORT: u16 = 6443;
pub const HEALTH_PORT: u16 = 8404;
pub const HAPROXY_CFG: &str = "etc/habuild/haproxy.cfg";
pub const KEEPALIVED_CONF: &str = "etc/habuild/keepalived.conf";
pub const HAPROXY_BIN: &str = "/usr/sbin/haproxy";
pub const KEEPALIVED_BIN: &str = "/usr/sbin/keepalived";

/// VRRP router id (1-255) from the cluster name.
pub fn vrid(cluster: &str) -> u8 {
    let h = Sha256::digest(format!("habuild vrrp id\0{cluster}").as_bytes());
    1 + h[0] % 255
}

/// The 8-character VRRP password (keepalived's PASS maximum), from the cluster secret.
pub fn vrrp_password(ctx: &Ctx) -> String {
    crate::keys::vrrp_password(&ctx.cfg.cluster.secret)
}

fn vip(ctx: &Ctx) -> Ipv4Addr {
    ctx.plan.vip
}

/// haproxy.cfg (pure).
pub fn haproxy_cfg(ctx: &Ctx) -> Result<String, StepError> {
    let vip = vip(ctx);
    let mut servers_api = String::new();
    let mut servers_etcd = String::new();
    for id in &ctx.plan.control_plane {
        let m = ctx.member(*id).ok_or_else(|| {
            StepError::Render(format!("control-plane node {id:016x} has no member record"))
        })?;
        servers_api += &format!("    server {} {}:{API_PORT} check\n", node_name(*id), m.ip);
        servers_etcd += &format!(
            "    server {} {}:{} check\n",
            node_name(*id),
            m.ip,
            super::etcd::CLIENT_PORT
        );
    }
    Ok(format!(
        "# Written by habuild-agent (vip step); do not edit.
global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout check 3s

frontend habuild-health
    mode http
    timeout client 10s
    bind {vip}:{HEALTH_PORT}
    bind 127.0.0.1:{HEALTH_PORT}
    http-request return status 200 content-type text/plain string \"habuild-vip {me}\" if {{ path /healthz }}
    http-request deny deny_status 404

frontend kube-apiserver
    bind {vip}:{API_PORT}
    default_backend kube-apiserver

backend kube-apiserver
    option httpchk GET /healthz
    http-check expect status 200
    balance roundrobin
    default-server inter 3s fall 3 rise 2 check-ssl verify none
{servers_api}
frontend etcd-client
    bind {vip}:{etcd}
    default_backend etcd-client

backend etcd-client
    balance roundrobin
    default-server inter 3s fall 3 rise 2
{servers_etcd}",
        me = node_name(ctx.me),
        etcd = super::etcd::CLIENT_PORT,
    ))
}

/// How often keepalived runs the health check (the agent's `probe` of
/// haproxy), in seconds; two failures in a row take the VIP elsewhere.
/// Every 2 s, and every 6 s on an emulated CPU: there each run of the
/// agent's executable cost about 0.2 s of the vCPU, and keepalived's
/// checks took a tenth of a node's CPU while three nodes assembled.
fn check_interval_secs(ctx: &Ctx) -> u32 {
    if ctx.emulated {
        6
    } else {
        2
    }
}

/// keepalived.conf (pure).
pub fn keepalived_conf(ctx: &Ctx) -> Result<String, StepError> {
    let me = ctx
        .member(ctx.me)
        .ok_or_else(|| StepError::Render("no member record for this node".into()))?;
    let rank = ctx
        .plan
        .control_plane
        .iter()
        .position(|id| *id == ctx.me)
        .ok_or_else(|| StepError::Render("this node is not in the control plane".into()))?;
    let peers: Vec<String> = ctx
        .plan
        .control_plane
        .iter()
        .filter(|id| **id != ctx.me)
        .filter_map(|id| ctx.member(*id).map(|m| format!("        {}\n", m.ip)))
        .collect();
    Ok(format!(
        "# Written by habuild-agent (vip step); do not edit.
global_defs {{
    router_id {name}
    script_user root
    enable_script_security
}}

vrrp_script habuild_haproxy {{
    script \"{agent} probe 127.0.0.1:{HEALTH_PORT}\"
    interval {interval}
    timeout {interval}
    fall 2
    rise 2
}}

vrrp_instance habuild_api {{
    state BACKUP
    nopreempt
    interface {iface}
    virtual_router_id {vrid}
    priority {prio}
    advert_int 1
    unicast_src_ip {ip}
    unicast_peer {{
{peers}    }}
    authentication {{
        auth_type PASS
        auth_pass {pass}
    }}
    virtual_ipaddress {{
        {vip}/{prefix} dev {iface}
    }}
    track_script {{
        habuild_haproxy
    }}
}}
",
        name = node_name(ctx.me),
        agent = ctx.agent_exe,
        interval = check_interval_secs(ctx),
        iface = ctx.interface,
        vrid = vrid(&ctx.cfg.cluster.name),
        prio = 150 - 10 * rank.min(10),
        ip = me.ip,
        peers = peers.concat(),
        pass = vrrp_password(ctx),
        vip = vip(ctx),
        prefix = me.prefix,
    ))
}

impl Step for Vip {
    fn name(&self) -> &'static str {
        "vip"
    }

    fn chain(&self) -> Chain {
        Chain::Vip
    }

    fn gate(&self, ctx: &Ctx) -> Gate {
        if !ctx.is_control_plane() {
            return Gate::NotHere;
        }
        match ctx.my_ip() {
            Some(_) => Gate::Run,
            None => Gate::Wait("this node's member record".into()),
        }
    }

    /// ARP duplicate-address detection while nobody in the cluster holds the VIP yet.
    fn preflight(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        let ours = ctx
            .plan
            .control_plane
            .iter()
            .any(|id| ctx.done_on("vip", &[*id]));
        if ours || host.services.running("habuild-keepalived") {
            return Ok(());
        }
        let vip = vip(ctx).to_string();
        let o = host.exec.output(&Cmd::new([
            "arping",
            "-D",
            "-c",
            "2",
            "-w",
            "3",
            "-I",
            ctx.interface,
            &vip,
        ]))?;
        match o.code {
            0 => Ok(()),
            1 => Err(StepError::Refused(format!(
                "the VIP {vip} is already in use on the network ({}); not taking it: free the \
                 address or set network.vip in cluster.toml",
                o.stdout
                    .lines()
                    .find(|l| l.contains("reply from"))
                    .map(str::trim)
                    .unwrap_or("a host answered ARP for it")
            ))),
            c => Err(StepError::Refused(format!(
                "cannot probe the VIP {vip} with arping on {} (exit {c}): {}",
                ctx.interface,
                crate::host::last_lines(&o.stderr, 2)
            ))),
        }
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        let haproxy = FileSpec::new(HAPROXY_CFG, 0o644, haproxy_cfg(ctx)?);
        let keepalived = FileSpec::new(KEEPALIVED_CONF, 0o600, keepalived_conf(ctx)?);
        let run = |f: &str| ctx.path(&format!("{RUN_DIR}/{f}"));
        let services = vec![
            ServiceSpec {
                name: "habuild-haproxy".into(),
                description: "haproxy in front of the API VIP (habuild)".into(),
                argv: vec![
                    HAPROXY_BIN.into(),
                    "-db".into(),
                    "-f".into(),
                    ctx.path(HAPROXY_CFG),
                ],
                fingerprint: fingerprint([haproxy.contents.as_slice()]),
            },
            ServiceSpec {
                name: "habuild-keepalived".into(),
                description: "keepalived holding the API VIP (habuild)".into(),
                argv: vec![
                    KEEPALIVED_BIN.into(),
                    "--dont-fork".into(),
                    "--log-console".into(),
                    "--vrrp".into(),
                    format!("--use-file={}", ctx.path(KEEPALIVED_CONF)),
                    format!("--pid={}", run("keepalived.pid")),
                    format!("--vrrp_pid={}", run("keepalived-vrrp.pid")),
                ],
                fingerprint: fingerprint([keepalived.contents.as_slice()]),
            },
        ];
        Ok(Rendered {
            files: vec![haproxy, keepalived],
            commands: vec![
                Cmd::new(["sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1"]),
                Cmd::new(["install", "-d", "-m", "0755", &ctx.path(RUN_DIR)]),
            ],
            services,
        })
    }

    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        let addr = SocketAddr::from((vip(ctx), HEALTH_PORT));
        match host.net.http_get(addr, "/healthz") {
            Ok((200, body)) if body.starts_with("habuild-vip ") => Ok(Check::Done(format!(
                "{} answers on {addr}",
                body.trim().trim_start_matches("habuild-vip ")
            ))),
            Ok((code, body)) => Ok(Check::Pending(format!(
                "the VIP answers {code} {:?}, not habuild's haproxy",
                body.chars().take(60).collect::<String>()
            ))),
            Err(e) => Ok(Check::Pending(format!("the VIP does not answer yet: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::Recording;
    use crate::steps::testutil::{emulated, with_ctx};

    #[test]
    fn an_emulated_node_checks_haproxy_less_often() {
        let (native, emulated) = with_ctx(2, |ctx| {
            let emu = emulated(ctx);
            (
                keepalived_conf(ctx).unwrap(),
                keepalived_conf(&emu).unwrap(),
            )
        });
        assert!(
            native.contains("    interval 2\n    timeout 2\n"),
            "{native}"
        );
        assert!(
            emulated.contains("    interval 6\n    timeout 6\n"),
            "{emulated}"
        );
        assert_eq!(
            native.replace("interval 2\n    timeout 2\n", "interval 6\n    timeout 6\n"),
            emulated,
            "nothing else differs"
        );
    }

    #[test]
    fn golden_keepalived_conf() {
        let (conf, pass, id) = with_ctx(2, |ctx| {
            (
                keepalived_conf(ctx).unwrap(),
                vrrp_password(ctx),
                vrid("lab"),
            )
        });
        assert_eq!(pass.len(), 8);
        assert!(
            conf.contains(&format!("virtual_router_id {id}\n")),
            "{conf}"
        );
        assert!(
            conf.contains("priority 140\n"),
            "second in plan order: {conf}"
        );
        assert!(conf.contains("unicast_src_ip 10.77.0.2\n"), "{conf}");
        assert!(
            conf.contains("unicast_peer {\n        10.77.0.1\n        10.77.0.3\n    }"),
            "{conf}"
        );
        assert!(conf.contains("        10.77.0.250/24 dev eth0\n"), "{conf}");
        assert!(conf.contains(&format!("auth_pass {pass}\n")), "{conf}");
        assert!(
            conf.contains("script \"/usr/lib/habuild/habuild-agent probe 127.0.0.1:8404\""),
            "{conf}"
        );
        assert!(!conf.contains("1111"), "no raw secret");
    }

    #[test]
    fn golden_haproxy_cfg() {
        let cfg = with_ctx(1, |ctx| haproxy_cfg(ctx).unwrap());
        for want in [
            "    bind 10.77.0.250:8404\n",
            "string \"habuild-vip node-0000000000000001\" if { path /healthz }",
            "    bind 10.77.0.250:6443\n",
            "    server node-0000000000000003 10.77.0.3:6443 check\n",
            "    bind 10.77.0.250:2379\n",
            "    server node-0000000000000002 10.77.0.2:2379 check\n",
        ] {
            assert!(cfg.contains(want), "missing {want:?} in\n{cfg}");
        }
        assert!(!cfg.contains("10.77.0.4"), "the worker is no backend");
    }

    #[test]
    fn workers_hold_no_vip() {
        with_ctx(4, |ctx| assert_eq!(Vip.gate(ctx), Gate::NotHere));
    }

    #[test]
    fn a_vip_answered_on_the_l2_is_refused() {
        with_ctx(1, |ctx| {
            let rec = Recording::default();
            let host = rec.host();
            rec.answer(
                "arping -D",
                1,
                "Unicast reply from 10.77.0.250 [52:54:00:12:34:56]  0.6ms\nReceived 1 response(s)\n",
                "",
            );
            let e = Vip.preflight(ctx, &host).unwrap_err().to_string();
            assert!(
                e.contains("already in use") && e.contains("52:54:00:12:34:56"),
                "{e}"
            );
            rec.lock().answers.clear();
            assert_eq!(Vip.preflight(ctx, &host), Ok(()));
            assert_eq!(
                rec.commands().last().unwrap(),
                "arping -D -c 2 -w 3 -I eth0 10.77.0.250"
            );
        });
    }

    #[test]
    fn done_only_when_habuilds_haproxy_answers_on_the_vip() {
        with_ctx(3, |ctx| {
            let rec = Recording::default();
            let host = rec.host();
            assert!(matches!(Vip.check(ctx, &host).unwrap(), Check::Pending(_)));
            rec.lock().http.insert(
                "10.77.0.250:8404 /healthz".into(),
                (200, "habuild-vip node-0000000000000001".into()),
            );
            assert_eq!(
                Vip.check(ctx, &host).unwrap(),
                Check::Done("node-0000000000000001 answers on 10.77.0.250:8404".into())
            );
        });
    }
}
