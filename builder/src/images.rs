//! Container images baked into the image for nodes with no registry:
//! `usr/share/habuild/images/*.tar` plus `images.list` (`<file> <reference>`
//! per line, sorted), which the agent's `kubelet` step imports into
//! containerd's `k8s.io` namespace at first boot.
//!
//! - `pause.tar`: built here with [`crate::oci::write_archive`] from the
//!   static pause binary ([`crate::kube::Staged::pause`]) under
//!   [`firstboot::kube::PAUSE_IMAGE`], the name containerd's `sandbox_image`
//!   and the kubelet's `--pod-infra-container-image` ask for. Deterministic:
//!   same binary, same bytes.
//! - the profile's `[images] archives` (paths relative to the profile file),
//!   copied under their file names; each archive's references are read from
//!   its OCI `index.json` (`io.containerd.image.name`, or a full
//!   `org.opencontainers.image.ref.name`) or else its `docker save`
//!   `manifest.json` (`RepoTags`, normalized as containerd does:
//!   `busybox:1` → `docker.io/library/busybox:1`).

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

use crate::error::{BuildError, IoContext, Result};
use crate::oci::{self, ImageFile, ImageSpec};
use crate::profile::LoadedProfile;

/// Where the archives and `images.list` go, relative to the root.
pub const DIR: &str = "usr/share/habuild/images";
/// The pause image's file name in [`DIR`].
pub const PAUSE_FILE: &str = "pause.tar";

/// One line of `images.list`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seed {
    pub file: String,
    pub reference: String,
}

/// Writes the pause archive (when `pause` is given) and the profile's
/// archives into `staging/DIR`, and `images.list` when there is any.
/// Returns the list's lines.
pub fn stage(profile: &LoadedProfile, pause: Option<&Path>, staging: &Path) -> Result<Vec<Seed>> {
    let dir = staging.join(DIR);
    let mut seeds = BTreeSet::new();
    let mut files = BTreeSet::new();
    if let Some(pause) = pause {
        let contents = fs::read(pause).at(pause)?;
        fs::create_dir_all(&dir).at(&dir)?;
        let spec = ImageSpec {
            reference: firstboot::kube::PAUSE_IMAGE.to_string(),
            files: vec![ImageFile {
                path: "pause".into(),
                mode: 0o755,
                contents,
            }],
            entrypoint: vec!["/pause".into()],
            arch: profile.profile.distro.arch.clone(),
        };
        let mut buf = Vec::new();
        let written = oci::write_archive(&spec, &mut buf)?;
        let out = dir.join(PAUSE_FILE);
        fs::write(&out, &buf).at(&out)?;
        tracing::info!(
            "images: {PAUSE_FILE} = {} ({})",
            spec.reference,
            written.manifest_digest
        );
        files.insert(PAUSE_FILE.to_string());
        seeds.insert(Seed {
            file: PAUSE_FILE.into(),
            reference: spec.reference,
        });
    }
    for (i, rel) in profile.profile.images.archives.iter().enumerate() {
        let key = format!("images.archives.{i}");
        let err = |msg: String| -> BuildError { profile.source.error_at(&key, msg).into() };
        let path = profile.resolve(rel);
        if !path.is_file() {
            return Err(err(format!(
                "{} does not exist (paths are relative to the profile file)",
                path.display()
            )));
        }
        let refs = archive_references(&path).map_err(|e| err(format!("{e}")))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.ends_with(".tar") || name.contains(char::is_whitespace) {
            return Err(err(format!(
                "{}: expected a file name ending in .tar, without spaces",
                path.display()
            )));
        }
        if !files.insert(name.clone()) {
            return Err(err(format!(
                "{}: another archive (or the pause image) already has the file name {name}",
                path.display()
            )));
        }
        fs::create_dir_all(&dir).at(&dir)?;
        fs::copy(&path, dir.join(&name)).at(&path)?;
        for reference in refs {
            tracing::info!("images: {name} = {reference}");
            seeds.insert(Seed {
                file: name.clone(),
                reference,
            });
        }
    }
    let seeds: Vec<Seed> = seeds.into_iter().collect();
    if !seeds.is_empty() {
        let list = dir.join("images.list");
        fs::write(&list, render_list(&seeds)).at(&list)?;
    }
    Ok(seeds)
}

/// `images.list`: `<file> <reference>` per line, in the given (sorted) order.
pub fn render_list(seeds: &[Seed]) -> String {
    seeds
        .iter()
        .map(|s| format!("{} {}\n", s.file, s.reference))
        .collect()
}

