//! The only side-effecting part of `habuild cluster status`: listen to mDNS
//! *without announcing anything* ([`discovery::browse`] verifies every
//! announcement's MAC exactly as the agents do and counts the rejected
//! ones), then ask every verified agent for its status over the
//! authenticated transport (`Wire::Status` → `WireResponse::Status`), all
//! agents at once, each within a timeout, and parse each answer into a
//! [`StatusDoc`]. Agents that do not answer, or answer with a document that
//! does not parse, are reported as unreachable, not fatal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use firstboot::agent::rpc::{Wire, WireResponse};
use firstboot::cluster::ClusterConfig;
use firstboot::discovery::{self, DiscoveryConfig, DiscoveryError, Interfaces, MdnsKey, Peer};
use firstboot::protocol::StatusDoc;
use firstboot::transport::{self, Keys, TransportError};

use super::table::{clip, secs};
use super::Report;

#[derive(Debug, Clone)]
pub struct Options {
    /// How long to listen to mDNS announcements.
    pub listen: Duration,
    /// How long each agent has to answer (per address tried).
    pub answer_timeout: Duration,
    /// Run mDNS only on this interface (default: every interface).
    pub interface: Option<String>,
    /// UDP port of mDNS: 5353 except in special tests.
    pub mdns_port: u16,
}

impl Options {
    /// Listen for `timeout`, give each agent `timeout` to answer, standard mDNS port.
    pub fn new(timeout: Duration, interface: Option<String>) -> Self {
        Self {
            listen: timeout,
            answer_timeout: timeout,
            interface,
            mdns_port: mdns_sd::MDNS_PORT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("mDNS browse failed: {0}")]
    Discovery(#[from] DiscoveryError),
    #[error("making a transport key: {0}")]
    Keys(#[from] TransportError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The verified agents of a cluster and how to talk to them: what
/// [`discover`] found while listening to mDNS.
pub struct Discovered {
    pub peers: Vec<Peer>,
    /// Announcements that failed verification while listening.
    pub rejected: discovery::Rejected,
    /// A throwaway static key: the PSK (from the secret) is what admits us.
    pub keys: Arc<Keys>,
}

/// Listens to mDNS for `opts.listen` without announcing anything and keeps
/// the announcements whose MAC verifies with the cluster's secret.
pub fn discover(cluster: &ClusterConfig, opts: &Options) -> Result<Discovered, StatusError> {
    let c = &cluster.cluster;
    let dcfg = DiscoveryConfig {
        key: MdnsKey::derive(&c.secret),
        interfaces: match &opts.interface {
            Some(i) => Interfaces::Only(vec![i.clone()]),
            None => Interfaces::All,
        },
        mdns_port: opts.mdns_port,
    };
    let (peers, rejected) = discovery::browse(&dcfg, &c.name, opts.listen)?;
    tracing::debug!(peers = peers.len(), ?rejected, "mdns browse done");
    let keys = Arc::new(Keys::derive(&c.secret, Keys::generate_static()?));
    Ok(Discovered {
        peers,
        rejected,
        keys,
    })
}

/// A current-thread runtime for the asking.
pub fn runtime() -> Result<tokio::runtime::Runtime, StatusError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StatusError::Runtime)
}

/// Browses, then asks every verified agent for its status (see the module docs).
pub fn query(cluster: &ClusterConfig, opts: &Options) -> Result<Report, StatusError> {
    let Discovered {
        peers,
        rejected,
        keys,
    } = discover(cluster, opts)?;
    let rt = runtime()?;
    let answers = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, peer) in peers.iter().enumerate() {
            let (peer, keys, t) = (peer.clone(), keys.clone(), opts.answer_timeout);
            set.spawn(async move { (i, ask(&peer, &keys, t).await) });
        }
        let mut answers: Vec<Option<Result<StatusDoc, String>>> = vec![None; peers.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, a)) = r {
                answers[i] = Some(a);
            }
        }
        answers
    });
    let answers = peers
        .into_iter()
        .zip(answers)
        .map(|(p, a)| (p, a.unwrap_or_else(|| Err("status task failed".into()))))
        .collect();
    Ok(Report::from_answers(answers, rejected))
}

/// One agent's status, trying its announced addresses in order.
async fn ask(peer: &Peer, keys: &Keys, timeout: Duration) -> Result<StatusDoc, String> {
    call_peer(peer, keys, timeout, &Wire::Status, |resp| match resp {
        WireResponse::Status(doc) => Ok(*doc),
        WireResponse::Invalid(m) => Err(format!("request refused: {}", clip(&m, 120))),
        _ => Err("answered with something else than a status".into()),
    })
    .await
}

/// Sends `req` to `peer`, trying its announced addresses in order (each
/// within `timeout`) until one answers something `accept` takes; the error
/// lists what every address did.
pub async fn call_peer<T>(
    peer: &Peer,
    keys: &Keys,
    timeout: Duration,
    req: &Wire,
    accept: impl Fn(WireResponse) -> Result<T, String>,
) -> Result<T, String> {
    let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    for ip in &peer.addrs {
        let addr = SocketAddr::new(*ip, peer.port);
        match call_addr(addr, keys, timeout, &body).await {
            Err(e) => errors.push(e),
            Ok(resp) => match accept(resp) {
                Ok(t) => return Ok(t),
                Err(e) => errors.push(format!("{addr}: {e}")),
            },
        }
    }
    if errors.is_empty() {
        errors.push("announced no address".into());
    }
    Err(errors.join("; "))
}

/// One request to one address over the authenticated transport, decoded.
pub async fn call_addr(
    addr: SocketAddr,
    keys: &Keys,
    timeout: Duration,
    body: &[u8],
) -> Result<WireResponse, String> {
    match tokio::time::timeout(timeout, transport::call(addr, keys, body)).await {
        Err(_) => Err(format!(
            "{addr}: no answer within {}",
            secs(timeout.as_secs_f64())
        )),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Ok(Ok(resp)) => serde_json::from_slice::<WireResponse>(&resp)
            .map_err(|e| format!("{addr}: undecodable answer: {e}")),
    }
}
