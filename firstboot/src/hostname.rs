//! The node's hostname: unique, stable, and set before anything uses it.
//!
//! The name is what the member announces in the replicated state, what the
//! plan and `habuild cluster status` show, what the control-plane
//! certificates carry (CN and SAN, see [`crate::pki`]) and what Kubernetes
//! will use as the node name. So it must differ between nodes and never
//! change once chosen.
//!
//! Where it comes from, first match wins ([`establish`]):
//! 1. the agent's `--hostname` flag (operators, tests);
//! 2. the name persisted in the state directory (`<state dir>/hostname`)
//!    by an earlier boot: a name is chosen once and kept, even if
//!    `network.hostname` changes later (certificates and the Kubernetes
//!    node name cannot follow a rename);
//! 3. cluster.toml's `network.hostname` pattern ([`render`]), default
//!    [`DEFAULT_PATTERN`], over the node id (from the machine-id), the MAC
//!    of the cluster interface and the cluster name; the result is persisted.
//!
//! A DHCP-provided hostname is not used: the name is fixed for the life of
//! the node and must be unique, while a DHCP server may give no name, the
//! same name to every client, or a different one after a lease change; and
//! at first boot the agent cannot tell a site's name from a default one. A
//! site that names machines in DHCP can write a pattern over `{mac}`.
//!
//! On a node that the agent owns ([`apply`], services run by systemd) the
//! name is then written to `/etc/hostname`, given a `127.0.1.1` line in
//! `/etc/hosts` (Debian's convention) and set in the kernel through the
//! [`Uts`] side effect. Agents run for tests (outside systemd) compute,
//! persist and report the name but leave the machine's identity alone.

use std::path::{Path, PathBuf};

use crate::host::{FileSpec, Files, HostError, Uts};
use crate::state::NodeId;

/// The default `network.hostname`: "node-" and the last 6 hex digits of
/// the node id (a hash of the machine-id, so any 6 digits are as random as
/// any other; the last ones also differ for hand-picked ids 1, 2, 3).
pub const DEFAULT_PATTERN: &str = "node-{id:6}";
/// The persisted name, in the agent's state directory.
pub const STATE_FILE: &str = "hostname";
/// Fewest node-id digits a pattern may use: fewer collide too easily.
const MIN_ID_DIGITS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum HostnameError {
    #[error("network.hostname {pattern:?}: {message}")]
    Pattern { pattern: String, message: String },
    #[error("{path}: {message}")]
    State { path: String, message: String },
    #[error(
        "network.hostname {pattern:?} uses {{mac}}, but the cluster interface's MAC is unknown"
    )]
    NoMac { pattern: String },
    #[error(transparent)]
    Host(#[from] HostError),
}

/// What a pattern is rendered over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub id: NodeId,
    /// The cluster interface's MAC, 12 lowercase hex digits without ':'.
    pub mac: Option<String>,
    pub cluster: String,
}

/// Where a name came from (for the console line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Persisted,
    Pattern,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Flag => "from --hostname",
            Source::Persisted => "kept from an earlier boot",
            Source::Pattern => "chosen by network.hostname",
        })
    }
}

/// The name and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    pub name: String,
    pub source: Source,
}

/// One piece of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// The last `n` hex digits of the node id (16 for `{id}`).
    Id(usize),
    Mac,
    Cluster,
}

fn parse(pattern: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err("a '}' without '{'".into());
        }
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or("an unclosed '{'")?
            .checked_add(open)
            .ok_or("too long")?;
        let name = &rest[open + 1..close];
        pieces.push(match name {
            "id" => Piece::Id(16),
            "mac" => Piece::Mac,
            "cluster" => Piece::Cluster,
            _ => match name.strip_prefix("id:").map(str::parse::<usize>) {
                Some(Ok(n)) if (MIN_ID_DIGITS..=16).contains(&n) => Piece::Id(n),
                Some(_) => {
                    return Err(format!(
                        "{{{name}}}: the id takes {MIN_ID_DIGITS} to 16 hex digits"
                    ))
                }
                None => {
                    return Err(format!(
                        "unknown placeholder {{{name}}} (known: {{id}}, {{id:N}}, {{mac}}, {{cluster}})"
                    ))
                }
            },
        });
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("a '}' without '{'".into());
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    if !pieces
        .iter()
        .any(|p| matches!(p, Piece::Id(_) | Piece::Mac))
    {
        return Err("must contain {id}, {id:N} or {mac}, so that every node's name differs".into());
    }
    Ok(pieces)
}

