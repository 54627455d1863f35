//! Root filesystem backends: a distro's own package manager installs the
//! profile's package sets into a directory, then the staged overlay is copied
//! in and `finalize-image` runs inside the root. apt builds are incremental:
//! the installed base tree is cached ([`base`]) keyed by the package set the
//! signed index resolves to ([`index`]); dnf builds are always cold.

pub mod apt;
pub mod base;
pub mod dnf;
pub mod epoch;
pub mod index;

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::exec::Exec;
use crate::profile::{Backend, Profile};

/// Everything a backend needs to produce a root directory.
#[derive(Debug, Clone)]
pub struct RootfsRequest<'a> {
    pub profile: &'a Profile,
    /// Directory to create; must not exist yet.
    pub target: PathBuf,
    /// Package cache for this distro/release/arch (created if missing).
    pub cache: PathBuf,
    /// Staged overlay tree (images/ + profile overlays + agent) copied over the root.
    pub staging: PathBuf,
    pub source_date_epoch: u64,
    /// Cache the base tree (apt): where, and what the index resolved.
    pub incremental: Option<Incremental<'a>>,
}

/// The base-tree cache and the resolution its key is made of.
#[derive(Debug, Clone)]
pub struct Incremental<'a> {
    pub bases: base::BaseCache,
    pub resolution: &'a index::Resolution,
    /// Install the base anew even when it is cached.
    pub cold: bool,
}

/// A finished root directory; for an incremental build an overlay mount
/// over the cached base, unmounted when this is dropped.
#[derive(Debug)]
pub struct Root {
    pub path: PathBuf,
    /// How the base tree was obtained (incremental builds only).
    pub base: Option<base::BaseUse>,
    _overlay: Option<base::Overlay>,
}

impl Root {
    pub fn plain(path: PathBuf) -> Self {
        Self {
            path,
            base: None,
            _overlay: None,
        }
    }
}

/// One installed package, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
}

pub trait RootfsBackend {
    /// What the signed index resolves the profile's packages to, read
    /// before anything is installed (None: this backend cannot tell).
    fn resolve(
        &self,
        _exec: &dyn Exec,
        _cache: &Path,
        _p: &Profile,
    ) -> Result<Option<index::Resolution>> {
        Ok(None)
    }
    /// Install the packages and the overlay at `req.target`.
    fn build(&self, exec: &dyn Exec, req: &RootfsRequest<'_>) -> Result<Root>;
    /// Packages installed in a finished root.
    fn installed(&self, exec: &dyn Exec, root: &Path) -> Result<Vec<InstalledPackage>>;
}

pub fn backend_for(profile: &Profile) -> Box<dyn RootfsBackend> {
    match profile.distro.family.backend() {
        Backend::Apt => Box::new(apt::Apt),
        Backend::Dnf => Box::new(dnf::Dnf),
    }
}

/// The script the overlay installs and every backend runs inside the new root.
pub const FINALIZE: &str = "/usr/lib/habuild/finalize-image";

/// Parse `name<TAB>version` lines (dpkg-query / rpm --qf output).
pub fn parse_package_list(text: &str) -> Vec<InstalledPackage> {
    let mut v: Vec<InstalledPackage> = text
        .lines()
        .filter_map(|l| {
            let (n, ver) = l.split_once('\t')?;
            Some(InstalledPackage {
                name: n.trim().to_string(),
                version: ver.trim().to_string(),
            })
        })
        .filter(|p| !p.name.is_empty())
        .collect();
    v.sort();
    v
}
