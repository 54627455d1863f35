//! Network boot, live: a VM with an empty disk and no image boots from the
//! test namespace the way a rack machine boots from the site's PXE server.
//! OVMF's PXE gets `ipxe.efi` over TFTP from dnsmasq (Debian's ipxe), iPXE
//! gets the image's `pxe/boot.ipxe` over HTTP (busybox httpd on the
//! namespace's bridge), which loads the kernel and initrd; the initramfs
//! downloads `root.img`, checks its sha256 and runs it read-only from RAM,
//! formats the empty disk for `/var`, and the agent starts with the cluster
//! file it fetched. A reboot comes back as the same node (same machine-id,
//! `/var` found again, not formatted again).
//!
//! Install mode: a second VM (disk first, network second in its boot order,
//! as on a rack) finds its disk empty, netboots `install.ipxe`, downloads and
//! verifies the disk image's pieces, writes them to the disk (GPT last), reads
//! them back, reboots, and comes up from its own disk like a flashed node
//! (`/var` on the grown data partition). Its server hands out a cluster
//! file other than the image's: the installer puts that one on the ESP,
//! and the installed agent reads it there.
//!
//! Then, on each server, a machine whose only disk holds data (its first
//! MiB a byte pattern, nothing else). Live, it comes in by UEFI HTTP boot
//! (no TFTP: the firmware fetches `ipxe.efi` from the HTTP server), keeps
//! `/var` in RAM and says so (console, `live_var` in its facts, the
//! agent's "worker only" line), and its machine-id is its SMBIOS UUID. Its
//! server first serves a root image with the wrong bytes, then goes down:
//! the initrd names each cause on the console, retries, and boots once the
//! right file is back. Sent to install, it stops with "INSTALL FAILED: NO
//! EMPTY DISK", and a third one whose site names that disk
//! (`habuild-install-disk`) is refused naming the disk and the cause. Each
//! time the disk afterwards holds exactly its data and nothing else.
//!
//! The two machines boot side by side (one vCPU each; the image is built,
//! or found in the cache, before either starts), as two racks' machines
//! would, each on its own namespace with its own PXE server. Netbooted
//! machines joining a running cluster (live as a worker, install as an
//! operator's `kubeadm join` node) are `kube_qemu`'s.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use qemu_harness::boot;
use qemu_harness::image::debian_image;
use qemu_harness::{pxe, vm, Dhcp, TestNet, Vm, Workdir};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(900);
/// The cluster name in the image's own cluster file, and in the one the
/// install test's server hands out instead.
const BAKED_NAME: &str = "\"qemu-test\"";
const SERVED_NAME: &str = "\"served-by-url\"";
/// The data-disk machine's SMBIOS system UUID (QEMU `-uuid`): with /var in
/// RAM its machine-id, so its node id and name, come from it.
/// The script a site gives the machine whose install disk it names.
const NAMED_DISK_SCRIPT: &str = "install-vda.ipxe";
const SMBIOS_UUID: &str = "6a0c3f51-9c2e-4b7d-8d1e-0123456789ab";

fn facts(vm: &Vm, since: u64) -> Result<Value> {
    let line = vm.wait_for_line_with_prefix_after(since, "HABUILD-FACTS ", BOOT)?;
    boot::json_after(&line, "HABUILD-FACTS ")
}

/// The image's `pxe/` served the way a site serves it ([`pxe::serve_image`]),
/// in a namespace of its own.
struct Served {
    _dhcp: Dhcp,
    /// None while a test has the server down.
    http: Option<pxe::Http>,
    net: TestNet,
    work: Workdir,
}

fn serve_pxe(ns: &str, site: &pxe::Site) -> Result<Served> {
    let img = debian_image()?;
    let work = Workdir::new(ns)?;
    let net = TestNet::create(ns)?;
    let (http, args) = pxe::serve_image(&net, &work, &img, site)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dhcp = Dhcp::start_with(
        &net,
        std::net::Ipv4Addr::new(10, 77, 0, 50),
        std::net::Ipv4Addr::new(10, 77, 0, 99),
        &args,
    )?;
    Ok(Served {
        _dhcp: dhcp,
        http: Some(http),
        net,
        work,
    })
}

#[test]
fn empty_disk_machines_netboot_live_and_install_side_by_side() -> Result<()> {
    // build (or find) the image once, before the two machines race for it
    debian_image()?;
    let (live, install) = std::thread::scope(|s| {
        let live = s.spawn(a_machine_with_an_empty_disk_netboots_live_and_keeps_its_identity);
        let install = s.spawn(
            a_machine_with_an_empty_disk_installs_itself_over_the_network_and_boots_from_its_disk,
        );
        (live.join(), install.join())
    });
    let mut failed = Vec::new();
    for (name, r) in [("live", live), ("install", install)] {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{name}: {e:#}")),
            Err(_) => failed.push(format!("{name}: panicked")),
        }
    }
    ensure!(failed.is_empty(), "{}", failed.join("\n\n"));
    Ok(())
}

