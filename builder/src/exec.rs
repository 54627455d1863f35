//! Running external programs, behind a small trait so the build pipeline can be
//! tested with a recording fake that asserts on exactly what would be run.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::error::BuildError;

/// One command line, with optional extra environment and working directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            ..Default::default()
        }
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// A shell-like rendering for logs, goldens and error messages.
    pub fn display(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            let a = a.to_string_lossy();
            s.push(' ');
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$;&|<>*".contains(c)) {
                s.push('\'');
                s.push_str(&a.replace('\'', "'\\''"));
                s.push('\'');
            } else {
                s.push_str(&a);
            }
        }
        s
    }
}

/// Output of a finished command.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

pub trait Exec: Send + Sync {
    /// Run to completion; a non-zero exit is an error carrying the tail of stderr.
    fn run(&self, cmd: &Cmd) -> Result<Output, BuildError>;
    /// Run with output streamed to our stderr (long, chatty tools); the tail is kept for errors.
    fn run_streamed(&self, cmd: &Cmd) -> Result<(), BuildError> {
        self.run(cmd).map(|_| ())
    }
}

/// Runs commands on this host.
#[derive(Debug, Default)]
pub struct HostExec;

impl HostExec {
    fn command(cmd: &Cmd) -> Command {
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args);
        for (k, v) in &cmd.env {
            c.env(k, v);
        }
        if let Some(d) = &cmd.cwd {
            c.current_dir(d);
        }
        c
    }

    fn spawn_error(cmd: &Cmd, e: std::io::Error) -> BuildError {
        if e.kind() == std::io::ErrorKind::NotFound {
            BuildError::ToolMissing {
                tool: cmd.program.clone(),
            }
        } else {
            BuildError::Command {
                cmd: cmd.display(),
                detail: e.to_string(),
            }
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl Exec for HostExec {
    fn run(&self, cmd: &Cmd) -> Result<Output, BuildError> {
        tracing::debug!(cmd = %cmd.display(), "exec");
        let out = Self::command(cmd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Self::spawn_error(cmd, e))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(BuildError::Command {
                cmd: cmd.display(),
                detail: format!("{}\n{}", out.status, tail(&format!("{stdout}{stderr}"), 25)),
            });
        }
        Ok(Output { stdout, stderr })
    }

    fn run_streamed(&self, cmd: &Cmd) -> Result<(), BuildError> {
        use std::io::{BufRead, BufReader};
        tracing::debug!(cmd = %cmd.display(), "exec (streamed)");
        let mut child = Self::command(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Self::spawn_error(cmd, e))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let keep = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        let mut threads = Vec::new();
        for r in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let keep = keep.clone();
            threads.push(std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    tracing::info!(target: "habuild::tool", "{line}");
                    let mut k = keep.lock().expect("not poisoned");
                    k.push(line);
                    if k.len() > 40 {
                        k.remove(0);
                    }
                }
            }));
        }
        let status = child.wait().map_err(|e| Self::spawn_error(cmd, e))?;
        for t in threads {
            let _ = t.join();
        }
        if !status.success() {
            let k = keep.lock().expect("not poisoned").join("\n");
            return Err(BuildError::Command {
                cmd: cmd.display(),
                detail: format!("{status}\n{k}"),
            });
        }
        Ok(())
    }
}

/// Records commands instead of running them; answers with canned output.
#[derive(Debug, Default)]
pub struct RecordingExec {
    pub calls: Mutex<Vec<Cmd>>,
}

impl RecordingExec {
    pub fn lines(&self) -> Vec<String> {
        self.calls
            .lock()
            .expect("not poisoned")
            .iter()
            .map(Cmd::display)
            .collect()
    }
}

impl Exec for RecordingExec {
    fn run(&self, cmd: &Cmd) -> Result<Output, BuildError> {
        self.calls.lock().expect("not poisoned").push(cmd.clone());
        Ok(Output::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_is_named() {
        let e = HostExec.run(&Cmd::new("habuild-no-such-tool")).unwrap_err();
        assert!(
            e.to_string().contains("habuild-no-such-tool not found"),
            "{e}"
        );
    }

    #[test]
    fn failure_carries_stderr() {
        let e = HostExec
            .run(&Cmd::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("boom") && s.contains("exit status: 3"), "{s}");
    }

    #[test]
    fn display_quotes() {
        let c = Cmd::new("mmdebstrap").arg("--customize-hook=chroot \"$1\" true");
        assert_eq!(
            c.display(),
            "mmdebstrap '--customize-hook=chroot \"$1\" true'"
        );
    }
}
