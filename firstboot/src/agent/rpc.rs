//! Consensus RPCs over the authenticated transport: the [`RpcTransport`] the
//! Raft node calls through ([`TransportRpc`]) and the request handler
//! ([`handle`]) that [`transport::serve`] runs. Bodies are serde_json of
//! [`Wire`] / [`WireResponse`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::consensus::router::{
    BoxFuture, JoinResponse, RpcRequest, RpcResponse, RpcTransport, Unreachable,
};
use crate::consensus::ConsensusNode;
use crate::state::NodeId;
use crate::transport::{self, Keys};

/// A request between agents.
#[derive(Debug, Serialize, Deserialize)]
pub enum Wire {
    /// A consensus RPC (Raft or join).
    Rpc(RpcRequest),
    /// The agent's status document (what the status socket serves).
    Status,
}

/// The answer to a [`Wire`] request.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireResponse {
    Rpc(RpcResponse),
    /// A serialised [`crate::protocol::StatusDoc`].
    Status(serde_json::Value),
    /// The request could not be decoded.
    Invalid(String),
}

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
        Ok(Wire::Status) => {
            let doc = status.read().unwrap_or_else(|e| e.into_inner()).clone();
            match serde_json::to_value(doc) {
                Ok(v) => WireResponse::Status(v),
                Err(e) => WireResponse::Invalid(format!("serialising the status: {e}")),
            }
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
