//! The dnf backend against a real local RPM repository: two noarch packages
//! built with rpmbuild (one Requires the other), a repository made with
//! createrepo_c, and the real `dnf --installroot` run through `HostExec`.
//!
//! Needs rpmbuild, createrepo_c and dnf (Debian packages rpm, createrepo-c,
//! dnf: `scripts/setup`) and root. Missing tools fail the test, never skip it.
//! Network: only loopback (the cache test serves the repository from
//! 127.0.0.1 in this process).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use builder::error::BuildError;
use builder::exec::HostExec;
use builder::profile::Profile;
use builder::rootfs::dnf::Dnf;
use builder::rootfs::{InstalledPackage, RootfsBackend, RootfsRequest, FINALIZE};

const HELLO: &str = "hello from a habuild test rpm\n";

fn require_tool(tool: &str) {
    match Command::new(tool).arg("--version").output() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{tool} not found: run scripts/setup (Debian packages rpm, createrepo-c, dnf)")
        }
        Err(e) => panic!("{tool}: {e}"),
    }
}

fn require_setup() {
    for t in ["rpmbuild", "createrepo_c", "dnf", "rpm", "chroot"] {
        require_tool(t);
    }
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the dnf local-repository tests install into a root with rpm: run them as root"
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build habuild-hello (a file with known content) and habuild-world
/// (Requires habuild-hello) and make a repository of them in `dir/repo`.
fn make_repo(dir: &Path) -> PathBuf {
    let top = dir.join("rpmbuild");
    let specs = [
        (
            "habuild-hello",
            "1.2",
            "3",
            "",
            format!(
                "mkdir -p %{{buildroot}}/etc/habuild-test\necho '{}' > %{{buildroot}}/etc/habuild-test/hello.txt\n",
                HELLO.trim_end()
            ),
            "/etc/habuild-test/hello.txt",
        ),
        (
            "habuild-world",
            "2.0",
            "1",
            "Requires: habuild-hello = 1.2-3\n",
            "mkdir -p %{buildroot}/etc/habuild-test\necho world > %{buildroot}/etc/habuild-test/world.txt\n".to_string(),
            "/etc/habuild-test/world.txt",
        ),
    ];
    for (name, version, release, requires, install, file) in specs {
        let spec = dir.join(format!("{name}.spec"));
        std::fs::write(
            &spec,
            format!(
                "Name: {name}\nVersion: {version}\nRelease: {release}\nSummary: habuild test package\n\
                 License: MIT\nBuildArch: noarch\nAutoReqProv: no\n{requires}\n\
                 %description\nhabuild test package\n\n%install\n{install}\n%files\n{file}\n"
            ),
        )
        .unwrap();
        run(Command::new("rpmbuild")
            .arg("-bb")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg(&spec));
    }
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for e in std::fs::read_dir(top.join("RPMS/noarch")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, repo.join(p.file_name().unwrap())).unwrap();
    }
    run(Command::new("createrepo_c").arg(&repo));
    repo
}

fn profile(repo_url: &str, packages: &[&str]) -> Profile {
    let list = packages
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    toml::from_str(&format!(
        r#"
name = "dnf-local-test"
[distro]
family = "rocky"
release = "9"
arch = "x86_64"
[[repos]]
id = "local"
url = "{repo_url}"
gpgcheck = false
[packages]
base = [{list}]
kernel = []
runtime = []
etcd = []
vip = []
storage = []
"#
    ))
    .unwrap()
}

struct Case {
    tmp: tempfile::TempDir,
    repo: PathBuf,
}

impl Case {
    fn new() -> Self {
        require_setup();
        let tmp = tempfile::tempdir().unwrap();
        let repo = make_repo(tmp.path());
        let staging = tmp.path().join("staging");
        std::fs::create_dir_all(staging.join("etc/habuild-test")).unwrap();
        std::fs::write(
            staging.join("etc/habuild-test/overlay.txt"),
            "from the overlay\n",
        )
        .unwrap();
        Case { tmp, repo }
    }
    fn file_url(&self) -> String {
        format!("file://{}", self.repo.display())
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    fn request<'a>(&self, p: &'a Profile, target: &str) -> RootfsRequest<'a> {
        RootfsRequest {
            profile: p,
            target: self.path(target),
            cache: self.path("cache"),
            staging: self.path("staging"),
            source_date_epoch: 1_700_000_000,
            incremental: None,
        }
    }
}

fn pkg(name: &str, version: &str) -> InstalledPackage {
    InstalledPackage {
        name: name.into(),
        version: version.into(),
    }
}

#[test]
fn installs_packages_with_dependencies_and_the_overlay() {
    let case = Case::new();
    // Only habuild-world is asked for: habuild-hello comes in as its dependency.
    let p = profile(&case.file_url(), &["habuild-world"]);
    let req = case.request(&p, "root");
    Dnf.build(&HostExec, &req).unwrap_or_else(|e| panic!("{e}"));

    let root = &req.target;
    assert_eq!(
        std::fs::read_to_string(root.join("etc/habuild-test/hello.txt")).unwrap(),
        HELLO
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/habuild-test/world.txt")).unwrap(),
        "world\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/habuild-test/overlay.txt")).unwrap(),
        "from the overlay\n",
        "the staged overlay is copied over the root"
    );
    // The rpm database is where EL's rpm looks, not in Debian's ~/.rpmdb.
    assert!(root.join("var/lib/rpm/rpmdb.sqlite").is_file());
    assert!(!root.join("root/.rpmdb").exists());
    // dnf's cachedir stub (<root>/<cache path>) is gone, and nothing of the
    // cache path is left in the root.
    let cache_in_root = root.join(req.cache.strip_prefix("/").unwrap());
    assert!(
        !cache_in_root.exists(),
        "{} left in the root",
        cache_in_root.display()
    );
    let first = req
        .cache
        .strip_prefix("/")
        .unwrap()
        .components()
        .next()
        .unwrap();
    let top = root.join(first);
    assert!(
        !top.exists() || std::fs::read_dir(&top).unwrap().next().is_some(),
        "{} left empty in the root",
        top.display()
    );

    let installed = Dnf.installed(&HostExec, root).unwrap();
    assert_eq!(
        installed,
        vec![pkg("habuild-hello", "1.2-3"), pkg("habuild-world", "2.0-1")]
    );
}

