//! `habuild image`: the whole pipeline, top to bottom.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use firstboot::cluster::ClusterConfig;
use firstboot::source::SourceFile;
use sha2::{Digest, Sha256};

use crate::disk::esp::{write_esp, EspFile};
use crate::disk::layout::Layout;
use crate::disk::{self, PartitionSlice};
use crate::error::{BuildError, IoContext, Result};
use crate::exec::{Cmd, Exec};
use crate::manifest::{sha256_bytes, sha256_file, Artifact, Manifest};
use crate::output::Output;
use crate::profile::{self, LoadedProfile};
use crate::rootfs::{self, RootfsRequest};
use crate::stages::Stages;
use crate::{embedded, fsimage, images, kube, overlay, pxe, rootcache};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub profile: PathBuf,
    pub cluster: Option<PathBuf>,
    pub out: PathBuf,
    pub cache: PathBuf,
    /// Where the overlay tree (`images/`) comes from.
    pub images: Images,
    pub agent: PathBuf,
    /// `id=url` overrides of the profile's repos.
    pub mirrors: Vec<String>,
    /// `--source-date-epoch`; None: `$SOURCE_DATE_EPOCH`, the profile, the
    /// index date (`rootfs::epoch`).
    pub source_date_epoch: Option<u64>,
    /// How many base trees `<cache>/base` keeps.
    pub keep_bases: usize,
    /// Install the base tree even when it is cached.
    pub cold: bool,
    pub keep_work: bool,
}

/// The source of the overlay tree every image gets (`common/`, the family's, `kube/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Images {
    /// The tree compiled into this binary (`crate::embedded`), written into
    /// the build's work directory: what an installed `habuild` uses.
    Embedded,
    /// A directory laid out like the checkout's `images/` (`--images DIR`).
    Dir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct BuildReport {
    pub manifest: Manifest,
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    pub manifest_path: PathBuf,
    pub summary: String,
}

