//! A lab of network namespaces for tests that run real agents: one
//! namespace holding a bridge (and the test's own address on it), one
//! namespace per node joined to the bridge by a veth (`eth0` inside).
//!
//! Network rule: every packet stays inside the namespaces created here.
//! Everything is removed on every path: Drop kills every process left in
//! the lab's namespaces and deletes them (also while unwinding from a failed
//! assertion); namespaces of earlier runs that were killed are swept first.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

pub fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

pub struct Lab {
    pub prefix: &'static str,
    /// First three octets of the lab's /24, e.g. "10.92.0".
    pub net: &'static str,
    /// [bridge namespace, node 0, node 1, ...]
    pub namespaces: Vec<String>,
    pub children: Vec<Option<Child>>,
    pub dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            kill_namespace(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// SIGKILLs every process in namespace `ns` (a node losing power).
pub fn kill_namespace(ns: &str) {
    let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
}

impl Lab {
    /// Sweeps stale namespaces of `prefix`, then creates the bridge and
    /// `nodes` node namespaces at `<net>.10+i/24`; the bridge namespace gets
    /// `<net>.1/24` (the test's own host on the L2). Fails with a message
    /// naming what is missing when namespaces cannot be made.
    pub fn new(prefix: &'static str, net: &'static str, nodes: usize) -> Lab {
        remove_stale_namespaces(prefix);
        let mut lab = Lab {
            prefix,
            net,
            namespaces: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        if let Err(e) = lab.setup(nodes) {
            panic!(
                "cannot create network namespaces: {e} (needs root, iproute2 and veth/bridge \
                 support: run scripts/setup as root)"
            );
        }
        lab
    }

    fn setup(&mut self, nodes: usize) -> Result<(), String> {
        let pid = std::process::id();
        let br = format!("{}{pid}-br", self.prefix);
        ip(&["netns", "add", &br])?;
        self.namespaces.push(br.clone());
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&[
            "-n",
            &br,
            "addr",
            "add",
            &format!("{}.1/24", self.net),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let ns = format!("{}{pid}-{i}", self.prefix);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let v = format!("v{i}");
            ip(&[
                "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &v, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &v, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &self.node_cidr(i), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(())
    }

    pub fn bridge_ns(&self) -> &str {
        &self.namespaces[0]
    }

    pub fn ns(&self, i: usize) -> &str {
        &self.namespaces[i + 1]
    }

    pub fn node_ip(&self, i: usize) -> String {
        format!("{}.{}", self.net, 10 + i)
    }

    pub fn node_cidr(&self, i: usize) -> String {
        format!("{}/24", self.node_ip(i))
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("status.sock")
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("agent.log")).unwrap_or_default()
    }

    /// Starts `habuild-agent run` for node `i` in its namespace with `extra` arguments.
    pub fn start(&mut self, i: usize, cluster_file: &Path, node_id: u64, extra: &[String]) {
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns(i)])
            .arg(env!("CARGO_BIN_EXE_habuild-agent"))
            .arg("run")
            .arg("--cluster")
            .arg(cluster_file)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--status-socket")
            .arg(self.socket(i))
            .args(["--node-id", &node_id.to_string()])
            .args(["--advertise", &self.node_cidr(i)])
            .args(["--interface", "eth0"])
            .args(["--hostname", &format!("node{i}")])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("AGENT_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        while self.children.len() <= i {
            self.children.push(None);
        }
        self.children[i] = Some(child);
    }

    /// Kills node `i`'s agent only.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Kills every process of node `i` (agent and the services it started).
    pub fn power_off(&mut self, i: usize) {
        self.kill(i);
        kill_namespace(&self.namespaces[i + 1]);
    }

    pub fn status(&self, i: usize) -> Option<Value> {
        let mut s = UnixStream::connect(self.socket(i)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        serde_json::from_str(&out).ok()
    }

    pub fn statuses(&self, nodes: &[usize]) -> Vec<Option<Value>> {
        nodes.iter().map(|i| self.status(*i)).collect()
    }

    /// Runs `argv` inside namespace `ns`.
    pub fn exec_in(&self, ns: &str, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {ns} {argv:?}: {e}"))
    }

    pub fn dump(&self, nodes: &[usize]) -> String {
        let mut s = String::new();
        for &i in nodes {
            s += &format!(
                "--- node{i} status:\n{}\n--- node{i} log:\n{}\n",
                self.status(i)
                    .map(|v| serde_json::to_string_pretty(&v).unwrap())
                    .unwrap_or_else(|| "(no status)".into()),
                self.log(i)
            );
            let services = self.node_dir(i).join("state/services");
            for entry in std::fs::read_dir(&services).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                s += &format!(
                    "--- node{i} {}:\n{}\n",
                    entry.file_name().to_string_lossy(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        s
    }
}

/// Removes namespaces left by an earlier run that was killed (SIGKILL skips Drop).
pub fn remove_stale_namespaces(prefix: &str) {
    let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            kill_namespace(name);
            let _ = ip(&["netns", "del", name]);
        }
    }
}

pub fn str_set(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

pub fn hex(id: u64) -> String {
    format!("{id:016x}")
}
