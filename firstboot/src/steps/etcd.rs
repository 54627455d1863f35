//! The `etcd` step: on the planned control-plane nodes only, etcd from the
//! distro's package as a static bootstrap of exactly the planned members,
//! TLS with client-certificate auth on both the peer and the client URLs,
//! data under `/var/lib/etcd` (the data partition). Done when the local
//! member answers `etcdctl endpoint health` through TLS, which needs quorum;
//! the status then counts the healthy members against the plan (a member
//! that does not answer is named, never left out of the count).
//!
//! A marker file (`/var/lib/etcd/habuild-cluster`) holds this cluster's
//! initial-cluster token; etcd data without the marker, or with another
//! cluster's token, is refused (the step fails and says so) instead of being
//! joined or overwritten. A rebooted member finds its data and the same flags
//! and comes back into the same cluster.

use sha2::{Digest, Sha256};

use super::tolerance::{self, Verdict};
use super::{fingerprint, node_name, Chain, Check, Ctx, Gate, Rendered, Step, StepError};
use crate::host::{last_lines, Cmd, FileSpec, Host, ServiceSpec};

pub struct Etcd;

pub const DATA_DIR: &str = "var/lib/etcd";
pub const MARKER: &str = "var/lib/etcd/habuild-cluster";
const PKI: &str = "etc/kubernetes/pki/etcd";
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
/// What the health check remembers between rounds ([`tolerance::Memory`]):
/// when the local member last answered, and the run of failed probes since.
pub const HEALTH_MEMORY: &str = "run/habuild/etcd-health";

/// The initial-cluster token: fixed for the life of the cluster, derived
/// (one-way) from the cluster name and the plan's bootstrap token.
pub fn cluster_token(ctx: &Ctx) -> String {
    let h = Sha256::new()
        .chain_update(b"habuild etcd cluster token v1\0")
        .chain_update(ctx.cfg.cluster.name.as_bytes())
        .chain_update([0])
        .chain_update(ctx.plan.bootstrap_token.as_bytes())
        .finalize();
    format!("habuild-{}-{}", ctx.cfg.cluster.name, hex::encode(&h[..8]))
}

/// `name=https://ip:2380,...` for the planned members, in plan order.
fn initial_cluster(ctx: &Ctx) -> Result<String, StepError> {
    Ok(planned_endpoints(ctx)?
        .iter()
        .map(|m| format!("{}=https://{}:{PEER_PORT}", m.name, m.ip))
        .collect::<Vec<_>>()
        .join(","))
}

/// etcdctl against the local member with the health-check client cert.
pub fn etcdctl(ctx: &Ctx, args: &[&str]) -> Cmd {
    let mut argv = vec![
        ETCDCTL_BIN.to_string(),
        format!("--endpoints=https://127.0.0.1:{CLIENT_PORT}"),
        format!("--cacert={}", ctx.path(&format!("{PKI}/ca.crt"))),
        format!(
            "--cert={}",
            ctx.path(&format!("{PKI}/healthcheck-client.crt"))
        ),
        format!(
            "--key={}",
            ctx.path(&format!("{PKI}/healthcheck-client.key"))
        ),
    ];
    let (dial, command) = etcdctl_timeouts(ctx);
    argv.push(format!("--dial-timeout={dial}s"));
    argv.push(format!("--command-timeout={command}s"));
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut c = Cmd::new(argv);
    c.env.push(("ETCDCTL_API".into(), "3".into()));
    c
}

/// etcdctl's dial and command timeouts in seconds. On an emulated node
/// starting etcdctl, its TLS handshakes and a busy member's answer take
/// seconds each: with 3 s / 5 s there, `endpoint health --cluster` timed
/// out on members that were serving, and the status said "2/3 members
/// healthy (… does not answer)" of a healthy cluster (three booted VMs
/// with three kube-apiservers, 2026-12-03).
fn etcdctl_timeouts(ctx: &Ctx) -> (u32, u32) {
    if ctx.emulated {
        (10, 15)
    } else {
        (3, 5)
    }
}

