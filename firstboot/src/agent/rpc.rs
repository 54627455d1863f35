//! Consensus RPCs over the authenticated transport: the [`RpcTransport`] the
//! Raft node calls through ([`TransportRpc`]: one persistent, multiplexed
//! connection per peer, [`transport::Pool`]) and the request handler
//! ([`handle`]) that [`transport::serve`] runs: Raft RPCs, the status
//! document and the admin kubeconfig ([`super::kubeconfig`]). Bodies are
//! serde_json of [`Wire`] / [`WireResponse`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::cluster::ClusterConfig;
use crate::consensus::router::{
    BoxFuture, JoinResponse, RpcRequest, RpcResponse, RpcTransport, Unreachable,
};
use crate::consensus::ConsensusNode;
use crate::secretbox::SecretBox;
use crate::state::NodeId;
use crate::transport::{self, Keys, Pool};

pub use crate::protocol::{Wire, WireResponse};

/// Where each node's agent listens: from discovery and from the Raft membership.
#[derive(Debug, Clone, Default)]
pub struct AddrBook(Arc<RwLock<BTreeMap<NodeId, SocketAddr>>>);

impl AddrBook {
    pub fn get(&self, id: NodeId) -> Option<SocketAddr> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
    }

    pub fn set(&self, id: NodeId, addr: SocketAddr) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, addr);
    }
}

/// [`RpcTransport`] over [`transport::Pool`]: every RPC to a node goes over
/// that node's one persistent connection (opened, and reopened after a
/// failure, by the pool).
pub struct TransportRpc {
    addrs: AddrBook,
    pool: Pool,
}

impl TransportRpc {
    pub fn new(keys: Arc<Keys>, addrs: AddrBook) -> Self {
        TransportRpc {
            addrs,
            pool: Pool::new(keys),
        }
    }

    /// The connection counters (tests, the bench).
    pub fn stats(&self) -> &transport::pool::PoolStats {
        self.pool.stats()
    }
}

impl RpcTransport for TransportRpc {
    fn call(
        &self,
        target: NodeId,
        rpc: RpcRequest,
    ) -> BoxFuture<'_, Result<RpcResponse, Unreachable>> {
        Box::pin(async move {
            let fail = |reason: String| Unreachable { target, reason };
            let addr = self
                .addrs
                .get(target)
                .ok_or_else(|| fail("no address known".into()))?;
            let body = serde_json::to_vec(&Wire::Rpc(rpc)).map_err(|e| fail(e.to_string()))?;
            let resp = self
                .pool
                .call(addr, &body)
                .await
                .map_err(|e| fail(format!("{addr}: {e}")))?;
            match serde_json::from_slice(&resp) {
                Ok(WireResponse::Rpc(r)) => Ok(r),
                Ok(other) => Err(fail(format!("unexpected answer {other:?}"))),
                Err(e) => Err(fail(format!("undecodable answer: {e}"))),
            }
        })
    }
}

/// What the request handler answers from: the Raft node (consensus RPCs,
/// the replicated state), the published status document, the site file and
/// the secret box (the admin kubeconfig).
#[derive(Clone)]
pub struct Served {
    pub node: ConsensusNode,
    pub status: super::status::Shared,
    pub cluster: Arc<ClusterConfig>,
    pub sbox: Arc<SecretBox>,
}

/// Serves one request received by [`transport::serve`].
pub async fn handle(served: Served, body: Vec<u8>) -> Vec<u8> {
    let resp = match serde_json::from_slice::<Wire>(&body) {
        Ok(Wire::Rpc(req)) => WireResponse::Rpc(served.node.handle_rpc(req).await),
        Ok(Wire::Status) => WireResponse::Status(Box::new(
            served
                .status
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )),
        Ok(Wire::AdminKubeconfig) => {
            let answer = super::kubeconfig::admin_kubeconfig(
                &served.cluster,
                &served.node.state(),
                &served.sbox,
            );
            match &answer {
                Ok(_) => tracing::info!("handed out the admin kubeconfig"),
                Err(e) => tracing::info!(reason = %e, "admin kubeconfig asked for, not available"),
            }
            WireResponse::AdminKubeconfig(answer)
        }
        Err(e) => WireResponse::Invalid(e.to_string()),
    };
    serde_json::to_vec(&resp).unwrap_or_else(|e| {
        serde_json::to_vec(&WireResponse::Rpc(RpcResponse::Join(JoinResponse::Retry(
            e.to_string(),
        ))))
        .unwrap_or_default()
    })
}
