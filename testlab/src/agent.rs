//! Agents as processes: `habuild-agent run` in a [`Host`]'s network
//! namespace and in a UTS namespace of its own (`unshare --uts`: an agent
//! that sets its hostname can never rename the machine the tests run on),
//! its stdout and stderr appended to `agent.log` in the node's directory,
//! its status socket there too, killed on drop. [`ChildGuard`] does the
//! killing for any other child a test starts.

use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};

use crate::bridge::Host;
use crate::status::{self, StatusDoc};
use crate::{Error, Result};

/// A child process killed and reaped on drop (also while unwinding).
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `habuild-agent run` is started with, besides what the lab decides
/// (state dir, status socket, advertised address, `--interface eth0`).
#[derive(Clone, Debug)]
pub struct AgentArgs {
    /// The `habuild-agent` binary.
    pub bin: PathBuf,
    pub cluster: PathBuf,
    pub node_id: u64,
    /// `--hostname`; `None` lets the agent choose by cluster.toml's
    /// `network.hostname` pattern.
    pub hostname: Option<String>,
    /// More arguments (`--services none`, `--root DIR`, …).
    pub extra: Vec<OsString>,
    /// The agent's `RUST_LOG`; by default `$AGENT_RUST_LOG`, else `warn`.
    pub rust_log: String,
}

impl AgentArgs {
    pub fn new(bin: &Path, cluster: &Path, node_id: u64, hostname: &str) -> AgentArgs {
        AgentArgs {
            bin: bin.to_path_buf(),
            cluster: cluster.to_path_buf(),
            node_id,
            hostname: Some(hostname.to_string()),
            extra: Vec::new(),
            rust_log: std::env::var("AGENT_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        }
    }

    /// No `--hostname`: the agent names itself (see [`AgentArgs::hostname`]).
    pub fn without_hostname(mut self) -> AgentArgs {
        self.hostname = None;
        self
    }

    /// Adds arguments.
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> AgentArgs {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }
}

/// One running agent (see the module docs).
#[derive(Debug)]
pub struct Agent {
    child: ChildGuard,
    dir: PathBuf,
}

impl Agent {
    /// Starts the agent in `host`'s namespace, advertising `host`'s
    /// address, with its state, socket and log in `dir` (created).
    pub fn spawn(host: &Host, dir: &Path, a: &AgentArgs) -> Result<Agent> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let log_path = dir.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::io(&log_path))?;
        let log2 = log.try_clone().map_err(Error::io(&log_path))?;
        let mut cmd = host.exec("unshare");
        cmd.args(["--uts", "--"])
            .arg(&a.bin)
            .arg("run")
            .arg("--cluster")
            .arg(&a.cluster)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--status-socket")
            .arg(dir.join("status.sock"))
            .args(["--node-id", &a.node_id.to_string()])
            .args(["--advertise", &host.cidr()])
            .args(["--interface", "eth0"])
            .args(a.hostname.iter().flat_map(|h| ["--hostname", h]))
            .args(&a.extra)
            .env("RUST_LOG", &a.rust_log)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            cmd: format!("{cmd:?}"),
            source,
        })?;
        Ok(Agent {
            child: ChildGuard(child),
            dir: dir.to_path_buf(),
        })
    }

    /// The agent's pid (`ip netns exec` and `unshare` exec it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("status.sock")
    }

    /// Its status document, if it answers and the document parses.
    pub fn status(&self) -> Option<StatusDoc> {
        status::fetch(&self.socket()).ok()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("agent.log"))
    }
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