impl Step for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn chain(&self) -> Chain {
        Chain::ControlPlane
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

    fn preflight(&self, ctx: &Ctx, host: &Host) -> Result<(), StepError> {
        let has_data = host.files.exists(&format!("{DATA_DIR}/member"));
        let marker = host
            .files
            .read(MARKER)?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string());
        let token = cluster_token(ctx);
        match marker {
            Some(m) if m != token => Err(StepError::Refused(format!(
                "etcd data in {} belongs to another cluster (token {m}, this cluster's is {token}); \
                 not touching it: move it away to let this node join",
                ctx.path(DATA_DIR)
            ))),
            None if has_data => Err(StepError::Refused(format!(
                "etcd data in {} was not made by this cluster (no {}); not touching it: move it \
                 away to let this node join",
                ctx.path(DATA_DIR),
                ctx.path(MARKER)
            ))),
            _ => Ok(()),
        }
    }

    fn render(&self, ctx: &Ctx) -> Result<Rendered, StepError> {
        let ip = ctx
            .my_ip()
            .ok_or_else(|| StepError::Render("no member record for this node".into()))?;
        let token = cluster_token(ctx);
        let pki = |f: &str| ctx.path(&format!("{PKI}/{f}"));
        let argv: Vec<String> = vec![
            ETCD_BIN.into(),
            format!("--name={}", node_name(ctx.me)),
            format!("--data-dir={}", ctx.path(DATA_DIR)),
            format!("--listen-peer-urls=https://{ip}:{PEER_PORT}"),
            format!("--initial-advertise-peer-urls=https://{ip}:{PEER_PORT}"),
            format!(
                "--listen-client-urls=https://{ip}:{CLIENT_PORT},https://127.0.0.1:{CLIENT_PORT}"
            ),
            format!("--advertise-client-urls=https://{ip}:{CLIENT_PORT}"),
            format!("--initial-cluster={}", initial_cluster(ctx)?),
            "--initial-cluster-state=new".into(),
            format!("--initial-cluster-token={token}"),
            format!("--cert-file={}", pki("server.crt")),
            format!("--key-file={}", pki("server.key")),
            "--client-cert-auth=true".into(),
            format!("--trusted-ca-file={}", pki("ca.crt")),
            format!("--peer-cert-file={}", pki("peer.crt")),
            format!("--peer-key-file={}", pki("peer.key")),
            "--peer-client-cert-auth=true".into(),
            format!("--peer-trusted-ca-file={}", pki("ca.crt")),
            // Slow hosts need more than the 100 ms default; emulated CPUs
            // (QEMU without KVM) the agent's own Raft timings: there each
            // heartbeat costs a TLS record on a starved vCPU, and etcd
            // took a sixth of a node's CPU while three nodes assembled.
            format!("--heartbeat-interval={}", heartbeat_ms(ctx)),
            format!("--election-timeout={}", 10 * heartbeat_ms(ctx)),
            "--snapshot-count=10000".into(),
        ];
        let marker = FileSpec::new(MARKER, 0o600, format!("{token}\n"));
        let fp = fingerprint(
            argv.iter()
                .map(|a| a.as_bytes())
                .chain([marker.contents.as_slice()]),
        );
        Ok(Rendered {
            commands: vec![Cmd::new([
                "install",
                "-d",
                "-m",
                "0700",
                &ctx.path(DATA_DIR),
            ])],
            files: vec![marker],
            services: vec![ServiceSpec {
                name: "habuild-etcd".into(),
                description: "etcd member of the habuild cluster".into(),
                argv,
                fingerprint: fp,
            }],
        })
    }

    /// Done when the local member is healthy through TLS (which needs
    /// quorum). What it observed goes into the status: this member and
    /// cluster id, how many members answer, the leader, the revision, and
    /// whether a write (this node's key under `habuild/agents/`) committed.
    ///
    /// Once the member has been healthy, a failed health probe keeps the
    /// step done until failures persist ([`tolerance`]: a starved member
    /// misses a probe while it serves), so the later steps of the chain do
    /// not go back to waiting on one slow answer.
    fn check(&self, ctx: &Ctx, host: &Host) -> Result<Check, StepError> {
        check_health(ctx, host, &super::unix_now)
    }
}

