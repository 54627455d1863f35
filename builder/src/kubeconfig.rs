//! `habuild cluster kubeconfig`: fetch the cluster's admin kubeconfig from
//! its agents and write it where the user asked.
//!
//! - [`fetch`] finds the agents exactly as `habuild cluster status` does
//!   (mDNS, verified with the cluster secret, nothing announced), asks them
//!   all at once over the authenticated transport
//!   (`Wire::AdminKubeconfig`) and takes the first kubeconfig; [`choose`] is
//!   its pure part. An agent older than the request answers `Invalid`; it
//!   counts as not answering. When agents answer but none has one, the
//!   error says why ([`FetchError::NotAvailable`]).
//! - [`write_private`] writes the file atomically with mode 0600: a
//!   temporary file in the same directory, created 0600, written and
//!   synced, then renamed over the target; on any error the temporary file
//!   is removed and the target is untouched.
//!
//! The kubeconfig carries the admin's private key (`O=system:masters`); it
//! is never logged.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use firstboot::cluster::ClusterConfig;
use firstboot::discovery::Peer;
use firstboot::protocol::{hex, AdminKubeconfig, KubeconfigRefusal, Wire, WireResponse};

use crate::cluster_status::{self, Discovered, Options, Report, StatusError, Unreachable};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Status(#[from] StatusError),
    /// No agent answered the request (none found, none reachable, or only
    /// agents too old to know it).
    #[error("{0}")]
    NobodyAnswered(String),
    /// Agents answered, and none has the kubeconfig to give.
    #[error("{}", not_available_message(.0))]
    NotAvailable(Vec<(String, KubeconfigRefusal)>),
}

/// The message of [`FetchError::NotAvailable`]: the first line is what the
/// user needs, then each agent's reason.
fn not_available_message(refusals: &[(String, KubeconfigRefusal)]) -> String {
    let head = if refusals
        .iter()
        .all(|(_, r)| *r == KubeconfigRefusal::KubernetesDisabled)
    {
        "Kubernetes is disabled in this cluster's site file ([kubernetes] enabled = false): \
         there is no admin kubeconfig"
    } else {
        "the cluster has not issued its admin certificate yet (plan not committed?)"
    };
    let why: Vec<String> = refusals
        .iter()
        .map(|(node, r)| format!("{node}: {r}"))
        .collect();
    format!("{head}; agents said: {}", why.join("; "))
}

/// What one agent answered to `Wire::AdminKubeconfig`.
pub type Answer = Result<Result<AdminKubeconfig, KubeconfigRefusal>, String>;

/// The first kubeconfig among the answers (in node id order), else why
/// there is none: refusals when any agent refused, else nobody answered.
pub fn choose(
    cluster: &str,
    answers: Vec<(Peer, Answer)>,
    discovered: &Discovered,
    wait: std::time::Duration,
) -> Result<AdminKubeconfig, FetchError> {
    let mut answers = answers;
    answers.sort_by_key(|(p, _)| p.id);
    let mut refusals = Vec::new();
    let mut unreachable = Vec::new();
    for (peer, answer) in answers {
        match answer {
            Ok(Ok(k)) => return Ok(k),
            Ok(Err(r)) => refusals.push((hex(peer.id), r)),
            Err(e) => unreachable.push(Unreachable {
                node_id: hex(peer.id),
                addresses: peer
                    .addrs
                    .iter()
                    .map(|a| std::net::SocketAddr::new(*a, peer.port).to_string())
                    .collect(),
                error: e,
            }),
        }
    }
    if !refusals.is_empty() {
        return Err(FetchError::NotAvailable(refusals));
    }
    let report = Report {
        agents: vec![],
        rejected: discovered.rejected,
        unreachable: unreachable.clone(),
    };
    let mut msg = report.nobody_answered(cluster, wait);
    for u in &unreachable {
        msg += &format!("\nunreachable: {}: {}", u.node_id, u.error);
    }
    Err(FetchError::NobodyAnswered(msg))
}

/// Finds the cluster's agents and fetches the admin kubeconfig from one.
pub fn fetch(cluster: &ClusterConfig, opts: &Options) -> Result<AdminKubeconfig, FetchError> {
    let discovered = cluster_status::discover(cluster, opts)?;
    let rt = cluster_status::runtime()?;
    let answers = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for peer in discovered.peers.iter().cloned() {
            let (keys, t) = (discovered.keys.clone(), opts.answer_timeout);
            set.spawn(async move {
                let a = cluster_status::call_peer(&peer, &keys, t, &Wire::AdminKubeconfig, accept)
                    .await;
                (peer, a)
            });
        }
        let mut answers = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(a) = r {
                answers.push(a);
            }
        }
        answers
    });
    choose(&cluster.cluster.name, answers, &discovered, opts.listen)
}

