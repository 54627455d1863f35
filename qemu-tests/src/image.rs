//! The Debian 12 test image: built once per set of inputs with the real
//! `habuild image`, cached under `$HABUILD_TEST_CACHE` (default
//! `/var/tmp/habuild-test`) and shared by the image and boot tests. The
//! cache keeps the `$HABUILD_TEST_IMAGES_KEEP` (default 3) most recently
//! used images, so switching between branches does not rebuild each time.

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
/// the checkout's `images/`) for the Debian 12 profile into `out`, with
/// `extra` arguments (e.g. `--cold`).
pub fn build_into(out: &Path, cluster: &Path, extra: &[String]) -> Result<Duration> {
    build_profile_into(
        &workspace().join("configs/debian-12.toml"),
        out,
        cluster,
        extra,
    )
}

/// [`build_into`] with another profile.
pub fn build_profile_into(
    profile: &Path,
    out: &Path,
    cluster: &Path,
    extra: &[String],
) -> Result<Duration> {
    let ws = workspace();
    let mut cmd = Command::new(release_bin("habuild")?);
    cmd.arg("image")
        .arg("--profile")
        .arg(profile)
        .arg("--cluster")
        .arg(cluster)
        .arg("--images")
        .arg(ws.join("images"))
        .args(extra);
    run_build(cmd, out)
}