#[test]
fn runs_finalize_inside_the_root_when_the_overlay_has_it() {
    let case = Case::new();
    // finalize-image needs a shell inside the root: the host's /bin/sh and the
    // libraries it links, copied into the overlay at the same paths.
    let staging = case.path("staging");
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let mut files = vec![sh.clone()];
    let ldd = Command::new("ldd").arg(&sh).output().expect("ldd");
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(PathBuf::from(p));
        }
    }
    for f in &files {
        let dst = staging.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(f, &dst).unwrap();
    }
    let bin_sh = staging.join("bin/sh");
    if !bin_sh.exists() {
        std::fs::create_dir_all(staging.join("bin")).unwrap();
        std::fs::copy(&sh, &bin_sh).unwrap();
    }
    let finalize = staging.join(FINALIZE.trim_start_matches('/'));
    std::fs::create_dir_all(finalize.parent().unwrap()).unwrap();
    std::fs::write(
        &finalize,
        "#!/bin/sh\nset -eu\necho \"finalized at $SOURCE_DATE_EPOCH\" > /etc/habuild-test/finalized\n",
    )
    .unwrap();
    run(Command::new("chmod").arg("0755").arg(&finalize));

    let p = profile(&case.file_url(), &["habuild-hello"]);
    let req = case.request(&p, "root");
    Dnf.build(&HostExec, &req).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read_to_string(req.target.join("etc/habuild-test/finalized")).unwrap(),
        "finalized at 1700000000\n"
    );
}

#[test]
fn missing_package_is_named() {
    let case = Case::new();
    let p = profile(
        &case.file_url(),
        &["habuild-world", "habuild-no-such-package"],
    );
    let req = case.request(&p, "root");
    let e = Dnf.build(&HostExec, &req).unwrap_err();
    match &e {
        BuildError::MissingPackages { packages, .. } => {
            assert_eq!(packages, "habuild-no-such-package", "{e}")
        }
        other => panic!("expected MissingPackages, got: {other}"),
    }
}

#[test]
fn unreachable_repo_is_named() {
    let case = Case::new();
    // A loopback port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/repo/");
    let p = profile(&url, &["habuild-world"]);
    let req = case.request(&p, "root");
    let e = Dnf.build(&HostExec, &req).unwrap_err();
    match &e {
        BuildError::Unreachable { url: u, detail } => {
            assert_eq!(u, &url, "{e}");
            assert!(detail.contains("repo 'local'"), "{e}");
        }
        other => panic!("expected Unreachable, got: {other}"),
    }
}

/// A static file server on 127.0.0.1 that records every request path.
struct Server {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(dir: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (dir, log) = (dir.clone(), l2.clone());
                std::thread::spawn(move || serve(stream, &dir, &log));
            }
        });
        Server { url, log }
    }
    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

fn serve(mut stream: TcpStream, dir: &Path, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    log.lock().unwrap().push(path.to_string());
    let rel = path.split('?').next().unwrap_or("").trim_start_matches('/');
    let file = dir.join(rel);
    let body = if rel.split('/').any(|c| c == "..") {
        None
    } else {
        std::fs::read(&file).ok()
    };
    let _ = match body {
        Some(b) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                b.len()
            );
            stream.write_all(head.as_bytes()).and_then(|_| {
                if method == "HEAD" {
                    Ok(())
                } else {
                    stream.write_all(&b)
                }
            })
        }
        None => stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}

#[test]
fn second_build_reuses_the_package_cache() {
    let case = Case::new();
    // Served over http: dnf uses a file:// repository in place and keeps nothing
    // of it in the cache.
    let server = Server::start(case.repo.clone());
    let p = profile(&server.url, &["habuild-world"]);

    let first = case.request(&p, "root1");
    Dnf.build(&HostExec, &first)
        .unwrap_or_else(|e| panic!("{e}"));
    let fetched = server.take_log();
    for rpm in [
        "habuild-hello-1.2-3.noarch.rpm",
        "habuild-world-2.0-1.noarch.rpm",
    ] {
        assert!(
            fetched.iter().any(|p| p.ends_with(rpm)),
            "{rpm} not fetched: {fetched:?}"
        );
    }
    let mut cached: Vec<String> = walk(&first.cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rpm"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    assert_eq!(
        cached,
        [
            "habuild-hello-1.2-3.noarch.rpm",
            "habuild-world-2.0-1.noarch.rpm"
        ],
        "the downloaded packages are kept in {}",
        first.cache.display()
    );

    let second = case.request(&p, "root2");
    Dnf.build(&HostExec, &second)
        .unwrap_or_else(|e| panic!("{e}"));
    let fetched = server.take_log();
    assert!(
        !fetched.iter().any(|p| p.ends_with(".rpm")),
        "second build downloaded packages again: {fetched:?}"
    );
    assert_eq!(
        std::fs::read_to_string(second.target.join("etc/habuild-test/hello.txt")).unwrap(),
        HELLO
    );
    assert_eq!(
        Dnf.installed(&HostExec, &second.target).unwrap(),
        vec![pkg("habuild-hello", "1.2-3"), pkg("habuild-world", "2.0-1")]
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