/// What counts as an answer to `Wire::AdminKubeconfig`: the kubeconfig or
/// a refusal; anything else is this address failing (an agent older than
/// the request answers `Invalid`).
pub fn accept(resp: WireResponse) -> Result<Result<AdminKubeconfig, KubeconfigRefusal>, String> {
    match resp {
        WireResponse::AdminKubeconfig(a) => Ok(a),
        WireResponse::Invalid(m) => Err(format!(
            "the agent does not know this request (older than this habuild?): {}",
            cluster_status::clip(&m, 120)
        )),
        _ => Err("answered with something else than a kubeconfig".into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: names a directory, not a file")]
    IsDir(PathBuf),
}

/// Writes `text` to `path` atomically with mode 0600 (see the module docs).
pub fn write_private(path: &Path, text: &str) -> Result<(), WriteError> {
    if path.is_dir() {
        return Err(WriteError::IsDir(path.to_path_buf()));
    }
    let io = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| WriteError::Io {
            path: p,
            what,
            source,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| WriteError::IsDir(path.to_path_buf()))?;
    let tmp = dir.join(format!(
        ".{}.habuild-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating a temporary file", &tmp))?;
        // the umask may only take bits away; make sure of exactly 0600
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io("setting mode 0600", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io("renaming the temporary file over it", path))?;
        // the rename is durable once the directory is synced
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use firstboot::discovery::{RaftState, Rejected};
    use std::sync::Arc;
    use std::time::Duration;

    fn peer(i: u64) -> Peer {
        Peer {
            id: 0x1000 + i,
            addrs: vec![format!("10.90.0.{}", 10 + i).parse().unwrap()],
            port: 7946,
            state: RaftState::Member,
        }
    }

    fn discovered(bad_mac: u64) -> Discovered {
        Discovered {
            peers: vec![],
            rejected: Rejected {
                bad_mac,
                ..Rejected::default()
            },
            keys: Arc::new(firstboot::transport::Keys::derive(
                &firstboot::cluster::Secret([1; 32]),
                firstboot::transport::Keys::generate_static().unwrap(),
            )),
        }
    }

    fn issued(plan: u64) -> AdminKubeconfig {
        AdminKubeconfig {
            kubeconfig: format!("apiVersion: v1\n# plan {plan}\n"),
            server: "https://10.90.0.250:6443".into(),
            cluster: "lab".into(),
            plan,
        }
    }

    const WAIT: Duration = Duration::from_secs(3);

    #[test]
    fn first_kubeconfig_in_node_order_wins_over_refusals_and_failures() {
        let got = choose(
            "lab",
            vec![
                (peer(2), Ok(Ok(issued(2)))),
                (peer(0), Err("10.90.0.10:7946: no answer within 3 s".into())),
                (peer(1), Ok(Err(KubeconfigRefusal::NoPlan))),
                (peer(3), Ok(Ok(issued(3)))),
            ],
            &discovered(0),
            WAIT,
        )
        .unwrap();
        assert_eq!(got, issued(2));
    }

    #[test]
    fn refusals_say_the_certificate_is_not_issued() {
        let err = choose(
            "lab",
            vec![
                (peer(0), Ok(Err(KubeconfigRefusal::NoPlan))),
                (
                    peer(1),
                    Ok(Err(KubeconfigRefusal::NotIssued {
                        missing: vec!["kube/admin.crt".into(), "kube/admin.key".into()],
                    })),
                ),
                (peer(2), Err("10.90.0.12:7946: no answer within 3 s".into())),
            ],
            &discovered(0),
            WAIT,
        )
        .unwrap_err();
        assert!(matches!(err, FetchError::NotAvailable(ref r) if r.len() == 2));
        assert_eq!(
            err.to_string(),
            "the cluster has not issued its admin certificate yet (plan not committed?); \
             agents said: 0000000000001000: no plan is committed yet; \
             0000000000001001: not issued yet: kube/admin.crt, kube/admin.key"
        );
        let off = choose(
            "lab",
            vec![(peer(0), Ok(Err(KubeconfigRefusal::KubernetesDisabled)))],
            &discovered(0),
            WAIT,
        )
        .unwrap_err();
        assert!(
            off.to_string()
                .starts_with("Kubernetes is disabled in this cluster's site file"),
            "{off}"
        );
    }

    #[test]
    fn nobody_answering_says_why() {
        let err = choose(
            "lab",
            vec![(peer(0), Err("10.90.0.10:7946: connection refused".into()))],
            &discovered(0),
            WAIT,
        )
        .unwrap_err();
        let m = err.to_string();
        assert!(matches!(err, FetchError::NobodyAnswered(_)));
        assert!(m.starts_with("no agent of cluster \"lab\" answered"), "{m}");
        assert!(
            m.ends_with("\nunreachable: 0000000000001000: 10.90.0.10:7946: connection refused"),
            "{m}"
        );
        let m = choose("lab", vec![], &discovered(2), WAIT)
            .unwrap_err()
            .to_string();
        assert!(m.contains("2 announcement(s) named cluster \"lab\""), "{m}");
    }

    #[test]
    fn an_older_agent_counts_as_not_answering() {
        let e = accept(WireResponse::Invalid(
            "unknown variant `AdminKubeconfig`, expected `Rpc` or `Status`".into(),
        ))
        .unwrap_err();
        assert!(e.starts_with("the agent does not know this request"), "{e}");
        assert_eq!(
            accept(WireResponse::AdminKubeconfig(Err(
                KubeconfigRefusal::NoPlan
            ))),
            Ok(Err(KubeconfigRefusal::NoPlan))
        );
    }

    #[test]
    fn writes_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.conf");
        // an existing file with wider permissions is replaced, not reused
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "apiVersion: v1\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "apiVersion: v1\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["admin.conf"], "no temporary file left");
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // the target is a directory: refused before anything is created
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(matches!(
            write_private(&sub, "x"),
            Err(WriteError::IsDir(_))
        ));
        // the directory does not exist: nothing is created anywhere
        let missing = dir.path().join("no/such/dir/admin.conf");
        let e = write_private(&missing, "x").unwrap_err();
        assert!(e.to_string().contains("creating a temporary file"), "{e}");
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["sub"], "nothing created next to the target");
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 0);
    }
}
