//! `habuild cluster kubeconfig` against three real `habuild-agent`
//! processes, each in its own network namespace on a bridge this test
//! creates; the command runs in a fourth namespace. It goes the whole way:
//! mDNS discovery verified with the secret, the Noise transport,
//! `Wire::AdminKubeconfig` answered by the agent's real request handler.
//!
//! Until the Raft leader has issued the `kube/admin` certificate the
//! command exits 4 with "the cluster has not issued its admin certificate
//! yet (plan not committed?)" and writes nothing; it must then (within
//! 60 s of the plan) exit 0 and write a 0600 kubeconfig naming
//! https://VIP:6443, the cluster and `kubernetes-admin`, whose client
//! certificate `openssl verify`s against the CA in it with subject
//! `CN=kubernetes-admin, O=system:masters`, and print the same kubeconfig
//! to stdout without --out. With a
//! cluster file carrying another secret nobody answers (exit 1); a bad
//! cluster file is exit 2.
//!
//! Network rule: every packet stays inside the namespaces created here.
//! `habuild-agent` is built by the firstboot crate: run `cargo build
//! --workspace` first (the test says so when it is missing).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use firstboot::protocol::hex;
use testlab::status::{converged, Converged};
use testlab::{AgentArgs, Host, Lab};

const NS_PREFIX: &str = "hbkcfg";
const NODES: usize = 3;
const GOOD_SECRET: &str = "5555555555555555555555555555555555555555555555555555555555555555";
const BAD_SECRET: &str = "6666666666666666666666666666666666666666666666666666666666666666";
const CLIENT_OCTET: usize = 100;
const NOT_ISSUED: &str =
    "error: the cluster has not issued its admin certificate yet (plan not committed?)";

fn habuild() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_habuild"))
}

fn agent_binary() -> PathBuf {
    let p = habuild().with_file_name("habuild-agent");
    assert!(
        p.is_file(),
        "habuild-agent not built: run cargo build --workspace (looked for {})",
        p.display()
    );
    p
}

fn node_id(i: usize) -> u64 {
    0x6b00 + i as u64
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// `habuild cluster kubeconfig --cluster <file> --interface eth0 --timeout
/// 3 <extra>` in the client namespace, killed after 60 s.
fn kubeconfig(client: &Host, dir: &Path, cluster_file: &Path, extra: &[&str], tag: &str) -> Run {
    let out = dir.join(format!("kubeconfig-{tag}.out"));
    let err = dir.join(format!("kubeconfig-{tag}.err"));
    let t0 = Instant::now();
    let mut child = client
        .exec(habuild())
        .args(["cluster", "kubeconfig", "--cluster"])
        .arg(cluster_file)
        .args(["--interface", "eth0", "--timeout", "3"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("running habuild");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("habuild cluster kubeconfig did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

#[test]
fn kubeconfig_is_fetched_over_the_authenticated_channel() {
    let agent = agent_binary();
    let mut lab = Lab::new(NS_PREFIX, [10, 91, 0], NODES).unwrap_or_else(|e| panic!("{e}"));
    let client = lab.add_host(CLIENT_OCTET).unwrap_or_else(|e| panic!("{e}"));
    let good = lab.dir().join("cluster.toml");
    std::fs::write(
        &good,
        testlab::ClusterToml::lab("kcfglab", GOOD_SECRET, 3, [10, 91, 0]),
    )
    .unwrap();
    let bad = lab.dir().join("cluster-other-secret.toml");
    std::fs::write(
        &bad,
        testlab::ClusterToml::lab("kcfglab", BAD_SECRET, 3, [10, 91, 0]),
    )
    .unwrap();
    let broken = lab.dir().join("broken.toml");
    std::fs::write(&broken, "[cluster]\nname = 3\n").unwrap();

    let ids: BTreeSet<String> = (0..NODES).map(|i| hex(node_id(i))).collect();
    let all: Vec<usize> = (0..NODES).collect();
    for &i in &all {
        let args = AgentArgs::new(&agent, &good, node_id(i), &format!("node{i}"))
            .args(["--services", "none"]);
        lab.start(i, &args)
            .unwrap_or_else(|e| panic!("starting node{i}: {e}"));
    }
    let t0 = Instant::now();
    let Converged { plan, .. } = loop {
        if let Some(c) = converged(&lab.statuses(&all), &ids) {
            break c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "agents did not converge within 60 s\n{}",
            lab.dump(&all)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let vip = plan.vip.clone();

    let target = lab.dir().join("admin.conf");
    let target_s = target.display().to_string();
    // The leader issues kube/admin right after the plan: until then the
    // command exits 4, names each agent's reason and writes nothing; then 0.
    let t1 = Instant::now();
    let run = loop {
        let run = kubeconfig(&client, lab.dir(), &good, &["--out", &target_s], "out");
        match run.status.code() {
            Some(0) => break run,
            Some(4) => {
                assert!(run.stderr.contains(NOT_ISSUED), "{}", run.show());
                assert!(run.stderr.contains("not issued yet"), "{}", run.show());
                assert!(!target.exists(), "nothing written on refusal");
                assert!(run.stdout.is_empty(), "{}", run.show());
                assert!(
                    t1.elapsed() < Duration::from_secs(60),
                    "the admin certificate was not issued within 60 s of the plan\n{}\n{}",
                    run.show(),
                    lab.dump(&all)
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            _ => panic!("expected exit 0 (or 4 before issuance)\n{}", run.show()),
        }
    };
    println!(
        "kubeconfig_netns: fetched the admin kubeconfig {:.1} s after the plan",
        t1.elapsed().as_secs_f64()
    );
    let text = std::fs::read_to_string(&target).unwrap();
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        text.contains(&format!("    server: https://{vip}:6443\n")),
        "{text}"
    );
    assert!(text.contains("  name: kcfglab\n"), "{text}");
    assert!(
        text.contains("current-context: kubernetes-admin@kcfglab\n"),
        "{text}"
    );
    assert!(
        run.stderr.contains("kubectl --kubeconfig"),
        "{}",
        run.show()
    );
    // the embedded client certificate is the admin's, signed by the CA in it
    let field = |name: &str| {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(line)
            .unwrap()
    };
    let ca = lab.dir().join("kcfg-ca.crt");
    let cert = lab.dir().join("kcfg-admin.crt");
    std::fs::write(&ca, field("certificate-authority-data")).unwrap();
    std::fs::write(&cert, field("client-certificate-data")).unwrap();
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca)
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup installs it)");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let subject = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("CN=kubernetes-admin") && subject.contains("O=system:masters"),
        "{subject}"
    );
    // without --out: the same kubeconfig on stdout
    let stdout = kubeconfig(&client, lab.dir(), &good, &[], "stdout");
    assert_eq!(stdout.status.code(), Some(0), "{}", stdout.show());
    assert_eq!(stdout.stdout, text);
    let names: Vec<String> = std::fs::read_dir(lab.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("habuild-tmp"))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");

    // another secret: announcements fail verification, nobody answers
    let other = kubeconfig(&client, lab.dir(), &bad, &[], "bad");
    assert_eq!(other.status.code(), Some(1), "{}", other.show());
    assert!(
        other.stderr.contains("failed verification"),
        "{}",
        other.show()
    );
    // a bad cluster file: exit 2, nothing on the network
    let bad_file = kubeconfig(&client, lab.dir(), &broken, &[], "broken");
    assert_eq!(bad_file.status.code(), Some(2), "{}", bad_file.show());
}