fn a_machine_with_an_empty_disk_netboots_live_and_keeps_its_identity() -> Result<()> {
    // ram1 (machine 3) comes in by UEFI HTTP boot, no TFTP
    let mut served = serve_pxe(
        "hbpxe",
        &pxe::Site {
            http_boot: vec![vm::mac_address(3)],
            ..pxe::Site::script("boot.ipxe")
        },
    )?;
    let (net, work) = (&served.net, &served.work);

    let spec = pxe::netboot_spec(net, work, "live1", 1)?;

    // First boot: download, verify, format the empty disk, agent up.
    let t0 = Instant::now();
    let vm = Vm::start(net, spec.clone(), work.path())?;
    vm.wait_for("live boot: root image verified", BOOT)?;
    let verified = vm.elapsed();
    let f = facts(&vm, 0)?;
    let agent = vm.elapsed();
    ensure!(f["root_ro"] == Value::Bool(true), "root not read-only: {f}");
    ensure!(f["root_fstype"] == "erofs", "root not erofs: {f}");
    ensure!(
        f["var_device"] == "/dev/vda",
        "/var is not the empty disk: {f}"
    );
    let serial = vm.serial_text();
    ensure!(
        serial.contains("formatting empty /dev/vda as ext4"),
        "the empty disk was not formatted for /var"
    );
    let cluster = vm.wait_for_line_with_prefix("HABUILD-CLUSTER ", Duration::from_secs(120))?;
    ensure!(
        cluster.contains("/run/habuild/cluster.toml"),
        "the agent did not read the cluster file the live boot fetched: {cluster}"
    );
    let id = f["machine_id"].as_str().unwrap_or_default().to_string();
    ensure!(id.len() == 32, "bad machine-id {id:?}");
    eprintln!(
        "live1 ({}): power-on → root image downloaded and verified {:.1}s → agent running {:.1}s (machine-id {id})",
        vm.accel(),
        verified.as_secs_f64(),
        agent.as_secs_f64()
    );

    // Reboot: the same node comes back, /var found again by its label.
    vm.power_off(8)?;
    drop(vm);
    let vm = Vm::start(net, spec, work.path())?;
    let f2 = facts(&vm, 0)?;
    ensure!(
        f2["machine_id"] == id.as_str(),
        "machine-id changed across the reboot: {id} -> {}",
        f2["machine_id"]
    );
    ensure!(
        !vm.serial_text().contains("formatting empty"),
        "/var was formatted again on the second boot"
    );
    eprintln!(
        "live1 rebooted: agent running {:.1}s after power-on, same machine-id; whole test {:.0}s",
        vm.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    vm.power_off(8)?;
    drop(vm);

    // A machine whose only disk holds data: the disk is never written,
    // /var is in RAM, and the node says so (console, facts, agent). Its
    // identity is its SMBIOS UUID. On the way, the server misbehaves: first
    // it serves a root image with the wrong bytes, then it is down; each
    // failure is named on the console and retried, and the boot goes on
    // once the right file is served again.
    let root = work.join("www/habuild/root.img");
    let real_root = fs::read_link(&root).context("the served root.img is a link")?;
    fs::remove_file(&root)?;
    fs::write(&root, vec![0xa5u8; 1 << 20])?;
    let disk = pxe::disk_with_data(work, "ram1")?;
    let mut spec = pxe::netboot_spec_on(net, "ram1", 3, &disk)?;
    spec.extra_args = [
        "-uuid",
        SMBIOS_UUID,
        // the firmware's own network stack, as on a rack machine: without
        // the NIC's option ROM (QEMU's is iPXE, which would answer
        // first), and IPv4 only (OVMF's PXE over IPv6 waits minutes for a
        // DHCPv6 server before HTTP boot gets its turn)
        "-global",
        "virtio-net-pci.romfile=",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv6Support,string=no",
    ]
    .map(String::from)
    .to_vec();
    let vm = Vm::start(net, spec, work.path())?;
    let uri = vm.wait_for_line_with_prefix("URI: http://", BOOT)?;
    ensure!(
        uri.contains("/habuild/ipxe.efi"),
        "ram1's firmware did not HTTP-boot the served ipxe.efi: {uri}"
    );
    let http_booted = vm.elapsed();
    let wrong = vm.wait_for_line_with_prefix("root.img has sha256 ", BOOT)?;
    ensure!(
        wrong.contains("was expected (attempt 1); discarded, retrying in 2s"),
        "the wrong root image's line: {wrong}"
    );
    let wrong_at = vm.elapsed();
    drop(served.http.take());
    let mark = vm.serial_len();
    let down = vm.wait_for_line_with_prefix_after(
        mark,
        "root.img failed (attempt ",
        Duration::from_secs(120),
    )?;
    ensure!(
        down.contains("Connection refused") || down.contains("can't connect"),
        "the line for a server that is down does not name the cause: {down}"
    );
    let down_at = vm.elapsed();
    fs::remove_file(&root)?;
    std::os::unix::fs::symlink(&real_root, &root)?;
    served.http = Some(pxe::serve(net, &work.join("www"))?);
    vm.wait_for_after(mark, "live boot: root image verified", BOOT)?;
    let verified = vm.elapsed();
    vm.wait_for("live boot: NO USABLE DISK: /var is in RAM", BOOT)?;
    let machine_id = SMBIOS_UUID.replace('-', "");
    vm.wait_for(
        &format!("identity from the SMBIOS UUID (machine-id {machine_id})"),
        Duration::from_secs(60),
    )?;
    let f = facts(&vm, 0)?;
    ensure!(
        f["var_device"].is_null()
            && f["live_var"]
                .as_str()
                .is_some_and(|v| v.starts_with("ram: no empty local disk")),
        "ram1 does not report /var in RAM: {f}"
    );
    ensure!(
        f["machine_id"] == machine_id.as_str(),
        "ram1's machine-id is not its SMBIOS UUID {SMBIOS_UUID}: {f}"
    );
    vm.wait_for(
        "habuild-agent: /var is in RAM (no empty local disk",
        Duration::from_secs(300),
    )?;
    let line =
        vm.wait_for_line_with_prefix("a Raft voter); after a reboot it ", Duration::from_secs(10))?;
    ensure!(
        line.contains("rejoins as the same node with its state gone"),
        "{line}"
    );
    let agent = vm.elapsed();
    vm.kill()?;
    drop(vm);
    pxe::check_data_untouched(&disk)?;
    eprintln!(
        "ram1: UEFI HTTP boot of ipxe.efi {:.0}s, wrong root image named and discarded {:.0}s, server down named {:.0}s, root verified once served again {:.0}s; its only disk holds data: left untouched, /var in RAM, machine-id from its SMBIOS UUID, the agent says it is a worker only ({:.0}s after power-on)",
        http_booted.as_secs_f64(),
        wrong_at.as_secs_f64(),
        down_at.as_secs_f64(),
        verified.as_secs_f64(),
        agent.as_secs_f64()
    );
    Ok(())
}

fn a_machine_with_an_empty_disk_installs_itself_over_the_network_and_boots_from_its_disk(
) -> Result<()> {
    // The server's cluster file is not the one baked into the image: the
    // installer puts the served one on the ESP (habuild.cluster=URL).
    let site_dir = Workdir::new("hbpxi-site")?;
    let site_file = site_dir.join("cluster.toml");
    let baked = fs::read_to_string(debian_image()?.cluster)?;
    ensure!(
        baked.contains(BAKED_NAME),
        "the image's cluster file does not name {BAKED_NAME}: {baked:?}"
    );
    fs::write(&site_file, baked.replace(BAKED_NAME, SERVED_NAME))?;
    let served = serve_pxe(
        "hbpxi",
        &pxe::Site {
            cluster: Some(site_file),
            // inst3 (machine 4): a site names the disk to install to
            scripts: vec![(vm::mac_address(4), NAMED_DISK_SCRIPT.into())],
            ..pxe::Site::script("install.ipxe")
        },
    )?;
    let (net, work) = (&served.net, &served.work);
    fs::write(
        work.join("www/habuild").join(NAMED_DISK_SCRIPT),
        "#!ipxe\nset habuild-install-disk /dev/vda\nchain install.ipxe\n",
    )?;
    let mut spec = pxe::netboot_spec(net, work, "inst1", 2)?;
    // A rack's boot order: the disk first, the network when the disk boots
    // nothing (empty: install; installed: the disk from then on).
    spec.extra_args = vm::DISK_THEN_NETWORK.map(String::from).to_vec();

    let vm = Vm::start(net, spec, work.path())?;
    vm.wait_for("install: writing the image to empty /dev/vda", BOOT)?;
    let chosen = vm.elapsed();
    vm.wait_for(
        "install: every piece read back from /dev/vda and verified",
        BOOT,
    )?;
    let verified = vm.elapsed();
    vm.wait_for(
        "install: /dev/vda written and verified; rebooting into it",
        BOOT,
    )?;
    let installed = vm.elapsed();
    let mark = vm.serial_len();
    let serial = vm.serial_text();
    ensure!(
        serial.contains("install: the cluster file from http://"),
        "the served cluster file was not put on the ESP: {}",
        vm.serial().tail(40)
    );
    for piece in ["esp.img", "root.img"] {
        ensure!(
            serial.contains(&format!("install: {piece} (")),
            "{piece} was not written: {}",
            vm.serial().tail(40)
        );
    }
    ensure!(
        !serial.contains("INSTALL FAILED"),
        "{}",
        vm.serial().tail(40)
    );

    // The firmware's reset boots the disk now; the node is a disk node.
    let f = facts(&vm, mark)?;
    let agent = vm.elapsed();
    ensure!(f["root_ro"] == Value::Bool(true), "root not read-only: {f}");
    ensure!(
        f["var_device"] == "/dev/vda4",
        "/var is not the installed disk's data partition: {f}"
    );
    // 256 MiB in the image; grown, the rest of the 8 GiB disk after the ESP
    // and the two root slots (~4.7 GiB)
    let grown = f["var_partition_bytes"].as_u64().unwrap_or(0);
    ensure!(
        grown > 4 << 30,
        "the data partition was not grown to the 8 GiB disk: {f}"
    );
    let cluster =
        vm.wait_for_line_with_prefix_after(mark, "HABUILD-CLUSTER ", Duration::from_secs(120))?;
    ensure!(
        cluster.contains("/boot/efi/habuild/cluster.toml")
            && cluster.contains(&format!("\"name\":{SERVED_NAME}")),
        "the installed node did not read the served cluster file from its ESP: {cluster}"
    );
    let log = fs::read(vm.serial_path())?;
    let after = String::from_utf8_lossy(log.get(mark as usize..).unwrap_or_default());
    ensure!(
        !after.contains("live boot:") && !after.contains("install: writing"),
        "the second boot came over the network, not from the disk"
    );
    eprintln!(
        "inst1 ({}): power-on → disk chosen {:.1}s → pieces downloaded, written and read back {:.1}s → installed (GPT written, rebooting) {:.1}s → agent running from its disk {:.1}s",
        vm.accel(),
        chosen.as_secs_f64(),
        verified.as_secs_f64(),
        installed.as_secs_f64(),
        agent.as_secs_f64()
    );
    vm.power_off(8)?;
    drop(vm);

    // A machine whose only disk holds data, sent to install mode: refused
    // with a console line naming the cause, the disk not written.
    let disk = pxe::disk_with_data(work, "inst2")?;
    let mut spec = pxe::netboot_spec_on(net, "inst2", 3, &disk)?;
    spec.extra_args = vm::DISK_THEN_NETWORK.map(String::from).to_vec();
    let vm = Vm::start(net, spec, work.path())?;
    vm.wait_for("habuild-initrd: INSTALL FAILED: NO EMPTY DISK", BOOT)?;
    let refused = vm.elapsed();
    vm.kill()?;
    drop(vm);
    pxe::check_data_untouched(&disk)?;
    eprintln!(
        "inst2: its only disk holds data: install refused {:.0}s after power-on (NO EMPTY DISK), the disk untouched",
        refused.as_secs_f64()
    );

    // The same, with the disk named by the site (habuild-install-disk):
    // naming a disk that holds data does not make it writable.
    let disk = pxe::disk_with_data(work, "inst3")?;
    let mut spec = pxe::netboot_spec_on(net, "inst3", 4, &disk)?;
    spec.extra_args = vm::DISK_THEN_NETWORK.map(String::from).to_vec();
    let vm = Vm::start(net, spec, work.path())?;
    let line = vm.wait_for_line_with_prefix("habuild-initrd: INSTALL FAILED: ", BOOT)?;
    ensure!(
        line.contains(
            "habuild.install_disk=/dev/vda is not empty (its first MiB is not all zeros)"
        ),
        "inst3's refusal does not name the disk and the cause: {line}"
    );
    let refused = vm.elapsed();
    vm.kill()?;
    drop(vm);
    pxe::check_data_untouched(&disk)?;
    eprintln!(
        "inst3: the site named its disk, which holds data: install refused {:.0}s after power-on ({}), the disk untouched",
        refused.as_secs_f64(),
        line.split("INSTALL FAILED: ").nth(1).unwrap_or_default()
    );
    Ok(())
}