/// Is `name` a hostname Kubernetes and etcd accept as a node name: one DNS
/// label of 1-63 lowercase letters, digits and '-', not at either end?
pub fn is_valid(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Checks a `network.hostname` pattern for the cluster named `cluster`:
/// known placeholders, one that differs per node, and a valid name for
/// every node (rendered with the longest MAC and id).
pub fn check_pattern(pattern: &str, cluster: &str) -> Result<(), String> {
    parse(pattern)?;
    for id in [u64::MAX, 0x1000_0000_0000_0000] {
        let sample = Inputs {
            id,
            mac: Some("0a1b2c3d4e5f".into()),
            cluster: cluster.into(),
        };
        render_unchecked(pattern, &sample)?;
    }
    Ok(())
}

/// The name `pattern` gives the node `inputs` describe.
pub fn render(pattern: &str, inputs: &Inputs) -> Result<String, HostnameError> {
    render_unchecked(pattern, inputs).map_err(|message| match message.as_str() {
        NO_MAC => HostnameError::NoMac {
            pattern: pattern.into(),
        },
        _ => HostnameError::Pattern {
            pattern: pattern.into(),
            message,
        },
    })
}

const NO_MAC: &str = "no MAC";

fn render_unchecked(pattern: &str, inputs: &Inputs) -> Result<String, String> {
    let mut out = String::new();
    let id = format!("{:016x}", inputs.id);
    for p in parse(pattern)? {
        match p {
            Piece::Text(t) => out.push_str(&t),
            Piece::Id(n) => out.push_str(&id[16 - n..]),
            Piece::Mac => out.push_str(inputs.mac.as_deref().ok_or(NO_MAC)?),
            Piece::Cluster => out.push_str(&inputs.cluster),
        }
    }
    if !is_valid(&out) {
        return Err(format!(
            "gives {out:?}, not a hostname (1-63 lowercase letters, digits or '-', not at either end)"
        ));
    }
    Ok(out)
}

/// A MAC as `ip`/sysfs write it ("52:54:00:12:34:56") as the pattern's
/// `{mac}`: 12 lowercase hex digits.
pub fn mac_digits(mac: &str) -> Option<String> {
    let digits: String = mac.trim().split(':').collect::<Vec<_>>().concat();
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digits.to_ascii_lowercase())
}

/// The node's name: the flag, else the persisted name, else the pattern's
/// (then persisted). See the module docs.
pub fn establish(
    state_dir: &Path,
    flag: Option<&str>,
    pattern: &str,
    inputs: impl FnOnce() -> Inputs,
) -> Result<Established, HostnameError> {
    let file = state_dir.join(STATE_FILE);
    let state_err = |file: &PathBuf, message: String| HostnameError::State {
        path: file.display().to_string(),
        message,
    };
    if let Some(name) = flag {
        if !is_valid(name) {
            return Err(HostnameError::Pattern {
                pattern: name.into(),
                message: "--hostname is not a hostname (1-63 lowercase letters, digits or '-')"
                    .into(),
            });
        }
        return Ok(Established {
            name: name.into(),
            source: Source::Flag,
        });
    }
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let name = text.trim();
            if !is_valid(name) {
                return Err(state_err(
                    &file,
                    format!("holds {name:?}, not a hostname; delete the file to choose again"),
                ));
            }
            return Ok(Established {
                name: name.into(),
                source: Source::Persisted,
            });
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(state_err(&file, e.to_string()))
        }
        Err(_) => {}
    }
    let name = render(pattern, &inputs())?;
    let tmp = state_dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::create_dir_all(state_dir)
        .and_then(|()| std::fs::write(&tmp, format!("{name}\n")))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| state_err(&file, e.to_string()))?;
    Ok(Established {
        name,
        source: Source::Pattern,
    })
}

