//! Side effects on the host, behind small traits: files ([`Files`]),
//! programs ([`Exec`]), long-running services ([`Services`]) and the
//! kernel's hostname ([`Uts`]).
//!
//! Converge steps never touch the host directly: they render what they want
//! (pure) and apply it through a [`Host`]. The real implementations are in
//! [`real`]: [`real::RootFiles`] writes under a root directory (`/` on a
//! node, a per-node directory in the namespace tests), [`real::HostExec`]
//! runs programs, and services run either as systemd units
//! ([`real::Systemd`], on a booted node) or as supervised child processes
//! ([`real::Supervisor`], for agents run outside systemd, e.g. one per
//! network namespace). [`fake::Recording`] records everything instead, so
//! step tests assert on exactly what would have been done.

pub mod fake;
pub mod real;

use std::path::{Path, PathBuf};

/// A side effect failed; the message names the file, command or unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("service {name}: {message}")]
    Service { name: String, message: String },
}

/// One command line (program and arguments; no shell).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Cmd {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    /// A shell-like rendering for logs, goldens and error messages.
    pub fn display(&self) -> String {
        self.argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Quotes `a` for a shell (and for systemd's ExecStart, which accepts the same quoting).
pub fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Output of a command that ran to completion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// A file a step wants on the host: path relative to the host root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

impl FileSpec {
    pub fn new(path: impl Into<String>, mode: u32, contents: impl Into<Vec<u8>>) -> Self {
        FileSpec {
            path: path.into(),
            mode,
            contents: contents.into(),
        }
    }
}

/// A long-running service a step wants running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unit name without `.service`, e.g. `habuild-etcd`.
    pub name: String,
    pub description: String,
    pub argv: Vec<String>,
    /// Changes whenever the service must restart (its config files' hash).
    pub fingerprint: String,
}

pub trait Files: Send + Sync {
    /// The absolute host path of `rel` (what configs and command lines name).
    fn abs(&self, rel: &str) -> PathBuf;
    /// Writes `contents` atomically with `mode` (parents created); returns
    /// whether the file changed.
    fn write(&self, file: &FileSpec) -> Result<bool, HostError>;
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn exists(&self, rel: &str) -> bool;
    /// The names of the entries of directory `rel`, sorted (none when it
    /// does not exist).
    fn list(&self, rel: &str) -> Result<Vec<String>, HostError>;
}

/// Runs programs. Two methods, two rules (as with `std::process::Command`):
/// [`Exec::output`] reports whatever exit status the program had, for callers
/// that read the status themselves (`vgs VG` answers "does it exist" by its
/// exit code); [`Exec::run`] fails on a non-zero exit, like the builder's
/// `Exec::run`.
pub trait Exec: Send + Sync {
    /// Runs to completion and returns the exit code with stdout and stderr;
    /// a non-zero exit is *not* an error (see [`Output::code`]). Errors only
    /// when the program cannot be run at all.
    fn output(&self, cmd: &Cmd) -> Result<Output, HostError>;

    /// Runs to completion; a non-zero exit is an error carrying the last
    /// lines of stderr (or stdout when stderr is empty).
    fn run(&self, cmd: &Cmd) -> Result<Output, HostError> {
        let o = self.output(cmd)?;
        if o.success() {
            Ok(o)
        } else {
            let tail = if o.stderr.trim().is_empty() {
                &o.stdout
            } else {
                &o.stderr
            };
            Err(HostError::Command {
                command: cmd.display(),
                message: format!("exit {}: {}", o.code, last_lines(tail, 6)),
            })
        }
    }
}

pub trait Services: Send + Sync {
    /// Makes `svc` run as specified (started if stopped, restarted if its
    /// fingerprint changed, enabled across reboots where that applies).
    fn ensure(&self, svc: &ServiceSpec) -> Result<(), HostError>;
    /// [`Services::ensure`] for several services at once (systemd: one
    /// daemon-reload for all of them).
    fn ensure_all(&self, svcs: &[ServiceSpec]) -> Result<(), HostError> {
        svcs.iter().try_for_each(|s| self.ensure(s))
    }
    /// Whether `name` is running now.
    fn running(&self, name: &str) -> bool;
    /// Stops `name` (no error if it is not running).
    fn stop(&self, name: &str) -> Result<(), HostError>;
}

/// Network probes from this host (its own network namespace).
pub trait Net: Send + Sync {
    /// `GET path` over plain HTTP/1.0 with a short timeout: (status, body).
    fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), HostError>;
}

