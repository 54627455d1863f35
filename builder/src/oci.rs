//! Container images as deterministic archives, for nodes with no registry.
//!
//! [`write_archive`] turns a few files (typically one static binary, such as
//! the pause container's) and an entrypoint into one tar archive that
//! `ctr -n k8s.io images import` loads under its full reference name
//! (`registry.k8s.io/pause:3.2`), the name the kubelet and containerd's
//! `sandbox_image` ask for. The archive is both an OCI image layout
//! (`oci-layout`, `index.json` with the name in the
//! `io.containerd.image.name` annotation, `blobs/sha256/…`) and a
//! `docker save` archive (`manifest.json` with `RepoTags`), as Docker 25
//! writes them, so either reader finds the name.
//!
//! One uncompressed layer; the image config has no creation time. Every
//! tar entry (the layer's and the archive's) is written in name order with
//! mtime 0, uid/gid 0 and no user names, so the same inputs give the same
//! bytes, and the same digests.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{BuildError, Result};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One file of the image's single layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Path inside the image, relative ("pause", "bin/httpd").
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

/// What an image is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The full reference: registry host, repository and tag
    /// (`registry.k8s.io/pause:3.2`).
    pub reference: String,
    pub files: Vec<ImageFile>,
    pub entrypoint: Vec<String>,
    /// GOARCH-style architecture ("amd64", "arm64").
    pub arch: String,
}

/// What was written: the manifest's digest (`sha256:…`) is the image's
/// identity in containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
}

/// Is `r` a full reference containerd stores as given: a registry host
/// (with a '.' or ':', or `localhost`), a lowercase repository path and a
/// tag?
pub fn check_reference(r: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(BuildError::Invalid(format!(
            "image reference {r:?}: {why} (expected e.g. registry.k8s.io/pause:3.2)"
        )))
    };
    let Some((host, rest)) = r.split_once('/') else {
        return bad("no registry host");
    };
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return bad("the first part is not a registry host");
    }
    let Some((repo, tag)) = rest.rsplit_once(':') else {
        return bad("no tag");
    };
    let repo_ok = !repo.is_empty()
        && repo.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if !repo_ok {
        return bad("the repository must be lowercase letters, digits, '.', '_', '-' and '/'");
    }
    let tag_ok = (1..=128).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !tag_ok {
        return bad("the tag must be 1-128 letters, digits, '.', '_' or '-'");
    }
    Ok(())
}

/// Writes the image archive for `spec` to `out` (see the module docs).
pub fn write_archive(spec: &ImageSpec, out: &mut dyn Write) -> Result<Written> {
    check_reference(&spec.reference)?;
    if spec.entrypoint.is_empty() {
        return Err(BuildError::Invalid(format!(
            "image {}: no entrypoint",
            spec.reference
        )));
    }
    let layer = layer_tar(&spec.files)?;
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": spec.arch,
        "os": "linux",
        "config": { "Entrypoint": spec.entrypoint },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))
    .expect("JSON of strings");
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer.len() }],
    }))
    .expect("JSON of strings");
    let manifest_digest = sha256(&manifest);
    let tag = spec
        .reference
        .rsplit_once(':')
        .map(|(_, t)| t)
        .expect("checked");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": spec.reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .expect("JSON of strings");
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let docker = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": [spec.reference],
        "Layers": [blob(&layer_digest)],
    }]))
    .expect("JSON of strings");

    let mut entries: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    entries.insert(blob(&layer_digest), (0o644, layer));
    entries.insert(blob(&config_digest), (0o644, config));
    entries.insert(blob(&manifest_digest), (0o644, manifest));
    entries.insert("index.json".into(), (0o644, index));
    entries.insert("manifest.json".into(), (0o644, docker));
    entries.insert(
        "oci-layout".into(),
        (0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    );
    let tar = tar_of(&entries)?;
    out.write_all(&tar)
        .map_err(|e| BuildError::Invalid(format!("writing image {}: {e}", spec.reference)))?;
    Ok(Written {
        manifest_digest,
        config_digest,
        layer_digest,
    })
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// The layer: every file with its parent directories, in name order.
fn layer_tar(files: &[ImageFile]) -> Result<Vec<u8>> {
    let mut entries: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
    for f in files {
        let path = f.path.trim_start_matches('/');
        if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "..") {
            return Err(BuildError::Invalid(format!(
                "image file path {:?} must be relative, without '..' or empty parts",
                f.path
            )));
        }
        if entries
            .insert(path.to_string(), (f.mode & 0o7777, f.contents.clone()))
            .is_some()
        {
            return Err(BuildError::Invalid(format!(
                "image file {path} given twice"
            )));
        }
    }
    tar_of(&entries)
}

