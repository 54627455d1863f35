//! Install mode's pieces of the disk image: what the initrd writes to a
//! node's empty disk instead of streaming the whole raw disk (3.5 GiB, mostly
//! holes) through the node's NIC.
//!
//! Pieces, by offset on the disk (every offset is MiB-aligned):
//! - `disk-head.img`: the first MiB of the raw disk (protective MBR, primary
//!   GPT header and partition array, zeros up to the ESP);
//! - `esp.img`: the ESP up to its last non-zero MiB (FAT allocates from the
//!   start; the rest of the partition is free clusters, whose bytes FAT never
//!   reads);
//! - `root.img`: slot A, the same file the live boot serves;
//! - `zero` (1 MiB of zeros) at the start of slot B and of the data
//!   partition, so a stale filesystem signature left on the disk can never be
//!   taken for this image's (the first boot formats data only when it finds
//!   no filesystem there);
//! - `disk-tail.img`: the raw disk's last MiB (the backup GPT; the first boot
//!   moves it to the end of a larger disk while growing the data partition,
//!   as on a flashed disk).
//!
//! `disk.list` names them, one `piece OFFSET LENGTH FILE SHA256` a line,
//! after `size BYTES` (the smallest disk the image fits). The installer
//! (`scripts/habuild-install`) writes every piece except the head and the
//! tail, verifies them by reading them back, then writes the two GPT copies
//! last: until then the disk has no partition table and nothing on it boots.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::disk::layout::{Layout, MIB};
use crate::error::{BuildError, IoContext, Result};
use crate::manifest::sha256_bytes;

/// The list's file name in `pxe/`.
pub const LIST: &str = "disk.list";
/// The file name that means "write zeros" in the list.
pub const ZERO: &str = "zero";

/// One region of the disk the installer writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub length: u64,
    /// A file in `pxe/`, or [`ZERO`].
    pub file: String,
    pub sha256: String,
}

/// Cut the pieces out of the raw disk at `raw` into `dir` (`disk-head.img`,
/// `esp.img`, `disk-tail.img`; `root.img` is already there with
/// `root_sha256`). Returns them sorted by offset.
pub fn write_pieces(
    dir: &Path,
    raw: &Path,
    layout: &Layout,
    root_sha256: &str,
    root_len: u64,
) -> Result<Vec<Piece>> {
    let mut disk = File::open(raw).at(raw)?;
    let len = disk.metadata().at(raw)?.len();
    if len != layout.disk_bytes {
        return Err(BuildError::Invalid(format!(
            "{} is {len} bytes but the layout says {}",
            raw.display(),
            layout.disk_bytes
        )));
    }
    let mut pieces = Vec::new();
    for (file, offset, max, trim) in [
        ("disk-head.img", 0, layout.esp.offset(), false),
        ("esp.img", layout.esp.offset(), layout.esp.len(), true),
        ("disk-tail.img", layout.disk_bytes - MIB, MIB, false),
    ] {
        let mut bytes = vec![0u8; usize::try_from(max).expect("a region fits in memory")];
        disk.seek(SeekFrom::Start(offset)).at(raw)?;
        disk.read_exact(&mut bytes).at(raw)?;
        if trim {
            let keep = bytes
                .chunks(MIB as usize)
                .rposition(|c| c.iter().any(|&b| b != 0))
                .map_or(MIB as usize, |i| (i + 1) * MIB as usize);
            bytes.truncate(keep);
        }
        let path = dir.join(file);
        fs::write(&path, &bytes).at(&path)?;
        pieces.push(Piece {
            offset,
            length: bytes.len() as u64,
            file: file.to_string(),
            sha256: sha256_bytes(&bytes),
        });
    }
    pieces.push(Piece {
        offset: layout.root_a.offset(),
        length: root_len,
        file: "root.img".into(),
        sha256: root_sha256.into(),
    });
    let zero_sha = {
        let mut h = Sha256::new();
        h.update(vec![0u8; MIB as usize]);
        hex::encode(h.finalize())
    };
    for part in [&layout.root_b, &layout.data] {
        pieces.push(Piece {
            offset: part.offset(),
            length: MIB.min(part.len()),
            file: ZERO.into(),
            sha256: zero_sha.clone(),
        });
    }
    pieces.sort_by_key(|p| p.offset);
    check(&pieces, layout)?;
    Ok(pieces)
}

/// Every piece MiB-aligned, inside the disk and apart from the others.
fn check(pieces: &[Piece], layout: &Layout) -> Result<()> {
    let mut end = 0;
    for p in pieces {
        if p.offset % MIB != 0 || p.offset < end || p.offset + p.length > layout.disk_bytes {
            return Err(BuildError::Invalid(format!(
                "install piece {} at {} (+{}) is misplaced (previous piece ends at {end}, disk {} bytes)",
                p.file, p.offset, p.length, layout.disk_bytes
            )));
        }
        end = p.offset + p.length;
    }
    Ok(())
}

