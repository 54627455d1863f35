//! The Debian 12 test image: built once per set of inputs with the real
//! `habuild image`, cached under `$HABUILD_TEST_CACHE` (default
//! `/var/tmp/habuild-test`) and shared by the image and boot tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// SOURCE_DATE_EPOCH of every test build.
pub const TEST_EPOCH: u64 = 1_700_000_000;

/// The secret of the test cluster (tests only; never a real site's).
pub const TEST_SECRET: &str = "7e57000000000000000000000000000000000000000000000000000000000001";

#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub dir: PathBuf,
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    pub manifest: PathBuf,
    pub cluster: PathBuf,
    /// How long the build took (zero when reused from the cache).
    pub build_time: Duration,
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("qemu-tests sits in the workspace")
        .to_path_buf()
}

pub fn test_cache() -> PathBuf {
    std::env::var_os("HABUILD_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/habuild-test"))
}

/// The release binaries the tests drive.
pub fn release_bin(name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let p = target.join("release").join(name);
    if !p.is_file() {
        bail!(
            "{} not found: run `cargo build --release --workspace` first (scripts/test does)",
            p.display()
        );
    }
    Ok(p)
}

/// The cluster file the test images carry: `bootstrap_expect` nodes form
/// the group, `control_plane_size` of them run etcd and hold the VIP
/// (10.77.0.10, outside dnsmasq's range).
pub fn test_cluster_text(bootstrap_expect: u32, control_plane_size: u32) -> String {
    format!(
        "[cluster]\nname = \"qemu-test\"\nsecret = \"{TEST_SECRET}\"\nbootstrap_expect = {bootstrap_expect}\ncontrol_plane_size = {control_plane_size}\n\n[network]\nsubnet = \"10.77.0.0/24\"\nvip = \"10.77.0.10\"\nmetallb_range = \"10.77.0.200-10.77.0.220\"\n\n[storage]\nbrick_file_size_gib = 1\n"
    )
}

fn hash_tree(h: &mut Sha256, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        h.update(
            p.strip_prefix(workspace())
                .unwrap_or(&p)
                .to_string_lossy()
                .as_bytes(),
        );
        if p.is_dir() {
            hash_tree(h, &p)?;
        } else if let Ok(bytes) = fs::read(&p) {
            h.update(bytes);
        }
    }
    Ok(())
}

/// A binary of habuild installed the README's way (`cargo install --path
/// firstboot` and `--path builder` into one root): `$HABUILD_INSTALLED/<name>`.
/// scripts/test installs into a temporary root and sets `HABUILD_INSTALLED`
/// to its `bin/`.
pub fn installed_bin(name: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("HABUILD_INSTALLED").context(
        "HABUILD_INSTALLED is not set: scripts/test installs habuild the README's way and sets it; by hand: \
         cargo install --locked --path firstboot --root R --target-dir target && \
         cargo install --locked --path builder --root R --target-dir target && \
         cargo build --release --workspace (puts the workspace's binaries back), then HABUILD_INSTALLED=R/bin",
    )?;
    let p = PathBuf::from(dir).join(name);
    if !p.is_file() {
        bail!(
            "{} not found: is HABUILD_INSTALLED the bin/ of a `cargo install --root`?",
            p.display()
        );
    }
    Ok(p)
}

/// A key over every input of the image: binaries, profile, images/, cluster file.
fn input_key(profile: &Path, cluster: &str) -> Result<String> {
    let mut h = Sha256::new();
    for bin in ["habuild", "habuild-agent"] {
        h.update(fs::read(release_bin(bin)?)?);
    }
    h.update(fs::read(profile).with_context(|| format!("reading {}", profile.display()))?);
    hash_tree(&mut h, &workspace().join("images"))?;
    h.update(cluster.as_bytes());
    Ok(hex::encode(&h.finalize()[..8]))
}

