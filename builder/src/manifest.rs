//! manifest.json: what was built, from what, and how long each stage took.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};
use crate::rootfs::InstalledPackage;

#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub habuild_version: String,
    pub name: String,
    pub profile: String,
    pub profile_sha256: String,
    pub cluster_sha256: Option<String>,
    pub source_date_epoch: u64,
    /// Where the epoch came from (`rootfs::epoch::Epoch::source`).
    pub source_date_epoch_from: String,
    /// The cached base tree this image was built on (apt builds).
    pub base: Option<crate::rootfs::base::BaseUse>,
    /// The root image: its cache key and whether it was copied from the
    /// root-image cache (`rootcache`); None when the build had no base key.
    pub root_image: Option<crate::rootcache::RootImageUse>,
    pub disk_guid: String,
    pub partitions: BTreeMap<String, String>,
    pub artifacts: Vec<Artifact>,
    pub packages: Vec<InstalledPackage>,
    /// Seconds per build stage, in the order they ran.
    pub stages: Vec<(String, f64)>,
}

/// sha256 and length of a file. Only its data is read: the holes of a
/// sparse file (the raw disk is 3.7 GB, mostly holes) are found with
/// `SEEK_DATA`/`SEEK_HOLE` and fed to the hash as zeros from memory. A
/// filesystem without hole reporting shows the whole file as data.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let (data, hole) = next_data(&f, pos, len).at(path)?;
        hash_zeros(&mut h, data - pos);
        f.seek(SeekFrom::Start(data)).at(path)?;
        let mut left = hole - data;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            f.read_exact(&mut buf[..n]).at(path)?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        pos = hole;
    }
    Ok((hex::encode(h.finalize()), len))
}

const CHUNK: usize = 1 << 20;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

fn hash_zeros(h: &mut Sha256, mut n: u64) {
    while n > 0 {
        let k = n.min(CHUNK as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// The next data region `[start, end)` at or after `pos` (`(len, len)` when
/// only a hole is left).
fn next_data(f: &File, pos: u64, len: u64) -> std::io::Result<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom as At};
    let start = match seek(f, At::Data(pos)) {
        Ok(d) => d.min(len),
        // no data after pos: the rest is a hole
        Err(rustix::io::Errno::NXIO) => return Ok((len, len)),
        // no hole reporting here: treat the rest as data
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => return Ok((pos, len)),
        Err(e) => return Err(e.into()),
    };
    let end = match seek(f, At::Hole(start)) {
        Ok(h) => h.min(len),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => len,
        Err(e) => return Err(e.into()),
    };
    Ok((start, end.max(start)))
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The plain definition: every byte read.
    fn sha256_read_all(path: &Path) -> String {
        hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
    }

    #[test]
    fn sparse_file_hashes_like_reading_every_byte() {
        let t = tempfile::tempdir().unwrap();
        /// (name, file length, writes at offsets)
        type Case<'a> = (&'a str, u64, &'a [(u64, &'a [u8])]);
        let cases: &[Case] = &[
            ("empty", 0, &[]),
            ("all hole", 5 << 20, &[]),
            ("data only", 3000, &[(0, &[7u8; 3000])]),
            (
                "data, holes, data at the end",
                9 << 20,
                &[
                    (1, b"x"),
                    (3 << 20, &[1u8; 70000]),
                    ((9 << 20) - 5, b"tail!"),
                ],
            ),
            ("hole at the end", 4 << 20, &[(4096, b"start")]),
        ];
        for (name, len, writes) in cases {
            let p = t.path().join(name.replace(' ', "-"));
            let mut f = File::create(&p).unwrap();
            f.set_len(*len).unwrap();
            for (off, bytes) in *writes {
                f.seek(SeekFrom::Start(*off)).unwrap();
                f.write_all(bytes).unwrap();
            }
            drop(f);
            if writes.is_empty() {
                // holes are seen, not read (tmpfs, ext4, xfs, btrfs report them)
                let f = File::open(&p).unwrap();
                assert_eq!(next_data(&f, 0, *len).unwrap(), (*len, *len), "{name}");
            }
            let (sha, n) = sha256_file(&p).unwrap();
            assert_eq!(n, *len, "{name}");
            assert_eq!(sha, sha256_read_all(&p), "{name}");
        }
        assert!(sha256_file(&t.path().join("missing")).is_err());
    }
}
