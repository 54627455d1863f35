//! The server side: accept connections, authenticate them, answer requests.
//!
//! One accepted connection serves many requests. Its first frame decides the
//! mode ([`super::mux`]): [`mux::HELLO`] makes it multiplexed (each request
//! handled in its own task, at most [`MAX_IN_FLIGHT`] at once per
//! connection, responses tagged with the request's id in completion order);
//! anything else is a one-shot client's request, answered in order, one at
//! a time, as before multiplexing existed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::{
    accept, mux, HandshakeCounters, Keys, Request, SecureStream, TransportError, HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT, MAX_CONNECTIONS,
};

/// Requests of one multiplexed connection handled at the same time; the
/// connection's next request waits for a slot.
pub const MAX_IN_FLIGHT: usize = 64;

/// Accepts connections forever: each one must complete the handshake within
/// [`HANDSHAKE_TIMEOUT`] (else the failure is counted by cause in
/// `counters` and the connection dropped);
/// then every frame it sends is a request answered by `handler`'s returned
/// bytes (multiplexed or in order, see the module docs), until the peer
/// closes or sends nothing for [`IDLE_TIMEOUT`].
pub async fn serve<H, F>(
    listener: TcpListener,
    keys: Arc<Keys>,
    counters: Arc<HandshakeCounters>,
    handler: H,
) where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<u8>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer_addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE, ECONNABORTED, ...: transient; don't spin.
                tracing::warn!(error = %e, "transport: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer_addr, "transport: too many connections, dropping one");
            continue;
        };
        let keys = keys.clone();
        let counters = counters.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let s = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(tcp, &keys)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    counters.count(&e);
                    tracing::debug!(%peer_addr, error = %e, "transport: handshake rejected");
                    return;
                }
                Err(_) => {
                    counters.count(&TransportError::Timeout("handshake"));
                    tracing::debug!(%peer_addr, "transport: handshake timed out");
                    return;
                }
            };
            connection(s, peer_addr, handler).await;
        });
    }
}

/// Receives the next frame, `None` when the peer closed, went idle for
/// [`IDLE_TIMEOUT`] or broke the stream.
async fn next_frame(s: &mut SecureStream<impl tokio::io::AsyncRead + Unpin>) -> Option<Vec<u8>> {
    match tokio::time::timeout(IDLE_TIMEOUT, s.recv()).await {
        Ok(Ok(b)) => Some(b),
        Ok(Err(TransportError::Closed)) | Err(_) => None,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "transport: dropping connection");
            None
        }
    }
}

/// Serves one authenticated connection until it closes.
async fn connection<H, F>(mut s: SecureStream<TcpStream>, peer_addr: SocketAddr, handler: Arc<H>)
where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<u8>> + Send + 'static,
{
    let peer_static = s.remote_static();
    let request = |body| Request {
        peer_addr,
        peer_static,
        body,
    };
    let Some(first) = next_frame(&mut s).await else {
        return;
    };
    if first == mux::HELLO {
        if let Err(e) = s.send(mux::HELLO_ACK).await {
            tracing::debug!(%peer_addr, error = %e, "transport: sending the mux answer failed");
            return;
        }
        return multiplexed(s, peer_addr, request, handler).await;
    }
    // One-shot client: in order, one request at a time.
    let mut body = first;
    loop {
        let resp = handler(request(body)).await;
        if let Err(e) = s.send(&resp).await {
            tracing::debug!(%peer_addr, error = %e, "transport: sending response failed");
            return;
        }
        match next_frame(&mut s).await {
            Some(b) => body = b,
            None => return,
        }
    }
}

/// A multiplexed connection: a reader handing each request to its own task
/// and one writer sending the tagged responses.
async fn multiplexed<H, F>(
    s: SecureStream<TcpStream>,
    peer_addr: SocketAddr,
    request: impl Fn(Vec<u8>) -> Request,
    handler: Arc<H>,
) where
    H: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<u8>> + Send + 'static,
{
    let (mut rx, mut tx) = s.into_split();
    let (out, mut responses) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(frame) = responses.recv().await {
            match tx.send(&frame).await {
                Ok(()) => {}
                // This response only: the request's caller times out.
                Err(e @ TransportError::FrameTooLarge { .. }) => {
                    tracing::warn!(%peer_addr, error = %e, "transport: response not sent");
                }
                Err(e) => {
                    tracing::debug!(%peer_addr, error = %e, "transport: sending response failed");
                    return;
                }
            }
        }
        let _ = tx.shutdown().await;
    });
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(frame) = next_frame(&mut rx).await {
        let (id, body) = match mux::untag(frame) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%peer_addr, error = %e, "transport: dropping connection");
                break;
            }
        };
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (fut, out) = (handler(request(body)), out.clone());
        tokio::spawn(async move {
            let resp = fut.await;
            let _ = out.send(mux::tag(id, &resp)).await;
            drop(slot);
        });
    }
    // The writer ends once every request still running has answered.
    drop(out);
    let _ = writer.await;
}
