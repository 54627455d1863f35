//! The Debian 12 image built by the real `habuild image`: bit-identical when
//! rebuilt with the same package cache and SOURCE_DATE_EPOCH, cold (base tree
//! installed anew) or incremental (base tree from the cache), and well formed
//! by the independent tools (`sgdisk -v`, `fsck.vfat -n`, `mdir`,
//! `dump.erofs`/`fsck.erofs`).
//!
//! The rebuild is made by habuild installed the README's way (`cargo
//! install`, `$HABUILD_INSTALLED`, set by scripts/test) from a directory
//! outside the checkout, with the overlays embedded in the binary: equal
//! bytes prove the installed habuild builds the same image as the checkout.
//! It bakes the workspace's agent (`--agent`). The agent that `cargo
//! install --path firstboot` compiles alone was not always the workspace's
//! byte for byte (cargo resolves dependency features per build); since
//! `firstboot/Cargo.toml` turns on what the other builds add, they are
//! equal. The cheap test below prints whether they are, and proves that
//! the installed habuild finds the installed agent by itself.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use qemu_harness::image::{
    build_installed_into, build_into, debian_image, installed_bin, release_bin, test_cluster_text,
    BuiltImage,
};
use qemu_harness::{tools, Workdir};
use serde_json::Value;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    Ok(text)
}

fn manifest(dir: &Path) -> Result<Value> {
    Ok(serde_json::from_slice(&fs::read(
        dir.join("manifest.json"),
    )?)?)
}

fn partitions(raw: &Path) -> Result<Vec<(u64, u64, String)>> {
    // sgdisk -p: "   1            2048          526335   256.0 MiB   EF00  ESP"
    let text = run(Command::new(tools::require("sgdisk")?).arg("-p").arg(raw))?;
    let mut v = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 7 && f[0].parse::<u32>().is_ok() {
            v.push((f[1].parse()?, f[2].parse()?, f[6].to_string()));
        }
    }
    Ok(v)
}

fn extract(raw: &Path, first: u64, last: u64, to: &Path) -> Result<()> {
    run(Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", to.display()))
        .arg("bs=512")
        .arg(format!("skip={first}"))
        .arg(format!("count={}", last - first + 1))
        .arg("conv=sparse")
        .arg("status=none"))?;
    Ok(())
}

