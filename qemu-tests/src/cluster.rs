//! What the multi-VM scenarios share: a [`Lab`] of N nodes booted from the
//! test image on one L2 with DHCP, booting node `i` of it, asking the agents
//! for their status from the namespace (`habuild cluster status --json`,
//! read into its own types: [`StatusOutput`] of [`StatusDoc`]s),
//! waiting with a deadline, and the serial tails to print when something is
//! not reached.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use builder::cluster_status::{GlusterOutput, StatusOutput};
use firstboot::protocol::{StatusDoc, StepView};
use serde::de::DeserializeOwned;

use crate::image::{debian_image, release_bin, BuiltImage};
use crate::{pxe, qemu_img, vm, Dhcp, TestNet, Vm, VmSpec, Workdir};

/// Each node's disk: the image grown to this size (the data partition grows
/// into it on first boot).
pub const DISK_BYTES: u64 = 8 << 30;

/// Boots node `i` (MAC and tap derived from `i`) from an overlay of `base`
/// in `work`; the overlay is reused when it exists, so booting the same `i`
/// again is a reboot of the same machine.
pub fn start_node(net: &TestNet, work: &Workdir, base: &Path, i: u8) -> Result<Vm> {
    start_node_with(net, work, base, i, Size::mib(1024))
}

/// A node's emulated hardware.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub memory_mib: u32,
    /// vCPUs. Under tcg each is a host thread (multi-threaded TCG), so a
    /// VM running alone on the 2-core machine can use both cores.
    pub cpus: u32,
}

impl Size {
    /// `memory_mib` of RAM and one vCPU.
    pub const fn mib(memory_mib: u32) -> Size {
        Size {
            memory_mib,
            cpus: 1,
        }
    }
}

/// [`start_node`] with `size` (control-plane nodes running Kubernetes get
/// more memory).
pub fn start_node_with(
    net: &TestNet,
    work: &Workdir,
    base: &Path,
    i: u8,
    size: Size,
) -> Result<Vm> {
    let disk = work.join(format!("node{i}.qcow2"));
    if !disk.exists() {
        qemu_img::create_overlay(base, "raw", &disk, Some(DISK_BYTES))?;
    }
    let tap = net.add_tap(&format!("tap{i}"))?;
    let mut spec = VmSpec::new(format!("node{i}"), &disk, vm::mac_address(i), &tap);
    spec.memory_mib = size.memory_mib;
    spec.cpus = size.cpus;
    // the disk first, as a flashed rack machine: in a lab that also serves
    // PXE ([`Lab::start_serving_pxe`]) the firmware must not netboot it
    spec.extra_args = vm::DISK_THEN_NETWORK.map(String::from).to_vec();
    Vm::start(net, spec, work.path())
}

/// A multi-VM scenario's lab: the Debian test image (its cluster file is
/// in `img.cluster`), a work directory, a network namespace with dnsmasq
/// handing out 10.77.0.50-99, and nodes `1..=n` booted with no per-VM
/// configuration. Dropping it powers the VMs off first, then stops the PXE
/// HTTP server (if any) and DHCP, deletes the namespace and removes the work directory (fields drop in
/// declaration order), also when a test fails half-way.
pub struct Lab {
    /// Node `i` is at index `i - 1`; `None` while it is powered off.
    vms: Vec<Option<Vm>>,
    /// The PXE artifacts' HTTP server, when the lab serves them.
    http: Option<pxe::Http>,
    dhcp: Dhcp,
    net: TestNet,
    work: Workdir,
    img: BuiltImage,
}

impl Lab {
    /// Builds (or reuses) the test image and boots `n` nodes; `name` names
    /// the work directory, `ns_prefix` the namespace.
    pub fn start(name: &str, ns_prefix: &str, n: u8) -> Result<Lab> {
        Lab::start_with(name, ns_prefix, n, debian_image()?, Size::mib(1024))
    }

    /// [`Lab::start`] from `img` (e.g. [`crate::image::debian_image_for`] a
    /// cluster file of the scenario's own) with `size` per VM.
    pub fn start_with(
        name: &str,
        ns_prefix: &str,
        n: u8,
        img: BuiltImage,
        size: Size,
    ) -> Result<Lab> {
        Lab::start_inner(name, ns_prefix, n, img, size, None)
    }

    /// [`Lab::start_with`], and the namespace also serves the image's
    /// `pxe/` as a site's PXE server does ([`pxe::serve_image`]: TFTP for
    /// the firmware, the site's scripts over HTTP for iPXE), so a machine with an
    /// empty disk ([`pxe::netboot_spec`]) boots from the network into the
    /// same cluster.
    pub fn start_serving_pxe(
        name: &str,
        ns_prefix: &str,
        n: u8,
        img: BuiltImage,
        size: Size,
        site: &pxe::Site,
    ) -> Result<Lab> {
        Lab::start_inner(name, ns_prefix, n, img, size, Some(site))
    }

