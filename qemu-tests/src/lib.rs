//! Test harness that boots habuild images in QEMU inside a private network
//! namespace created by the test, reads their serial consoles, and cleans
//! up on drop, panics included.
//!
//! Network rule: the namespace holds only `lo`, the bridge `br0` and the
//! VMs' taps. There is no veth to the root namespace and no route out;
//! dnsmasq answers DHCP on `br0` only and serves no DNS. Nothing in the
//! root namespace is touched.
//!
//! Needs root and Debian's `qemu-system-x86`, `qemu-utils`, `ovmf`,
//! `dnsmasq-base` and `iproute2` (`scripts/setup`). Environment:
//! `HABUILD_TEST_TMP` (scratch base, default `/var/tmp`), `HABUILD_KEEP=1`
//! (keep scratch directories and logs), `HABUILD_QEMU_ACCEL=kvm|tcg`
//! (override the `/dev/kvm` probe).
//!
//! A test using it:
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use std::time::Duration;
//! use qemu_harness::{qemu_img, Dhcp, TestNet, Vm, VmSpec, Workdir};
//!
//! # fn main() -> anyhow::Result<()> {
//! let work = Workdir::new("boot")?; // /var/tmp/habuild-boot-XXXXXX
//! let net = TestNet::create("hq")?; // netns hq<pid>-<n>, br0 = 10.77.0.1/24
//! let dhcp = Dhcp::start(&net, Ipv4Addr::new(10, 77, 0, 50), Ipv4Addr::new(10, 77, 0, 99))?;
//!
//! let disk = work.join("node1.qcow2");
//! qemu_img::create_overlay("target/image.raw".as_ref(), "raw", &disk, Some(8 << 30))?;
//! let tap = net.add_tap("tap1")?;
//! let mac = qemu_harness::vm::mac_address(1);
//! let vm = Vm::start(&net, VmSpec::new("node1", &disk, &mac, &tap), work.path())?;
//!
//! vm.wait_for("login:", Duration::from_secs(300))?;
//! // The agent prints `HABUILD-PHASE {json}` on the console at every phase change.
//! let line = vm.wait_for_line_with_prefix("HABUILD-PHASE ", Duration::from_secs(120))?;
//! let lease = dhcp.wait_for_lease(&mac, Duration::from_secs(60))?;
//! vm.guest().wait_ready(Duration::from_secs(120))?; // qemu-ga over virtio-serial
//! let kernel = vm.guest().sh("uname -r", Duration::from_secs(30))?.stdout;
//! net.run("ping", &["-c1", "-W2", &lease.ip.to_string()])?; // from inside the namespace
//! println!("{line} at {:.1?}, kernel {}", vm.elapsed(), kernel.trim());
//!
//! let mark = vm.serial_len(); // only look at output from now on
//! vm.powerdown()?;
//! vm.wait_for_after(mark, "reboot: Power down", Duration::from_secs(60))?;
//! vm.wait_exit(Duration::from_secs(60))?;
//! # Ok(())
//! # }
//! // Drops, in reverse order: vm (QEMU killed if running), dhcp, net
//! // (processes inside killed, namespace deleted), work (removed).
//! ```

pub mod boot;
pub mod cluster;
pub mod dnsmasq;
pub mod guest_cpu;
pub mod image;
pub mod kube;
pub mod netns;
pub mod pxe;
pub mod qemu_img;
pub mod qga;
pub mod serial;
pub mod tools;
pub mod vm;
pub mod workdir;

pub use dnsmasq::{Dhcp, Lease};
pub use netns::{sweep_stale, TestNet};
pub use qga::{ExecOutput, Guest};
pub use serial::SerialLog;
pub use vm::{Vm, VmSpec};
pub use workdir::Workdir;