fn check_image(img: &BuiltImage, work: &Workdir) -> Result<()> {
    let v = run(Command::new(tools::require("sgdisk")?)
        .arg("-v")
        .arg(&img.raw))?;
    ensure!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    let parts = partitions(&img.raw)?;
    let names: Vec<&str> = parts.iter().map(|p| p.2.as_str()).collect();
    ensure!(
        names == ["ESP", "root-a", "root-b", "data"],
        "partitions {names:?}"
    );

    let esp = work.join("esp.img");
    extract(&img.raw, parts[0].0, parts[0].1, &esp)?;
    let fsck = run(Command::new(tools::require("fsck.vfat")?)
        .arg("-n")
        .arg(&esp))?;
    ensure!(
        !fsck.contains("Expected") && !fsck.contains("share clusters"),
        "fsck.vfat -n:\n{fsck}"
    );
    let listing = run(Command::new(tools::require("mdir")?)
        .args(["-/", "-b", "-i"])
        .arg(&esp)
        .arg("::"))?;
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/loader/loader.conf",
        "::/loader/entries/habuild-a.conf",
        "::/habuild/a/vmlinuz",
        "::/habuild/a/initrd.img",
        "::/habuild/cluster.toml",
    ] {
        ensure!(
            listing.lines().any(|l| l.trim() == f),
            "{f} missing from the ESP:\n{listing}"
        );
    }
    let entry = run(Command::new(tools::require("mtype")?)
        .arg("-i")
        .arg(&esp)
        .arg("::/loader/entries/habuild-a.conf"))?;
    ensure!(
        entry.contains("rootfstype=erofs") && entry.contains("console=ttyS0,115200"),
        "{entry}"
    );
    let cluster = run(Command::new(tools::require("mtype")?)
        .arg("-i")
        .arg(&esp)
        .arg("::/habuild/cluster.toml"))?;
    ensure!(
        cluster == fs::read_to_string(&img.cluster)?,
        "ESP cluster.toml differs from the input"
    );

    let root = work.join("root-a.img");
    extract(&img.raw, parts[1].0, parts[1].1, &root)?;
    // checks every file (decompressing it) and extracts the tree (~1.5 GB, ~5 s)
    let tree = work.join("root-a");
    run(Command::new(tools::require("fsck.erofs")?)
        .arg(format!("--extract={}", tree.display()))
        .arg(&root))?;
    check_kube(&tree)?;
    fs::remove_dir_all(&tree)?;
    let dump = tools::require("dump.erofs")?;
    for path in [
        "/usr/lib/habuild/habuild-agent",
        "/usr/lib/systemd/system/habuild-agent.service",
        "/usr/lib/systemd/system/habuild-gluster-loop.service",
        "/etc/systemd/system/multi-user.target.wants/habuild-agent.service",
        "/etc/modules-load.d/habuild.conf",
        "/etc/sysctl.d/90-habuild.conf",
        "/etc/containerd/config.toml",
        "/usr/bin/containerd",
        "/usr/bin/etcd",
        "/usr/sbin/keepalived",
        "/usr/sbin/haproxy",
        "/usr/sbin/glusterd",
        "/usr/sbin/thin_check",
    ] {
        ensure!(
            !erofs_stat(&dump, &root, path)?.is_empty(),
            "{path} is not in the root image"
        );
    }
    let mid = erofs_stat(&dump, &root, "/etc/machine-id")?;
    ensure!(
        mid.contains("Size: 0 "),
        "/etc/machine-id is not empty:\n{mid}"
    );
    for key in [
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_rsa_key",
        "/var/lib/dbus/machine-id",
    ] {
        ensure!(
            erofs_stat(&dump, &root, key)?.is_empty(),
            "{key} is baked into the image"
        );
    }
    ensure!(
        erofs_stat(&dump, &root, "/nonexistent/habuild-probe")?.is_empty(),
        "dump.erofs reports files that do not exist; the checks above prove nothing"
    );
    let m = manifest(&img.dir)?;
    let pkgs = m["packages"].as_array().context("packages")?;
    ensure!(
        pkgs.iter().any(|p| p["name"] == "etcd-server"),
        "manifest lacks etcd-server"
    );
    for a in m["artifacts"].as_array().context("artifacts")? {
        ensure!(a["sha256"].as_str().map(str::len) == Some(64), "{a}");
    }
    eprintln!(
        "image: raw {} MiB (sparse on disk: {} MiB), qcow2 {} MiB, {} packages",
        fs::metadata(&img.raw)?.len() >> 20,
        du_mib(&img.raw)?,
        fs::metadata(&img.qcow2)?.len() >> 20,
        pkgs.len()
    );
    Ok(())
}

