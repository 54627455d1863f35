//! Identity and facts about this host, read from /proc, /sys and /etc.
//! Readers take a root path so tests run against fixture trees.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Facts {
    /// The machine-id made on first boot; the node id derives from it.
    pub machine_id: String,
    pub hostname: String,
    pub macs: Vec<String>,
    pub cpus: usize,
    pub mem_bytes: u64,
    /// Whether / is mounted read-only.
    pub root_ro: bool,
    pub root_fstype: String,
    /// The block device behind /var and its partition size.
    pub var_device: Option<String>,
    pub var_partition_bytes: Option<u64>,
    /// How a live-netbooted node keeps /var, as its initramfs wrote it to
    /// [`LIVE_VAR`]: `disk /dev/X`, or `ram: <why>` when it found no usable
    /// disk. Absent on nodes that boot from their own disk.
    pub live_var: Option<String>,
}

/// Where the live boot's initramfs says how it keeps /var.
pub const LIVE_VAR: &str = "run/habuild/live-var";

impl Facts {
    /// Why /var is in RAM on this live-netbooted node (it forgets its state
    /// on a reboot: a worker only, never etcd or a brick); `None` when /var
    /// is on a disk.
    pub fn var_in_ram(&self) -> Option<&str> {
        ram_reason(self.live_var.as_deref()?)
    }
}

/// The reason in a [`LIVE_VAR`] text that says /var is in RAM (`ram:
/// <why>`); `None` for `disk /dev/X`.
pub fn ram_reason(live_var: &str) -> Option<&str> {
    live_var
        .strip_prefix("ram")
        .map(|why| why.trim_start_matches(':').trim())
}

/// One mount from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub target: String,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let lf: Vec<&str> = left.split_whitespace().collect();
            let rf: Vec<&str> = right.split_whitespace().collect();
            Some(Mount {
                target: lf.get(4)?.to_string(),
                options: lf.get(5)?.to_string(),
                fstype: rf.first()?.to_string(),
                source: rf.get(1)?.to_string(),
            })
        })
        .collect()
}

/// The last (topmost) mount at `target`.
pub fn mount_at<'a>(mounts: &'a [Mount], target: &str) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.target == target)
}