/// Build the image. Nothing appears at the output paths unless every stage succeeds.
pub fn build_image(exec: &dyn Exec, opts: &BuildOptions) -> Result<BuildReport> {
    let profile = load_profile(&opts.profile, &opts.mirrors)?;
    let cluster = load_cluster(opts.cluster.as_deref())?;
    let name = profile.profile.name.clone();
    let out = Output::prepare(&opts.out, &name, opts.keep_work)?;
    let mut stages = Stages::new(8);
    let backend = rootfs::backend_for(&profile.profile);
    let resolution = stages.run("resolve", || {
        backend.resolve(exec, &opts.cache, &profile.profile)
    })?;
    let epoch = rootfs::epoch::choose(
        opts.source_date_epoch,
        std::env::var("SOURCE_DATE_EPOCH").ok().as_deref(),
        profile.profile.rootfs.source_date_epoch,
        resolution.as_ref().and_then(|r| r.index_date.as_ref()),
        || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        },
    )?;
    tracing::info!("SOURCE_DATE_EPOCH={} ({})", epoch.seconds, epoch.source);
    let seed = input_seed(&profile, cluster.as_ref(), epoch.seconds);
    let layout = Layout::new(&profile.profile.partitions, &seed);

    let staging = out.work.join("staging");
    stages.run("overlay", || {
        let images = match &opts.images {
            Images::Dir(dir) => dir.clone(),
            Images::Embedded => {
                let dir = out.work.join("images");
                embedded::write_to(&dir)?;
                dir
            }
        };
        overlay::stage(
            &images,
            profile.profile.distro.family.overlay_dir(),
            &profile.overlay_dirs(),
            &opts.agent,
            &staging,
        )?;
        let kube = kube::stage(exec, &profile, &images, &opts.cache, &staging)?;
        if profile.profile.kube != profile::Kube::None && kube.pause.is_none() {
            tracing::warn!(
                "kube: no pause binary (set kube.pause in {}): the image gets no {} archive, so \
                 nodes must pull {} from a registry",
                profile.source.path.display(),
                images::PAUSE_FILE,
                firstboot::kube::PAUSE_IMAGE
            );
        }
        images::stage(&profile, kube.pause.as_deref(), &staging).map(|_| ())
    })?;

    let req = RootfsRequest {
        profile: &profile.profile,
        target: out.work.join("rootfs"),
        cache: package_cache(&opts.cache, &profile),
        staging: staging.clone(),
        source_date_epoch: epoch.seconds,
        incremental: resolution.as_ref().map(|r| rootfs::Incremental {
            bases: rootfs::base::BaseCache::new(&opts.cache, opts.keep_bases),
            resolution: r,
            cold: opts.cold,
        }),
    };
    // dropped (the overlay unmounted) before `out` removes the work directory
    let rootfs = stages.run("rootfs", || backend.build(exec, &req))?;
    let root = rootfs.path.clone();
    let packages = backend.installed(exec, &root)?;

    let fs_type = profile.profile.rootfs.fs_type;
    let root_img = out.work.join("root.img");
    let root_image = stages.run("root image", || {
        root_image(
            exec,
            opts,
            &profile,
            rootfs.base.as_ref(),
            &staging,
            &root,
            &root_img,
            &layout,
            epoch.seconds,
        )
    })?;

    let esp_files = esp_files(&root, &profile, cluster.as_ref(), &layout)?;
    stages.run("disk", || {
        write_disk(&out.raw_tmp, &layout, &esp_files, &root_img, epoch.seconds)
    })?;
    let (pxe_out, pxe_artifacts) = stages.run("pxe", || {
        let esp = |path: &str| {
            esp_files
                .iter()
                .find(|f| f.path == path)
                .map(|f| f.contents.as_slice())
                .unwrap_or_default()
        };
        pxe::PxeOutput::write(
            &opts.out,
            &pxe::PxeInputs {
                name: &name,
                kernel: esp("habuild/a/vmlinuz"),
                initrd: esp("habuild/a/initrd.img"),
                root_img: &root_img,
                root_fstype: fsimage::kernel_name(fs_type),
                cmdline: &profile.profile.kernel.cmdline,
                cluster: cluster.as_ref().map(|(src, _)| src.text.as_str()),
                raw_disk: &out.raw_tmp,
                layout: &layout,
            },
        )
    })?;
    // The raw disk is hashed while qemu-img converts it (both only read it).
    let manifest = std::thread::scope(|scope| {
        let raw_sha = scope.spawn(|| {
            let t = std::time::Instant::now();
            let r = sha256_file(&out.raw_tmp);
            tracing::info!(
                "raw image hashed in {:.1}s (its holes are not read), beside the qcow2 conversion",
                t.elapsed().as_secs_f64()
            );
            r
        });
        stages.run("qcow2", || {
            exec.run(
                &Cmd::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&out.raw_tmp)
                    .arg(&out.qcow2_tmp),
            )
            .map(|_| ())
        })?;
        stages.run("manifest", || {
            let raw_sha = raw_sha
                .join()
                .map_err(|_| BuildError::Invalid("hashing the raw image panicked".into()))??;
            manifest(
                &profile,
                cluster.as_ref(),
                &layout,
                &out,
                raw_sha,
                packages,
                &epoch,
            )
        })
    })?;
    let mut manifest = manifest;
    manifest.artifacts.extend(pxe_artifacts);
    manifest.stages = stages.done.clone();
    manifest.base = rootfs.base.clone();
    manifest.root_image = root_image;
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BuildError::Invalid(e.to_string()))?;
    fs::write(&out.manifest_tmp, json).at(&out.manifest_tmp)?;
    // the overlay on the work directory's rootfs unmounted first: `commit`
    // consumes `out`, whose drop removes the work directory, and a mount
    // inside it made that fail and leave ~1.3 GB in the output directory
    drop(rootfs);
    pxe_out.commit()?;
    let (raw, qcow2, manifest_path) = out.commit()?;
    Ok(BuildReport {
        manifest,
        raw,
        qcow2,
        manifest_path,
        summary: stages.summary(),
    })
}