/// `disk.list`: what the installer reads.
pub fn render_list(name: &str, disk_bytes: u64, pieces: &[Piece]) -> String {
    let mut s = format!(
        "# habuild {name}: the disk image in pieces, for install mode (boot.ipxe,\n\
         # habuild.mode=install). `size` is the smallest disk it fits on; each\n\
         # `piece OFFSET LENGTH FILE SHA256` (bytes) is a file beside this one, or\n\
         # `{ZERO}`: that many zero bytes. The installer writes the piece at offset 0\n\
         # (protective MBR + primary GPT) and the last one (backup GPT) after all\n\
         # others are written and read back.\n\
         size {disk_bytes}\n"
    );
    for p in pieces {
        s.push_str(&format!(
            "piece {} {} {} {}\n",
            p.offset, p.length, p.file, p.sha256
        ));
    }
    s
}

/// Write `disk.list` into `dir`; returns its bytes.
pub fn write_list(dir: &Path, name: &str, disk_bytes: u64, pieces: &[Piece]) -> Result<Vec<u8>> {
    let text = render_list(name, disk_bytes, pieces).into_bytes();
    let path = dir.join(LIST);
    let mut f = File::create(&path).at(&path)?;
    f.write_all(&text).at(&path)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Partitions;

    fn small_layout() -> Layout {
        Layout::new(
            &Partitions {
                esp_mib: 64,
                root_mib: 256,
                data_mib: 64,
            },
            &[3; 32],
        )
    }

    /// A sparse raw disk with bytes in the head, 2.5 MiB into the ESP, root A
    /// and the tail.
    fn raw_disk(dir: &Path, layout: &Layout) -> std::path::PathBuf {
        let raw = dir.join("disk.raw");
        let mut f = File::create(&raw).unwrap();
        f.set_len(layout.disk_bytes).unwrap();
        for (at, bytes) in [
            (0u64, &b"\x55\xaaMBR"[..]),
            (512, b"EFI PART"),
            (layout.esp.offset(), b"FAT"),
            (layout.esp.offset() + 2 * MIB + MIB / 2, b"kernel"),
            (layout.root_a.offset(), b"erofs"),
            (layout.disk_bytes - 512, b"EFI PART"),
        ] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(bytes).unwrap();
        }
        raw
    }

    #[test]
    fn pieces_cover_the_non_empty_regions_and_the_list_renders_them_in_disk_order() {
        let t = tempfile::tempdir().unwrap();
        let layout = small_layout();
        let raw = raw_disk(t.path(), &layout);
        let root_sha = sha256_bytes(b"erofs");
        let pieces = write_pieces(t.path(), &raw, &layout, &root_sha, 5).unwrap();
        let by_file: Vec<(&str, u64, u64)> = pieces
            .iter()
            .map(|p| (p.file.as_str(), p.offset, p.length))
            .collect();
        assert_eq!(
            by_file,
            [
                ("disk-head.img", 0, MIB),
                // trimmed after the last non-zero MiB (the 3rd)
                ("esp.img", MIB, 3 * MIB),
                ("root.img", layout.root_a.offset(), 5),
                ("zero", layout.root_b.offset(), MIB),
                ("zero", layout.data.offset(), MIB),
                ("disk-tail.img", layout.disk_bytes - MIB, MIB),
            ]
        );
        for p in pieces
            .iter()
            .filter(|p| p.file.ends_with(".img") && p.file != "root.img")
        {
            let bytes = fs::read(t.path().join(&p.file)).unwrap();
            assert_eq!(bytes.len() as u64, p.length, "{}", p.file);
            assert_eq!(sha256_bytes(&bytes), p.sha256, "{}", p.file);
        }
        assert_eq!(
            &fs::read(t.path().join("disk-head.img")).unwrap()[512..520],
            b"EFI PART"
        );
        assert_eq!(pieces[3].sha256, sha256_bytes(&vec![0u8; MIB as usize]));

        let list = render_list("debian-12", layout.disk_bytes, &pieces);
        let lines: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], format!("size {}", layout.disk_bytes));
        assert_eq!(
            lines[1],
            format!("piece 0 {MIB} disk-head.img {}", pieces[0].sha256)
        );
        assert_eq!(
            lines[3],
            format!("piece {} 5 root.img {root_sha}", layout.root_a.offset())
        );
        assert_eq!(lines.len(), 7);
        // what the installer's `read` splits: 5 words, numbers in decimal
        for l in &lines[1..] {
            let w: Vec<&str> = l.split(' ').collect();
            assert_eq!(w.len(), 5, "{l}");
            assert_eq!(w[0], "piece");
            assert!(w[1].parse::<u64>().unwrap() % MIB == 0, "{l}");
            assert_eq!(w[4].len(), 64, "{l}");
        }
        // reproducible: the same disk gives the same list
        let again = write_pieces(t.path(), &raw, &layout, &root_sha, 5).unwrap();
        assert_eq!(render_list("debian-12", layout.disk_bytes, &again), list);
    }

    #[test]
    fn a_disk_that_does_not_match_the_layout_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let layout = small_layout();
        let raw = t.path().join("short.raw");
        File::create(&raw).unwrap().set_len(MIB).unwrap();
        let err = write_pieces(t.path(), &raw, &layout, "x", 1).unwrap_err();
        assert!(err.to_string().contains("layout"), "{err}");
    }
}
