//! Kubernetes binaries for profiles whose kube source is a build script
//! (`scripts/build-kube`, compiled into habuild, or the profile's
//! `kube.script`: Debian's source, built once per machine and cached), release downloads (pinned sha256) or a local directory; packages
//! from a repository are installed by the rootfs backend instead
//! (`Profile::package_list`). Binaries land in the staging tree's
//! `usr/bin`, with `images/kube` (the kubelet unit and kubeadm's drop-in)
//! beside them. [`stage`] also says where the static pause binary is (the
//! profile's `kube.pause`, or the one the build script made), from which
//! `crate::images` builds the pause image.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{BuildError, IoContext, Result};
use crate::exec::{Cmd, Exec};
use crate::manifest::sha256_file;
use crate::overlay::copy_tree;
use crate::profile::{Kube, LoadedProfile};

/// What [`stage`] installed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Staged {
    /// Binary names installed into `usr/bin`, sorted.
    pub names: Vec<String>,
    /// The static pause binary to build `registry.k8s.io/pause` from, if any.
    pub pause: Option<PathBuf>,
}

/// Stage the kube binaries (if any) of `profile` into `staging`.
pub fn stage(
    exec: &dyn Exec,
    profile: &LoadedProfile,
    images: &Path,
    cache: &Path,
    staging: &Path,
) -> Result<Staged> {
    let kube = &profile.profile.kube;
    let bin = staging.join("usr/bin");
    let mut pause = kube.pause().map(|p| profile.resolve(p));
    let names = match kube {
        Kube::None | Kube::Repo { .. } => Vec::new(),
        Kube::Local { dir, .. } => {
            let dir = profile.resolve(dir);
            if !dir.is_dir() {
                return Err(profile
                    .source
                    .error_at(
                        "kube.dir",
                        format!(
                            "{} is not a directory of Kubernetes binaries",
                            dir.display()
                        ),
                    )
                    .into());
            }
            if pause.is_none() {
                pause = built_pause(&dir);
            }
            stage_local(&dir, &bin)?
        }
        Kube::Build { script, .. } => {
            let script = match script {
                Some(s) => profile.resolve(s),
                None => write_embedded_script(staging)?,
            };
            let dir = run_build_script(profile, &script)?;
            pause = built_pause(&dir);
            stage_local(&dir, &bin)?
        }
        Kube::Release {
            version,
            base_url,
            sha256,
            ..
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
    if let Some(p) = &pause {
        if !p.is_file() {
            return Err(profile
                .source
                .error_at(
                    "kube.pause",
                    format!("{} is not a file (a static pause binary)", p.display()),
                )
                .into());
        }
    }
    if matches!(kube, Kube::None | Kube::Repo { .. }) {
        return Ok(Staged { names, pause });
    }
    for required in ["kubeadm", "kubelet"] {
        if !names.iter().any(|n| n == required) {
            return Err(BuildError::Invalid(format!(
                "kube source provides no {required} (got: {}); kubeadm and kubelet are required",
                names.join(", ")
            )));
        }
    }
    copy_tree(&images.join("kube"), staging)?;
    Ok(Staged { names, pause })
}

/// The checkout's `scripts/build-kube`, compiled in.
pub const BUILD_KUBE: &str = include_str!("../../scripts/build-kube");

/// Writes [`BUILD_KUBE`] beside the staging tree (in the build's work
/// directory), executable.
fn write_embedded_script(staging: &Path) -> Result<PathBuf> {
    let dir = staging.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).at(dir)?;
    let path = dir.join("build-kube");
    fs::write(&path, BUILD_KUBE).at(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).at(&path)?;
    Ok(path)
}

/// `scripts/build-kube`'s layout: `<cache>/<version>/{bin,pause/pause}`.
fn built_pause(bin_dir: &Path) -> Option<PathBuf> {
    let p = bin_dir.parent()?.join("pause/pause");
    p.is_file().then_some(p)
}

/// Runs the profile's `kube.script`: its progress (stderr) goes to ours,
/// the last line of its stdout is the directory of the binaries. The
/// script caches; when its result exists it only prints the directory.
fn run_build_script(profile: &LoadedProfile, script: &Path) -> Result<PathBuf> {
    let err = |msg: String| -> BuildError { profile.source.error_at("kube.script", msg).into() };
    if !script.is_file() {
        return Err(err(format!(
            "{} does not exist (the script that builds Kubernetes, relative to the profile file)",
            script.display()
        )));
    }
    tracing::info!(
        "kube: {} (builds Kubernetes from source once per machine, ~25 min on 2 cores; cached afterwards)",
        script.display()
    );
    let out = Command::new(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| err(format!("running {}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(err(format!(
            "{} failed ({}); its output is above",
            script.display(),
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()));
    match dir {
        Some(d) if d.is_dir() => {
            tracing::info!("kube: binaries from {}", d.display());
            Ok(d)
        }
        _ => Err(err(format!(
            "{} printed no directory of binaries on its last line (stdout: {:?})",
            script.display(),
            stdout.trim()
        ))),
    }
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
            "kube: {} is not a directory of Kubernetes binaries",
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
    use firstboot::source::SourceFile;
    use std::collections::BTreeMap;

    fn images() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images")
    }

    /// debian-12.toml as if it lived at `dir/p.toml`, its `[kube]` replaced by `kube`.
    fn profile_with(dir: &Path, kube: &str) -> LoadedProfile {
        let text = fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/debian-12.toml"),
        )
        .unwrap();
        let start = text.find("[kube]").unwrap();
        let end = text[start..].find("\n[rootfs]").unwrap() + start;
        let text = format!("{}{kube}\n{}", &text[..start], &text[end..]);
        let source = SourceFile::from_text(dir.join("p.toml"), text);
        let profile = source.parse().unwrap();
        LoadedProfile { profile, source }
    }

    fn toml_sums(sums: &BTreeMap<String, String>) -> String {
        sums.iter()
            .map(|(k, v)| format!("{k} = \"{v}\"\n"))
            .collect()
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
        let release = |version: &str, sums: &BTreeMap<String, String>| {
            profile_with(
                t.path(),
                &format!(
                    "[kube]\nsource = \"release\"\nversion = \"{version}\"\nbase_url = \"file://{}\"\n[kube.sha256]\n{}",
                    src.display(),
                    toml_sums(sums)
                ),
            )
        };
        let p = release("1.20.2", &sums);
        let staging = t.path().join("staging");
        let cache = t.path().join("cache");
        let got = stage(&HostExec, &p, &images(), &cache, &staging).unwrap();
        assert_eq!(got.names, vec!["kubeadm", "kubectl", "kubelet"]);
        assert_eq!(
            got.pause, None,
            "a release source has no pause binary unless kube.pause names one"
        );
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
        stage(&HostExec, &p, &images(), &cache, &staging2).unwrap();

        // A wrong pin is refused, naming the key; nothing half-downloaded stays.
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("kubeadm"), "tampered").unwrap();
        let mut bad = sums;
        bad.insert("kubeadm".into(), "0".repeat(64));
        let p = release("1.20.3", &bad);
        let e = stage(&HostExec, &p, &images(), &cache, &t.path().join("s3")).unwrap_err();
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
        // `dir` relative to the profile file
        let p = profile_with(
            t.path(),
            "[kube]\nsource = \"local\"\nversion = \"1.20.2\"\ndir = \"bin\"",
        );
        let e = stage(&HostExec, &p, &images(), t.path(), &t.path().join("s")).unwrap_err();
        assert!(e.to_string().contains("no kubeadm"), "{e}");
        fs::write(dir.join("kubeadm"), "x").unwrap();
        fs::write(dir.join("kubelet"), "x").unwrap();
        let got = stage(&HostExec, &p, &images(), t.path(), &t.path().join("s")).unwrap();
        assert_eq!(got.names, vec!["kubeadm", "kubectl", "kubelet"]);
        assert_eq!(got.pause, None);
        // build-kube's layout: the pause binary beside bin/
        fs::create_dir_all(t.path().join("pause")).unwrap();
        fs::write(t.path().join("pause/pause"), "p").unwrap();
        let got = stage(&HostExec, &p, &images(), t.path(), &t.path().join("s")).unwrap();
        assert_eq!(got.pause, Some(t.path().join("pause/pause")));

        let missing = profile_with(
            t.path(),
            "[kube]\nsource = \"local\"\nversion = \"1.20.2\"\ndir = \"nope\"\npause = \"nope\"",
        );
        let e = stage(
            &HostExec,
            &missing,
            &images(),
            t.path(),
            &t.path().join("s"),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("p.toml") && msg.contains("kube.dir"), "{msg}");
        let bad_pause = profile_with(
            t.path(),
            "[kube]\nsource = \"local\"\nversion = \"1.20.2\"\ndir = \"bin\"\npause = \"nope\"",
        );
        let e = stage(
            &HostExec,
            &bad_pause,
            &images(),
            t.path(),
            &t.path().join("s"),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("kube.pause") && msg.contains("nope"), "{msg}");
    }

    /// `source = "build"`: the script (relative to the profile) runs, its
    /// last stdout line is the bin directory, its pause binary is found.
    #[test]
    fn build_script_is_run_and_its_directory_staged() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("cache/v1");
        fs::create_dir_all(out.join("bin")).unwrap();
        fs::create_dir_all(out.join("pause")).unwrap();
        for n in ["kubeadm", "kubelet", "kube-apiserver"] {
            fs::write(out.join("bin").join(n), n).unwrap();
        }
        fs::write(out.join("pause/pause"), "pause").unwrap();
        fs::create_dir_all(t.path().join("scripts")).unwrap();
        let script = t.path().join("scripts/build-kube");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho progress >&2\necho noise\necho {}/bin\n",
                out.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(t.path().join("configs")).unwrap();
        let kube =
            "[kube]\nsource = \"build\"\nversion = \"1.20.2\"\nscript = \"../scripts/build-kube\"";
        let p = profile_with(&t.path().join("configs"), kube);
        let s = t.path().join("s");
        let got = stage(&HostExec, &p, &images(), t.path(), &s).unwrap();
        assert_eq!(got.names, vec!["kube-apiserver", "kubeadm", "kubelet"]);
        assert_eq!(got.pause, Some(out.join("pause/pause")));
        assert_eq!(
            fs::read_to_string(s.join("usr/bin/kubelet")).unwrap(),
            "kubelet"
        );

        // A failing script and a missing one are errors naming the profile key.
        fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
        let e = stage(&HostExec, &p, &images(), t.path(), &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.toml") && e.contains("kube.script") && e.contains("failed"),
            "{e}"
        );
        fs::write(&script, "#!/bin/sh\necho /nonexistent/bin\n").unwrap();
        let e = stage(&HostExec, &p, &images(), t.path(), &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kube.script") && e.contains("no directory"),
            "{e}"
        );
        fs::remove_file(&script).unwrap();
        let e = stage(&HostExec, &p, &images(), t.path(), &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kube.script") && e.contains("does not exist"),
            "{e}"
        );
    }
}
