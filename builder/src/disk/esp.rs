//! The EFI system partition, formatted FAT32 and filled with `fatfs`:
//! systemd-boot, a loader entry per root slot, the slot's kernel and initrd,
//! and `habuild/cluster.toml`. Timestamps and the volume serial are fixed so
//! the partition is reproducible.

use std::io::Write;

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};

use crate::error::{BuildError, Result};

/// One file to place on the ESP.
#[derive(Debug, Clone)]
pub struct EspFile {
    /// Path inside the ESP, '/'-separated, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub path: String,
    pub contents: Vec<u8>,
}

/// A fixed clock for FAT timestamps (SOURCE_DATE_EPOCH).
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// Convert a UNIX time to a FAT date-time (UTC), clamped to FAT's 1980..2107.
pub fn fat_datetime(epoch: u64) -> DateTime {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(1980, 2107) as u16;
    DateTime {
        date: Date { year, month, day },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs % 3600 / 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Format `storage` (exactly the partition) as FAT32 and write `files` in sorted order.
pub fn write_esp<S: fatfs::ReadWriteSeek>(
    mut storage: S,
    files: &[EspFile],
    serial: u32,
    epoch: u64,
) -> Result<()> {
    let fat_err = |what: &str, e: std::io::Error| BuildError::Invalid(format!("ESP: {what}: {e}"));
    fatfs::format_volume(
        &mut storage,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_id(serial)
            .volume_label(*b"ESP        "),
    )
    .map_err(|e| fat_err("format", e))?;
    let clock: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_datetime(epoch))));
    let fs = FileSystem::new(
        &mut storage,
        FsOptions::new()
            .time_provider(clock)
            .update_accessed_date(false),
    )
    .map_err(|e| fat_err("open", e))?;
    let mut sorted: Vec<&EspFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    {
        let root = fs.root_dir();
        for f in sorted {
            let parts: Vec<&str> = f.path.split('/').collect();
            let mut dir = root.clone();
            for d in &parts[..parts.len() - 1] {
                dir = match dir.open_dir(d) {
                    Ok(x) => x,
                    Err(_) => dir.create_dir(d).map_err(|e| fat_err(&f.path, e))?,
                };
            }
            let mut file = dir
                .create_file(parts[parts.len() - 1])
                .map_err(|e| fat_err(&f.path, e))?;
            file.truncate().map_err(|e| fat_err(&f.path, e))?;
            file.write_all(&f.contents)
                .map_err(|e| fat_err(&f.path, e))?;
        }
    }
    fs.unmount().map_err(|e| fat_err("unmount", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_to_fat_date() {
        let d = fat_datetime(1_700_000_000); // 2023-11-14T22:13:20Z
        assert_eq!((d.date.year, d.date.month, d.date.day), (2023, 11, 14));
        assert_eq!((d.time.hour, d.time.min, d.time.sec), (22, 13, 20));
        assert_eq!(fat_datetime(0).date.year, 1980);
    }

    #[test]
    fn esp_roundtrip_in_memory() {
        let mut buf = std::io::Cursor::new(vec![0u8; 64 * 1024 * 1024]);
        let files = vec![
            EspFile {
                path: "habuild/cluster.toml".into(),
                contents: b"x = 1\n".to_vec(),
            },
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                contents: vec![1; 5000],
            },
        ];
        write_esp(&mut buf, &files, 0x1234_5678, 1_700_000_000).unwrap();
        buf.set_position(0);
        let fs = FileSystem::new(&mut buf, FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat32);
        assert_eq!(fs.volume_id(), 0x1234_5678);
        let mut s = String::new();
        use std::io::Read;
        fs.root_dir()
            .open_file("habuild/cluster.toml")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "x = 1\n");
    }
}

#[cfg(test)]
mod fsck_tests {
    use super::*;

    /// The ESP we write passes dosfstools' own check (not just our reader).
    #[test]
    fn esp_passes_fsck_vfat() {
        let fsck = ["/usr/sbin/fsck.vfat", "/sbin/fsck.vfat"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("fsck.vfat not found: run scripts/setup (dosfstools)");
        let t = tempfile::NamedTempFile::new().unwrap();
        t.as_file().set_len(64 * 1024 * 1024).unwrap();
        let files = vec![
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                contents: vec![7; 100_000],
            },
            EspFile {
                path: "loader/entries/habuild-a.conf".into(),
                contents: b"title x\n".to_vec(),
            },
            EspFile {
                path: "habuild/cluster.toml".into(),
                contents: b"[cluster]\n".to_vec(),
            },
        ];
        write_esp(t.reopen().unwrap(), &files, 1, 1_700_000_000).unwrap();
        let out = std::process::Command::new(fsck)
            .arg("-n")
            .arg(t.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "fsck.vfat -n failed:\n{text}");
        assert!(
            !text.contains("Expected") && !text.contains("share clusters"),
            "{text}"
        );
    }
}