pub fn mem_bytes(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Facts read from the live system rooted at `root` ("/" on a node).
pub fn collect(root: &Path) -> Facts {
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_default();
    let mounts = parse_mountinfo(&read("proc/self/mountinfo"));
    let rootm = mount_at(&mounts, "/");
    let varm = mount_at(&mounts, "/var");
    let var_device = varm
        .filter(|m| m.source.starts_with("/dev/"))
        .map(|m| m.source.clone());
    let var_partition_bytes = var_device.as_ref().and_then(|d| {
        let name = Path::new(d).file_name()?.to_string_lossy().into_owned();
        let s = fs::read_to_string(root.join("sys/class/block").join(name).join("size")).ok()?;
        s.trim().parse::<u64>().ok().map(|sectors| sectors * 512)
    });
    Facts {
        machine_id: read("etc/machine-id").trim().to_string(),
        hostname: read("proc/sys/kernel/hostname").trim().to_string(),
        macs: macs(&root.join("sys/class/net")),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_bytes: mem_bytes(&read("proc/meminfo")),
        root_ro: rootm.is_some_and(|m| m.options.split(',').any(|o| o == "ro")),
        root_fstype: rootm.map(|m| m.fstype.clone()).unwrap_or_default(),
        var_device,
        var_partition_bytes,
        live_var: fs::read_to_string(root.join(LIVE_VAR))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
    }
}

fn macs(net: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(net)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("device").exists())
        .filter_map(|p: PathBuf| fs::read_to_string(p.join("address")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    v.sort();
    v
}

/// Whether this machine's CPU is emulated: QEMU without KVM ("tcg"), whose
/// CPUID hypervisor leaf (0x4000_0000) carries the signature
/// [`TCG_SIGNATURE`]. Such a CPU runs ten to fifty times slower than the
/// host, and timings tuned for real CPUs (Raft's heartbeats) fail on it;
/// see [`crate::consensus::ConsensusConfig::for_cpu`]. (The `hypervisor`
/// flag and DMI's "QEMU" do not tell: tcg sets the flag too, and QEMU/KVM
/// says QEMU as well.) x86-64 only; false elsewhere.
pub fn emulated_cpu() -> bool {
    hypervisor_signature().as_deref() == Some(TCG_SIGNATURE)
}

/// QEMU's tcg accelerator's CPUID hypervisor signature.
pub const TCG_SIGNATURE: &str = "TCGTCGTCGTCG";

/// The CPUID hypervisor signature (leaf 0x4000_0000: `KVMKVMKVM`,
/// `TCGTCGTCGTCG`, `Microsoft Hv`…) when the CPU says it runs under a
/// hypervisor (leaf 1, ECX bit 31); None on bare metal.
pub fn hypervisor_signature() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // `__cpuid` is a safe function (every x86-64 CPU has the instruction).
        let leaf1 = __cpuid(1);
        if leaf1.ecx & (1 << 31) == 0 {
            return None;
        }
        let r = __cpuid(0x4000_0000);
        Some(signature(r.ebx, r.ecx, r.edx))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The 12-character signature in EBX, ECX, EDX (little-endian), NULs trimmed.
fn signature(ebx: u32, ecx: u32, edx: u32) -> String {
    let bytes: Vec<u8> = [ebx, ecx, edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:2 / / ro,relatime shared:1 - erofs /dev/vda2 ro,user_xattr
23 22 254:4 / /var rw,noatime shared:2 - ext4 /dev/vda4 rw
24 22 0:30 / /etc rw,relatime shared:3 - overlay habuild-etc rw,lowerdir=/etc
";

    #[test]
    fn facts_from_fixture_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for (p, c) in [
            ("proc/self/mountinfo", MOUNTINFO),
            ("proc/meminfo", "MemTotal:        1000 kB\nMemFree: 1 kB\n"),
            ("proc/sys/kernel/hostname", "node1\n"),
            ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
            ("sys/class/block/vda4/size", "16777216\n"),
            ("sys/class/net/ens3/address", "52:54:00:00:00:01\n"),
            ("sys/class/net/ens3/device/.keep", ""),
            ("sys/class/net/lo/address", "00:00:00:00:00:00\n"),
        ] {
            fs::create_dir_all(r.join(p).parent().unwrap()).unwrap();
            fs::write(r.join(p), c).unwrap();
        }
        let f = collect(r);
        assert_eq!(f.machine_id, "0123456789abcdef0123456789abcdef");
        assert!(f.root_ro);
        assert_eq!(f.root_fstype, "erofs");
        assert_eq!(f.var_device.as_deref(), Some("/dev/vda4"));
        assert_eq!(f.var_partition_bytes, Some(8 * 1024 * 1024 * 1024));
        assert_eq!(f.mem_bytes, 1_024_000);
        assert_eq!(f.macs, vec!["52:54:00:00:00:01"]);
        assert_eq!(f.hostname, "node1");
        assert_eq!(f.live_var, None, "booted from its own disk");
        assert_eq!(f.var_in_ram(), None);
    }

    #[test]
    fn cpuid_signatures_read_as_qemu_writes_them() {
        let regs = |sig: &[u8; 12]| {
            let w = |i: usize| u32::from_le_bytes(sig[i..i + 4].try_into().unwrap());
            (w(0), w(4), w(8))
        };
        let (b, c, d) = regs(b"TCGTCGTCGTCG");
        assert_eq!(signature(b, c, d), TCG_SIGNATURE);
        // KVM pads its signature with NULs
        let (b, c, d) = regs(b"KVMKVMKVM\0\0\0");
        assert_eq!(signature(b, c, d), "KVMKVMKVM");
        // this test's own machine is not emulated (a test host under tcg
        // would be ten times too slow for the suite anyway)
        assert_ne!(hypervisor_signature().as_deref(), Some(TCG_SIGNATURE));
    }

    #[test]
    fn a_live_node_says_where_var_is() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("run/habuild")).unwrap();
        fs::write(r.join(LIVE_VAR), "disk /dev/vda\n").unwrap();
        let f = collect(r);
        assert_eq!(f.live_var.as_deref(), Some("disk /dev/vda"));
        assert_eq!(f.var_in_ram(), None);
        let why = "ram: no empty local disk (a disk with a partition table, a filesystem or data is never used)";
        fs::write(r.join(LIVE_VAR), format!("{why}\n")).unwrap();
        let f = collect(r);
        assert_eq!(
            f.var_in_ram(),
            Some("no empty local disk (a disk with a partition table, a filesystem or data is never used)")
        );
    }
}