/// The default profile bakes Kubernetes (`kube.source = "build"`): the seven
/// binaries, and the pause image listed under the reference containerd's
/// `sandbox_image` and the kubelet ask for. (Its bytes are covered by the
/// raw images' sha256 comparison of the reproducibility test.)
fn check_kube(tree: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for b in [
        "kubelet",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "kubectl",
        "kubeadm",
    ] {
        let p = tree.join("usr/bin").join(b);
        let m =
            fs::metadata(&p).with_context(|| format!("/usr/bin/{b} is not in the root image"))?;
        ensure!(
            m.is_file() && m.permissions().mode() & 0o111 != 0 && m.len() > 1 << 20,
            "/usr/bin/{b} is not an executable binary ({m:?})"
        );
    }
    for unit in [
        "usr/lib/systemd/system/kubelet.service",
        "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf",
    ] {
        ensure!(
            tree.join(unit).is_file(),
            "/{unit} is not in the root image"
        );
    }
    let images = tree.join("usr/share/habuild/images");
    let list = fs::read_to_string(images.join("images.list"))
        .context("usr/share/habuild/images/images.list")?;
    ensure!(
        list.lines()
            .any(|l| l == "pause.tar registry.k8s.io/pause:3.2"),
        "images.list does not list the pause image:\n{list}"
    );
    let pause = fs::read(images.join("pause.tar")).context("usr/share/habuild/images/pause.tar")?;
    let named = br#""io.containerd.image.name":"registry.k8s.io/pause:3.2""#;
    ensure!(
        pause.windows(named.len()).any(|w| w == named),
        "pause.tar's index.json does not name registry.k8s.io/pause:3.2"
    );
    let containerd = fs::read_to_string(tree.join("etc/containerd/config.toml"))?;
    ensure!(
        containerd.contains("sandbox_image = \"registry.k8s.io/pause:3.2\""),
        "containerd's sandbox_image is not the seeded pause image:\n{containerd}"
    );
    eprintln!(
        "kube: 7 binaries, pause.tar sha256 {} ({} bytes)",
        sha256(&images.join("pause.tar"))?,
        pause.len()
    );
    Ok(())
}

/// dump.erofs's description of `path` in `image`, or "" when it is not there
/// (dump.erofs exits 0 either way; only its "File : <path>" header tells).
fn erofs_stat(dump: &Path, image: &Path, path: &str) -> Result<String> {
    let out = Command::new(dump)
        .arg(format!("--path={path}"))
        .arg(image)
        .output()
        .with_context(|| format!("running {}", dump.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(if text.contains(&format!("File : {path}")) {
        text
    } else {
        String::new()
    })
}

fn du_mib(p: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok((fs::metadata(p)?.blocks() * 512) >> 20)
}

fn sha(m: &Value) -> String {
    m["artifacts"][0]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// sha256 of the raw disk and of every PXE artifact (`pxe/…`), by file.
fn image_shas(m: &Value) -> std::collections::BTreeMap<String, String> {
    m["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["file"].as_str()?.to_string(),
                a["sha256"].as_str()?.to_string(),
            ))
        })
        .filter(|(f, _)| f.ends_with(".raw") || f.starts_with("pxe/"))
        .collect()
}

/// The base tree a build used: (key, reused from the cache).
/// Whether the build copied its root image from the root-image cache.
fn root_image_reused(m: &Value) -> Result<bool> {
    m["root_image"]["reused"]
        .as_bool()
        .with_context(|| format!("manifest root_image.reused: {}", m["root_image"]))
}

fn base(m: &Value) -> Result<(String, bool)> {
    let b = &m["base"];
    Ok((
        b["key"].as_str().context("manifest base.key")?.to_string(),
        b["reused"].as_bool().context("manifest base.reused")?,
    ))
}