/// The agent's start-up: establishes the name (MAC from sysfs for
/// `{mac}`), and when the agent owns this host (`owns_host`: services run
/// by systemd, files under `root`) applies it ([`apply`]).
pub fn for_agent(
    state_dir: &Path,
    flag: Option<&str>,
    cluster: &crate::cluster::ClusterConfig,
    id: NodeId,
    interface: &str,
    root: &Path,
    owns_host: bool,
) -> Result<Established, HostnameError> {
    let got = establish(state_dir, flag, &cluster.network.hostname, || Inputs {
        id,
        mac: std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))
            .ok()
            .and_then(|m| mac_digits(&m)),
        cluster: cluster.cluster.name.clone(),
    })?;
    if owns_host {
        let files = crate::host::real::RootFiles {
            root: root.to_path_buf(),
        };
        apply(&files, &crate::host::real::KernelUts, &got.name)?;
    }
    Ok(got)
}

/// `/etc/hosts` with `name` on the `127.0.1.1` line (replacing any such
/// line; added after the `127.0.0.1` line, or to a fresh file).
pub fn hosts_with(existing: Option<&str>, name: &str) -> String {
    let ours = format!("127.0.1.1\t{name}");
    let base = existing.unwrap_or(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    let mut lines: Vec<String> = Vec::new();
    let mut placed = false;
    for l in base.lines() {
        if l.split_whitespace().next() == Some("127.0.1.1") {
            if !placed {
                lines.push(ours.clone());
                placed = true;
            }
            continue;
        }
        lines.push(l.to_string());
        if !placed && l.split_whitespace().next() == Some("127.0.0.1") {
            lines.push(ours.clone());
            placed = true;
        }
    }
    if !placed {
        lines.push(ours);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Makes `name` this host's name: `/etc/hostname`, `/etc/hosts`, then the
/// kernel's (only when it differs). Returns whether anything changed.
pub fn apply(files: &dyn Files, uts: &dyn Uts, name: &str) -> Result<bool, HostError> {
    let mut changed = files.write(&FileSpec::new("etc/hostname", 0o644, format!("{name}\n")))?;
    let hosts = files
        .read("etc/hosts")?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    changed |= files.write(&FileSpec::new(
        "etc/hosts",
        0o644,
        hosts_with(hosts.as_deref(), name),
    ))?;
    if uts.hostname()? != name {
        uts.set_hostname(name)?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{Event, Recording};

    fn inputs(id: NodeId) -> Inputs {
        Inputs {
            id,
            mac: Some("525400abcdef".into()),
            cluster: "lab".into(),
        }
    }

    #[test]
    fn patterns_render_per_node() {
        let i = inputs(0x0123_4567_89ab_cdef);
        assert_eq!(render(DEFAULT_PATTERN, &i).unwrap(), "node-abcdef");
        assert_eq!(render("{id}", &i).unwrap(), "0123456789abcdef");
        assert_eq!(render("{cluster}-{mac}", &i).unwrap(), "lab-525400abcdef");
        assert_eq!(
            render("k8s-{id:4}x", &inputs(0xffff_0000_0000_0001)).unwrap(),
            "k8s-0001x"
        );
        assert_ne!(
            render(DEFAULT_PATTERN, &inputs(0x1000)).unwrap(),
            render(DEFAULT_PATTERN, &inputs(0x1001)).unwrap()
        );
        let e = render(
            "{mac}",
            &Inputs {
                mac: None,
                ..inputs(1)
            },
        )
        .unwrap_err();
        assert!(matches!(e, HostnameError::NoMac { .. }), "{e}");
    }

    #[test]
    fn bad_patterns_say_why() {
        for (p, why) in [
            ("node", "every node's name differs"),
            ("{cluster}", "every node's name differs"),
            ("n-{id:3}", "4 to 16 hex digits"),
            ("n-{id:17}", "4 to 16 hex digits"),
            ("n-{host}", "unknown placeholder {host}"),
            ("n-{id", "unclosed"),
            ("n}-{id}", "without '{'"),
            ("Node-{id}", "not a hostname"),
            ("node_{id}", "not a hostname"),
            ("-{id}", "not a hostname"),
            (
                "a-very-long-prefix-for-a-host-name-that-is-too-long-{id}",
                "not a hostname",
            ),
        ] {
            let e = check_pattern(p, "lab").unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
        // the cluster name counts towards the length
        check_pattern("{cluster}-{id}", "lab").unwrap();
        assert!(check_pattern("{cluster}-{id}", &"c".repeat(47)).is_err());
        check_pattern(DEFAULT_PATTERN, "lab").unwrap();
        check_pattern("rack1-{mac}", "lab").unwrap();
    }

    #[test]
    fn a_name_is_chosen_once_and_kept() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("state");
        let got = establish(&dir, None, DEFAULT_PATTERN, || {
            inputs(0x1111_1111_11ab_cdef)
        })
        .unwrap();
        assert_eq!(
            got,
            Established {
                name: "node-abcdef".into(),
                source: Source::Pattern
            }
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(STATE_FILE)).unwrap(),
            "node-abcdef\n"
        );
        // a later boot with another pattern keeps the name, without rendering
        let again = establish(&dir, None, "other-{mac}", || panic!("rendered again")).unwrap();
        assert_eq!(again.name, "node-abcdef");
        assert_eq!(again.source, Source::Persisted);
        // the flag wins and is not persisted
        let flag = establish(&dir, Some("n1"), DEFAULT_PATTERN, || inputs(1)).unwrap();
        assert_eq!(flag.source, Source::Flag);
        assert_eq!(flag.name, "n1");
        assert!(establish(&dir, Some("N 1"), DEFAULT_PATTERN, || inputs(1)).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join(STATE_FILE)).unwrap(),
            "node-abcdef\n"
        );
        // a damaged file is an error naming it, not a silent rename
        std::fs::write(dir.join(STATE_FILE), "Bad Name\n").unwrap();
        let e = establish(&dir, None, DEFAULT_PATTERN, || inputs(1)).unwrap_err();
        assert!(
            e.to_string().contains("hostname: holds \"Bad Name\""),
            "{e}"
        );
    }

    #[test]
    fn hosts_file_gets_one_line_for_the_name() {
        let fresh = hosts_with(None, "node-abc");
        assert!(
            fresh.starts_with("127.0.0.1\tlocalhost\n127.0.1.1\tnode-abc\n"),
            "{fresh}"
        );
        let debian = "127.0.0.1\tlocalhost\n127.0.1.1\tlocalhost\n\n# The following lines\n::1 ip6-localhost\n";
        let out = hosts_with(Some(debian), "node-abc");
        assert_eq!(
            out,
            "127.0.0.1\tlocalhost\n127.0.1.1\tnode-abc\n\n# The following lines\n::1 ip6-localhost\n"
        );
        assert_eq!(hosts_with(Some(&out), "node-abc"), out);
        assert_eq!(
            hosts_with(Some("10.0.0.1 gw\n"), "n"),
            "10.0.0.1 gw\n127.0.1.1\tn\n"
        );
    }

    #[test]
    fn apply_writes_files_and_sets_the_kernel_name_once() {
        let r = Recording::default();
        r.lock().kernel_hostname = "localhost".into();
        let host = r.host();
        assert!(apply(&*host.files, &r, "node-abc").unwrap());
        assert_eq!(r.file("/etc/hostname").unwrap(), "node-abc\n");
        assert!(r
            .file("/etc/hosts")
            .unwrap()
            .contains("127.0.1.1\tnode-abc\n"));
        assert_eq!(
            r.events(),
            vec![
                Event::Wrote("etc/hostname".into()),
                Event::Wrote("etc/hosts".into()),
                Event::Hostname("node-abc".into()),
            ]
        );
        // idempotent: nothing changes the second time
        assert!(!apply(&*host.files, &r, "node-abc").unwrap());
        assert_eq!(r.events().len(), 3);
    }

    #[test]
    fn mac_digits_from_sysfs_text() {
        assert_eq!(
            mac_digits("52:54:00:AB:cd:ef\n").as_deref(),
            Some("525400abcdef")
        );
        assert_eq!(mac_digits("00:00"), None);
        assert_eq!(mac_digits("zz:54:00:ab:cd:ef"), None);
    }
}
