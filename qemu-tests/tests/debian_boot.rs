//! The real Debian 12 image booted in QEMU (UEFI, OVMF) inside a network
//! namespace this test creates, on a bridge with dnsmasq playing the site's
//! DHCP server. Proves: boots to multi-user; root is read-only erofs; /var is
//! the data partition grown to the disk; the ESP's habuild/cluster.toml is read
//! by the OS; two fresh copies get different machine-ids; a reboot keeps the
//! machine-id and does not re-format /var; the QEMU guest agent answers and
//! runs commands in each VM (guest-exec over virtio-serial); the agent unit is
//! active. Prints each boot's `systemd-analyze` figures (kernel, userspace, the
//! slowest units, the agent's critical chain): benchmarks, not asserts.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use qemu_harness::cluster::{running, Lab, DISK_BYTES};
use qemu_harness::image::BuiltImage;
use qemu_harness::{vm, Vm};
use serde_json::Value;
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(600);
const EXEC: Duration = Duration::from_secs(60);

struct Booted {
    facts: Value,
    cluster: Value,
    login: Duration,
    agent_line: Duration,
}

fn json_after(line: &str, prefix: &str) -> Result<Value> {
    let at = line.find(prefix).context("prefix in line")? + prefix.len();
    serde_json::from_str(line[at..].trim()).with_context(|| format!("parsing {line:?}"))
}

fn boot_and_read(vm: &Vm, since: u64) -> Result<Booted> {
    // The serial getty's prompt: multi-user is up apart from the units ordered
    // after network-online (the agent among them, checked next). systemd stops
    // printing status lines once the getty owns the console.
    vm.wait_for_after(since, "login:", BOOT)?;
    // Measured from QEMU's start (VMs boot in parallel).
    let login = vm.elapsed();
    let facts =
        vm.wait_for_line_with_prefix_after(since, "HABUILD-FACTS ", Duration::from_secs(120))?;
    let agent_line = vm.elapsed();
    let cluster =
        vm.wait_for_line_with_prefix_after(since, "HABUILD-CLUSTER ", Duration::from_secs(60))?;
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
            EXEC,
        )?
        .stdout;
    eprintln!(
        "{}: boot profile (system {}; habuild-agent.service active {:.1}s after kernel start)\n{}",
        vm.name(),
        state.stdout.trim(),
        agent_us as f64 / 1e6,
        report.trim_end()
    );
    Ok(())
}

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

#[test]
fn debian_image_boots_read_only_with_grown_var_and_distinct_identities() -> Result<()> {
    let mut lab = Lab::start("boot", "hbt", 2)?;
    let (vms, net, img, work, dhcp) = lab.parts();
    let mut ids = Vec::new();
    for (i, vm) in running(vms).into_iter().enumerate() {
        let b = boot_and_read(vm, 0)?;
        let id = check_node(&b, img)?;
        let mac = vm::mac_address(i as u8 + 1);
        let lease = dhcp.wait_for_lease(&mac, Duration::from_secs(120))?;
        eprintln!(
            "{}: login prompt after {:.1}s, agent facts after {:.1}s (accel {}), machine-id {id}, DHCP {}",
            vm.name(),
            b.login.as_secs_f64(),
            b.agent_line.as_secs_f64(),
            vm.accel(),
            lease.ip
        );
        ensure!(
            vm.serial_text()
                .contains("first boot: formatting /dev/vda4"),
            "first boot did not format the data partition"
        );
        check_guest(vm, &id)?;
        ids.push(id);
    }
    ensure!(
        ids[0] != ids[1],
        "two fresh copies got the same machine-id {}",
        ids[0]
    );

    // Reboot node1: same identity, /var kept (no second format).
    let vm1 = vms[0].as_ref().context("node1 is running")?;
    vm1.power_off(8)?;
    let spec = vm1.spec().clone();
    vms.clear(); // node2 too: node1 reboots alone
    let vm1 = Vm::start(net, spec, work.path())?;
    let b = boot_and_read(&vm1, 0)?;
    let id = check_node(&b, img)?;
    check_guest(&vm1, &id)?;
    ensure!(
        id == ids[0],
        "machine-id changed across reboot: {} -> {id}",
        ids[0]
    );
    ensure!(
        !vm1.serial_text().contains("first boot: formatting"),
        "the data partition was formatted again on the second boot"
    );
    eprintln!(
        "node1 rebooted: login prompt after {:.1}s, same machine-id",
        b.login.as_secs_f64()
    );
    drop(vm1);
    Ok(())
}
