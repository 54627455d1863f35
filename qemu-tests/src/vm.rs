//! One QEMU virtual machine (q35, UEFI, virtio disk and NIC) inside a
//! [`TestNet`], with its serial console in a file and a guest-agent channel
//! ([`Vm::guest`]).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::TestNet;
use crate::qga::Guest;
use crate::serial::{clean_line, SerialLog, Wanted};
use crate::tools;

/// Longest Unix socket path (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long monitor commands may take, connection included.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(10);

/// The emulated CPU under tcg: qemu64 (AMD's vendor id) with the
/// x86-64-v2 extensions (RHEL 9 family userlands require them). Measured
/// here, one VM alone booting the test image to its login prompt: `max`
/// 101-108 s, `Nehalem` 97 s, `max,vendor=AuthenticAMD` 109 s, `qemu64`
/// 70-74 s, `Nehalem,vendor=AuthenticAMD` 74 s, this model 75 s: the
/// guest kernel takes a much slower path under emulation with `max`'s
/// extensions or with Intel's vendor id (not pinned down further).
pub const TCG_CPU: &str = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt";

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Names the VM's files in the workdir; `[A-Za-z0-9_-]`.
    pub name: String,
    /// A qcow2 disk (make an overlay with [`crate::qemu_img::create_overlay`]).
    pub disk: PathBuf,
    /// Default 1024.
    pub memory_mib: u32,
    /// Default 1.
    pub cpus: u32,
    /// The NIC's MAC, e.g. from [`mac_address`].
    pub mac: String,
    /// A tap made by [`TestNet::add_tap`].
    pub tap: String,
    /// Appended to QEMU's command line.
    pub extra_args: Vec<String>,
}

/// QEMU arguments for a rack's boot order: the disk first, the network
/// when the disk boots nothing (an empty disk).
pub const DISK_THEN_NETWORK: [&str; 4] = [
    "-global",
    "virtio-blk-pci.bootindex=1",
    "-global",
    "virtio-net-pci.bootindex=2",
];

impl VmSpec {
    /// A spec with 1024 MiB, 1 CPU and no extra arguments.
    pub fn new(
        name: impl Into<String>,
        disk: impl Into<PathBuf>,
        mac: impl Into<String>,
        tap: impl Into<String>,
    ) -> VmSpec {
        VmSpec {
            name: name.into(),
            disk: disk.into(),
            memory_mib: 1024,
            cpus: 1,
            mac: mac.into(),
            tap: tap.into(),
            extra_args: Vec::new(),
        }
    }
}

/// A locally administered MAC in QEMU's range, `52:54:00:77:00:<index>`.
pub fn mac_address(index: u8) -> String {
    format!("52:54:00:77:00:{index:02x}")
}

/// A running QEMU. Killed on drop if still running (also during a panic).
///
/// Files in the workdir: `NAME.serial.log` (the console; an older one is
/// renamed `NAME.serial.log.N`), `NAME.qemu.log` (QEMU's stderr),
/// `NAME.mon` (HMP monitor socket), `NAME.qga.sock` (the guest agent's
/// virtio-serial port, see [`crate::qga`]), `NAME.OVMF_VARS.fd` (EFI
/// variables; reused if present, so a VM restarted under the same name
/// keeps them).
#[derive(Debug)]
pub struct Vm {
    spec: VmSpec,
    child: Mutex<Child>,
    serial: SerialLog,
    monitor: PathBuf,
    guest: Guest,
    qemu_log: PathBuf,
    accel: &'static str,
    started: Instant,
    // Keeps the namespace alive while QEMU runs in it.
    _net: TestNet,
}

