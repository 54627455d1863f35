//! manifest.json: what was built, from what, and how long each stage took.

use std::collections::BTreeMap;
use std::io::Read;
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
    pub disk_guid: String,
    pub partitions: BTreeMap<String, String>,
    pub artifacts: Vec<Artifact>,
    pub packages: Vec<InstalledPackage>,
    /// Seconds per build stage, in the order they ran.
    pub stages: Vec<(String, f64)>,
}

pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).at(path)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}