    fn start_inner(
        name: &str,
        ns_prefix: &str,
        n: u8,
        img: BuiltImage,
        size: Size,
        pxe_site: Option<&pxe::Site>,
    ) -> Result<Lab> {
        let work = Workdir::new(name)?;
        let net = TestNet::create(ns_prefix)?;
        let (http, args) = match pxe_site {
            Some(site) => {
                let (http, args) = pxe::serve_image(&net, &work, &img, site)?;
                (Some(http), args)
            }
            None => (None, Vec::new()),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dhcp = Dhcp::start_with(
            &net,
            Ipv4Addr::new(10, 77, 0, 50),
            Ipv4Addr::new(10, 77, 0, 99),
            &args,
        )?;
        let mut vms = Vec::new();
        for i in 1..=n {
            vms.push(Some(start_node_with(&net, &work, &img.raw, i, size)?));
        }
        Ok(Lab {
            vms,
            http,
            dhcp,
            net,
            work,
            img,
        })
    }

    /// The parts a scenario works with, borrowed side by side.
    pub fn parts(&mut self) -> LabParts<'_> {
        LabParts {
            vms: &mut self.vms,
            net: &self.net,
            img: &self.img,
            work: &self.work,
            dhcp: &self.dhcp,
            http: &mut self.http,
        }
    }
}

/// A [`Lab`]'s parts ([`Lab::parts`]).
pub struct LabParts<'a> {
    /// The VMs, to power off and boot again.
    pub vms: &'a mut Vec<Option<Vm>>,
    pub net: &'a TestNet,
    pub img: &'a BuiltImage,
    pub work: &'a Workdir,
    /// The DHCP server, for its leases.
    pub dhcp: &'a Dhcp,
    /// The PXE HTTP server of [`Lab::start_serving_pxe`]: set it to `None`
    /// to take the server down, to [`pxe::serve`] of `work/www` to bring it
    /// back.
    pub http: &'a mut Option<pxe::Http>,
}

/// What `habuild cluster status --json [extra]` prints in the namespace,
/// as text (to check that it leaks nothing).
pub fn status_text(net: &TestNet, cluster_file: &Path, extra: &[&str]) -> Result<String> {
    let habuild = release_bin("habuild")?;
    let out = net
        .exec(&habuild)
        .args(["cluster", "status", "--json", "--timeout", "4"])
        .args(extra)
        .arg("--cluster")
        .arg(cluster_file)
        .output()
        .context("running habuild cluster status")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.trim().is_empty() {
        bail!(
            "habuild cluster status --json {} printed nothing (exit {}): {}",
            extra.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// `habuild cluster status --json [extra]` read into `T`.
fn status_output<T: DeserializeOwned>(
    net: &TestNet,
    cluster_file: &Path,
    extra: &[&str],
) -> Result<T> {
    let text = status_text(net, cluster_file, extra)?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "habuild cluster status --json {} printed no document of its schema: {text}",
            extra.join(" ")
        )
    })
}

/// `habuild cluster status --json`: every answering agent's status
/// document, the unreachable ones, member health.
pub fn status(net: &TestNet, cluster_file: &Path) -> Result<StatusOutput> {
    status_output(net, cluster_file, &[])
}

/// `habuild cluster status --gluster --json`: the volume and every node's
/// gluster steps; an error while no agent reported a plan.
pub fn gluster_status(net: &TestNet, cluster_file: &Path) -> Result<GlusterOutput> {
    status_output::<Option<GlusterOutput>>(net, cluster_file, &["--gluster"])?
        .context("no agent reported a plan yet (--gluster printed null)")
}

/// The agents' status documents.
pub fn agents(net: &TestNet, cluster_file: &Path) -> Result<Vec<StatusDoc>> {
    Ok(status(net, cluster_file)?.agents)
}

/// This agent's own view of step `name`.
pub fn step<'a>(agent: &'a StatusDoc, name: &str) -> Option<&'a StepView> {
    agent.steps.iter().find(|s| s.step == name)
}

/// Polls `f` every 2 s until it gives a value or `limit` passes
/// ([`testlab::wait_until`]).
pub fn wait_until<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> Result<T> {
    Ok(testlab::wait_until(what, limit, Duration::from_secs(2), f)?)
}

/// The running VMs of a scenario where some may be powered off.
pub fn running(vms: &[Option<Vm>]) -> Vec<&Vm> {
    vms.iter().flatten().collect()
}

/// The last 40 serial lines of each VM, for error messages.
pub fn dump(vms: &[&Vm]) -> String {
    vms.iter()
        .map(|v| format!("--- {} serial (tail):\n{}\n", v.name(), v.serial().tail(40)))
        .collect()
}
