//! The `habuild` binary on bad input: one clear error naming the file, line and
//! key (or the package / URL / path), a meaningful exit code, and nothing left
//! at the output path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ws() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn habuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_habuild"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run habuild")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_variant(dir: &Path, name: &str, from: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = fs::read_to_string(ws().join("configs").join(from)).unwrap();
    let p = dir.join(name);
    fs::write(&p, edit(text)).unwrap();
    p
}

fn assert_nothing_at(out: &Path) {
    let left: Vec<_> = fs::read_dir(out)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left at the output path: {left:?}");
}

/// Build with a fake agent so the tests do not depend on a release build.
fn image(
    profile: &Path,
    cluster: Option<&Path>,
    out: &Path,
    cache: &Path,
    extra: &[&str],
) -> Output {
    let agent = cache.join("fake-agent");
    fs::create_dir_all(cache).unwrap();
    fs::write(&agent, "#!/bin/sh\n").unwrap();
    let mut args = vec![
        "image".to_string(),
        "--profile".into(),
        profile.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--cache".into(),
        cache.display().to_string(),
        "--agent".into(),
        agent.display().to_string(),
        "--images".into(),
        ws().join("images").display().to_string(),
    ];
    if let Some(c) = cluster {
        args.push("--cluster".into());
        args.push(c.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    habuild(&refs)
}

#[test]
fn profile_typo_unknown_key_and_wrong_type_are_located() {
    let t = tempfile::tempdir().unwrap();
    let typo = write_variant(t.path(), "typo.toml", "debian-12.toml", |s| {
        s.replacen("[partitions]", "[partitons]", 1)
    });
    let o = habuild(&["profile", "check", typo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    let line = fs::read_to_string(&typo)
        .unwrap()
        .lines()
        .position(|l| l == "[partitons]")
        .unwrap()
        + 1;
    assert!(e.contains(&format!("typo.toml:{line}:")), "{e}");
    assert!(e.contains("unknown field `partitons`"), "{e}");

    let wrong = write_variant(t.path(), "wrong.toml", "debian-12.toml", |s| {
        s.replace("esp_mib = 256", "esp_mib = \"big\"")
    });
    let o = habuild(&["profile", "check", wrong.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("key `partitions.esp_mib`") && e.contains("invalid type"),
        "{e}"
    );

    let cluster = write_variant(t.path(), "c.toml", "cluster.example.toml", |s| {
        s.replace("control_plane_size = 3", "control_plane_size = 2")
    });
    let o = habuild(&["profile", "check", cluster.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("key `cluster.control_plane_size`: expected 1, 3 or 5, got 2"),
        "{e}"
    );

    let o = habuild(&[
        "profile",
        "check",
        ws().join("configs/debian-12.toml").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_cluster_file_fails_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let cluster = write_variant(t.path(), "c.toml", "cluster.example.toml", |s| {
        s.replace("bootstrap_expect = 3", "bootstrap_expect = three")
    });
    let out = t.path().join("out");
    let o = image(
        &ws().join("configs/debian-12.toml"),
        Some(&cluster),
        &out,
        &t.path().join("cache"),
        &[],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("c.toml:") && e.contains("bootstrap_expect"),
        "{e}"
    );
    assert_nothing_at(&out);
}

#[test]
fn unwritable_output_directory_is_named() {
    let t = tempfile::tempdir().unwrap();
    let o = image(
        &ws().join("configs/debian-12.toml"),
        None,
        Path::new("/proc/habuild-out"),
        &t.path().join("cache"),
        &[],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("output directory /proc/habuild-out is not writable"),
        "{e}"
    );
}

#[test]
fn unknown_mirror_id_lists_the_ids() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let o = image(
        &ws().join("configs/debian-12.toml"),
        None,
        &out,
        &t.path().join("cache"),
        &["--mirror", "nosuch=file:///x"],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("no repo with id \"nosuch\"") && e.contains("debian, debian-security"),
        "{e}"
    );
}

/// Real mmdebstrap against a mirror on loopback where nothing listens.
#[test]
fn unreachable_mirror_is_named_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let o = image(
        &ws().join("configs/debian-12.toml"),
        None,
        &out,
        &t.path().join("cache"),
        &[
            "--mirror",
            "debian=http://127.0.0.1:9/debian",
            "--mirror",
            "debian-security=http://127.0.0.1:9/debian-security",
        ],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("repository http://127.0.0.1:9/debian") && e.contains("unreachable"),
        "{e}"
    );
    assert_nothing_at(&out);
}

/// Real mmdebstrap against the profile's real mirror: a package name that does not exist.
#[test]
fn missing_package_is_named_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let p = write_variant(t.path(), "p.toml", "debian-12.toml", |s| {
        s.replace(
            "vip = [\"keepalived\", \"haproxy\"]",
            "vip = [\"keepalived\", \"haproxy-nosuchpackage\"]",
        )
    });
    let out = t.path().join("out");
    let o = image(&p, None, &out, &t.path().join("cache"), &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("package(s) not found") && e.contains("haproxy-nosuchpackage"),
        "{e}"
    );
    assert_nothing_at(&out);
}
