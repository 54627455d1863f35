//! What every booted image node proves about the image itself, read from its
//! serial console and through the QEMU guest agent: it boots to multi-user;
//! root is read-only erofs; /var is the data partition grown to the disk;
//! the ESP's habuild/cluster.toml is read by the OS; the guest agent answers
//! and runs commands (guest-exec over virtio-serial); the agent unit is
//! active. Each boot's `systemd-analyze` figures (kernel, userspace, the
//! slowest units, the agent's critical chain) are printed: benchmarks, not
//! asserts. `cluster_qemu` runs these on its three nodes and on the
//! power-cycled node's second boot (same machine-id, /var not formatted
//! again), so no separate VM scenario boots the image only for them.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cluster::DISK_BYTES;
use crate::image::BuiltImage;
use crate::Vm;

const BOOT: Duration = Duration::from_secs(600);
/// One command in the guest. The checks run while the nodes assemble (three
/// emulated nodes on two cores): a plain `systemctl show` has taken tens of
/// seconds there.
const EXEC: Duration = Duration::from_secs(180);
/// The boot report (`systemd-analyze` thrice) on such a node: over 60 s
/// measured, in a `cluster_qemu` run on 2026-12-02.
const REPORT: Duration = Duration::from_secs(300);

/// One boot as the console told it.
struct Booted {
    /// The agent's `HABUILD-FACTS` JSON.
    facts: Value,
    /// The `HABUILD-CLUSTER` JSON (which cluster file the OS read).
    cluster: Value,
    /// QEMU start to the serial login prompt.
    login: Duration,
    /// QEMU start to the facts line.
    agent_line: Duration,
}

/// The JSON after `prefix` in a console line (`HABUILD-FACTS {...}`).
pub fn json_after(line: &str, prefix: &str) -> Result<Value> {
    let at = line.find(prefix).context("prefix in line")? + prefix.len();
    serde_json::from_str(line[at..].trim()).with_context(|| format!("parsing {line:?}"))
}

/// Waits for this boot's login prompt, facts and cluster lines (the VM's
/// console since its QEMU started).
fn boot_and_read(vm: &Vm) -> Result<Booted> {
    // The serial getty's prompt: multi-user is up apart from the units ordered
    // after network-online (the agent among them, checked next). systemd stops
    // printing status lines once the getty owns the console.
    vm.wait_for("login:", BOOT)?;
    // Measured from QEMU's start (VMs boot in parallel).
    let login = vm.elapsed();
    let facts = vm.wait_for_line_with_prefix("HABUILD-FACTS ", Duration::from_secs(120))?;
    let agent_line = vm.elapsed();
    let cluster = vm.wait_for_line_with_prefix("HABUILD-CLUSTER ", Duration::from_secs(60))?;
    Ok(Booted {
        facts: json_after(&facts, "HABUILD-FACTS ")?,
        cluster: json_after(&cluster, "HABUILD-CLUSTER ")?,
        login,
        agent_line,
    })
}

/// Through the guest agent: the machine-id the agent reported, a kernel
/// release, and exit code and stderr of a failing command.
fn check_guest(vm: &Vm, id: &str) -> Result<()> {
    let guest = vm.guest();
    let waited = guest.wait_ready(Duration::from_secs(180))?;
    let ready = vm.elapsed();
    let qid = guest.sh("cat /etc/machine-id", EXEC)?.stdout;
    ensure!(
        qid.trim() == id,
        "guest-exec machine-id {qid:?} != reported {id}"
    );
    let kernel = guest
        .exec(&["uname", "-r"], EXEC)?
        .check("uname -r")?
        .stdout;
    ensure!(!kernel.trim().is_empty(), "empty uname -r");
    let fail = guest.exec(&["/bin/sh", "-c", "echo oops >&2; exit 3"], EXEC)?;
    ensure!(fail.code == 3 && fail.stderr == "oops\n", "{fail:?}");
    boot_profile(vm)?;
    eprintln!(
        "{}: guest agent answered {:.1}s after QEMU start (waited {:.1}s); kernel {}",
        vm.name(),
        ready.as_secs_f64(),
        waited.as_secs_f64(),
        kernel.trim()
    );
    Ok(())
}