/// The root filesystem image of `root` at `root_img`. On an incremental
/// build (a cached base tree; not `--cold`) it is copied from the
/// root-image cache when the same inputs made one before (`rootcache`),
/// else made now and stored there. How it was made (None: no base key,
/// made and not cached).
#[allow(clippy::too_many_arguments)]
fn root_image(
    exec: &dyn Exec,
    opts: &BuildOptions,
    profile: &LoadedProfile,
    base: Option<&rootfs::base::BaseUse>,
    staging: &Path,
    root: &Path,
    root_img: &Path,
    layout: &Layout,
    epoch: u64,
) -> Result<Option<rootcache::RootImageUse>> {
    let fs_type = profile.profile.rootfs.fs_type;
    let make = || fsimage::make(exec, fs_type, root, root_img, layout.rootfs_uuid(), epoch);
    let Some(base) = base else {
        make()?;
        return Ok(None);
    };
    let builder = rootcache::builder_sha256()?;
    let key = rootcache::key(&rootcache::RootImageInputs {
        base_key: &base.key,
        staging,
        profile_text: &profile.source.text,
        mirrors: &opts.mirrors,
        fs_type: fsimage::kernel_name(fs_type),
        uuid: layout.rootfs_uuid().to_string(),
        epoch,
        builder: &builder,
    })?;
    let cache = rootcache::RootImageCache::new(&opts.cache, opts.keep_bases);
    if !opts.cold && cache.restore(&key, root_img)? {
        tracing::info!("root image: unchanged inputs, copied from the cache ({key:.16})");
        return Ok(Some(rootcache::RootImageUse { key, reused: true }));
    }
    make()?;
    // a cache that cannot take it costs the next build time, not this one
    match cache.store(&key, root_img) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!("root-image cache: removed the least recently used {removed:?}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("root image not cached: {e}"),
    }
    Ok(Some(rootcache::RootImageUse { key, reused: false }))
}

/// Load the profile and apply `--mirror id=url` overrides.
pub fn load_profile(path: &Path, mirrors: &[String]) -> Result<LoadedProfile> {
    let mut p = profile::load(path)?;
    for m in mirrors {
        let (id, url) = m.split_once('=').ok_or_else(|| {
            BuildError::Invalid(format!(
                "--mirror {m:?}: expected ID=URL, e.g. debian=file:///srv/mirror"
            ))
        })?;
        let ids: Vec<String> = p.profile.repos.iter().map(|r| r.id.clone()).collect();
        let repo = p
            .profile
            .repos
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| {
                BuildError::Invalid(format!(
                    "--mirror {m:?}: {} has no repo with id {id:?} (ids: {})",
                    path.display(),
                    ids.join(", ")
                ))
            })?;
        if !["http://", "https://", "file://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            return Err(BuildError::Invalid(format!(
                "--mirror {m:?}: url must start with http://, https:// or file://"
            )));
        }
        repo.url = url.to_string();
    }
    Ok(p)
}

pub fn load_cluster(path: Option<&Path>) -> Result<Option<(SourceFile, ClusterConfig)>> {
    let Some(path) = path else { return Ok(None) };
    let src = SourceFile::read(path)?;
    let cfg = ClusterConfig::from_source(&src)?;
    Ok(Some((src, cfg)))
}

/// Everything the disk's GUIDs and UUIDs are derived from.
fn input_seed(
    p: &LoadedProfile,
    cluster: Option<&(SourceFile, ClusterConfig)>,
    epoch: u64,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(p.source.text.as_bytes());
    if let Some((src, _)) = cluster {
        h.update(src.text.as_bytes());
    }
    h.update(epoch.to_le_bytes());
    h.finalize().into()
}

fn package_cache(cache: &Path, p: &LoadedProfile) -> PathBuf {
    let d = &p.profile.distro;
    cache
        .join("packages")
        .join(format!("{:?}-{}-{}", d.family, d.release, d.arch).to_lowercase())
}

/// The newest file in `dir` whose name starts with `prefix`.
fn newest(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && !n.ends_with(".old"))
        })
        .collect();
    v.sort();
    Ok(v.pop())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).at(path)
}

