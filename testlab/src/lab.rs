//! [`Lab`]: what the agent tests and the agent bench share. A [`TestNet`]
//! whose bridge has `<net>.1/24` (the test's own host on the L2), N node
//! [`Host`]s at `<net>.10+i/24`, a temp directory with `node<i>/` per node
//! (state, status socket, `agent.log`), and the agents started there.
//!
//! Dropping it kills the agents, then removes the hosts' namespaces
//! (everything still running inside, such as services an agent started,
//! is killed), the bridge's and the temp directory, also while unwinding
//! from a failed assertion. With [`Lab::keep_logs`], every node's log and
//! last status are copied out first.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::agent::{read_lossy, Agent, AgentArgs};
use crate::bridge::{Host, TestNet};
use crate::status::{self, StatusDoc};
use crate::{Error, Result};

/// Node `i`'s address is `<net>.(FIRST_HOST + i)`.
pub const FIRST_HOST: u8 = 10;

/// See the module docs. Fields drop in declaration order: agents first.
pub struct Lab {
    agents: Vec<Option<Agent>>,
    keep_logs: Option<PathBuf>,
    hosts: Vec<Host>,
    net: TestNet,
    subnet: [u8; 3],
    dir: tempfile::TempDir,
}

impl Lab {
    /// Sweeps stale namespaces of `prefix`, then makes the bridge and
    /// `nodes` hosts on `subnet` (the first three octets of a /24).
    pub fn new(prefix: &str, subnet: [u8; 3], nodes: usize) -> Result<Lab> {
        let [a, b, c] = subnet;
        let net = TestNet::create_with(prefix, Ipv4Addr::new(a, b, c, 1), 24)
            .map_err(|e| Error::NoNamespaces(Box::new(e)))?;
        let dir = tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?;
        let mut lab = Lab {
            agents: Vec::new(),
            keep_logs: None,
            hosts: Vec::new(),
            net,
            subnet,
            dir,
        };
        for i in 0..nodes {
            let host = lab
                .add_host(FIRST_HOST as usize + i)
                .map_err(|e| Error::NoNamespaces(Box::new(e)))?;
            lab.hosts.push(host);
        }
        Ok(lab)
    }

    /// The bridge's namespace (where the test's own host `<net>.1` is).
    pub fn net(&self) -> &TestNet {
        &self.net
    }

    /// One more host on the bridge at `<net>.<octet>`, not a node: for a
    /// client. It lives as long as the caller keeps it.
    pub fn add_host(&self, octet: usize) -> Result<Host> {
        let [a, b, c] = self.subnet;
        let octet = u8::try_from(octet)
            .map_err(|_| Error::Invalid(format!("host octet {octet} out of range")))?;
        self.net.add_host(Ipv4Addr::new(a, b, c, octet))
    }

    /// Node `i`'s namespace.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Node `i`'s namespace name.
    pub fn ns(&self, i: usize) -> &str {
        self.hosts[i].name()
    }

    pub fn nodes(&self) -> usize {
        self.hosts.len()
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].addr()
    }

    pub fn node_cidr(&self, i: usize) -> String {
        self.hosts[i].cidr()
    }

    /// The lab's temp directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s directory (state, status socket, `agent.log`).
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    /// Starts the agent of node `i` (after a [`kill`](Self::kill): again,
    /// with its state and appending to its log).
    pub fn start(&mut self, i: usize, args: &AgentArgs) -> Result<()> {
        let agent = Agent::spawn(&self.hosts[i], &self.node_dir(i), args)?;
        if self.agents.len() <= i {
            self.agents.resize_with(i + 1, || None);
        }
        self.agents[i] = Some(agent);
        Ok(())
    }

    /// Kills node `i`'s agent only.
    pub fn kill(&mut self, i: usize) {
        if let Some(slot) = self.agents.get_mut(i) {
            slot.take();
        }
    }

    /// Kills every process of node `i`: the agent and the services it
    /// started (a machine losing power).
    pub fn power_off(&mut self, i: usize) {
        self.kill(i);
        self.hosts[i].kill_all();
    }

    /// The pid of node `i`'s agent, while it runs.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.agents.get(i)?.as_ref().map(Agent::pid)
    }

    /// The first agent that has exited, and how.
    pub fn exited(&mut self) -> Option<(usize, ExitStatus)> {
        self.agents
            .iter_mut()
            .enumerate()
            .find_map(|(i, a)| Some((i, a.as_mut()?.exited()?)))
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("status.sock")
    }

    /// Node `i`'s status document, if it answers and it parses.
    pub fn status(&self, i: usize) -> Option<StatusDoc> {
        status::fetch(&self.socket(i)).ok()
    }

    /// Node `i`'s status document as sent.
    pub fn status_text(&self, i: usize) -> Option<String> {
        status::fetch_text(&self.socket(i)).ok()
    }

    pub fn statuses(&self, nodes: &[usize]) -> Vec<Option<StatusDoc>> {
        nodes.iter().map(|i| self.status(*i)).collect()
    }

    /// Node `i`'s agent log so far (all its runs).
    pub fn log(&self, i: usize) -> String {
        read_lossy(&self.node_dir(i).join("agent.log"))
    }

    /// Status, log and the tail of each service log of `nodes`, for
    /// failure messages.
    pub fn dump(&self, nodes: &[usize]) -> String {
        let mut s = String::new();
        for &i in nodes {
            let doc = match status::fetch(&self.socket(i)) {
                Ok(d) => status::pretty(&d),
                Err(e) => format!("(no status: {e})"),
            };
            s += &format!(
                "--- node{i} status:\n{doc}\n--- node{i} log:\n{}\n",
                self.log(i)
            );
            let services = self.node_dir(i).join("state/services");
            for entry in std::fs::read_dir(&services).into_iter().flatten().flatten() {
                let text = read_lossy(&entry.path());
                let lines: Vec<&str> = text.lines().collect();
                s += &format!(
                    "--- node{i} {}:\n{}\n",
                    entry.file_name().to_string_lossy(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                );
            }
        }
        s
    }

    /// On drop, copy every node's log and last status into `dir` as
    /// `<bridge netns>-node<i>.log` and `….status.json`.
    pub fn keep_logs(&mut self, dir: PathBuf) {
        self.keep_logs = Some(dir);
    }

    fn save_logs(&self, keep: &Path) {
        if let Err(e) = std::fs::create_dir_all(keep) {
            tracing::warn!("cannot create {}: {e}", keep.display());
            return;
        }
        for i in 0..self.hosts.len() {
            let name = format!("{}-node{i}", self.net.name());
            if let Some(st) = self.status_text(i) {
                let _ = std::fs::write(keep.join(format!("{name}.status.json")), st);
            }
            let _ = std::fs::write(keep.join(format!("{name}.log")), self.log(i));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(keep) = &self.keep_logs {
            self.save_logs(keep);
        }
    }
}