/// The full references an image archive names (see the module docs), sorted.
pub fn archive_references(path: &Path) -> Result<Vec<String>> {
    let mut f = fs::File::open(path).at(path)?;
    let mut index = None;
    let mut manifest = None;
    for_each_entry(&mut f, path, |name, read| {
        match name.trim_start_matches("./") {
            "index.json" => index = Some(read()?),
            "manifest.json" => manifest = Some(read()?),
            _ => {}
        }
        Ok(())
    })?;
    let mut refs = BTreeSet::new();
    let json = |b: &[u8], what: &str| -> Result<Value> {
        serde_json::from_slice(b).map_err(|e| {
            BuildError::Invalid(format!("{}: {what} is not JSON: {e}", path.display()))
        })
    };
    if let Some(b) = &index {
        let v = json(b, "index.json")?;
        for m in v["manifests"].as_array().into_iter().flatten() {
            let a = &m["annotations"];
            if let Some(n) = a["io.containerd.image.name"].as_str() {
                refs.insert(n.to_string());
            } else if let Some(n) = a["org.opencontainers.image.ref.name"].as_str() {
                // often only a tag ("3.2"): a name only when it is a full reference
                if oci::check_reference(n).is_ok() {
                    refs.insert(n.to_string());
                }
            }
        }
    }
    if refs.is_empty() {
        if let Some(b) = &manifest {
            let v = json(b, "manifest.json")?;
            for m in v.as_array().into_iter().flatten() {
                for t in m["RepoTags"].as_array().into_iter().flatten() {
                    if let Some(t) = t.as_str() {
                        refs.insert(normalize(t));
                    }
                }
            }
        }
    }
    if refs.is_empty() {
        return Err(BuildError::Invalid(format!(
            "{}: the archive names no image (no io.containerd.image.name or full \
             org.opencontainers.image.ref.name annotation in index.json, no RepoTags in \
             manifest.json); tag it when saving it (e.g. `docker save repo:tag`)",
            path.display()
        )));
    }
    for r in &refs {
        oci::check_reference(r)
            .map_err(|e| BuildError::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(refs.into_iter().collect())
}

/// Docker's short names as containerd stores them.
fn normalize(r: &str) -> String {
    let first = r.split('/').next().unwrap_or("");
    let has_host =
        r.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let r = if has_host {
        r.to_string()
    } else if r.contains('/') {
        format!("docker.io/{r}")
    } else {
        format!("docker.io/library/{r}")
    };
    let last = r.rsplit('/').next().unwrap_or("");
    if last.contains(':') {
        r
    } else {
        format!("{r}:latest")
    }
}

type ReadEntry<'a> = dyn FnMut() -> Result<Vec<u8>> + 'a;

/// Calls `f(name, read)` for every regular file of a ustar/GNU/pax tar,
/// seeking past contents that `read` is not called for (archives can be
/// hundreds of MB).
fn for_each_entry<R: Read + Seek>(
    r: &mut R,
    path: &Path,
    mut f: impl FnMut(&str, &mut ReadEntry<'_>) -> Result<()>,
) -> Result<()> {
    let bad =
        |why: &str| BuildError::Invalid(format!("{}: not a tar archive ({why})", path.display()));
    let mut long_name: Option<String> = None;
    loop {
        let mut h = [0u8; 512];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e).at(path),
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u32
                }
            })
            .sum();
        if octal(&h[148..156]) != Some(sum as u64) {
            return Err(bad("bad header checksum"));
        }
        let size = octal(&h[124..136]).ok_or_else(|| bad("bad size field"))?;
        let padded = size.div_ceil(512) * 512;
        let kind = h[156];
        let cstr = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        if let Some(n) = long_name.take() {
            name = n;
        }
        let start = r.stream_position().at(path)?;
        match kind {
            b'L' => {
                let mut b = vec![0u8; size as usize];
                r.read_exact(&mut b).at(path)?;
                long_name = Some(cstr(&b));
            }
            b'0' | 0 => {
                let mut read = || -> Result<Vec<u8>> {
                    let mut b = vec![0u8; size as usize];
                    r.read_exact(&mut b).at(path)?;
                    Ok(b)
                };
                f(&name, &mut read)?;
            }
            _ => {}
        }
        r.seek(SeekFrom::Start(start + padded)).at(path)?;
    }
}