/// Run the checkout's `habuild image` (target/release, overlays read from
/// the checkout's `images/`) for the Debian 12 profile into `out`.
pub fn build_into(out: &Path, cluster: &Path) -> Result<Duration> {
    let ws = workspace();
    let mut cmd = Command::new(release_bin("habuild")?);
    cmd.arg("image")
        .arg("--profile")
        .arg(ws.join("configs/debian-12.toml"))
        .arg("--cluster")
        .arg(cluster)
        .arg("--images")
        .arg(ws.join("images"));
    run_build(cmd, out)
}

/// Run the installed `habuild image` ([`installed_bin`]) the way a user
/// would outside the checkout: from `cwd` (holding copies of the Debian 12
/// profile and `cluster`), with relative paths, overlays embedded in the
/// binary (no `--images`), no `HABUILD_IMAGES`. `agent` pins the agent
/// baked in (None: habuild's own choice, next to itself or on PATH).
pub fn build_installed_into(
    cwd: &Path,
    out: &Path,
    cluster: &Path,
    agent: Option<&Path>,
) -> Result<Duration> {
    fs::create_dir_all(cwd)?;
    fs::copy(
        workspace().join("configs/debian-12.toml"),
        cwd.join("debian-12.toml"),
    )?;
    fs::copy(cluster, cwd.join("cluster.toml"))?;
    let mut cmd = Command::new(installed_bin("habuild")?);
    cmd.current_dir(cwd)
        .env_remove("HABUILD_IMAGES")
        .env_remove("HABUILD_AGENT")
        .args([
            "image",
            "--profile",
            "debian-12.toml",
            "--cluster",
            "cluster.toml",
        ]);
    if let Some(a) = agent {
        cmd.arg("--agent").arg(a);
    }
    run_build(cmd, out)
}

/// Finish `cmd` (`habuild image` with profile, cluster and overlays set)
/// with the shared options, run it into `out`, log to `<out>.build.log`.
fn run_build(mut cmd: Command, out: &Path) -> Result<Duration> {
    fs::create_dir_all(out)?;
    let log = out.with_extension("build.log");
    let t = Instant::now();
    let status = cmd
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(test_cache().join("packages"))
        .arg("--source-date-epoch")
        .arg(TEST_EPOCH.to_string())
        .env("RUST_LOG", "info")
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::options().append(true).open(&log)?)
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    let took = t.elapsed();
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        bail!(
            "habuild image failed ({status}); log {}:\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!(
        "habuild image: built {} in {:.1}s ({})",
        out.display(),
        took.as_secs_f64(),
        cmd.get_program().to_string_lossy()
    );
    Ok(took)
}

/// Keep only the image for the current inputs: each one is ~1 GiB on disk.
fn prune_other_images(key: &str) -> Result<()> {
    let images = test_cache().join("images");
    for e in fs::read_dir(&images)
        .with_context(|| format!("reading {}", images.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.contains(key);
        let cached = name.starts_with("debian-12-") || name.starts_with("cluster-");
        if cached && !ours {
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
    Ok(())
}

/// The cached Debian 12 test image for these inputs, built if missing.
pub fn debian_image() -> Result<BuiltImage> {
    let ws = workspace();
    let cluster_text = test_cluster_text(3, 3);
    let key = input_key(&ws.join("configs/debian-12.toml"), &cluster_text)?;
    let dir = test_cache().join("images").join(format!("debian-12-{key}"));
    let cluster = test_cache()
        .join("images")
        .join(format!("cluster-{key}.toml"));
    fs::create_dir_all(dir.parent().expect("has parent"))?;
    fs::write(&cluster, &cluster_text)?;
    let manifest = dir.join("manifest.json");
    let build_time = if manifest.is_file() {
        eprintln!("reusing test image {}", dir.display());
        Duration::ZERO
    } else {
        prune_other_images(&key)?;
        let _ = fs::remove_dir_all(&dir);
        build_into(&dir, &cluster)?
    };
    Ok(BuiltImage {
        raw: dir.join("debian-12.raw"),
        qcow2: dir.join("debian-12.qcow2"),
        manifest,
        cluster,
        dir,
        build_time,
    })
}
