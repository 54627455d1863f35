//! The framing of a multiplexed connection: the opening exchange and the
//! request id in front of every frame.
//!
//! After the handshake, a client that wants one connection for many
//! concurrent requests sends [`HELLO`] as its first frame; a server that
//! understands it answers [`HELLO_ACK`], and from then on every frame in
//! either direction is an 8-byte big-endian request id followed by the body
//! ([`tag`], [`untag`]); a response carries the id of its request, and
//! responses may come in any order.
//!
//! A first frame other than [`HELLO`] is a one-shot client's request
//! (`habuild cluster status`, or an agent from before multiplexing): the
//! connection stays in the original mode, one untagged response per
//! untagged request, in order. Request bodies are serde_json, which never
//! starts with the NUL byte [`HELLO`] starts with, so the two cannot be
//! confused. An agent from before multiplexing answers [`HELLO`] with an
//! ordinary (JSON) error response instead of [`HELLO_ACK`]: the client then
//! falls back to one connection per request for that peer
//! ([`super::pool`]).

use super::{TransportError, MAX_FRAME};

/// First frame of a client asking for a multiplexed connection.
pub const HELLO: &[u8] = b"\0habuild mux v1";
/// The server's answer to [`HELLO`].
pub const HELLO_ACK: &[u8] = b"\0habuild mux ok v1";
/// Bytes of the request id in front of every multiplexed frame.
pub const ID_LEN: usize = 8;
/// Largest body of a multiplexed request or response.
pub const MAX_BODY: usize = MAX_FRAME - ID_LEN;

/// `id` followed by `body`: one multiplexed frame.
pub fn tag(id: u64, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ID_LEN + body.len());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// The request id and body of one multiplexed frame.
pub fn untag(mut frame: Vec<u8>) -> Result<(u64, Vec<u8>), TransportError> {
    if frame.len() < ID_LEN {
        return Err(TransportError::Malformed(format!(
            "multiplexed frame of {} bytes has no request id",
            frame.len()
        )));
    }
    let id = u64::from_be_bytes(frame[..ID_LEN].try_into().expect("8 bytes"));
    frame.drain(..ID_LEN);
    Ok((id, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_roundtrip_and_short_frames() {
        for (id, body) in [(0u64, &b""[..]), (7, b"x"), (u64::MAX, b"{\"Rpc\":1}")] {
            assert_eq!(untag(tag(id, body)).unwrap(), (id, body.to_vec()));
        }
        assert!(matches!(
            untag(vec![1, 2, 3]),
            Err(TransportError::Malformed(_))
        ));
    }

    #[test]
    fn hello_is_no_json_request() {
        // what a one-shot client sends first is serde_json of a Wire request
        for req in [
            crate::protocol::Wire::Status,
            crate::protocol::Wire::Rpc(crate::consensus::router::RpcRequest::Propose {
                from: 1,
                command: crate::state::Command::SetHealth {
                    id: 1,
                    healthy: true,
                },
            }),
        ] {
            let body = serde_json::to_vec(&req).unwrap();
            assert_ne!(body[0], HELLO[0]);
        }
        assert!(serde_json::from_slice::<serde_json::Value>(HELLO).is_err());
    }
}