/// The host's name in the kernel (its UTS namespace). Only the agent's
/// start-up sets it ([`crate::hostname::apply`]), and only on a node it owns.
pub trait Uts: Send + Sync {
    fn hostname(&self) -> Result<String, HostError>;
    fn set_hostname(&self, name: &str) -> Result<(), HostError>;
}

/// Everything a step may touch.
pub struct Host {
    pub files: Box<dyn Files>,
    pub exec: Box<dyn Exec>,
    pub services: Box<dyn Services>,
    pub net: Box<dyn Net>,
}

impl Host {
    /// The absolute path of `rel` under the host root, as a string for configs.
    pub fn path(&self, rel: &str) -> String {
        self.files.abs(rel).display().to_string()
    }
}

/// `rel` under `root`, refusing to leave it (no `..`, no absolute part).
pub fn join_root(root: &Path, rel: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in Path::new(rel.trim_start_matches('/')).components() {
        if let std::path::Component::Normal(c) = c {
            p.push(c);
        }
    }
    p
}

/// The last `n` non-empty lines of `s`, joined with " | ".
/// `systemctl daemon-reload`, but only when systemd holds an older version
/// of one of `units` (its `NeedDaemonReload`), or cannot say. A unit file
/// written for the first time needs none: systemd (since 243) loads a new
/// file when the unit is next asked for, even one it looked up before and
/// found missing (checked on the image's systemd 252). Under emulation a
/// reload took 15-22 s of PID 1, every systemctl call waiting on it, and
/// each node's first etcd, VIP, brick and mount reloaded once each.
pub fn reload_if_stale(exec: &dyn Exec, units: &[&str]) -> Result<(), HostError> {
    if units.is_empty() {
        return Ok(());
    }
    let mut argv = vec![
        "systemctl",
        "show",
        "--property=NeedDaemonReload",
        "--value",
    ];
    argv.extend_from_slice(units);
    let o = exec.output(&Cmd::new(argv))?;
    // one value per unit, a blank line between units
    let stale = o
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .any(|l| l != "no");
    if !o.success() || stale {
        exec.run(&Cmd::new(["systemctl", "daemon-reload"]))?;
    }
    Ok(())
}

pub fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_paths() {
        assert_eq!(
            Cmd::new(["etcd", "--name", "a b", "--x=y"]).display(),
            "etcd --name 'a b' --x=y"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(
            join_root(Path::new("/tmp/r"), "/etc/../x/y"),
            PathBuf::from("/tmp/r/etc/x/y")
        );
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b | c");
    }

    #[test]
    fn systemd_is_reloaded_only_for_a_unit_it_holds_an_older_version_of() {
        let reloads = |code: i32, show: &str| {
            let rec = fake::Recording::default();
            rec.answer("systemctl show", code, show, "");
            reload_if_stale(&rec, &["a.service", "b.service"]).unwrap();
            let cmds = rec.commands();
            assert_eq!(
                cmds[0],
                "systemctl show --property=NeedDaemonReload --value a.service b.service"
            );
            cmds.iter()
                .filter(|c| *c == "systemctl daemon-reload")
                .count()
        };
        // two new unit files (a blank line between the units' values)
        assert_eq!(reloads(0, "no\n\nno\n"), 0);
        assert_eq!(reloads(0, "no\n\nyes\n"), 1);
        // systemd cannot say: reload
        assert_eq!(reloads(1, ""), 1);
        let rec = fake::Recording::default();
        reload_if_stale(&rec, &[]).unwrap();
        assert!(rec.commands().is_empty());
    }
}
