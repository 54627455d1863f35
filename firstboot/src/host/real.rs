//! The real side effects: files under a root directory, programs, and
//! services as systemd units or as supervised child processes.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use super::{join_root, Cmd, Exec, FileSpec, Files, HostError, Output, ServiceSpec, Services};

/// Files under `root` (`/` on a node).
#[derive(Debug, Clone)]
pub struct RootFiles {
    pub root: PathBuf,
}

impl Files for RootFiles {
    fn abs(&self, rel: &str) -> PathBuf {
        join_root(&self.root, rel)
    }

    fn write(&self, file: &FileSpec) -> Result<bool, HostError> {
        let path = self.abs(&file.path);
        let err = |m: String| HostError::File {
            path: path.display().to_string(),
            message: m,
        };
        let same_mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o7777 == file.mode)
            .unwrap_or(false);
        if same_mode && std::fs::read(&path).ok().as_deref() == Some(&file.contents[..]) {
            return Ok(false);
        }
        let dir = path
            .parent()
            .ok_or_else(|| err("no parent directory".into()))?;
        std::fs::create_dir_all(dir).map_err(|e| err(format!("creating the directory: {e}")))?;
        let tmp = dir.join(format!(
            ".{}.habuild-tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        // A fresh temporary file created with the final mode, the mode set
        // exactly (the umask may have cleared bits) before any byte is
        // written: a key is never readable by others, even briefly, nor
        // through a stale temporary file left by a crash.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(err(format!("removing a stale temporary file: {e}")))
            }
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&tmp)
            .map_err(|e| err(format!("writing: {e}")))?;
        f.set_permissions(std::fs::Permissions::from_mode(file.mode))
            .and_then(|_| f.write_all(&file.contents))
            .and_then(|_| f.sync_all())
            .map_err(|e| err(format!("writing: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(format!("renaming into place: {e}")))?;
        Ok(true)
    }

    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, HostError> {
        let path = self.abs(rel);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HostError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    fn exists(&self, rel: &str) -> bool {
        self.abs(rel).exists()
    }

    fn list(&self, rel: &str) -> Result<Vec<String>, HostError> {
        let path = self.abs(rel);
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(HostError::File {
                    path: path.display().to_string(),
                    message: format!("listing: {e}"),
                })
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// A command that takes this long is logged (at info) with its duration.
const SLOW_COMMAND: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs programs on this host (in the agent's own network namespace).
#[derive(Debug, Default, Clone)]
pub struct HostExec;

impl Exec for HostExec {
    fn output(&self, cmd: &Cmd) -> Result<Output, HostError> {
        let (prog, args) = cmd.argv.split_first().ok_or_else(|| HostError::Command {
            command: String::new(),
            message: "empty command line".into(),
        })?;
        tracing::debug!(command = %cmd.display(), "exec");
        let started = std::time::Instant::now();
        let o = Command::new(prog)
            .args(args)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| HostError::Command {
                command: cmd.display(),
                message: format!("cannot start {prog}: {e}"),
            })?;
        let took = started.elapsed();
        if took >= SLOW_COMMAND {
            // where boot-time assembly spends its time (issue 13): read
            // with `journalctl -u habuild-agent | grep 'slow command'`
            tracing::info!(command = %cmd.display(), secs = format!("{:.1}", took.as_secs_f64()), "slow command");
        }
        Ok(Output {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    }
}

/// The kernel's hostname of the agent's UTS namespace, through
/// `/proc/sys/kernel/hostname` (what `hostname NAME` does, without needing
/// the program).
#[derive(Debug, Default, Clone)]
pub struct KernelUts;

const KERNEL_HOSTNAME: &str = "/proc/sys/kernel/hostname";

impl super::Uts for KernelUts {
    fn hostname(&self) -> Result<String, HostError> {
        std::fs::read_to_string(KERNEL_HOSTNAME)
            .map(|s| s.trim().to_string())
            .map_err(|e| HostError::File {
                path: KERNEL_HOSTNAME.into(),
                message: e.to_string(),
            })
    }
    fn set_hostname(&self, name: &str) -> Result<(), HostError> {
        std::fs::write(KERNEL_HOSTNAME, name).map_err(|e| HostError::File {
            path: KERNEL_HOSTNAME.into(),
            message: format!("setting the hostname to {name:?}: {e}"),
        })
    }
}

/// Probes over the host's own network stack.
#[derive(Debug, Default, Clone)]
pub struct HostNet;

impl super::Net for HostNet {
    fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), HostError> {
        use std::io::Read;
        use std::time::Duration;
        let err = |m: String| HostError::Command {
            command: format!("GET http://{addr}{path}"),
            message: m,
        };
        let t = Duration::from_secs(2);
        let mut s =
            std::net::TcpStream::connect_timeout(&addr, t).map_err(|e| err(e.to_string()))?;
        s.set_read_timeout(Some(t))
            .map_err(|e| err(e.to_string()))?;
        s.set_write_timeout(Some(t))
            .map_err(|e| err(e.to_string()))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| err(e.to_string()))?;
        let mut buf = Vec::new();
        s.take(64 * 1024)
            .read_to_end(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                err(format!(
                    "not an HTTP answer: {:?}",
                    super::last_lines(head, 1)
                ))
            })?;
        Ok((status, body.to_string()))
    }
}

/// Where systemd (cgroup v2, unified) puts the services' control groups.
const SYSTEM_SLICE: &str = "/sys/fs/cgroup/system.slice";

/// Whether `unit`'s control group under `slice` has a process in it (its
/// `cgroup.events` says `populated 1`): a service is running exactly when
/// it has, so this answers `systemctl is-active` with one file read
/// instead of a process. On an emulated node each `systemctl` run cost
/// 3-19 s of a saturated vCPU, and the steps ask every round. A unit
/// with no group in the slice is not running (systemd makes the group
/// when it starts the unit and removes it when the unit stops). None when
/// there is no such slice (cgroup v1) or the file says neither, so the
/// caller asks systemctl.
fn cgroup_populated(slice: &Path, unit: &str) -> Option<bool> {
    match std::fs::read_to_string(slice.join(unit).join("cgroup.events")) {
        Ok(events) => events.lines().find_map(|l| match l.trim() {
            "populated 1" => Some(true),
            "populated 0" => Some(false),
            _ => None,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && slice.is_dir() => Some(false),
        Err(_) => None,
    }
}

/// Services as systemd units in `/etc/systemd/system` (enabled, so they come
/// back on reboot before the agent re-checks them).
pub struct Systemd {
    pub files: RootFiles,
    pub exec: HostExec,
}

impl Systemd {
    fn systemctl(&self, args: &[&str]) -> Result<Output, HostError> {
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(args);
        self.exec.run(&Cmd::new(argv))
    }
}

/// The unit file for `svc` (pure; golden-tested through the steps).
pub fn unit_file(svc: &ServiceSpec) -> String {
    let exec = svc
        .argv
        .iter()
        .map(|a| super::shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "# Written by habuild-agent; fingerprint {fp}\n\
         [Unit]\n\
         Description={desc}\n\
         Wants=network-online.target\n\
         After=network-online.target local-fs.target\n\
         \n\
         [Service]\n\
         ExecStart={exec}\n\
         Restart=always\n\
         RestartSec=3\n\
         LimitNOFILE=65536\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        fp = svc.fingerprint,
        desc = svc.description,
    )
}

/// The systemctl calls that bring units up: `changed` (unit files just
/// written) get one `enable --no-reload` and one `restart` for all of
/// them; `stopped` (unchanged, not running) a `start`. Before them the
/// caller reloads systemd only if one of the changed files replaced a
/// version it had loaded ([`super::reload_if_stale`]): under emulation
/// with three nodes a reload took 8–22 s, and the VIP step alone once
/// spent ~70 s in five of them.
pub fn unit_commands(changed: &[String], stopped: &[String]) -> Vec<Cmd> {
    let mut out = Vec::new();
    let with = |head: &[&str], units: &[String]| {
        let mut argv: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        argv.extend(units.iter().cloned());
        Cmd::new(argv)
    };
    if !changed.is_empty() {
        out.push(with(&["systemctl", "enable", "--no-reload"], changed));
        out.push(with(&["systemctl", "restart"], changed));
    }
    if !stopped.is_empty() {
        out.push(with(&["systemctl", "start"], stopped));
    }
    out
}

impl Services for Systemd {
    fn ensure(&self, svc: &ServiceSpec) -> Result<(), HostError> {
        self.ensure_all(std::slice::from_ref(svc))
    }

    fn ensure_all(&self, svcs: &[ServiceSpec]) -> Result<(), HostError> {
        let (mut changed, mut stopped) = (Vec::new(), Vec::new());
        for svc in svcs {
            let unit = format!("{}.service", svc.name);
            let written = self.files.write(&FileSpec::new(
                format!("etc/systemd/system/{unit}"),
                0o644,
                unit_file(svc),
            ))?;
            if written {
                changed.push(unit);
            } else if !self.running(&svc.name) {
                stopped.push(unit);
            }
        }
        let written: Vec<&str> = changed.iter().map(String::as_str).collect();
        super::reload_if_stale(&self.exec, &written)?;
        for c in unit_commands(&changed, &stopped) {
            self.exec.run(&c)?;
        }
        Ok(())
    }

    fn running(&self, name: &str) -> bool {
        let unit = format!("{name}.service");
        if let Some(populated) = cgroup_populated(Path::new(SYSTEM_SLICE), &unit) {
            return populated;
        }
        self.exec
            .output(&Cmd::new(["systemctl", "is-active", "--quiet", &unit]))
            .is_ok_and(|o| o.success())
    }

    fn stop(&self, name: &str) -> Result<(), HostError> {
        let unit = format!("{name}.service");
        self.systemctl(&["disable", "--now", &unit]).map(|_| ())
    }
}

/// Services as child processes of the agent, each logging to
/// `<log_dir>/<name>.log`; restarted when they exit or their fingerprint
/// changes. For agents that run outside systemd (one per network namespace
/// in the tests). Children are killed when the supervisor is dropped.
pub struct Supervisor {
    log_dir: PathBuf,
    children: Mutex<BTreeMap<String, (Child, String)>>,
}

impl Supervisor {
    pub fn new(log_dir: &Path) -> Self {
        Supervisor {
            log_dir: log_dir.to_path_buf(),
            children: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Services for Supervisor {
    fn ensure(&self, svc: &ServiceSpec) -> Result<(), HostError> {
        let err = |m: String| HostError::Service {
            name: svc.name.clone(),
            message: m,
        };
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((child, fp)) = children.get_mut(&svc.name) {
            let alive = matches!(child.try_wait(), Ok(None));
            if alive && *fp == svc.fingerprint {
                return Ok(());
            }
            if alive {
                let _ = child.kill();
            }
            let _ = child.wait();
            children.remove(&svc.name);
        }
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| err(format!("creating {}: {e}", self.log_dir.display())))?;
        let log_path = self.log_dir.join(format!("{}.log", svc.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| err(format!("opening {}: {e}", log_path.display())))?;
        let (prog, args) = svc
            .argv
            .split_first()
            .ok_or_else(|| err("empty command line".into()))?;
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| err(e.to_string()))?)
            .stderr(log)
            .spawn()
            .map_err(|e| err(format!("starting {prog}: {e}")))?;
        tracing::info!(service = %svc.name, pid = child.id(), "started");
        children.insert(svc.name.clone(), (child, svc.fingerprint.clone()));
        Ok(())
    }

    fn running(&self, name: &str) -> bool {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children
            .get_mut(name)
            .is_some_and(|(c, _)| matches!(c.try_wait(), Ok(None)))
    }

    fn stop(&self, name: &str) -> Result<(), HostError> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((mut c, _)) = children.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let children = self.children.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, (c, _)) in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_files_write_atomically_and_report_changes() {
        let d = tempfile::tempdir().unwrap();
        let f = RootFiles {
            root: d.path().to_path_buf(),
        };
        let spec = FileSpec::new("etc/x/key.pem", 0o600, "secret");
        assert!(f.write(&spec).unwrap());
        assert!(!f.write(&spec).unwrap(), "same content and mode: no change");
        let meta = std::fs::metadata(d.path().join("etc/x/key.pem")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(f
            .write(&FileSpec::new("etc/x/key.pem", 0o644, "secret"))
            .unwrap());
        assert_eq!(f.read("etc/x/key.pem").unwrap().unwrap(), b"secret");
        assert_eq!(f.read("etc/nothing").unwrap(), None);
    }

    #[test]
    fn supervisor_restarts_on_exit_and_fingerprint_change() {
        let d = tempfile::tempdir().unwrap();
        let s = Supervisor::new(d.path());
        let svc = ServiceSpec {
            name: "sleeper".into(),
            description: "test".into(),
            argv: vec!["sleep".into(), "30".into()],
            fingerprint: "a".into(),
        };
        s.ensure(&svc).unwrap();
        assert!(s.running("sleeper"));
        let pid = s.children.lock().unwrap()["sleeper"].0.id();
        s.ensure(&svc).unwrap();
        assert_eq!(s.children.lock().unwrap()["sleeper"].0.id(), pid, "kept");
        s.ensure(&ServiceSpec {
            fingerprint: "b".into(),
            ..svc.clone()
        })
        .unwrap();
        assert_ne!(
            s.children.lock().unwrap()["sleeper"].0.id(),
            pid,
            "restarted"
        );
        s.stop("sleeper").unwrap();
        assert!(!s.running("sleeper"));
    }

    #[test]
    fn a_unit_runs_when_its_control_group_is_populated() {
        let d = tempfile::tempdir().unwrap();
        let group = |unit: &str, events: &str| {
            std::fs::create_dir_all(d.path().join(unit)).unwrap();
            std::fs::write(d.path().join(unit).join("cgroup.events"), events).unwrap();
        };
        group("up.service", "populated 1\nfrozen 0\n");
        group("down.service", "populated 0\nfrozen 0\n");
        group("odd.service", "frozen 0\n");
        assert_eq!(cgroup_populated(d.path(), "up.service"), Some(true));
        assert_eq!(cgroup_populated(d.path(), "down.service"), Some(false));
        assert_eq!(cgroup_populated(d.path(), "odd.service"), None);
        assert_eq!(
            cgroup_populated(d.path(), "gone.service"),
            Some(false),
            "not started: no group"
        );
        assert_eq!(
            cgroup_populated(&d.path().join("no-slice"), "up.service"),
            None,
            "no such slice: ask systemctl"
        );
    }

    #[test]
    fn units_are_enabled_and_restarted_together() {
        let show = |c: Vec<Cmd>| c.iter().map(|c| c.display()).collect::<Vec<_>>();
        let units = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            show(unit_commands(
                &units(&["a.service", "b.service"]),
                &units(&["c.service"])
            )),
            [
                "systemctl enable --no-reload a.service b.service",
                "systemctl restart a.service b.service",
                "systemctl start c.service",
            ]
        );
        assert_eq!(
            show(unit_commands(&[], &units(&["c.service"]))),
            ["systemctl start c.service"]
        );
        assert!(unit_commands(&[], &[]).is_empty());
    }

    #[test]
    fn kernel_hostname_is_read() {
        use crate::host::Uts;
        // Reading only: setting it would rename the machine the tests run on.
        let name = KernelUts.hostname().unwrap();
        assert!(!name.is_empty() && !name.ends_with('\n'), "{name:?}");
    }

    #[test]
    fn exec_reports_exit_codes_and_stderr() {
        let o = HostExec.output(&Cmd::new(["sh", "-c", "echo out; echo bad >&2; exit 3"]));
        let o = o.unwrap();
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (3, "out\n", "bad\n")
        );
        let e = HostExec
            .run(&Cmd::new(["sh", "-c", "echo nope >&2; exit 1"]))
            .unwrap_err();
        assert!(e.to_string().contains("exit 1: nope"), "{e}");
    }
}