/// The ESP's files: boot loader, slot A's entry, kernel, initrd, cluster.toml.
fn esp_files(
    root: &Path,
    p: &LoadedProfile,
    cluster: Option<&(SourceFile, ClusterConfig)>,
    layout: &Layout,
) -> Result<Vec<EspFile>> {
    let boot = root.join("boot");
    let kernel = newest(&boot, "vmlinuz-")?.ok_or_else(|| {
        BuildError::Invalid(format!(
            "no kernel (vmlinuz-*) in {}: check [packages].kernel",
            boot.display()
        ))
    })?;
    let initrd = match newest(&boot, "initrd.img-")? {
        Some(i) => Some(i),
        None => newest(&boot, "initramfs-")?,
    }
    .ok_or_else(|| {
        BuildError::Invalid(format!(
            "no initrd in {}: is initramfs-tools or dracut installed?",
            boot.display()
        ))
    })?;
    let sdboot = root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if !sdboot.is_file() {
        return Err(BuildError::Invalid(format!(
            "{} not found: add the systemd-boot EFI package (systemd-boot-efi on Debian/Ubuntu) to [packages].base",
            sdboot.display()
        )));
    }
    let fs_name = fsimage::kernel_name(p.profile.rootfs.fs_type);
    let options = format!(
        "root=PARTUUID={} ro rootfstype={fs_name} systemd.gpt_auto=0 {}",
        layout.root_a.guid, p.profile.kernel.cmdline
    );
    let entry = format!(
        "title habuild {name} (slot A)\nlinux /habuild/a/vmlinuz\ninitrd /habuild/a/initrd.img\noptions {options}\n",
        name = p.profile.name
    );
    let loader = "default habuild-a.conf\ntimeout 0\neditor no\nconsole-mode keep\n";
    let efi = read(&sdboot)?;
    let mut files = vec![
        EspFile { path: "EFI/BOOT/BOOTX64.EFI".into(), contents: efi.clone() },
        EspFile { path: "EFI/systemd/systemd-bootx64.efi".into(), contents: efi },
        EspFile { path: "loader/loader.conf".into(), contents: loader.into() },
        EspFile { path: "loader/entries/habuild-a.conf".into(), contents: entry.into() },
        EspFile { path: "habuild/a/vmlinuz".into(), contents: read(&kernel)? },
        EspFile { path: "habuild/a/initrd.img".into(), contents: read(&initrd)? },
        EspFile {
            path: "habuild/README.txt".into(),
            contents: "habuild node image.\r\n\r\ncluster.toml in this folder holds the site settings every node reads on\r\nboot (cluster name, secret, bootstrap_expect, network, storage). Edit it\r\nfrom any OS after flashing; see configs/cluster.example.toml for every key.\r\n".into(),
        },
    ];
    if let Some((src, _)) = cluster {
        files.push(EspFile {
            path: "habuild/cluster.toml".into(),
            contents: src.text.clone().into_bytes(),
        });
    }
    Ok(files)
}

fn write_disk(
    path: &Path,
    layout: &Layout,
    esp: &[EspFile],
    root_img: &Path,
    epoch: u64,
) -> Result<()> {
    let mut file = disk::create_disk(path, layout)?;
    write_esp(
        PartitionSlice::new(&mut file, &layout.esp),
        esp,
        layout.fat_serial(),
        epoch,
    )?;
    disk::copy_into(&mut file, path, &layout.root_a, root_img)?;
    file.sync_all().at(path)?;
    Ok(())
}

fn manifest(
    p: &LoadedProfile,
    cluster: Option<&(SourceFile, ClusterConfig)>,
    layout: &Layout,
    out: &Output,
    raw_sha: (String, u64),
    packages: Vec<rootfs::InstalledPackage>,
    epoch: &rootfs::epoch::Epoch,
) -> Result<Manifest> {
    let mut artifacts = Vec::new();
    let qcow2_sha = sha256_file(&out.qcow2_tmp)?;
    for ((sha256, size), fin) in [(raw_sha, &out.raw), (qcow2_sha, &out.qcow2)] {
        artifacts.push(Artifact {
            file: fin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256,
            size,
        });
    }
    Ok(Manifest {
        habuild_version: env!("CARGO_PKG_VERSION").to_string(),
        name: p.profile.name.clone(),
        profile: p.source.path.display().to_string(),
        profile_sha256: sha256_bytes(p.source.text.as_bytes()),
        cluster_sha256: cluster.map(|(s, _)| sha256_bytes(s.text.as_bytes())),
        source_date_epoch: epoch.seconds,
        source_date_epoch_from: epoch.source.clone(),
        base: None,
        root_image: None,
        disk_guid: layout.disk_guid.to_string(),
        partitions: layout
            .parts()
            .iter()
            .map(|p| (p.name.to_string(), p.guid.to_string()))
            .collect(),
        artifacts,
        packages,
        stages: Vec::new(),
    })
}