/// Run the installed `habuild image` ([`installed_bin`]) the way a user
/// would outside the checkout: from `cwd` (holding copies of the Debian 12
/// profile and `cluster`), with relative paths, overlays embedded in the
/// binary (no `--images`), no `HABUILD_IMAGES`. `agent` pins the agent
/// baked in (None: habuild's own choice, next to itself or on PATH);
/// `extra` arguments are appended (e.g. `--cold`, `--images DIR`).
pub fn build_installed_into(
    cwd: &Path,
    out: &Path,
    cluster: &Path,
    agent: Option<&Path>,
    extra: &[String],
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
    cmd.args(extra);
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

/// How many test images stay cached (each ~1 GiB on disk):
/// `$HABUILD_TEST_IMAGES_KEEP`, default 3, at least 1.
fn images_to_keep() -> usize {
    std::env::var("HABUILD_TEST_IMAGES_KEEP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize)
        .max(1)
}

/// Marks an image directory as used now (its mtime orders the eviction).
const LAST_USED: &str = ".last-used";

fn mark_used(dir: &Path) -> Result<()> {
    let p = dir.join(LAST_USED);
    fs::write(&p, b"").with_context(|| format!("writing {}", p.display()))
}

/// A bounded cache of test images in `images`: keep `current` and the
/// `keep - 1` other most recently used images (`debian-12-<key>` with its
/// `cluster-<key>.toml`), remove the rest, and any other key's image that
/// never finished (no manifest.json). Returns the keys removed.
fn prune_images(images: &Path, current: &str, keep: usize) -> Result<Vec<String>> {
    let mut finished = Vec::new();
    let mut removed = Vec::new();
    for e in fs::read_dir(images)
        .with_context(|| format!("reading {}", images.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_prefix("debian-12-") else {
            continue;
        };
        if key == current || !e.path().is_dir() {
            continue;
        }
        if e.path().join("manifest.json").is_file() {
            let used = fs::metadata(e.path().join(LAST_USED))
                .or_else(|_| e.metadata())
                .and_then(|m| m.modified())
                .with_context(|| format!("reading {}", e.path().display()))?;
            finished.push((used, key.to_string()));
        } else {
            removed.push(key.to_string());
        }
    }
    // newest first; the current image takes one of the `keep` places
    finished.sort_by(|a, b| b.cmp(a));
    removed.extend(finished.into_iter().skip(keep - 1).map(|(_, k)| k));
    for key in &removed {
        let dir = images.join(format!("debian-12-{key}"));
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        let _ = fs::remove_file(images.join(format!("cluster-{key}.toml")));
        let _ = fs::remove_file(images.join(format!("debian-12-{key}.build.log")));
    }
    Ok(removed)
}

/// The cached Debian 12 test image for these inputs, built if missing: the
/// default test cluster (3 nodes, control plane 3, Kubernetes on).
pub fn debian_image() -> Result<BuiltImage> {
    debian_image_for(&test_cluster_text(3, 3))
}

/// The test cluster file with Kubernetes switched off (`[kubernetes]
/// enabled = false`), for scenarios that prove something else (Gluster) and
/// should not pay for three control planes under emulation.
pub fn test_cluster_text_without_kubernetes() -> String {
    format!(
        "{}\n[kubernetes]\nenabled = false\n",
        test_cluster_text(3, 3)
    )
}

/// The cached Debian 12 test image carrying `cluster_text`, built if
/// missing (an incremental build on top of the cached base when another
/// variant was built before).
pub fn debian_image_for(cluster_text: &str) -> Result<BuiltImage> {
    image_for(&workspace().join("configs/debian-12.toml"), cluster_text)
}

/// Added to the Kubernetes test image's kernel command line. Its control
/// plane node has two vCPUs under tcg, where the guest kernel's TSC sync
/// check fails (`TSCs unsynchronized`) and it falls back to the HPET: every
/// clock read of the Go binaries (etcd, the kube components, containerd)
/// is then a system call and an emulated device read under QEMU's global
/// lock, instead of a vDSO read of the TSC. tcg derives every vCPU's TSC
/// from the one host clock, so they are in step. Not for real machines,
/// where the check guards against TSCs that really drift: the site's
/// profile decides its command line.
pub const TEST_KERNEL_ARGS: &str = " tsc=reliable";

/// The Kubernetes scenario's image: the Debian 12 profile plus the test
/// workload's OCI archive in `[images] archives` (seeded into containerd
/// at first boot like any user archive), and `cluster_text`. Its kernel
/// command line adds [`TEST_KERNEL_ARGS`].
/// The derived profile is written next to the checkout's `target/` (one
/// level below the workspace, like `configs/`, so the profile's relative
/// paths still resolve).
pub fn kube_test_image(cluster_text: &str) -> Result<BuiltImage> {
    let archive = crate::kube::workload_archive(&test_cache().join("workload"))?;
    let ws = workspace();
    let base = ws.join("configs/debian-12.toml");
    let text = fs::read_to_string(&base).with_context(|| format!("reading {}", base.display()))?;
    let cmdline = text
        .lines()
        .find(|l| l.starts_with("cmdline = \""))
        .with_context(|| format!("{} has no kernel cmdline line", base.display()))?;
    let text = text.replace(
        cmdline,
        &format!("{}{TEST_KERNEL_ARGS}\"", cmdline.trim_end_matches('"')),
    );
    let dir = ws.join("target");
    fs::create_dir_all(&dir)?;
    let profile = dir.join("debian-12-kube-test.toml");
    fs::write(
        &profile,
        format!(
            "{text}\n# added by qemu-tests: the Kubernetes scenario's workload\n[images]\narchives = [{:?}]\n",
            archive.display().to_string()
        ),
    )?;
    image_for(&profile, cluster_text)
}

/// Writes `text` to `path` unless it already holds it, atomically (a
/// temporary file renamed over it): tests on other threads read the cached
/// image's cluster file while another asks for the same image (a plain
/// write truncated it under a reader: the PXE test's install thread once read
/// it empty).
fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    let dir = path.parent().context("a file in a directory")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn image_for(profile: &Path, cluster_text: &str) -> Result<BuiltImage> {
    let key = input_key(profile, cluster_text)?;
    let dir = test_cache().join("images").join(format!("debian-12-{key}"));
    let cluster = test_cache()
        .join("images")
        .join(format!("cluster-{key}.toml"));
    fs::create_dir_all(dir.parent().expect("has parent"))?;
    write_if_changed(&cluster, cluster_text)?;
    let manifest = dir.join("manifest.json");
    let build_time = if manifest.is_file() {
        eprintln!("reusing test image {}", dir.display());
        Duration::ZERO
    } else {
        let removed = prune_images(dir.parent().expect("has parent"), &key, images_to_keep())?;
        if !removed.is_empty() {
            eprintln!("test image cache: removed the least recently used {removed:?}");
        }
        let _ = fs::remove_dir_all(&dir);
        build_profile_into(profile, &dir, &cluster, &[])?
    };
    mark_used(&dir)?;
    Ok(BuiltImage {
        raw: dir.join("debian-12.raw"),
        qcow2: dir.join("debian-12.qcow2"),
        manifest,
        cluster,
        dir,
        build_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn image(images: &Path, key: &str, finished: bool, used_secs_ago: u64) {
        let dir = images.join(format!("debian-12-{key}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(images.join(format!("cluster-{key}.toml")), "").unwrap();
        if finished {
            fs::write(dir.join("manifest.json"), "{}").unwrap();
            mark_used(&dir).unwrap();
            let t = SystemTime::now() - Duration::from_secs(used_secs_ago);
            fs::File::options()
                .write(true)
                .open(dir.join(LAST_USED))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }

    fn keys(images: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(images)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn cache_keeps_the_most_recently_used_images() {
        let t = tempfile::tempdir().unwrap();
        let images = t.path();
        image(images, "old", true, 300);
        image(images, "mid", true, 200);
        image(images, "new", true, 100);
        image(images, "broken", false, 0);
        fs::write(images.join("unrelated.txt"), "").unwrap();
        // building "cur" with room for 3: "new" and "mid" stay, "old" and the
        // unfinished "broken" go (with their cluster files)
        let mut removed = prune_images(images, "cur", 3).unwrap();
        removed.sort();
        assert_eq!(removed, ["broken", "old"]);
        assert_eq!(
            keys(images),
            [
                "cluster-mid.toml",
                "cluster-new.toml",
                "debian-12-mid",
                "debian-12-new",
                "unrelated.txt"
            ]
        );
        // reusing "mid" makes it the most recent: room for 2 evicts "new"
        mark_used(&images.join("debian-12-mid")).unwrap();
        assert_eq!(prune_images(images, "cur", 2).unwrap(), ["new"]);
        // the current key is never removed, even half built
        image(images, "cur", false, 0);
        assert_eq!(prune_images(images, "cur", 1).unwrap(), ["mid"]);
        assert!(images.join("debian-12-cur").is_dir());
    }
}
