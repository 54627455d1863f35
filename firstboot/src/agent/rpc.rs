//! Consensus RPCs over the authenticated transport: the [`RpcTransport`] the
//! Raft node calls through ([`TransportRpc`]) and the request handler
//! ([`handle`]) that [`transport::serve`] runs. Bodies are serde_json of
//! [`Wire`] / [`WireResponse`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::consensus::router::{
    BoxFuture, JoinResponse, RpcRequest, RpcResponse, RpcTransport, Unreachable,
};
use crate::consensus::ConsensusNode;
use crate::state::NodeId;
use crate::transport::{self, Keys};

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

/// [`RpcTransport`] over [`transport::call`] (one connection per call).
pub struct TransportRpc {
    pub keys: Arc<Keys>,
    pub addrs: AddrBook,
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
            let resp = transport::call(addr, &self.keys, &body)
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

/// Serves one request received by [`transport::serve`].
pub async fn handle(node: ConsensusNode, status: super::status::Shared, body: Vec<u8>) -> Vec<u8> {
    let resp = match serde_json::from_slice::<Wire>(&body) {
        Ok(Wire::Rpc(req)) => WireResponse::Rpc(node.handle_rpc(req).await),
        Ok(Wire::Status) => WireResponse::Status(Box::new(
            status.read().unwrap_or_else(|e| e.into_inner()).clone(),
        )),
        Err(e) => WireResponse::Invalid(e.to_string()),
    };
    serde_json::to_vec(&resp).unwrap_or_else(|e| {
        serde_json::to_vec(&WireResponse::Rpc(RpcResponse::Join(JoinResponse::Retry(
            e.to_string(),
        ))))
        .unwrap_or_default()
    })
}