fn octal(b: &[u8]) -> Option<u64> {
    let s: String = b
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use firstboot::source::SourceFile;
    use std::path::PathBuf;

    fn profile_with(dir: &Path, extra: &str) -> LoadedProfile {
        let text = fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/debian-12.toml"),
        )
        .unwrap();
        let source = SourceFile::from_text(dir.join("p.toml"), format!("{text}\n{extra}"));
        let profile = source.parse().unwrap();
        LoadedProfile { profile, source }
    }

    fn image(reference: &str) -> Vec<u8> {
        let mut b = Vec::new();
        oci::write_archive(
            &ImageSpec {
                reference: reference.into(),
                files: vec![ImageFile {
                    path: "app".into(),
                    mode: 0o755,
                    contents: reference.as_bytes().to_vec(),
                }],
                entrypoint: vec!["/app".into()],
                arch: "amd64".into(),
            },
            &mut b,
        )
        .unwrap();
        b
    }

    /// A tar with the given (name, contents) entries, made by the system's tar.
    fn tar_of(dir: &Path, name: &str, entries: &[(&str, &str)]) -> PathBuf {
        let src = dir.join(format!("{name}.d"));
        fs::create_dir_all(&src).unwrap();
        for (n, c) in entries {
            fs::write(src.join(n), c).unwrap();
        }
        let out = dir.join(name);
        let st = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .args(entries.iter().map(|e| e.0))
            .status()
            .unwrap();
        assert!(st.success());
        out
    }

    #[test]
    fn references_are_read_from_oci_and_docker_archives() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a.tar");
        fs::write(&a, image("example.org/team/app:1.0")).unwrap();
        assert_eq!(
            archive_references(&a).unwrap(),
            vec!["example.org/team/app:1.0"]
        );
        // docker save: short names normalized as containerd does
        let d = tar_of(
            t.path(),
            "d.tar",
            &[(
                "manifest.json",
                r#"[{"Config":"c.json","RepoTags":["busybox:1.35","me/web","reg.local:5000/x:2"],"Layers":[]}]"#,
            )],
        );
        assert_eq!(
            archive_references(&d).unwrap(),
            vec![
                "docker.io/library/busybox:1.35",
                "docker.io/me/web:latest",
                "reg.local:5000/x:2"
            ]
        );
        // a tag-only ref.name is not a name; nothing else names it: an error
        let n = tar_of(
            t.path(),
            "n.tar",
            &[(
                "index.json",
                r#"{"schemaVersion":2,"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"3.2"}}]}"#,
            )],
        );
        let e = archive_references(&n).unwrap_err().to_string();
        assert!(e.contains("names no image") && e.contains("n.tar"), "{e}");
        let full = tar_of(
            t.path(),
            "f.tar",
            &[(
                "index.json",
                r#"{"schemaVersion":2,"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"quay.io/a/b:3"}}]}"#,
            )],
        );
        assert_eq!(archive_references(&full).unwrap(), vec!["quay.io/a/b:3"]);
        let junk = t.path().join("j.tar");
        fs::write(&junk, vec![7u8; 1024]).unwrap();
        assert!(archive_references(&junk)
            .unwrap_err()
            .to_string()
            .contains("not a tar"));
    }

    #[test]
    fn pause_and_profile_archives_are_staged_and_listed() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("apps")).unwrap();
        fs::write(t.path().join("apps/web.tar"), image("example.org/web:2")).unwrap();
        fs::write(t.path().join("apps/a-db.tar"), image("example.org/db:1")).unwrap();
        let pause = t.path().join("pause-bin");
        fs::write(&pause, b"\x7fELF static pause").unwrap();
        let p = profile_with(
            t.path(),
            "[images]\narchives = [\"apps/web.tar\", \"apps/a-db.tar\"]\n",
        );
        let s1 = t.path().join("s1");
        let seeds = stage(&p, Some(&pause), &s1).unwrap();
        let list = fs::read_to_string(s1.join(DIR).join("images.list")).unwrap();
        assert_eq!(
            list,
            "a-db.tar example.org/db:1\npause.tar registry.k8s.io/pause:3.2\nweb.tar example.org/web:2\n"
        );
        assert_eq!(render_list(&seeds), list);
        assert_eq!(
            fs::read(s1.join(DIR).join("web.tar")).unwrap(),
            fs::read(t.path().join("apps/web.tar")).unwrap()
        );
        let pause_tar = s1.join(DIR).join(PAUSE_FILE);
        assert_eq!(
            archive_references(&pause_tar).unwrap(),
            vec![firstboot::kube::PAUSE_IMAGE]
        );
        // deterministic
        let s2 = t.path().join("s2");
        stage(&p, Some(&pause), &s2).unwrap();
        assert_eq!(
            fs::read(&pause_tar).unwrap(),
            fs::read(s2.join(DIR).join(PAUSE_FILE)).unwrap()
        );
        // no pause, no archives: nothing at all
        let none = profile_with(t.path(), "");
        let s3 = t.path().join("s3");
        assert!(stage(&none, None, &s3).unwrap().is_empty());
        assert!(!s3.join(DIR).exists());
    }

    #[test]
    fn bad_archives_name_the_profile_key_and_file() {
        let t = tempfile::tempdir().unwrap();
        let p = profile_with(t.path(), "[images]\narchives = [\"missing.tar\"]\n");
        let e = stage(&p, None, &t.path().join("s"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.toml") && e.contains("images.archives") && e.contains("missing.tar"),
            "{e}"
        );
        tar_of(
            t.path(),
            "anon.tar",
            &[("manifest.json", r#"[{"RepoTags":[]}]"#)],
        );
        let p = profile_with(t.path(), "[images]\narchives = [\"anon.tar\"]\n");
        let e = stage(&p, None, &t.path().join("s"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("images.archives") && e.contains("anon.tar") && e.contains("names no image"),
            "{e}"
        );
        fs::write(t.path().join("pause.tar"), image("example.org/x:1")).unwrap();
        let p = profile_with(t.path(), "[images]\narchives = [\"pause.tar\"]\n");
        let pause = t.path().join("pb");
        fs::write(&pause, "p").unwrap();
        let e = stage(&p, Some(&pause), &t.path().join("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already has the file name pause.tar"), "{e}");
    }
}
