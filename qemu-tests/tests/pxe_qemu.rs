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
//! Not proved here yet: the live node joining a cluster of disk-booted nodes,
//! and install mode (see ARCHITECTURE.md, "Network boot").

use std::fs;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use qemu_harness::image::debian_image;
use qemu_harness::{tools, Dhcp, TestNet, Vm, VmSpec, Workdir};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(900);
const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";

/// busybox httpd serving a directory on the namespace's bridge; killed on drop.
struct Http(Child);

impl Drop for Http {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(net: &TestNet, dir: &std::path::Path) -> Result<Http> {
    let busybox = tools::require("busybox")?;
    let child = net
        .exec(&busybox)
        .args(["httpd", "-f", "-p"])
        .arg(format!("{}:80", net.bridge_addr()))
        .arg("-h")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting busybox httpd in the test namespace")?;
    Ok(Http(child))
}

fn facts(vm: &Vm, since: u64) -> Result<Value> {
    let line = vm.wait_for_line_with_prefix_after(since, "HABUILD-FACTS ", BOOT)?;
    let at = line.find("HABUILD-FACTS ").context("prefix")? + "HABUILD-FACTS ".len();
    serde_json::from_str(line[at..].trim()).with_context(|| format!("parsing {line:?}"))
}

#[test]
fn a_machine_with_an_empty_disk_netboots_live_and_keeps_its_identity() -> Result<()> {
    ensure!(
        std::path::Path::new(IPXE_EFI).exists(),
        "{IPXE_EFI} not found: run scripts/setup (Debian package ipxe)"
    );
    let img = debian_image()?;
    let pxe = img.dir.join("pxe");
    for f in [
        "vmlinuz",
        "initrd.img",
        "root.img",
        "boot.ipxe",
        "cluster.toml",
    ] {
        ensure!(pxe.join(f).is_file(), "{} has no {f}", pxe.display());
    }
    let manifest: Value = serde_json::from_slice(&fs::read(&img.manifest)?)?;
    let listed: Vec<&str> = manifest["artifacts"]
        .as_array()
        .context("artifacts")?
        .iter()
        .filter_map(|a| a["file"].as_str())
        .collect();
    ensure!(
        listed.contains(&"pxe/root.img") && listed.contains(&"pxe/boot.ipxe"),
        "manifest.json does not list the PXE artifacts: {listed:?}"
    );

    let work = Workdir::new("pxe")?;
    let net = TestNet::create("hbpxe")?;
    // http://<bridge>/habuild/ is the directory the iPXE script names by default
    let www = work.join("www");
    fs::create_dir_all(&www)?;
    std::os::unix::fs::symlink(&pxe, www.join("habuild"))?;
    let tftp = work.join("tftp");
    fs::create_dir_all(&tftp)?;
    fs::copy(IPXE_EFI, tftp.join("ipxe.efi"))?;
    let _http = serve(&net, &www)?;
    let script_url = format!("http://{}/habuild/boot.ipxe", net.bridge_addr());
    let tftp_root = format!("--tftp-root={}", tftp.display());
    let ipxe_boot = format!("--dhcp-boot=tag:ipxe,{script_url}");
    let _dhcp = Dhcp::start_with(
        &net,
        std::net::Ipv4Addr::new(10, 77, 0, 50),
        std::net::Ipv4Addr::new(10, 77, 0, 99),
        &[
            "--enable-tftp",
            &tftp_root,
            "--dhcp-match=set:ipxe,175",
            "--dhcp-boot=tag:!ipxe,ipxe.efi",
            &ipxe_boot,
        ],
    )?;

    let disk = work.join("live1.qcow2");
    tools::run(
        std::process::Command::new(tools::require("qemu-img")?)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("8G"),
    )?;
    let tap = net.add_tap("tap1")?;
    let mut spec = VmSpec::new("live1", &disk, qemu_harness::vm::mac_address(1), &tap);
    spec.memory_mib = 1536;

    // First boot: download, verify, format the empty disk, agent up.
    let t0 = Instant::now();
    let vm = Vm::start(&net, spec.clone(), work.path())?;
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
    let vm = Vm::start(&net, spec, work.path())?;
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
    Ok(())
}
