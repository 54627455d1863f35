//! The partition layout of a habuild disk, derived purely from the profile and
//! a seed, so the same inputs always give the same table.

use gpt::partition_types;
use uuid::Uuid;

use crate::profile::Partitions;

pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1024 * 1024;
/// Partitions start on 1 MiB boundaries.
const ALIGN: u64 = MIB / SECTOR;

/// The Discoverable Partitions Spec type for an x86-64 root.
pub const ROOT_X86_64: Uuid = uuid::uuid!("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSpec {
    pub name: &'static str,
    pub type_guid: Uuid,
    pub guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl PartSpec {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn len(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_guid: Uuid,
    pub disk_bytes: u64,
    pub esp: PartSpec,
    pub root_a: PartSpec,
    pub root_b: PartSpec,
    pub data: PartSpec,
}

impl Layout {
    /// `seed` identifies the inputs (profile, cluster file, SOURCE_DATE_EPOCH).
    pub fn new(p: &Partitions, seed: &[u8; 32]) -> Self {
        let ns = Uuid::from_bytes(seed[..16].try_into().expect("16 bytes"));
        let id = |what: &str| Uuid::new_v5(&ns, what.as_bytes());
        let mut next = ALIGN;
        let mut part = |name: &'static str, type_guid: Uuid, mib: u64| {
            let first = next;
            let sectors = mib * MIB / SECTOR;
            next += sectors;
            PartSpec {
                name,
                type_guid,
                guid: id(name),
                first_lba: first,
                last_lba: first + sectors - 1,
            }
        };
        let esp = part("ESP", partition_types::EFI.guid, p.esp_mib);
        let root_a = part("root-a", ROOT_X86_64, p.root_mib);
        let root_b = part("root-b", ROOT_X86_64, p.root_mib);
        let data = part("data", partition_types::LINUX_FS.guid, p.data_mib);
        // 1 MiB tail holds the backup GPT (33 sectors) with room to spare.
        let disk_bytes = (next + ALIGN) * SECTOR;
        Self {
            disk_guid: id("disk"),
            disk_bytes,
            esp,
            root_a,
            root_b,
            data,
        }
    }

    pub fn parts(&self) -> [&PartSpec; 4] {
        [&self.esp, &self.root_a, &self.root_b, &self.data]
    }

    /// The FAT volume serial of the ESP.
    pub fn fat_serial(&self) -> u32 {
        let b = self.esp.guid.as_bytes();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The filesystem UUID of the root image.
    pub fn rootfs_uuid(&self) -> Uuid {
        Uuid::new_v5(&self.disk_guid, b"rootfs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_contiguous_and_deterministic() {
        let p = Partitions::default();
        let a = Layout::new(&p, &[7; 32]);
        assert_eq!(a, Layout::new(&p, &[7; 32]));
        assert_ne!(a.disk_guid, Layout::new(&p, &[8; 32]).disk_guid);
        let parts = a.parts();
        assert_eq!(parts[0].first_lba, 2048);
        for w in parts.windows(2) {
            assert_eq!(w[0].last_lba + 1, w[1].first_lba);
            assert_eq!(w[1].first_lba % 2048, 0);
        }
        assert_eq!(a.esp.len(), p.esp_mib * MIB);
        assert!(a.disk_bytes >= a.data.offset() + a.data.len() + 33 * SECTOR);
        let guids: std::collections::BTreeSet<_> = parts.iter().map(|p| p.guid).collect();
        assert_eq!(guids.len(), 4);
    }
}