/// Bit-identical images three ways: two cold builds (base tree installed
/// anew, root image made anew: `--cold`), a cold and an incremental build
/// (base tree from the cache), and a cold build and a rebuild with no change
/// (base tree and root image from the cache); after changing one overlay
/// file an incremental rebuild reuses the base (same key) but makes its
/// root image anew, and its image differs. The test image is one side of
/// a comparison (incremental on a fresh machine: an earlier image test
/// stored the base).
#[test]
fn debian_image_is_reproducible_and_well_formed() -> Result<()> {
    let mut a = debian_image()?;
    let work = Workdir::new("image")?;
    check_image(&a, &work)?;
    let agent = release_bin("habuild-agent")?;
    let cold = ["--cold".to_string()];

    // the installed habuild, run from outside the checkout, embedded overlays
    let b_dir = work.join("rebuild-cold");
    let b_time = build_installed_into(&work.join("user"), &b_dir, &a.cluster, Some(&agent), &cold)?;
    let mb = manifest(&b_dir)?;
    if manifest(&a.dir)?["packages"] != mb["packages"] {
        // The mirror published updates since the cached image was built:
        // rebuild it so both builds see the same packages.
        eprintln!("package versions moved since the cached image was built; rebuilding it");
        fs::remove_dir_all(&a.dir)?;
        a = debian_image()?;
    }
    let ma = manifest(&a.dir)?;
    ensure!(!base(&mb)?.1, "--cold reused a cached base tree");
    let same = |what: &str, x: &Value| -> Result<()> {
        ensure!(
            sha(x) == sha(&mb),
            "{what} differ: {} vs {}",
            sha(x),
            sha(&mb)
        );
        ensure!(
            image_shas(x) == image_shas(&mb),
            "{what}' PXE artifacts differ: {:?} vs {:?}",
            image_shas(x),
            image_shas(&mb)
        );
        Ok(())
    };
    ensure!(
        image_shas(&mb).keys().any(|f| f == "pxe/root.img"),
        "manifest lists no PXE artifacts: {:?}",
        image_shas(&mb)
    );
    // The test image (built by an earlier test or here, cold or on a cached
    // base tree) against the cold build: whichever it was, one more build
    // makes the other comparison. (A suite on a fresh machine gets an
    // incremental one: the first image test stored the base.)
    let (c_kind, c_time) = if base(&ma)?.1 {
        ensure!(
            base(&ma)?.0 == base(&mb)?.0,
            "the incremental build's base tree {} is not the cold build's {}",
            ma["base"],
            mb["base"]
        );
        same("incremental and cold builds", &ma)?;
        let c_dir = work.join("cold-checkout");
        let t = build_into(&c_dir, &a.cluster, &cold)?;
        let mc = manifest(&c_dir)?;
        ensure!(!base(&mc)?.1, "--cold reused a cached base tree");
        same("two cold builds with the same inputs", &mc)?;
        // and the installed habuild's rebuild with no change: its root
        // image from the cache its cold build stored
        let e_dir = work.join("rebuild-no-change");
        let te = build_installed_into(&work.join("user"), &e_dir, &a.cluster, Some(&agent), &[])?;
        let me = manifest(&e_dir)?;
        ensure!(
            base(&me)? == (base(&mb)?.0, true) && root_image_reused(&me)?,
            "the rebuild with no change did not reuse the base and the root image: {} {}",
            me["base"],
            me["root_image"]
        );
        same("a cold build and a rebuild with no change", &me)?;
        eprintln!(
            "rebuild with no change (base tree and root image from the cache): {:.0}s",
            te.as_secs_f64()
        );
        ("second cold", t)
    } else {
        same("two cold builds with the same inputs", &ma)?;
        let c_dir = work.join("rebuild-incremental");
        let t = build_installed_into(&work.join("user"), &c_dir, &a.cluster, Some(&agent), &[])?;
        let mc = manifest(&c_dir)?;
        ensure!(
            base(&mc)? == (base(&mb)?.0, true) && root_image_reused(&mc)?,
            "the rebuild with no change did not reuse the base and the root image: {} {}",
            mc["base"],
            mc["root_image"]
        );
        same("a cold build and a rebuild with no change", &mc)?;
        ("no-change", t)
    };
    ensure!(
        mb["source_date_epoch_from"] == "--source-date-epoch",
        "{}",
        mb["source_date_epoch_from"]
    );

    // one overlay file changed: same base, another image
    let images = work.join("images");
    copy_dir(&qemu_harness::image::workspace().join("images"), &images)?;
    let changed = images.join("common/etc/sysctl.d/90-habuild.conf");
    let text = fs::read_to_string(&changed)?;
    fs::write(&changed, text + "# changed by the incremental test\n")?;
    let d_dir = work.join("rebuild-overlay");
    let d_time = build_installed_into(
        &work.join("user"),
        &d_dir,
        &a.cluster,
        Some(&agent),
        &["--images".to_string(), images.display().to_string()],
    )?;
    let md = manifest(&d_dir)?;
    ensure!(
        base(&md)? == (base(&mb)?.0, true),
        "an overlay change invalidated the base: {}",
        md["base"]
    );
    ensure!(
        !root_image_reused(&md)?,
        "an overlay change was served a cached root image: {}",
        md["root_image"]
    );
    ensure!(
        sha(&md) != sha(&mb),
        "an overlay change did not change the image"
    );
    eprintln!(
        "reproducible: raw sha256 {} (cold {:.0}s, {c_kind} {:.0}s, incremental after an overlay change {:.0}s)",
        sha(&mb),
        b_time.as_secs_f64(),
        c_time.as_secs_f64(),
        d_time.as_secs_f64()
    );
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp").arg("-a").arg(from).arg(to))?;
    Ok(())
}