/// The step's check with the clock `now` (read once the probe returned).
fn check_health(ctx: &Ctx, host: &Host, now: &dyn Fn() -> u64) -> Result<Check, StepError> {
    let o = host.exec.output(&etcdctl(ctx, &["endpoint", "health"]))?;
    let why = || last_lines(&format!("{}\n{}", o.stdout, o.stderr), 2);
    match tolerance::judge(host, HEALTH_MEMORY, now, o.success())? {
        Verdict::Healthy => {}
        Verdict::Tolerated(t) => return Ok(Check::Done(t.detail("the local etcd member", &why()))),
        Verdict::Down => return Ok(Check::Pending(format!("etcd not healthy yet: {}", why()))),
    }
    let status = host
        .exec
        .output(&etcdctl(ctx, &["endpoint", "status", "-w", "json"]))?;
    let cluster = host
        .exec
        .output(&etcdctl(ctx, &["endpoint", "health", "--cluster"]))?;
    let write = host.exec.output(&etcdctl(
        ctx,
        &[
            "put",
            &format!("habuild/agents/{}", node_name(ctx.me)),
            "alive",
        ],
    ))?;
    let planned = planned_endpoints(ctx)?;
    Ok(Check::Done(observation(
        &status.stdout,
        &format!("{}\n{}", cluster.stdout, cluster.stderr),
        write.success(),
        &planned,
    )))
}

/// A planned etcd member as the health check names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMember {
    /// The etcd member name (`node-<id>`).
    pub name: String,
    pub ip: std::net::Ipv4Addr,
}

impl PlannedMember {
    fn client_url(&self) -> String {
        format!("https://{}:{CLIENT_PORT}", self.ip)
    }
}

/// The plan's control-plane nodes, the members etcd must have.
fn planned_endpoints(ctx: &Ctx) -> Result<Vec<PlannedMember>, StepError> {
    ctx.plan
        .control_plane
        .iter()
        .map(|id| {
            let m = ctx.member(*id).ok_or_else(|| {
                StepError::Render(format!("control-plane node {id:016x} has no member record"))
            })?;
            Ok(PlannedMember {
                name: node_name(*id),
                ip: m.ip,
            })
        })
        .collect()
}

/// "member M of cluster C: H/N members healthy, leader L, revision R, write
/// ok" (pure). N is the number of planned members, not of those that
/// answered: a member that is powered off may be missing from etcdctl's
/// output altogether, and it must still count (and be named) as down. H
/// counts the planned members whose client URL etcdctl reported healthy;
/// the others are named after the count ("node-… at IP does not answer").
pub fn observation(
    status_json: &str,
    cluster_health: &str,
    wrote: bool,
    planned: &[PlannedMember],
) -> String {
    let v: serde_json::Value = serde_json::from_str(status_json).unwrap_or_default();
    let st = &v[0]["Status"];
    let hex = |x: &serde_json::Value| x.as_u64().map_or("?".to_string(), |n| format!("{n:016x}"));
    let healthy_urls: Vec<&str> = cluster_health
        .lines()
        .filter_map(|l| l.trim().split_once(" is healthy").map(|(url, _)| url))
        .collect();
    let (up, down): (Vec<&PlannedMember>, Vec<&PlannedMember>) = planned
        .iter()
        .partition(|m| healthy_urls.contains(&m.client_url().as_str()));
    let down_text = if down.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = down
            .iter()
            .map(|m| format!("{} at {}", m.name, m.ip))
            .collect();
        format!(
            " ({} {})",
            names.join(", "),
            if down.len() == 1 {
                "does not answer"
            } else {
                "do not answer"
            }
        )
    };
    format!(
        "member {} of cluster {}: {}/{} members healthy{down_text}, leader {}, revision {}, write {}",
        hex(&st["header"]["member_id"]),
        hex(&st["header"]["cluster_id"]),
        up.len(),
        planned.len(),
        hex(&st["leader"]),
        st["header"]["revision"].as_u64().unwrap_or(0),
        if wrote { "ok" } else { "failed" },
    )
}

