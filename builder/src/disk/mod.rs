//! The raw GPT disk: table written with the `gpt` crate on a plain file (no loop
//! devices, no mounts), the ESP formatted and filled with `fatfs`, the root
//! filesystem image copied into slot A, slot B and data left empty.

pub mod esp;
pub mod layout;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{BuildError, IoContext, Result};
use layout::{Layout, PartSpec, SECTOR};

/// Create `path` (which must not exist) as a sparse disk with the layout's table.
pub fn create_disk(path: &Path, layout: &Layout) -> Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .at(path)?;
    file.set_len(layout.disk_bytes).at(path)?;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(layout.disk_bytes / SECTOR - 1).unwrap_or(u32::MAX),
    );
    mbr.overwrite_lba0(&mut file).map_err(|e| {
        BuildError::Invalid(format!("{}: writing protective MBR: {e}", path.display()))
    })?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(layout.disk_guid))
        .map_err(|e| BuildError::Invalid(format!("{}: creating GPT: {e}", path.display())))?;
    let parts: BTreeMap<u32, gpt::partition::Partition> = layout
        .parts()
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u32 + 1, to_gpt(p)))
        .collect();
    disk.update_partitions(parts)
        .map_err(|e| BuildError::Invalid(format!("{}: partition table: {e}", path.display())))?;
    let mut file = disk
        .write()
        .map_err(|e| BuildError::Invalid(format!("{}: writing GPT: {e}", path.display())))?;
    file.flush().at(path)?;
    Ok(file)
}

fn to_gpt(p: &PartSpec) -> gpt::partition::Partition {
    gpt::partition::Partition {
        part_type_guid: gpt::partition_types::Type {
            guid: p.type_guid,
            os: gpt::partition_types::OperatingSystem::None,
        },
        part_guid: p.guid,
        first_lba: p.first_lba,
        last_lba: p.last_lba,
        flags: 0,
        name: p.name.to_string(),
    }
}

/// Copy a filesystem image into a partition, skipping all-zero blocks so the
/// disk stays sparse. Fails if the image is larger than the partition.
pub fn copy_into(disk: &mut File, disk_path: &Path, part: &PartSpec, image: &Path) -> Result<()> {
    let mut src = File::open(image).at(image)?;
    let len = src.metadata().at(image)?.len();
    if len > part.len() {
        return Err(BuildError::Invalid(format!(
            "{} is {} MiB but partition {} holds only {} MiB: raise [partitions] root_mib in the profile",
            image.display(),
            len.div_ceil(layout::MIB),
            part.name,
            part.len() / layout::MIB
        )));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = read_full(&mut src, &mut buf).at(image)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            disk.seek(SeekFrom::Start(part.offset() + pos))
                .at(disk_path)?;
            disk.write_all(&buf[..n]).at(disk_path)?;
        }
        pos += n as u64;
    }
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A window onto one partition of a disk file, for fatfs.
#[derive(Debug)]
pub struct PartitionSlice<'a> {
    file: &'a mut File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> PartitionSlice<'a> {
    pub fn new(file: &'a mut File, part: &PartSpec) -> Self {
        Self {
            file,
            start: part.offset(),
            len: part.len(),
            pos: 0,
        }
    }
}

impl Read for PartitionSlice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let max = (self.len - self.pos.min(self.len)).min(buf.len() as u64) as usize;
        if max == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..max])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for PartitionSlice<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let max = (self.len - self.pos.min(self.len)).min(buf.len() as u64) as usize;
        if max == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..max])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for PartitionSlice<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => o as i128,
            SeekFrom::End(o) => self.len as i128 + o as i128,
            SeekFrom::Current(o) => self.pos as i128 + o as i128,
        };
        if new < 0 || new > self.len as i128 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek outside the partition",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}
