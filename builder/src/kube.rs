//! Kubernetes binaries for profiles whose kube source is release downloads
//! (pinned sha256) or a local directory; packages from a repository are
//! installed by the rootfs backend instead (`Profile::package_list`).
//! Binaries land in the staging tree's `usr/bin`, with `images/kube` (the
//! kubelet unit and kubeadm's drop-in) beside them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{BuildError, IoContext, Result};
use crate::exec::{Cmd, Exec};
use crate::manifest::sha256_file;
use crate::overlay::copy_tree;
use crate::profile::Kube;

/// Stage the kube binaries (if any) into `staging`. Returns the names installed.
pub fn stage(
    exec: &dyn Exec,
    kube: &Kube,
    images: &Path,
    cache: &Path,
    staging: &Path,
) -> Result<Vec<String>> {
    let bin = staging.join("usr/bin");
    let names = match kube {
        Kube::None | Kube::Repo { .. } => return Ok(Vec::new()),
        Kube::Local { dir, .. } => stage_local(dir, &bin)?,
        Kube::Release {
            version,
            base_url,
            sha256,
        } => {
            let dl = cache.join("kube").join(version);
            fs::create_dir_all(&dl).at(&dl)?;
            fs::create_dir_all(&bin).at(&bin)?;
            for (name, want) in sha256 {
                let file = dl.join(name);
                if !matches_sha(&file, want)? {
                    let url = format!("{}/{name}", base_url.trim_end_matches('/'));
                    let part = dl.join(format!(".{name}.partial"));
                    exec.run(
                        &Cmd::new("curl")
                            .args(["-fsSL", "--retry", "3", "-o"])
                            .arg(&part)
                            .arg(&url),
                    )
                    .map_err(|e| BuildError::Unreachable {
                        url: url.clone(),
                        detail: e.to_string(),
                    })?;
                    let (got, _) = sha256_file(&part)?;
                    if &got != want {
                        let _ = fs::remove_file(&part);
                        return Err(BuildError::Invalid(format!(
                            "{url}: sha256 is {got}, but the profile's kube.sha256.{name} pins {want}"
                        )));
                    }
                    fs::rename(&part, &file).at(&file)?;
                }
                install(&file, &bin.join(name))?;
            }
            sha256.keys().cloned().collect()
        }
    };
    for required in ["kubeadm", "kubelet"] {
        if !names.iter().any(|n| n == required) {
            return Err(BuildError::Invalid(format!(
                "kube source provides no {required} (got: {}); kubeadm and kubelet are required",
                names.join(", ")
            )));
        }
    }
    copy_tree(&images.join("kube"), staging)?;
    Ok(names)
}

fn matches_sha(file: &Path, want: &str) -> Result<bool> {
    Ok(file.is_file() && sha256_file(file)?.0 == want)
}

fn install(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).at(from)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).at(to)
}

/// Every regular file in `dir` (e.g. the `bin` directory `scripts/build-kube`
/// prints, or `_output/bin` of a kube build).
fn stage_local(dir: &Path, bin: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Err(BuildError::Invalid(format!(
            "kube.dir {} is not a directory of Kubernetes binaries",
            dir.display()
        )));
    }
    fs::create_dir_all(bin).at(bin)?;
    let mut names = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir).at(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.path().is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            install(&e.path(), &bin.join(&name))?;
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::HostExec;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn images() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images")
    }

    /// Real curl over file:// (no network), sha256 pinned, cached, verified.
    #[test]
    fn release_binaries_are_downloaded_verified_and_cached() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("release");
        fs::create_dir_all(&src).unwrap();
        let mut sums = BTreeMap::new();
        for name in ["kubeadm", "kubelet", "kubectl"] {
            fs::write(src.join(name), format!("#!/bin/sh\necho {name}\n")).unwrap();
            sums.insert(name.to_string(), sha256_file(&src.join(name)).unwrap().0);
        }
        let kube = Kube::Release {
            version: "1.20.2".into(),
            base_url: format!("file://{}", src.display()),
            sha256: sums.clone(),
        };
        let staging = t.path().join("staging");
        let cache = t.path().join("cache");
        let names = stage(&HostExec, &kube, &images(), &cache, &staging).unwrap();
        assert_eq!(names, vec!["kubeadm", "kubectl", "kubelet"]);
        let kubeadm = staging.join("usr/bin/kubeadm");
        assert_eq!(
            fs::read_to_string(&kubeadm).unwrap(),
            "#!/bin/sh\necho kubeadm\n"
        );
        assert_eq!(
            fs::metadata(&kubeadm).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(staging
            .join("usr/lib/systemd/system/kubelet.service")
            .is_file());
        assert!(cache.join("kube/1.20.2/kubelet").is_file());

        // Cached: a second stage works with the source gone.
        fs::remove_dir_all(&src).unwrap();
        let staging2 = t.path().join("staging2");
        stage(&HostExec, &kube, &images(), &cache, &staging2).unwrap();

        // A wrong pin is refused, naming the key; nothing half-downloaded stays.
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("kubeadm"), "tampered").unwrap();
        let mut bad = sums;
        bad.insert("kubeadm".into(), "0".repeat(64));
        let kube = Kube::Release {
            version: "1.20.3".into(),
            base_url: format!("file://{}", src.display()),
            sha256: bad,
        };
        let e = stage(&HostExec, &kube, &images(), &cache, &t.path().join("s3")).unwrap_err();
        assert!(e.to_string().contains("kube.sha256.kubeadm"), "{e}");
        let left: Vec<_> = fs::read_dir(cache.join("kube/1.20.3"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn local_directory_needs_kubeadm_and_kubelet() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("bin");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("kubectl"), "x").unwrap();
        let kube = Kube::Local {
            version: "1.20.2".into(),
            dir: dir.clone(),
        };
        let e = stage(&HostExec, &kube, &images(), t.path(), &t.path().join("s")).unwrap_err();
        assert!(e.to_string().contains("no kubeadm"), "{e}");
        fs::write(dir.join("kubeadm"), "x").unwrap();
        fs::write(dir.join("kubelet"), "x").unwrap();
        let names = stage(&HostExec, &kube, &images(), t.path(), &t.path().join("s")).unwrap();
        assert_eq!(names, vec!["kubeadm", "kubectl", "kubelet"]);
    }
}
