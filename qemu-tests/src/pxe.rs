//! Serving an image's `pxe/` the way a site serves it, inside the test
//! namespace: dnsmasq answers the firmware's PXE request with `ipxe.efi`
//! over TFTP and iPXE's own request (DHCP option 175) with
//! `http://<bridge>/habuild/<script>`; busybox httpd serves the directory
//! on the bridge. Also: an empty disk for a machine that boots from the
//! network, and the spec of such a machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::image::BuiltImage;
use crate::{tools, vm, TestNet, VmSpec, Workdir};

/// Debian's `ipxe` package: the UEFI iPXE binary the firmware loads.
pub const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
/// Room for the root image in RAM (live: for as long as it runs; install:
/// while it is written) next to the OS: root.img grows to ~850 MiB with the
/// Kubernetes binaries.
pub const MEMORY_MIB: u32 = 2048;

/// busybox httpd serving a directory on the namespace's bridge; killed on drop.
#[derive(Debug)]
pub struct Http(Child);

impl Drop for Http {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `dir` on `http://<bridge>:80/`.
pub fn serve(net: &TestNet, dir: &Path) -> Result<Http> {
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

/// Checks that `img` has the PXE artifacts and that its manifest lists them.
pub fn check_artifacts(img: &BuiltImage) -> Result<PathBuf> {
    ensure!(
        Path::new(IPXE_EFI).exists(),
        "{IPXE_EFI} not found: run scripts/setup (Debian package ipxe)"
    );
    let pxe = img.dir.join("pxe");
    for f in [
        "vmlinuz",
        "initrd.img",
        "root.img",
        "boot.ipxe",
        "install.ipxe",
        "disk.list",
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
    for f in [
        "pxe/root.img",
        "pxe/boot.ipxe",
        "pxe/disk.list",
        "pxe/esp.img",
        "pxe/disk-head.img",
    ] {
        ensure!(
            listed.contains(&f),
            "manifest.json does not list {f}: {listed:?}"
        );
    }
    Ok(pxe)
}

/// What a site's PXE server hands out ([`serve_image`]).
#[derive(Debug, Clone)]
pub struct Site {
    /// The script iPXE gets: `boot.ipxe` (live) or `install.ipxe`.
    pub script: String,
    /// Machines (MACs) whose iPXE gets `install.ipxe` whatever `script`
    /// says, as a site marks the machines it installs (a dnsmasq tag).
    pub install: Vec<String>,
    /// A cluster file served as `cluster.toml` instead of the image's
    /// (what live boots use and install mode puts on the ESP).
    pub cluster: Option<PathBuf>,
    /// Machines (MACs) that must come in by UEFI HTTP boot, no TFTP: their
    /// firmware's PXE request gets no boot file, its HTTP boot request
    /// (vendor class `HTTPClient`) gets `http://<bridge>/habuild/ipxe.efi`.
    pub http_boot: Vec<String>,
    /// Machines (MAC, script file under `habuild/`) whose iPXE gets a
    /// script of their own, as a site gives one machine its settings (the
    /// caller writes the file into the served directory).
    pub scripts: Vec<(String, String)>,
}

impl Site {
    /// Every machine gets `script`, with the image's cluster file.
    pub fn script(script: &str) -> Site {
        Site {
            script: script.to_string(),
            install: Vec::new(),
            cluster: None,
            http_boot: Vec::new(),
            scripts: Vec::new(),
        }
    }
}

/// Serves `img`'s `pxe/` from `net` as `site` says: busybox httpd on the
/// bridge (`http://<bridge>/habuild/`: the image's files, linked, the
/// site's cluster file and `ipxe.efi` for UEFI HTTP boot), a TFTP root in
/// `work` with `ipxe.efi`; returns the server and the dnsmasq arguments
/// that make DHCP point firmware at `ipxe.efi` (TFTP for PXE, a URL for
/// UEFI HTTP boot, as the image's `dnsmasq.conf` says) and iPXE at the
/// machine's script.
pub fn serve_image(
    net: &TestNet,
    work: &Workdir,
    img: &BuiltImage,
    site: &Site,
) -> Result<(Http, Vec<String>)> {
    let pxe = check_artifacts(img)?;
    let served = work.join("www/habuild");
    fs::create_dir_all(&served)?;
    for entry in fs::read_dir(&pxe)? {
        let entry = entry?;
        std::os::unix::fs::symlink(entry.path(), served.join(entry.file_name()))?;
    }
    if let Some(cluster) = &site.cluster {
        fs::remove_file(served.join("cluster.toml"))?;
        fs::copy(cluster, served.join("cluster.toml"))
            .with_context(|| format!("serving {}", cluster.display()))?;
    }
    let tftp = work.join("tftp");
    fs::create_dir_all(&tftp)?;
    fs::copy(IPXE_EFI, tftp.join("ipxe.efi"))?;
    fs::copy(IPXE_EFI, served.join("ipxe.efi"))?;
    let http = serve(net, &work.join("www"))?;
    let url = |file: &str| format!("http://{}/habuild/{file}", net.bridge_addr());
    let mut args = vec![
        "--enable-tftp".to_string(),
        format!("--tftp-root={}", tftp.display()),
        "--dhcp-match=set:ipxe,175".to_string(),
        "--dhcp-boot=tag:!ipxe,tag:!efihttp,tag:!httpboot,ipxe.efi".to_string(),
    ];
    // each machine with a script of its own has a tag the others exclude,
    // so exactly one dhcp-boot line matches any request
    let own: String = (0..site.scripts.len())
        .map(|i| format!(",tag:!own{i}"))
        .collect();
    args.push(format!(
        "--dhcp-boot=tag:ipxe,tag:!install{own},{}",
        url(&site.script)
    ));
    args.push(format!(
        "--dhcp-boot=tag:ipxe,tag:install{own},{}",
        url("install.ipxe")
    ));
    for (i, (mac, script)) in site.scripts.iter().enumerate() {
        args.push(format!("--dhcp-host={mac},set:own{i}"));
        args.push(format!("--dhcp-boot=tag:ipxe,tag:own{i},{}", url(script)));
    }
    args.extend(http_boot_args(&pxe, &net.bridge_addr().to_string())?);
    for mac in &site.install {
        args.push(format!("--dhcp-host={mac},set:install"));
    }
    for mac in &site.http_boot {
        args.push(format!("--dhcp-host={mac},set:httpboot"));
    }
    Ok((http, args))
}

/// The UEFI HTTP boot answers exactly as the image's `pxe/dnsmasq.conf`
/// gives them (its commented `dhcp-…` lines after "UEFI HTTP boot", with
/// the example server 192.0.2.10 replaced by `server`), as dnsmasq
/// arguments: the test boots what a site that follows the snippet boots.
fn http_boot_args(pxe: &Path, server: &str) -> Result<Vec<String>> {
    let conf = pxe.join("dnsmasq.conf");
    let text = fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
    let args: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("# UEFI HTTP boot"))
        .filter_map(|l| l.strip_prefix("# dhcp-"))
        .map(|l| format!("--dhcp-{}", l.replace("192.0.2.10", server)))
        .collect();
    anyhow::ensure!(
        args.len() == 3 && args.iter().any(|a| a.ends_with("/habuild/ipxe.efi")),
        "{} has no UEFI HTTP boot section (vendor class, option 60, boot URL): {args:?}",
        conf.display()
    );
    Ok(args)
}

/// An empty 8 GiB qcow2 disk `<name>.qcow2` in `work`.
pub fn empty_disk(work: &Workdir, name: &str) -> Result<PathBuf> {
    let disk = work.join(format!("{name}.qcow2"));
    tools::run(
        std::process::Command::new(tools::require("qemu-img")?)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("8G"),
    )?;
    Ok(disk)
}

/// Machine `i` (MAC and tap from `i`) with an empty disk, which the
/// firmware skips, so it boots from the network ([`MEMORY_MIB`] of RAM).
/// Boot the spec again (a clone) to reboot the same machine.
pub fn netboot_spec(net: &TestNet, work: &Workdir, name: &str, i: u8) -> Result<VmSpec> {
    let disk = empty_disk(work, name)?;
    netboot_spec_on(net, name, i, &disk)
}

/// Machine `i` booting from the network with `disk` as its only disk.
pub fn netboot_spec_on(net: &TestNet, name: &str, i: u8, disk: &Path) -> Result<VmSpec> {
    let tap = net.add_tap(&format!("tap{i}"))?;
    let mut spec = VmSpec::new(name, disk, vm::mac_address(i), &tap);
    spec.memory_mib = MEMORY_MIB;
    Ok(spec)
}

/// What [`disk_with_data`] fills its first MiB with.
const DATA_BYTE: &str = "0x5a";
const MIB: u64 = 1 << 20;

/// An 8 GiB qcow2 disk `<name>.qcow2` in `work` that holds data: its first
/// MiB is filled with one byte value (no partition table, no filesystem
/// signature: "data" as far as any probe can tell), the rest unallocated.
/// No boot may write to it; [`check_data_untouched`] proves none did.
pub fn disk_with_data(work: &Workdir, name: &str) -> Result<PathBuf> {
    let disk = empty_disk(work, name)?;
    tools::run(
        std::process::Command::new(tools::require("qemu-io")?)
            .args(["-c", &format!("write -P {DATA_BYTE} 0 1M")])
            .arg(&disk),
    )?;
    Ok(disk)
}

/// Checks that a [`disk_with_data`] disk (its VM stopped) holds exactly
/// what it was made with: the first MiB's byte pattern, and no data
/// written anywhere else (qcow2 allocates a cluster for any write).
pub fn check_data_untouched(disk: &Path) -> Result<()> {
    let read = std::process::Command::new(tools::require("qemu-io")?)
        .args(["-r", "-c", &format!("read -P {DATA_BYTE} 0 1M")])
        .arg(disk)
        .output()
        .context("running qemu-io")?;
    ensure!(
        read.status.success(),
        "{}: the data in its first MiB was overwritten: {}",
        disk.display(),
        String::from_utf8_lossy(&read.stdout).trim()
    );
    let map = std::process::Command::new(tools::require("qemu-img")?)
        .args(["map", "--output=json"])
        .arg(disk)
        .output()
        .context("running qemu-img map")?;
    ensure!(map.status.success(), "qemu-img map {}", disk.display());
    let map: Value = serde_json::from_slice(&map.stdout).context("parsing qemu-img map")?;
    let written: Vec<(u64, u64)> = map
        .as_array()
        .context("qemu-img map is not a list")?
        .iter()
        .filter(|e| e["data"] == Value::Bool(true))
        .map(|e| {
            (
                e["start"].as_u64().unwrap_or(0),
                e["length"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ensure!(
        written == [(0, MIB)],
        "{}: data was written outside its first MiB (allocated ranges {written:?})",
        disk.display()
    );
    Ok(())
}