fn sha256(p: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    Ok(hex::encode(Sha256::digest(fs::read(p)?)))
}

/// habuild installed the README's way, run from a directory outside the
/// checkout: checks profiles, finds the installed agent beside itself, and
/// names the install command when the agent is missing. (Its image build is
/// the rebuild of the test above.)
#[test]
fn installed_habuild_works_outside_the_checkout() -> Result<()> {
    let habuild = installed_bin("habuild")?;
    let agent = installed_bin("habuild-agent")?;
    let work = Workdir::new("installed")?;
    let ws = qemu_harness::image::workspace();
    ensure!(
        !work.path().starts_with(&ws),
        "{} is inside the checkout",
        work.path().display()
    );
    fs::copy(
        ws.join("configs/debian-12.toml"),
        work.join("debian-12.toml"),
    )?;
    fs::write(work.join("cluster.toml"), test_cluster_text(3, 3))?;
    let cmd = |exe: &Path| {
        let mut c = Command::new(exe);
        c.current_dir(work.path())
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env_remove("HABUILD_IMAGES")
            .env_remove("HABUILD_AGENT")
            .env("RUST_LOG", "info");
        c
    };

    let v = run(cmd(&habuild).arg("--version"))?;
    ensure!(v.starts_with("habuild "), "{v}");
    let checked = run(cmd(&habuild).args(["profile", "check", "debian-12.toml", "cluster.toml"]))?;
    ensure!(
        checked.contains("debian-12.toml: ok (profile)")
            && checked.contains("cluster.toml: ok (cluster file)"),
        "{checked}"
    );

    // An output path that is a file stops the build right after habuild
    // chose its inputs (nothing is built): the installed agent, embedded overlays.
    fs::write(work.join("not-a-dir"), "")?;
    let image_args = [
        "image",
        "--profile",
        "debian-12.toml",
        "--out",
        "not-a-dir",
        "--cache",
        "cache",
    ];
    let o = cmd(&habuild).args(image_args).output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.code() == Some(2), "{:?}: {e}", o.status);
    ensure!(
        e.contains(&format!(
            "overlays: embedded in habuild; agent: {}",
            agent.display()
        )),
        "the installed habuild did not pick the installed agent:\n{e}"
    );
    ensure!(e.contains("not-a-dir") && e.contains("not writable"), "{e}");

    // habuild copied alone, with no agent beside it or on PATH: the error says what to run.
    let lonely = work.join("lonely");
    fs::create_dir_all(&lonely)?;
    fs::copy(&habuild, lonely.join("habuild"))?;
    let o = cmd(&lonely.join("habuild")).args(image_args).output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.code() == Some(2), "{:?}: {e}", o.status);
    ensure!(
        e.contains("habuild-agent not found next to habuild")
            && e.contains("cargo install --locked --path firstboot"),
        "{e}"
    );

    // measured, not asserted: is the agent `cargo install` built the workspace's?
    let (installed, workspace) = (sha256(&agent)?, sha256(&release_bin("habuild-agent")?)?);
    eprintln!(
        "installed habuild-agent {} the workspace build ({installed} vs {workspace})",
        if installed == workspace {
            "equals"
        } else {
            "differs from"
        }
    );
    Ok(())
}