/// etcd's heartbeat interval on this node (ms); elections after ten of them.
fn heartbeat_ms(ctx: &Ctx) -> u32 {
    if ctx.emulated {
        1000
    } else {
        250
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::Recording;
    use crate::steps::testutil::{emulated, with_ctx};

    #[test]
    fn an_emulated_node_gives_etcdctl_longer_timeouts() {
        let (real, emu) = with_ctx(1, |ctx| {
            let emu = emulated(ctx);
            (
                etcdctl(ctx, &["endpoint", "health"]).argv,
                etcdctl(&emu, &["endpoint", "health"]).argv,
            )
        });
        for (argv, dial, command) in [(&real, "3s", "5s"), (&emu, "10s", "15s")] {
            assert!(argv.contains(&format!("--dial-timeout={dial}")), "{argv:?}");
            assert!(
                argv.contains(&format!("--command-timeout={command}")),
                "{argv:?}"
            );
            assert_eq!(argv[argv.len() - 2..], ["endpoint", "health"], "{argv:?}");
        }
    }

    #[test]
    fn an_emulated_node_runs_etcd_with_slower_heartbeats() {
        let argv = with_ctx(1, |ctx| {
            let emu = emulated(ctx);
            Etcd.render(&emu).unwrap().services[0].argv.clone()
        });
        assert!(
            argv.contains(&"--heartbeat-interval=1000".to_string()),
            "{argv:?}"
        );
        assert!(
            argv.contains(&"--election-timeout=10000".to_string()),
            "{argv:?}"
        );
    }

    #[test]
    fn golden_command_line() {
        let argv = with_ctx(1, |ctx| {
            assert_eq!(Etcd.gate(ctx), Gate::Run);
            Etcd.render(ctx).unwrap().services[0].argv.join("\n")
        });
        let token = with_ctx(1, cluster_token);
        let want = format!(
            "/usr/bin/etcd
--name=node-0000000000000001
--data-dir=/var/lib/etcd
--listen-peer-urls=https://10.77.0.1:2380
--initial-advertise-peer-urls=https://10.77.0.1:2380
--listen-client-urls=https://10.77.0.1:2379,https://127.0.0.1:2379
--advertise-client-urls=https://10.77.0.1:2379
--initial-cluster=node-0000000000000001=https://10.77.0.1:2380,node-0000000000000002=https://10.77.0.2:2380,node-0000000000000003=https://10.77.0.3:2380
--initial-cluster-state=new
--initial-cluster-token={token}
--cert-file=/etc/kubernetes/pki/etcd/server.crt
--key-file=/etc/kubernetes/pki/etcd/server.key
--client-cert-auth=true
--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
--peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt
--peer-key-file=/etc/kubernetes/pki/etcd/peer.key
--peer-client-cert-auth=true
--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
--heartbeat-interval=250
--election-timeout=2500
--snapshot-count=10000"
        );
        assert_eq!(argv, want);
        assert!(token.starts_with("habuild-lab-"), "{token}");
    }

    #[test]
    fn workers_never_run_etcd() {
        with_ctx(4, |ctx| assert_eq!(Etcd.gate(ctx), Gate::NotHere));
    }

    #[test]
    fn foreign_data_is_refused_and_own_data_accepted() {
        with_ctx(1, |ctx| {
            let rec = Recording::default();
            let host = rec.host();
            assert_eq!(Etcd.preflight(ctx, &host), Ok(()), "empty: fine");
            host.files
                .write(&FileSpec::new("var/lib/etcd/member/snap/db", 0o600, "x"))
                .unwrap();
            let e = Etcd.preflight(ctx, &host).unwrap_err().to_string();
            assert!(e.contains("was not made by this cluster"), "{e}");
            host.files
                .write(&FileSpec::new(MARKER, 0o600, "habuild-other-00\n"))
                .unwrap();
            let e = Etcd.preflight(ctx, &host).unwrap_err().to_string();
            assert!(e.contains("belongs to another cluster"), "{e}");
            host.files
                .write(&FileSpec::new(
                    MARKER,
                    0o600,
                    format!("{}\n", cluster_token(ctx)),
                ))
                .unwrap();
            assert_eq!(Etcd.preflight(ctx, &host), Ok(()));
        });
    }

    #[test]
    fn health_comes_from_etcdctl() {
        with_ctx(2, |ctx| {
            let rec = Recording::default();
            let host = rec.host();
            rec.answer("/usr/bin/etcdctl", 1, "", "context deadline exceeded\n");
            assert_eq!(
                Etcd.check(ctx, &host).unwrap(),
                Check::Pending("etcd not healthy yet: context deadline exceeded".into())
            );
            rec.lock().answers.clear();
            rec.answer(
                "/usr/bin/etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key --dial-timeout=3s --command-timeout=5s endpoint status",
                0,
                r#"[{"Endpoint":"https://127.0.0.1:2379","Status":{"header":{"cluster_id":17237436991929493444,"member_id":9372538179322589801,"revision":42,"raft_term":2},"leader":9372538179322589801}}]"#,
                "",
            );
            rec.answer(
                "/usr/bin/etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key --dial-timeout=3s --command-timeout=5s endpoint health --cluster",
                1,
                "https://10.77.0.1:2379 is healthy: successfully committed proposal: took = 2ms\nhttps://10.77.0.2:2379 is healthy: successfully committed proposal: took = 3ms\n",
                "https://10.77.0.3:2379 is unhealthy: failed to commit proposal: context deadline exceeded\n",
            );
            assert_eq!(
                Etcd.check(ctx, &host).unwrap(),
                Check::Done(
                    "member 8211f1d0f64f3269 of cluster ef37ad9dc622a7c4: 2/3 members healthy \
                     (node-0000000000000003 at 10.77.0.3 does not answer), \
                     leader 8211f1d0f64f3269, revision 42, write ok"
                        .into()
                )
            );
            assert!(rec
                .commands()
                .last()
                .unwrap()
                .ends_with("put habuild/agents/node-0000000000000002 alive"));
            assert!(rec.commands()[0]
                .contains("--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt"));
        });
    }

    /// A member that was healthy and misses one probe (a starved VM) keeps
    /// the step done, saying so; failures that persist make it pending.
    #[test]
    fn a_healthy_member_that_misses_a_probe_stays_done_until_failures_persist() {
        with_ctx(2, |ctx| {
            let rec = Recording::default();
            let host = rec.host();
            let status = r#"[{"Endpoint":"https://127.0.0.1:2379","Status":{"header":{"cluster_id":1,"member_id":2,"revision":3,"raft_term":2},"leader":2}}]"#;
            let healthy = |rec: &Recording| {
                rec.lock().answers.clear();
                rec.answer("endpoint status", 0, status, "");
                rec.answer("/usr/bin/etcdctl", 0, "", "");
            };
            let failing = |rec: &Recording| {
                rec.lock().answers.clear();
                rec.answer(
                    "/usr/bin/etcdctl",
                    1,
                    "",
                    "https://127.0.0.1:2379 is unhealthy: failed to commit proposal: context deadline exceeded\n",
                );
            };
            // Never healthy yet: a failure is pending, nothing remembered.
            failing(&rec);
            let c = check_health(ctx, &host, &|| 1000).unwrap();
            assert!(
                matches!(&c, Check::Pending(p) if p.starts_with("etcd not healthy yet")),
                "{c:?}"
            );
            assert_eq!(rec.file(HEALTH_MEMORY), None);
            healthy(&rec);
            assert!(
                matches!(check_health(ctx, &host, &|| 1010).unwrap(), Check::Done(d) if d.starts_with("member "))
            );
            assert_eq!(rec.file(HEALTH_MEMORY).unwrap(), "last_ok 1010\n");
            // One failed probe: still done, and the detail says why.
            failing(&rec);
            let c = check_health(ctx, &host, &|| 1030).unwrap();
            let Check::Done(d) = &c else { panic!("{c:?}") };
            assert!(
                d.starts_with("the local etcd member last answered 20 s ago; the last probe failed (1 in a row for 0 s")
                    && d.ends_with("failed to commit proposal: context deadline exceeded"),
                "{d}"
            );
            // Failing for the grace period, twice or more: pending.
            assert!(matches!(
                check_health(ctx, &host, &|| 1060).unwrap(),
                Check::Done(_)
            ));
            let c = check_health(ctx, &host, &|| 1030 + tolerance::GRACE_SECS).unwrap();
            assert!(
                matches!(&c, Check::Pending(p) if p.starts_with("etcd not healthy yet")),
                "{c:?}"
            );
            assert_eq!(rec.file(HEALTH_MEMORY).unwrap(), "");
        });
    }

    /// One of three planned members powered off: etcdctl lists only the
    /// two that answer (the dead one's line may be missing altogether). The
    /// check counts against the plan and names the missing member.
    #[test]
    fn a_powered_off_member_counts_as_down_and_is_named() {
        const ETCDCTL: &str = "/usr/bin/etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key --dial-timeout=3s --command-timeout=5s";
        with_ctx(1, |ctx| {
            let rec = Recording::default();
            let host = rec.host();
            rec.answer(
                &format!("{ETCDCTL} endpoint status"),
                0,
                r#"[{"Endpoint":"https://127.0.0.1:2379","Status":{"header":{"cluster_id":17237436991929493444,"member_id":9372538179322589801,"revision":7,"raft_term":3},"leader":9372538179322589801}}]"#,
                "",
            );
            rec.answer(
                &format!("{ETCDCTL} endpoint health --cluster"),
                0,
                "https://10.77.0.2:2379 is healthy: successfully committed proposal: took = 3ms\nhttps://10.77.0.1:2379 is healthy: successfully committed proposal: took = 2ms\n",
                "",
            );
            assert_eq!(
                Etcd.check(ctx, &host).unwrap(),
                Check::Done(
                    "member 8211f1d0f64f3269 of cluster ef37ad9dc622a7c4: 2/3 members healthy \
                     (node-0000000000000003 at 10.77.0.3 does not answer), \
                     leader 8211f1d0f64f3269, revision 7, write ok"
                        .into()
                )
            );

            // Two down, one of them reported unhealthy, the other silent;
            // a healthy endpoint that is not planned does not count. This is
            // etcdctl 3.4's shape when any endpoint is unhealthy: every line
            // on stderr, after a client warning, exit 1.
            rec.lock().answers.clear();
            rec.answer(
                &format!("{ETCDCTL} endpoint health --cluster"),
                1,
                "",
                "{\"level\":\"warn\",\"msg\":\"retrying of unary invoker failed\",\"target\":\"endpoint://client-1/10.77.0.2:2379\"}\n\
                 https://10.77.0.1:2379 is healthy: successfully committed proposal: took = 2ms\n\
                 https://10.77.0.9:2379 is healthy: successfully committed proposal: took = 2ms\n\
                 https://10.77.0.2:2379 is unhealthy: failed to commit proposal: context deadline exceeded\n\
                 Error: unhealthy cluster\n",
            );
            let Check::Done(text) = Etcd.check(ctx, &host).unwrap() else {
                panic!("endpoint health (local) answered 0: done");
            };
            assert!(
                text.contains(
                    ": 1/3 members healthy (node-0000000000000002 at 10.77.0.2, \
                     node-0000000000000003 at 10.77.0.3 do not answer), leader ?"
                ),
                "{text}"
            );

            // All three answer: nothing named.
            assert_eq!(
                observation(
                    "",
                    "https://10.77.0.1:2379 is healthy: x\nhttps://10.77.0.2:2379 is healthy: x\nhttps://10.77.0.3:2379 is healthy: x\n",
                    false,
                    &planned_endpoints(ctx).unwrap(),
                ),
                "member ? of cluster ?: 3/3 members healthy, leader ?, revision 0, write failed"
            );
        });
    }
}