/// Prints where this boot's time went, from the guest's systemd: totals,
/// the slowest units, and the chain the agent waited on; fails if the agent
/// unit is not active. Timings are printed, never asserted.
fn boot_profile(vm: &Vm) -> Result<()> {
    let guest = vm.guest();
    let active = guest.exec(&["systemctl", "is-active", "habuild-agent.service"], EXEC)?;
    ensure!(
        active.stdout.trim() == "active",
        "{}: habuild-agent.service is {:?} ({})",
        vm.name(),
        active.stdout.trim(),
        active.stderr.trim()
    );
    // systemd-analyze answers only once the boot job queue is empty.
    let state = guest.exec(
        &["timeout", "300", "systemctl", "is-system-running", "--wait"],
        Duration::from_secs(310),
    )?;
    let started = guest
        .sh(
            "systemctl show -P ActiveEnterTimestampMonotonic habuild-agent.service",
            EXEC,
        )?
        .stdout;
    let agent_us: u64 = started.trim().parse().context("agent start timestamp")?;
    // Figures only: a report the starved guest does not finish in time is
    // said so on the test's output, and fails nothing.
    let report = guest
        .sh(
            "systemd-analyze; \
             eval \"$(systemctl show -p UserspaceTimestampMonotonic \
               -p GeneratorsStartTimestampMonotonic -p GeneratorsFinishTimestampMonotonic \
               -p UnitsLoadStartTimestampMonotonic -p UnitsLoadFinishTimestampMonotonic)\"; \
             u=$UserspaceTimestampMonotonic; \
             echo \"manager before the first unit: generators $(( (GeneratorsStartTimestampMonotonic - u) / 1000 ))..$(( (GeneratorsFinishTimestampMonotonic - u) / 1000 )) ms, \
               unit load $(( (UnitsLoadStartTimestampMonotonic - u) / 1000 ))..$(( (UnitsLoadFinishTimestampMonotonic - u) / 1000 )) ms after userspace start\"; \
             echo '--- blame (top 15)'; systemd-analyze blame --no-pager | head -15; \
             echo '--- critical chain'; systemd-analyze critical-chain --no-pager habuild-agent.service",
            REPORT,
        )
        .map(|o| o.stdout)
        .unwrap_or_else(|e| format!("(no systemd-analyze report: {e:#})"));
    eprintln!(
        "{}: boot profile (system {}; habuild-agent.service active {:.1}s after kernel start)\n{}",
        vm.name(),
        state.stdout.trim(),
        agent_us as f64 / 1e6,
        report.trim_end()
    );
    Ok(())
}

/// The image's layout as the node saw it: read-only erofs root, /var on the
/// data partition grown to the disk, the ESP's cluster file; returns the
/// machine-id.
fn check_node(b: &Booted, img: &BuiltImage) -> Result<String> {
    let f = &b.facts;
    ensure!(
        f["root_ro"] == Value::Bool(true),
        "root is not read-only: {f}"
    );
    ensure!(f["root_fstype"] == "erofs", "root is not erofs: {f}");
    ensure!(
        f["var_device"] == "/dev/vda4",
        "/var is not the data partition: {f}"
    );
    let var = f["var_partition_bytes"].as_u64().context("var size")?;
    // The image's data partition is 256 MiB; grown, it fills the 8 GiB disk
    // after ESP (256 MiB) and two 1.5 GiB root slots.
    let expect = DISK_BYTES - (1 + 256 + 2 * 1536) * 1024 * 1024;
    ensure!(
        var > expect - 4 * 1024 * 1024 && var <= expect,
        "/var partition is {var} bytes, expected about {expect} (grown to the end of the disk)"
    );
    let want = hex::encode(Sha256::digest(std::fs::read(&img.cluster)?));
    ensure!(
        b.cluster["sha256"] == want.as_str(),
        "cluster.toml read by the OS differs: {}",
        b.cluster
    );
    ensure!(
        b.cluster["file"] == "/boot/efi/habuild/cluster.toml",
        "{}",
        b.cluster
    );
    let id = f["machine_id"].as_str().unwrap_or_default().to_string();
    ensure!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "bad machine-id {id:?}"
    );
    Ok(id)
}

/// A fresh copy's first boot: the checks of [`check_node`] and
/// [`check_guest`], the data partition formatted on this boot, the boot's
/// figures printed; returns the machine-id.
pub fn first_boot(vm: &Vm, img: &BuiltImage) -> Result<String> {
    let b = boot_and_read(vm)?;
    let id = check_node(&b, img)?;
    eprintln!(
        "{}: login prompt after {:.1}s, agent facts after {:.1}s (accel {}), machine-id {id}",
        vm.name(),
        b.login.as_secs_f64(),
        b.agent_line.as_secs_f64(),
        vm.accel(),
    );
    ensure!(
        vm.serial_text()
            .contains("first boot: formatting /dev/vda4"),
        "{}: first boot did not format the data partition",
        vm.name()
    );
    check_guest(vm, &id)?;
    Ok(id)
}

/// The same machine booted again (a new QEMU process on the same disk):
/// the checks of [`check_node`] and [`check_guest`], the machine-id of its
/// first boot, /var kept (not formatted again).
pub fn boot_again(vm: &Vm, img: &BuiltImage, first_id: &str) -> Result<()> {
    let b = boot_and_read(vm)?;
    let id = check_node(&b, img)?;
    ensure!(
        id == first_id,
        "{}: machine-id changed across reboot: {first_id} -> {id}",
        vm.name()
    );
    ensure!(
        !vm.serial_text().contains("first boot: formatting"),
        "{}: the data partition was formatted again on the second boot",
        vm.name()
    );
    eprintln!(
        "{}: booted again: login prompt after {:.1}s, same machine-id, /var kept",
        vm.name(),
        b.login.as_secs_f64()
    );
    check_guest(vm, &id)
}