impl Vm {
    /// Starts QEMU for `spec` inside `net`, files in `workdir`. Returns
    /// once QEMU is spawned; wait for console output with the `wait_*`
    /// methods, which fail fast if QEMU exits.
    pub fn start(net: &TestNet, spec: VmSpec, workdir: &Path) -> Result<Vm> {
        let name = &spec.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("bad VM name {name:?}: want [A-Za-z0-9_-]");
        }
        let qemu = tools::require("qemu-system-x86_64")?;
        let (code, vars_template) = tools::ovmf()?;
        let accel = tools::accel();
        let workdir = workdir
            .canonicalize()
            .with_context(|| format!("VM workdir {}", workdir.display()))?;
        let disk = spec
            .disk
            .canonicalize()
            .with_context(|| format!("disk of VM {name}: {}", spec.disk.display()))?;

        let vars = workdir.join(format!("{name}.OVMF_VARS.fd"));
        if !vars.exists() {
            std::fs::copy(&vars_template, &vars).with_context(|| {
                format!("copying {} to {}", vars_template.display(), vars.display())
            })?;
        }
        let serial_path = workdir.join(format!("{name}.serial.log"));
        rotate(&serial_path)?;
        let monitor = workdir.join(format!("{name}.mon"));
        let qga = workdir.join(format!("{name}.qga.sock"));
        for socket in [&monitor, &qga] {
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                bail!(
                    "socket path {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter workdir",
                    socket.display()
                );
            }
            match std::fs::remove_file(socket) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
            }
        }
        let qemu_log = workdir.join(format!("{name}.qemu.log"));
        let stderr = File::create(&qemu_log)
            .with_context(|| format!("cannot create {}", qemu_log.display()))?;

        let cpu = if accel == "kvm" { "host" } else { TCG_CPU };
        let args: Vec<String> = vec![
            "-name".into(),
            name.clone(),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            cpu.into(),
            "-m".into(),
            spec.memory_mib.to_string(),
            "-smp".into(),
            spec.cpus.to_string(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-vga".into(),
            "none".into(),
            "-drive".into(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                qemu_path(&code)?
            ),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", qemu_path(&vars)?),
            "-drive".into(),
            format!("file={},if=virtio,format=qcow2", qemu_path(&disk)?),
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={}", spec.mac),
            "-serial".into(),
            format!("file:{}", qemu_path(&serial_path)?),
            "-monitor".into(),
            format!("unix:{},server,nowait", qemu_path(&monitor)?),
            "-device".into(),
            "virtio-rng-pci".into(),
            // The guest agent's channel (crate::qga); qemu-ga in the guest
            // starts when this port appears.
            "-device".into(),
            "virtio-serial-pci,id=vser0".into(),
            "-chardev".into(),
            format!(
                "socket,id=qga0,path={},server=on,wait=off",
                qemu_path(&qga)?
            ),
            "-device".into(),
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0".into(),
        ];
        let mut cmd = net.exec(&qemu);
        cmd.args(&args)
            .args(&spec.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        tracing::info!(
            "starting VM {name} ({accel}) in netns {}: {cmd:?}",
            net.name()
        );
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let guest = Guest::new(qga, format!("vm {name}"));
        Ok(Vm {
            serial: SerialLog::with_label(&serial_path, format!("vm {name}")),
            spec,
            child: Mutex::new(child),
            monitor,
            guest,
            qemu_log,
            accel,
            started,
            _net: net.clone(),
        })
    }

    /// The spec it was started with.
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// `"kvm"` or `"tcg"`.
    pub fn accel(&self) -> &'static str {
        self.accel
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.lock_child().id()
    }

    /// When QEMU was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since QEMU was spawned.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The guest agent, for running commands in the VM once it is up
    /// ([`Guest::wait_ready`], [`Guest::exec`], [`Guest::sh`]).
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// The Unix socket of the guest agent's channel.
    pub fn qga_socket(&self) -> &Path {
        self.guest.socket()
    }

    /// The serial console log.
    pub fn serial(&self) -> &SerialLog {
        &self.serial
    }

    /// The serial console log file.
    pub fn serial_path(&self) -> &Path {
        self.serial.path()
    }

    /// The console output so far, raw, lossy UTF-8.
    pub fn serial_text(&self) -> String {
        self.serial.text()
    }

    /// Bytes of console output so far: an offset for the `_after` waits.
    pub fn serial_len(&self) -> u64 {
        self.serial.len()
    }

    /// QEMU's stderr so far.
    pub fn qemu_log_text(&self) -> String {
        std::fs::read(&self.qemu_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits for console output containing `pattern` (a trailing partial
    /// line such as `login: ` counts); returns the line, cleaned of `\r`
    /// and colour escapes. Fails on timeout (quoting the pattern, the time
    /// waited and the last 60 console lines) or as soon as QEMU exits
    /// (quoting its stderr too).
    pub fn wait_for(&self, pattern: &str, deadline: Duration) -> Result<String> {
        self.wait_for_after(0, pattern, deadline)
    }

    /// Like [`wait_for`](Self::wait_for), only in output from byte `offset`
    /// on (take it with [`serial_len`](Self::serial_len) before acting).
    pub fn wait_for_after(&self, offset: u64, pattern: &str, deadline: Duration) -> Result<String> {
        self.wait(offset, pattern, false, deadline)
    }

    /// Waits for a complete console line containing `prefix`; returns the
    /// whole line, cleaned. Use it for lines carrying values.
    pub fn wait_for_line_with_prefix(&self, prefix: &str, deadline: Duration) -> Result<String> {
        self.wait_for_line_with_prefix_after(0, prefix, deadline)
    }

    /// Like [`wait_for_line_with_prefix`](Self::wait_for_line_with_prefix),
    /// from byte `offset` on.
    pub fn wait_for_line_with_prefix_after(
        &self,
        offset: u64,
        prefix: &str,
        deadline: Duration,
    ) -> Result<String> {
        self.wait(offset, prefix, true, deadline)
    }

    fn wait(
        &self,
        since: u64,
        pattern: &str,
        whole_line: bool,
        deadline: Duration,
    ) -> Result<String> {
        let wanted = Wanted {
            since,
            pattern,
            whole_line,
        };
        self.serial.wait(wanted, deadline, &mut || {
            let status = self.lock_child().try_wait();
            match status {
                Ok(None) => None,
                Ok(Some(status)) => Some(format!(
                    "qemu exited ({status}) {:.1?} after start; its stderr:\n{}",
                    self.elapsed(),
                    self.qemu_log_text().trim_end()
                )),
                Err(e) => Some(format!("cannot poll qemu: {e}")),
            }
        })
    }

    /// True while QEMU runs.
    pub fn is_running(&self) -> bool {
        matches!(self.lock_child().try_wait(), Ok(None))
    }

    /// Sends an HMP command over the monitor socket and returns its output
    /// (cleaned lines, without echo and prompts).
    pub fn monitor(&self, command: &str) -> Result<String> {
        monitor_command(&self.monitor, command)
            .with_context(|| format!("vm {}: monitor command {command:?}", self.name()))
    }

    /// Presses the ACPI power button (`system_powerdown`); follow with
    /// [`wait_exit`](Self::wait_exit).
    pub fn powerdown(&self) -> Result<()> {
        tracing::info!("vm {}: system_powerdown", self.name());
        self.monitor("system_powerdown").map(drop)
    }

    /// Powers the guest off cleanly: presses the ACPI power button and
    /// waits up to 30 s for QEMU to exit, `presses` times at most, because a
    /// press that arrives before systemd-logind watches the button device
    /// is lost. Fails naming how many presses went unanswered.
    pub fn power_off(&self, presses: u32) -> Result<()> {
        for _ in 0..presses {
            self.powerdown()?;
            if self.wait_exit(Duration::from_secs(30)).is_ok() {
                return Ok(());
            }
        }
        bail!(
            "{} did not power off after {presses} ACPI power-button presses",
            self.name()
        )
    }

    /// Waits for QEMU to exit (the guest powered off) and returns its status.
    pub fn wait_exit(&self, deadline: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            let polled = self.lock_child().try_wait();
            if let Some(status) = polled.context("cannot poll qemu")? {
                tracing::info!(
                    "vm {} exited ({status}) after {:.1?}",
                    self.name(),
                    self.elapsed()
                );
                return Ok(status);
            }
            if start.elapsed() >= deadline {
                bail!(
                    "vm {} still running {:.1?} after waiting for it to exit\n--- last lines of {} ---\n{}",
                    self.name(),
                    start.elapsed(),
                    self.serial_path().display(),
                    self.serial.tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills QEMU (SIGKILL) and reaps it; a no-op if it already exited.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.lock_child();
        if child.try_wait().context("cannot poll qemu")?.is_none() {
            tracing::info!("vm {}: killing qemu pid {}", self.spec.name, child.id());
            child.kill().context("cannot kill qemu")?;
            child.wait().context("cannot reap qemu")?;
        }
        Ok(())
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!("vm {}: {e:#}", self.spec.name);
        }
    }
}

/// A path for QEMU's option syntax: UTF-8 and without commas.
fn qemu_path(path: &Path) -> Result<String> {
    match path.to_str() {
        Some(s) if !s.contains(',') => Ok(s.to_string()),
        _ => bail!(
            "path {} must be UTF-8 without commas for QEMU",
            path.display()
        ),
    }
}

/// Renames an existing `path` to the first free `path.N`.
fn rotate(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for n in 1.. {
        let mut old = path.as_os_str().to_owned();
        old.push(format!(".{n}"));
        let old = PathBuf::from(old);
        if !old.exists() {
            return std::fs::rename(path, &old)
                .with_context(|| format!("renaming {} to {}", path.display(), old.display()));
        }
    }
    unreachable!("some path.N is free")
}

/// HMP over a Unix socket: read up to the first `(qemu) ` prompt, send
/// the command, read up to the next prompt (or EOF, e.g. after `quit`).
fn monitor_command(socket: &Path, command: &str) -> Result<String> {
    let start = Instant::now();
    let mut stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < MONITOR_TIMEOUT => {
                tracing::debug!("monitor {}: {e}; retrying", socket.display());
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot connect to {}", socket.display()))
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .context("setting monitor read timeout")?;
    const PROMPT: &str = "(qemu) ";
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |b| contains(b, PROMPT), start)?;
    let before = buf.len();
    stream
        .write_all(format!("{command}\n").as_bytes())
        .with_context(|| format!("writing to {}", socket.display()))?;
    read_until(
        &mut stream,
        &mut buf,
        |b| contains(&b[before..], PROMPT),
        start,
    )?;
    let reply = String::from_utf8_lossy(&buf[before..]).into_owned();
    Ok(reply
        .lines()
        .map(clean_line)
        .filter(|l| !l.is_empty() && !l.starts_with("(qemu)") && !l.ends_with(command))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Reads into `buf` until `done(buf)`, EOF, or [`MONITOR_TIMEOUT`] after
/// `start`.
fn read_until(
    stream: &mut UnixStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
    start: Instant,
) -> Result<()> {
    let mut chunk = [0u8; 4096];
    while !done(buf) {
        if start.elapsed() > MONITOR_TIMEOUT {
            bail!(
                "no monitor prompt after {MONITOR_TIMEOUT:?}; got {:?}",
                String::from_utf8_lossy(buf)
            );
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("reading from the monitor"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(mac_address(1), "52:54:00:77:00:01");
        assert_eq!(mac_address(255), "52:54:00:77:00:ff");
    }

    #[test]
    fn paths_with_commas_are_refused() {
        assert!(qemu_path(Path::new("/a,b")).is_err());
        assert_eq!(qemu_path(Path::new("/a/b")).unwrap(), "/a/b");
    }

    #[test]
    fn rotate_keeps_old_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("n.serial.log");
        rotate(&log).unwrap();
        std::fs::write(&log, "one").unwrap();
        rotate(&log).unwrap();
        std::fs::write(&log, "two").unwrap();
        rotate(&log).unwrap();
        assert!(!log.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("n.serial.log.1")).unwrap(),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("n.serial.log.2")).unwrap(),
            "two"
        );
    }
}
