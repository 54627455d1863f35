//! Image profiles (`configs/<distro>.toml`): an image variant is data, not code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use firstboot::source::{ConfigError, SourceFile};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Image name: artifacts are `<name>.raw`, `<name>.qcow2`.
    pub name: String,
    pub distro: Distro,
    /// Package repositories, in order.
    pub repos: Vec<Repo>,
    pub packages: Packages,
    #[serde(default)]
    pub kube: Kube,
    /// Container images seeded into containerd at first boot (besides pause).
    #[serde(default)]
    pub images: ImageArchives,
    #[serde(default)]
    pub rootfs: RootfsSettings,
    #[serde(default)]
    pub partitions: Partitions,
    #[serde(default)]
    pub kernel: KernelSettings,
    /// Extra directories copied over the root filesystem after `images/`, relative to the profile file.
    #[serde(default)]
    pub overlays: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Debian,
    Ubuntu,
    CentosStream,
    Rocky,
}

impl Family {
    pub fn backend(self) -> Backend {
        match self {
            Family::Debian | Family::Ubuntu => Backend::Apt,
            Family::CentosStream | Family::Rocky => Backend::Dnf,
        }
    }
    /// The `images/<dir>` overlay specific to this family.
    pub fn overlay_dir(self) -> &'static str {
        match self {
            Family::Debian | Family::Ubuntu => "debian",
            Family::CentosStream | Family::Rocky => "redhat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Backend {
    Apt,
    Dnf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distro {
    pub family: Family,
    /// Suite or release: "bookworm", "noble", "9".
    pub release: String,
    #[serde(default = "default_arch")]
    pub arch: String,
}

fn default_arch() -> String {
    "amd64".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repo {
    /// Short id (used for dnf repo ids and in messages).
    pub id: String,
    /// http(s):// or file:// URL. Overridable with `--mirror id=url`.
    pub url: String,
    /// apt: suites to use from this mirror (default: the distro release).
    #[serde(default)]
    pub suites: Vec<String>,
    /// apt: components.
    #[serde(default)]
    pub components: Vec<String>,
    /// Path on the build host of the keyring (apt) or GPG key (dnf) that signs this repo.
    #[serde(default)]
    pub keyring: Option<PathBuf>,
    /// dnf: check package signatures (default true).
    #[serde(default = "yes")]
    pub gpgcheck: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    pub base: Vec<String>,
    pub kernel: Vec<String>,
    pub runtime: Vec<String>,
    pub etcd: Vec<String>,
    pub vip: Vec<String>,
    pub storage: Vec<String>,
    #[serde(default)]
    pub extra: Vec<String>,
}

impl Packages {
    /// Every package, sets in a fixed order, duplicates removed.
    pub fn all(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for set in [
            &self.base,
            &self.kernel,
            &self.runtime,
            &self.etcd,
            &self.vip,
            &self.storage,
            &self.extra,
        ] {
            for p in set {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }
}

impl Profile {
    /// Everything the package manager installs: the package sets, plus the
    /// Kubernetes packages when they come from a repository.
    pub fn package_list(&self) -> Vec<String> {
        let mut all = self.packages.all();
        if let Kube::Repo { packages, .. } = &self.kube {
            for p in packages {
                if !all.contains(p) {
                    all.push(p.clone());
                }
            }
        }
        all
    }
}

/// Where the Kubernetes binaries come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Kube {
    /// No Kubernetes in the image.
    #[default]
    None,
    /// Packages from an apt/yum repository listed in `repos`.
    Repo {
        version: String,
        packages: Vec<String>,
        /// A static pause binary to build the pause image from (relative to the profile file).
        #[serde(default)]
        pause: Option<PathBuf>,
    },
    /// Release binaries downloaded by URL and checked against pinned sha256 sums.
    Release {
        version: String,
        base_url: String,
        sha256: BTreeMap<String, String>,
        /// A static pause binary to build the pause image from (relative to the profile file).
        #[serde(default)]
        pause: Option<PathBuf>,
    },
    /// A local directory holding kubeadm, kubelet, kubectl, ... (e.g. built from source).
    Local {
        version: String,
        dir: PathBuf,
        /// A static pause binary (default: `<dir>/../pause/pause`, where
        /// `scripts/build-kube` puts it, when that file exists).
        #[serde(default)]
        pause: Option<PathBuf>,
    },
    /// Built by a script that caches its result and prints the directory
    /// of the binaries on its last stdout line; staged like `Local`, pause
    /// binary from `<bin>/../pause/pause`. Default script: the checkout's
    /// `scripts/build-kube`, compiled into habuild (so an installed habuild
    /// run outside the checkout has it too); `script` (relative to the
    /// profile file) overrides it.
    Build {
        version: String,
        #[serde(default)]
        script: Option<PathBuf>,
    },
}

impl Kube {
    /// The profile's explicit `kube.pause`, if any.
    pub fn pause(&self) -> Option<&Path> {
        match self {
            Kube::Repo { pause, .. } | Kube::Release { pause, .. } | Kube::Local { pause, .. } => {
                pause.as_deref()
            }
            Kube::None | Kube::Build { .. } => None,
        }
    }
}

/// `[images]`: OCI (or `docker save`) archives baked into
/// `usr/share/habuild/images` and imported into containerd's `k8s.io`
/// namespace at first boot, under the reference each archive names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ImageArchives {
    /// Paths relative to the profile file.
    #[serde(default)]
    pub archives: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RootFsType {
    #[default]
    Erofs,
    Squashfs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RootfsSettings {
    #[serde(default, rename = "type")]
    pub fs_type: RootFsType,
    /// The build's SOURCE_DATE_EPOCH when neither `--source-date-epoch`
    /// nor `$SOURCE_DATE_EPOCH` is given (default: the newest `Date:` of
    /// the signed apt index; see `rootfs::epoch`). Pinning it keeps the
    /// base-tree cache valid while the mirror re-signs unchanged indexes.
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    pub esp_mib: u64,
    /// Size of each root slot (A and B).
    pub root_mib: u64,
    /// Initial size of the data partition; first boot grows it to the end of the disk.
    pub data_mib: u64,
}

impl Default for Partitions {
    fn default() -> Self {
        Self {
            esp_mib: 256,
            root_mib: 2048,
            data_mib: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSettings {
    /// Appended after habuild's own `root=... ro` arguments.
    pub cmdline: String,
}

impl Default for KernelSettings {
    fn default() -> Self {
        Self {
            cmdline: "console=tty0 console=ttyS0,115200".into(),
        }
    }
}

/// A profile with the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    pub profile: Profile,
    pub source: SourceFile,
}

impl LoadedProfile {
    pub fn dir(&self) -> &Path {
        self.source.path.parent().unwrap_or(Path::new("."))
    }

    /// A path from the profile, resolved against the profile's directory
    /// (absolute paths stay as they are).
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.dir().join(p)
    }

    /// Overlay directories resolved against the profile's directory.
    pub fn overlay_dirs(&self) -> Vec<PathBuf> {
        self.profile
            .overlays
            .iter()
            .map(|p| self.dir().join(p))
            .collect()
    }
}

pub fn load(path: &Path) -> Result<LoadedProfile, ConfigError> {
    let source = SourceFile::read(path)?;
    let profile: Profile = source.parse()?;
    validate(&profile, &source)?;
    Ok(LoadedProfile { profile, source })
}

fn validate(p: &Profile, src: &SourceFile) -> Result<(), ConfigError> {
    let name_ok = !p.name.is_empty()
        && p.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(src.error_at(
            "name",
            format!(
                "expected letters, digits, '-', '_' or '.', got {:?}",
                p.name
            ),
        ));
    }
    if p.repos.is_empty() {
        return Err(src.error_at("repos", "expected at least one [[repos]] entry"));
    }
    for (i, r) in p.repos.iter().enumerate() {
        let ok = ["http://", "https://", "file://"]
            .iter()
            .any(|s| r.url.starts_with(s));
        if !ok {
            return Err(src.error_at(
                &format!("repos.{i}"),
                format!(
                    "repo {:?}: url {:?} must start with http://, https:// or file://",
                    r.id, r.url
                ),
            ));
        }
        if p.distro.family.backend() == Backend::Apt && r.components.is_empty() {
            return Err(src.error_at(
                &format!("repos.{i}"),
                format!(
                    "repo {:?}: apt repositories need components, e.g. [\"main\"]",
                    r.id
                ),
            ));
        }
    }
    if p.packages.kernel.is_empty() {
        return Err(src.error_at("packages.kernel", "expected the kernel package(s)"));
    }
    let parts = &p.partitions;
    for (key, v, min) in [
        ("partitions.esp_mib", parts.esp_mib, 64),
        ("partitions.root_mib", parts.root_mib, 256),
        ("partitions.data_mib", parts.data_mib, 64),
    ] {
        if v < min {
            return Err(src.error_at(key, format!("expected at least {min} MiB, got {v}")));
        }
    }
    if p.kernel.cmdline.contains("root=") {
        return Err(src.error_at(
            "kernel.cmdline",
            "must not set root=: habuild points root= at the active root slot itself",
        ));
    }
    if let Kube::Release { sha256, .. } = &p.kube {
        for (bin, sum) in sha256 {
            if sum.len() != 64 || !sum.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(src.error_at(
                    "kube.sha256",
                    format!("{bin}: expected a 64-hex-digit sha256, got {sum:?}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
    }

    #[test]
    fn every_shipped_profile_loads() {
        let mut n = 0;
        for e in std::fs::read_dir(configs()).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".toml") && !name.starts_with("cluster") {
                let p = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(format!("{}.toml", p.profile.name), name);
                n += 1;
            }
        }
        assert_eq!(n, 5, "expected the five shipped profiles");
    }

    #[test]
    fn typo_names_file_line_and_key() {
        let path = configs().join("debian-12.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replacen("[packages]", "[pakages]", 1);
        let line = text.lines().position(|l| l == "[pakages]").unwrap() + 1;
        let src = SourceFile::from_text("debian-12.toml", text);
        let e = src.parse::<Profile>().unwrap_err();
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.message.contains("unknown field `pakages`"), "{e}");
    }

    #[test]
    fn bad_values_are_located() {
        let path = configs().join("debian-12.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let bad = text.replace("root_mib = ", "root_mib = 1 #");
        let src = SourceFile::from_text("p.toml", bad);
        let p: Profile = src.parse().unwrap();
        let e = validate(&p, &src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("partitions.root_mib"));
        assert!(e.line.is_some());
        let bad = text.replace("url = \"http", "url = \"ftp");
        let src = SourceFile::from_text("p.toml", bad);
        let p: Profile = src.parse().unwrap();
        let e = validate(&p, &src).unwrap_err();
        assert!(e.message.contains("must start with"), "{e}");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn default_profile_builds_kube_and_images_section_parses() {
        let p = load(&configs().join("debian-12.toml")).unwrap();
        assert_eq!(
            p.profile.kube,
            Kube::Build {
                version: "1.20.2".into(),
                script: None
            }
        );
        assert_eq!(
            p.resolve(Path::new("../scripts/build-kube")),
            configs().join("../scripts/build-kube")
        );
        assert!(p.profile.images.archives.is_empty());
        let text = std::fs::read_to_string(configs().join("debian-12.toml")).unwrap();
        let with = format!("{text}\n[images]\narchives = [\"apps/web.tar\"]\n");
        let src = SourceFile::from_text("p.toml", with);
        let p: Profile = src.parse().unwrap();
        assert_eq!(p.images.archives, vec![PathBuf::from("apps/web.tar")]);
        let typo = format!("{text}\n[images]\narchive = [\"apps/web.tar\"]\n");
        let e = SourceFile::from_text("p.toml", typo)
            .parse::<Profile>()
            .unwrap_err();
        assert!(e.message.contains("unknown field `archive`"), "{e}");
        assert!(e.line.is_some(), "{e}");
        // build needs its version; a pause binary for release sources is optional
        let nov = text.replace(
            "source = \"build\"\nversion = \"1.20.2\"",
            "source = \"build\"",
        );
        let e = SourceFile::from_text("p.toml", nov)
            .parse::<Profile>()
            .unwrap_err();
        assert!(e.message.contains("version"), "{e}");
        let local = text.replace(
            "source = \"build\"\nversion = \"1.20.2\"",
            "source = \"local\"\nversion = \"1.20.2\"\ndir = \"/k/bin\"\npause = \"/k/pause\"",
        );
        let p: Profile = SourceFile::from_text("p.toml", local).parse().unwrap();
        assert_eq!(p.kube.pause(), Some(Path::new("/k/pause")));
    }
}
