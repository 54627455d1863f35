//! Host tools: finding binaries and firmware, choosing the accelerator, and
//! running commands with errors that name the command.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Where Debian's `ovmf` package puts the firmware.
const OVMF_DIR: &str = "/usr/share/OVMF";

/// `(code, vars template)` pairs, preferred first.
const OVMF_PAIRS: [(&str, &str); 2] = [
    ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
    ("OVMF_CODE.fd", "OVMF_VARS.fd"),
];

/// Finds the executable `bin` in `$PATH`, then in the sbin directories
/// (root-only tools such as `ip` and `dnsmasq` live there, and a non-login
/// `PATH` may lack them): [`testlab::cmd::require`].
///
/// The error reads exactly `"<bin> not found: run scripts/setup"`.
pub fn require(bin: &str) -> Result<PathBuf> {
    Ok(testlab::cmd::require(bin)?)
}

/// Returns `(code, vars_template)` of the OVMF firmware: the 4 MiB build if
/// present, else the 2 MiB one. The vars template must be copied before use.
pub fn ovmf() -> Result<(PathBuf, PathBuf)> {
    ovmf_in(Path::new(OVMF_DIR))
}

/// Like [`ovmf`], looking in `dir`.
pub fn ovmf_in(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    for (code, vars) in OVMF_PAIRS {
        let (code, vars) = (dir.join(code), dir.join(vars));
        if code.is_file() && vars.is_file() {
            return Ok((code, vars));
        }
    }
    bail!(
        "{} not found: run scripts/setup",
        dir.join(OVMF_PAIRS[0].0).display()
    )
}

/// The QEMU accelerator: `"kvm"` if `/dev/kvm` opens read-write and a
/// probe VM actually runs under it, else `"tcg"` (software emulation).
/// `HABUILD_QEMU_ACCEL=kvm|tcg` skips the probe. Decided once per process.
///
/// The probe matters: some sandboxes offer a `/dev/kvm` that opens but
/// cannot run a guest (QEMU aborts on an MSR, or reports a "KVM internal
/// error" and stalls).
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(choose_accel)
}

fn choose_accel() -> &'static str {
    match std::env::var("HABUILD_QEMU_ACCEL").as_deref() {
        Ok("kvm") => {
            tracing::info!("accelerator: kvm (HABUILD_QEMU_ACCEL)");
            return "kvm";
        }
        Ok("tcg") => {
            tracing::info!("accelerator: tcg (HABUILD_QEMU_ACCEL)");
            return "tcg";
        }
        Ok(other) => tracing::warn!("ignoring HABUILD_QEMU_ACCEL={other:?}: want kvm or tcg"),
        Err(_) => {}
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        tracing::info!("accelerator: tcg (software emulation; /dev/kvm: {e})");
        return "tcg";
    }
    match probe_kvm() {
        Ok(()) => {
            tracing::info!("accelerator: kvm (/dev/kvm runs a probe VM)");
            "kvm"
        }
        Err(e) => {
            tracing::info!("accelerator: tcg (software emulation; /dev/kvm opens but {e:#})");
            "tcg"
        }
    }
}

/// Boots OVMF under KVM with `-cpu host` (as [`crate::Vm`] would), with no
/// disk and no network, and succeeds once it prints to its serial port.
fn probe_kvm() -> Result<()> {
    const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
    let qemu = require("qemu-system-x86_64")?;
    let (code, vars_template) = ovmf()?;
    let dir = tempfile::Builder::new()
        .prefix("habuild-kvm-probe-")
        .tempdir()
        .context("cannot create a directory for the KVM probe")?;
    let vars = dir.path().join("vars.fd");
    std::fs::copy(&vars_template, &vars)
        .with_context(|| format!("copying {} to {}", vars_template.display(), vars.display()))?;
    let serial = dir.path().join("serial.log");
    let stderr_path = dir.path().join("stderr");
    let stderr = File::create(&stderr_path)
        .with_context(|| format!("cannot create {}", stderr_path.display()))?;
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "128",
    ])
    .args(["-nodefaults", "-display", "none", "-vga", "none"])
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={}",
        code.display()
    ))
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        vars.display()
    ))
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(stderr);
    tracing::debug!("probing KVM: {cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let start = Instant::now();
    let verdict = loop {
        let err_text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if err_text.contains("error") {
            break Err(anyhow!("QEMU says: {}", err_text.trim()));
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                break Err(anyhow!("QEMU exited ({status}): {}", err_text.trim()));
            }
            Ok(None) => {}
            Err(e) => break Err(anyhow!("cannot poll QEMU: {e}")),
        }
        if std::fs::metadata(&serial).is_ok_and(|m| m.len() > 0) {
            break Ok(());
        }
        if start.elapsed() > PROBE_TIMEOUT {
            break Err(anyhow!("the probe VM printed nothing in {PROBE_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    verdict
}

/// Runs `cmd` to completion and returns its stdout (lossy UTF-8). Fails,
/// naming the command and quoting its stderr, if it cannot start or exits
/// non-zero ([`testlab::cmd::run`]).
pub fn run(cmd: &mut Command) -> Result<String> {
    Ok(testlab::cmd::run(cmd)?)
}

/// Runs `cmd` to completion with captured output, whatever its exit status
/// ([`testlab::cmd::output`]).
pub fn output(cmd: &mut Command) -> Result<Output> {
    Ok(testlab::cmd::output(cmd)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh() {
        assert!(require("sh").unwrap().is_absolute());
    }

    #[test]
    fn missing_ovmf_error_text() {
        let dir = tempfile::tempdir().unwrap();
        let err = ovmf_in(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}/OVMF_CODE_4M.fd not found: run scripts/setup",
                dir.path().display()
            )
        );
    }

    #[test]
    fn ovmf_falls_back_to_2m() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("OVMF_CODE.fd"), b"c").unwrap();
        std::fs::write(dir.path().join("OVMF_VARS.fd"), b"v").unwrap();
        let (code, vars) = ovmf_in(dir.path()).unwrap();
        assert!(code.ends_with("OVMF_CODE.fd") && vars.ends_with("OVMF_VARS.fd"));
    }
}