/// A ustar archive of `entries` (path → mode, contents) and their parent
/// directories (mode 0755), sorted by name, with fixed metadata.
fn tar_of(entries: &BTreeMap<String, (u32, Vec<u8>)>) -> Result<Vec<u8>> {
    let mut all: BTreeMap<String, Option<(u32, &[u8])>> = BTreeMap::new();
    for (path, (mode, data)) in entries {
        let mut dir = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            dir.push_str(p);
            dir.push('/');
            all.entry(dir.clone()).or_insert(None);
        }
        all.insert(path.clone(), Some((*mode, data.as_slice())));
    }
    let mut out = Vec::new();
    for (name, entry) in &all {
        match entry {
            None => header(&mut out, name, 0o755, 0, b'5')?,
            Some((mode, data)) => {
                header(&mut out, name, *mode, data.len() as u64, b'0')?;
                out.extend_from_slice(data);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// One ustar header block: uid, gid and mtime 0, no user or group names.
fn header(out: &mut Vec<u8>, name: &str, mode: u32, size: u64, kind: u8) -> Result<()> {
    if name.len() > 100 {
        return Err(BuildError::Invalid(format!(
            "image file path {name} is longer than 100 bytes"
        )));
    }
    let mut h = [0u8; 512];
    let mut put = |at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    put(0, name.as_bytes());
    put(100, format!("{mode:07o}\0").as_bytes());
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{size:011o}\0").as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, &[kind]);
    put(257, b"ustar\0");
    put(263, b"00");
    put(329, b"0000000\0");
    put(337, b"0000000\0");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&h);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn pause() -> ImageSpec {
        ImageSpec {
            reference: "registry.k8s.io/pause:3.2".into(),
            files: vec![ImageFile {
                path: "pause".into(),
                mode: 0o755,
                contents: b"\x7fELF not really a binary".to_vec(),
            }],
            entrypoint: vec!["/pause".into()],
            arch: "amd64".into(),
        }
    }

    fn archive(spec: &ImageSpec) -> (Vec<u8>, Written) {
        let mut out = Vec::new();
        let w = write_archive(spec, &mut out).unwrap();
        (out, w)
    }

    /// `tar -tv` of `bytes` (GNU tar reads what we wrote).
    fn listing(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
        let f = dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        let o = Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    #[test]
    fn same_inputs_same_bytes_other_inputs_other_digests() {
        let (a, wa) = archive(&pause());
        let (b, wb) = archive(&pause());
        assert_eq!(a, b);
        assert_eq!(wa, wb);
        let mut other = pause();
        other.files[0].contents.push(b'!');
        let (_, wo) = archive(&other);
        assert_ne!(wo.layer_digest, wa.layer_digest);
        assert_ne!(wo.manifest_digest, wa.manifest_digest);
        let mut renamed = pause();
        renamed.reference = "registry.k8s.io/pause:3.4".into();
        let (c, wr) = archive(&renamed);
        assert_ne!(c, a, "the name is in index.json and manifest.json");
        assert_eq!(wr.manifest_digest, wa.manifest_digest, "same image content");
    }

    #[test]
    fn archive_is_an_oci_layout_and_a_docker_archive_naming_the_image() {
        let t = tempfile::tempdir().unwrap();
        let (bytes, w) = archive(&pause());
        let list = listing(t.path(), "pause.tar", &bytes);
        let names: Vec<&str> = list
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        let hexd = |d: &str| d.trim_start_matches("sha256:").to_string();
        let mut want = vec![
            "blobs/".to_string(),
            "blobs/sha256/".into(),
            format!("blobs/sha256/{}", hexd(&w.config_digest)),
            format!("blobs/sha256/{}", hexd(&w.layer_digest)),
            format!("blobs/sha256/{}", hexd(&w.manifest_digest)),
            "index.json".into(),
            "manifest.json".into(),
            "oci-layout".into(),
        ];
        want[2..5].sort();
        assert_eq!(names, want);
        for l in list.lines() {
            assert!(l.contains(" 0/0 "), "owner not 0/0: {l}");
            assert!(l.contains("1970-01-01"), "mtime not 0: {l}");
        }

        let x = t.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(t.path().join("pause.tar"))
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success());
        let read_json = |p: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(x.join(p)).unwrap()).unwrap()
        };
        // every blob's name is its digest
        for entry in std::fs::read_dir(x.join("blobs/sha256")).unwrap() {
            let p = entry.unwrap().path();
            let d = sha256(&std::fs::read(&p).unwrap());
            assert_eq!(hexd(&d), p.file_name().unwrap().to_str().unwrap());
        }
        let index = read_json("index.json");
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], w.manifest_digest);
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "registry.k8s.io/pause:3.2"
        );
        let docker = read_json("manifest.json");
        assert_eq!(docker[0]["RepoTags"][0], "registry.k8s.io/pause:3.2");
        let manifest = read_json(&format!("blobs/sha256/{}", hexd(&w.manifest_digest)));
        assert_eq!(manifest["config"]["digest"], w.config_digest);
        assert_eq!(manifest["layers"][0]["digest"], w.layer_digest);
        let config = read_json(&format!("blobs/sha256/{}", hexd(&w.config_digest)));
        assert_eq!(config["config"]["Entrypoint"][0], "/pause");
        assert_eq!(config["rootfs"]["diff_ids"][0], w.layer_digest);
        assert_eq!(config["architecture"], "amd64");

        // the layer holds the binary, executable, at its path
        let layer =
            std::fs::read(x.join(format!("blobs/sha256/{}", hexd(&w.layer_digest)))).unwrap();
        let ll = listing(t.path(), "layer.tar", &layer);
        assert_eq!(ll.lines().count(), 1, "{ll}");
        assert!(ll.starts_with("-rwxr-xr-x 0/0"), "{ll}");
        assert!(ll.trim_end().ends_with(" pause"), "{ll}");
    }

    #[test]
    fn nested_files_get_their_directories() {
        let t = tempfile::tempdir().unwrap();
        let files = vec![
            ImageFile {
                path: "bin/httpd".into(),
                mode: 0o755,
                contents: b"x".to_vec(),
            },
            ImageFile {
                path: "/etc/httpd.conf".into(),
                mode: 0o644,
                contents: b"y".to_vec(),
            },
        ];
        let layer = layer_tar(&files).unwrap();
        let names: Vec<String> = listing(t.path(), "l.tar", &layer)
            .lines()
            .map(|l| l.split_whitespace().last().unwrap().to_string())
            .collect();
        assert_eq!(names, ["bin/", "bin/httpd", "etc/", "etc/httpd.conf"]);
    }

    /// containerd (killed and its directories removed on drop).
    struct Containerd {
        child: std::process::Child,
        sock: std::path::PathBuf,
    }

    impl Drop for Containerd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn ctr(c: &Containerd, args: &[&str]) -> String {
        let o = Command::new("ctr")
            .arg("--address")
            .arg(&c.sock)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr not found: run scripts/setup (Debian package containerd)");
        assert!(
            o.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// The archive loads into a real containerd under its full name, with
    /// the manifest digest [`write_archive`] reported, and unpacks.
    #[test]
    fn containerd_imports_the_archive_under_its_name() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
                d.display()
            ),
        )
        .unwrap();
        let sock = d.join("containerd.sock");
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let c = Containerd {
            child: Command::new("containerd")
                .arg("--config")
                .arg(d.join("config.toml"))
                .arg("--address")
                .arg(&sock)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("containerd not found: run scripts/setup (Debian package containerd)"),
            sock,
        };
        let t0 = std::time::Instant::now();
        while !c.sock.exists() {
            assert!(t0.elapsed().as_secs() < 30, "containerd did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let (bytes, w) = archive(&pause());
        let file = d.join("pause.tar");
        std::fs::write(&file, &bytes).unwrap();
        ctr(&c, &["images", "import", file.to_str().unwrap()]);
        let list = ctr(&c, &["images", "ls"]);
        let line = list
            .lines()
            .find(|l| l.starts_with("registry.k8s.io/pause:3.2 "))
            .unwrap_or_else(|| panic!("not imported under its name:\n{list}"));
        assert!(line.contains(&w.manifest_digest), "{line}");
        assert!(line.contains("linux/amd64"), "{line}");
        // unpacked into the snapshotter: a container could be made from it
        let check = ctr(&c, &["images", "check"]);
        assert!(check.contains("complete"), "{check}");
    }

    #[test]
    fn bad_inputs_are_refused() {
        for bad in [
            "pause:3.2",
            "k8s/pause:3.2",
            "registry.k8s.io/pause",
            "registry.k8s.io/Pause:3.2",
            "registry.k8s.io/pause:",
        ] {
            let mut s = pause();
            s.reference = bad.into();
            let e = write_archive(&s, &mut Vec::new()).unwrap_err();
            assert!(e.to_string().contains("image reference"), "{bad}: {e}");
        }
        check_reference("localhost:5000/team/app:v1.0_rc-1").unwrap();
        let mut s = pause();
        s.files[0].path = "../pause".into();
        assert!(write_archive(&s, &mut Vec::new()).is_err());
        let mut s = pause();
        s.files.push(s.files[0].clone());
        assert!(write_archive(&s, &mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("given twice"));
        let mut s = pause();
        s.entrypoint.clear();
        assert!(write_archive(&s, &mut Vec::new()).is_err());
    }
}
