//! Authenticated, encrypted agent-to-agent transport keyed by the cluster secret.
//!
//! Every byte agents exchange (Raft RPCs, joins, status) goes through a
//! [`SecureStream`]: a Noise `XXpsk3_25519_ChaChaPoly_SHA256` session over any
//! byte stream (TCP in production, `tokio::io::duplex` in tests).
//!
//! # Keys
//!
//! - The *pre-shared key* is the key schedule's transport PSK
//!   ([`crate::keys::transport_psk`]: `HKDF-SHA256(ikm = cluster secret, info =
//!   "habuild transport psk v1")`), so every node holding `cluster.toml` derives
//!   the same one, and nothing else is derived under the same label.
//! - Each agent also has a *static* X25519 key pair made on first boot
//!   ([`Keys::generate_static`]) and persisted by the caller. It identifies the
//!   node to its peers ([`SecureStream::remote_static`]); it proves nothing about
//!   cluster membership by itself: membership is proven by the PSK.
//!
//! # Wire format
//!
//! - Handshake: the three XX messages, then one transport message from the
//!   responder carrying a fixed confirmation. The PSK is only mixed in at the
//!   third message, so without this confirmation an initiator holding the wrong
//!   secret would believe it had connected; with it, both sides fail.
//! - Every Noise message on the wire is a `u16` big-endian length followed by
//!   that many bytes (at most 65535, the Noise limit).
//! - An application frame is a `u32` big-endian plaintext length followed by
//!   the plaintext (at most [`MAX_FRAME`] bytes), split over as many Noise
//!   messages as needed; a frame always starts a new Noise message. The length
//!   travels *inside* the encryption, so it cannot be altered in flight.
//! - Anything else (a short read, a garbage length, a frame longer than
//!   [`MAX_FRAME`], a chunk that overruns its frame, a failed decryption) is a
//!   [`TransportError`]; after any error the stream must be dropped.
//!
//! # Connections
//!
//! - Agents keep one connection per peer ([`Pool`], in [`pool`]): opened on
//!   the first request, every later request to that peer goes over it,
//!   concurrently, each frame prefixed by a request id ([`mux`]); it is
//!   reopened (with backoff) after it breaks, dropped when a timed-out
//!   request reveals a silent peer, and closed when idle. Each connection
//!   starts with the full handshake and confirmation above.
//! - [`serve`] answers many requests per connection: multiplexed ones
//!   concurrently, and those of one-shot clients ([`call`]: `habuild
//!   cluster status`, or an agent from before multiplexing) in order, as
//!   before. The wire stays compatible both ways (see [`mux`]).
//!
//! # What an attacker on the network can and cannot do
//!
//! Without the cluster secret an attacker:
//! - cannot complete a handshake in either role, so it cannot send a single
//!   accepted request, nor read one; its attempts are counted by [`serve`];
//! - cannot read or alter traffic between members (ChaChaPoly, fresh
//!   ephemeral keys per connection: forward secrecy for past sessions even if
//!   the secret later leaks, as long as the static keys do not);
//! - *can* connect and receive the responder's first XX message, which carries
//!   the responder's static public key (and, playing responder, it learns an
//!   initiator's static public key). These are random per-node identifiers,
//!   not derived from the secret; this is the price of `psk3` over `psk0`;
//! - can tie up connection slots and CPU with handshake attempts (bounded by
//!   [`MAX_CONNECTIONS`] and [`HANDSHAKE_TIMEOUT`]), or simply drop traffic.
//!
//! A member (holder of the secret) is trusted: any static key that completes
//! the handshake is accepted; binding node ids to static keys is the
//! replicated state's job.

pub mod mux;
pub mod pool;
#[cfg(test)]
mod pool_tests;
mod serve;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::cluster::Secret;

pub use pool::Pool;
pub use serve::{serve, MAX_IN_FLIGHT};

/// The Noise protocol name used by every agent.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_SHA256";
/// Mixed into the handshake hash: a peer speaking another protocol version fails.
const PROLOGUE: &[u8] = b"habuild transport v1";
/// The responder's first transport message, proving it accepted our PSK.
const CONFIRM: &[u8] = b"habuild transport ok v1";

/// Largest plaintext of one frame (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest Noise message (ciphertext) on the wire.
const MAX_NOISE_MSG: usize = 65535;
const TAG_LEN: usize = 16;
/// Largest plaintext carried by one Noise transport message.
const MAX_CHUNK: usize = MAX_NOISE_MSG - TAG_LEN;
const LEN_PREFIX: usize = 4;

/// How long a peer has to complete the handshake (in [`serve`] and [`call`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on a whole [`call`] or [`Pool::call`] (connect, handshake,
/// request, response).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// [`serve`] closes an authenticated connection idle for this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// [`serve`] drops new connections beyond this many concurrent ones.
pub const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("transport i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("decrypting a message failed (corrupted or forged traffic)")]
    Decrypt,
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("connection closed by the peer")]
    Closed,
    #[error("stream ended in the middle of a message")]
    Truncated,
    #[error("static private key must be 32 bytes, got {0}")]
    BadKey(usize),
    #[error("timed out during {0}")]
    Timeout(&'static str),
    #[error("stream unusable after an earlier error")]
    Poisoned,
    #[error("noise: {0}")]
    Noise(String),
    /// A persistent connection broke, or the peer is in reconnect backoff
    /// ([`pool`]).
    #[error("peer unavailable: {0}")]
    Unavailable(String),
}

fn noise_err(e: snow::Error) -> TransportError {
    TransportError::Noise(e.to_string())
}

/// The key material of one agent: the PSK derived from the cluster secret and
/// the agent's own static X25519 private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub psk: [u8; 32],
    pub static_private: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("valid noise protocol name")
}

impl Keys {
    /// The transport keys for a node of the cluster holding `secret`.
    pub fn derive(secret: &Secret, static_private: Vec<u8>) -> Self {
        Self {
            psk: derive_psk(secret),
            static_private,
        }
    }

    /// A fresh static X25519 private key (32 bytes) from the OS's random
    /// source; the caller persists it on the data partition.
    pub fn generate_static() -> Result<Vec<u8>, TransportError> {
        let kp = snow::Builder::new(params())
            .generate_keypair()
            .map_err(noise_err)?;
        Ok(kp.private)
    }

    /// The X25519 public key matching `static_private` (what peers see as
    /// [`SecureStream::remote_static`]).
    pub fn public_key(&self) -> Result<[u8; 32], TransportError> {
        use snow::resolvers::CryptoResolver;
        self.check()?;
        let mut dh = snow::resolvers::DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .ok_or_else(|| TransportError::Noise("no x25519 implementation".into()))?;
        dh.set(&self.static_private);
        dh.pubkey()
            .try_into()
            .map_err(|_| TransportError::Noise("x25519 public key is not 32 bytes".into()))
    }

    fn check(&self) -> Result<(), TransportError> {
        if self.static_private.len() != 32 {
            return Err(TransportError::BadKey(self.static_private.len()));
        }
        Ok(())
    }
}

/// The transport PSK of the cluster holding `secret` (see [`crate::keys`]).
pub fn derive_psk(secret: &Secret) -> [u8; 32] {
    crate::keys::transport_psk(secret)
}

/// Reads exactly `buf.len()` bytes; returns how many were read before EOF.
async fn read_full<S: AsyncRead + Unpin>(io: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match io.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads one length-prefixed Noise message into `buf`. `at_boundary`: a clean
/// EOF before the first byte is [`TransportError::Closed`] rather than
/// [`TransportError::Truncated`].
async fn read_msg<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    at_boundary: bool,
) -> Result<(), TransportError> {
    let mut len = [0u8; 2];
    match read_full(io, &mut len).await? {
        0 if at_boundary => return Err(TransportError::Closed),
        2 => {}
        _ => return Err(TransportError::Truncated),
    }
    let len = u16::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(TransportError::Malformed("empty noise message".into()));
    }
    buf.resize(len, 0);
    if read_full(io, buf).await? != len {
        return Err(TransportError::Truncated);
    }
    Ok(())
}

fn push_msg(out: &mut Vec<u8>, msg: &[u8]) {
    debug_assert!(msg.len() <= MAX_NOISE_MSG);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

async fn write_msg<S: AsyncWrite + Unpin>(io: &mut S, msg: &[u8]) -> Result<(), TransportError> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    push_msg(&mut out, msg);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

fn builder(keys: &Keys) -> Result<snow::Builder<'_>, TransportError> {
    keys.check()?;
    Ok(snow::Builder::new(params())
        .psk(3, &keys.psk)
        .local_private_key(&keys.static_private)
        .prologue(PROLOGUE))
}

/// Handshake as the initiator (the side that dialled).
pub async fn connect<S>(mut stream: S, keys: &Keys) -> Result<SecureStream<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = builder(keys)?.build_initiator().map_err(noise_err)?;
    let mut msg = vec![0u8; MAX_NOISE_MSG];
    let mut payload = vec![0u8; MAX_NOISE_MSG];
    let mut inbuf = Vec::new();

    // -> e
    let n = hs.write_message(&[], &mut msg).map_err(noise_err)?;
    write_msg(&mut stream, &msg[..n]).await?;
    // <- e, ee, s, es
    read_msg(&mut stream, &mut inbuf, false)
        .await
        .map_err(|e| handshake_io("reading the responder's reply", e))?;
    hs.read_message(&inbuf, &mut payload)
        .map_err(|e| TransportError::Handshake(format!("bad responder message: {e}")))?;
    // -> s, se, psk
    let n = hs.write_message(&[], &mut msg).map_err(noise_err)?;
    write_msg(&mut stream, &msg[..n]).await?;
    let mut noise = hs.into_transport_mode().map_err(noise_err)?;
    // <- confirmation (the responder checked our PSK)
    read_msg(&mut stream, &mut inbuf, false)
        .await
        .map_err(|e| {
            handshake_io(
                "waiting for the responder's confirmation (wrong cluster secret?)",
                e,
            )
        })?;
    let n = noise.read_message(&inbuf, &mut payload).map_err(|_| {
        TransportError::Handshake("responder's confirmation does not decrypt".into())
    })?;
    if &payload[..n] != CONFIRM {
        return Err(TransportError::Handshake(
            "unexpected responder confirmation".into(),
        ));
    }
    SecureStream::new(stream, noise)
}

/// Handshake as the responder (the side that accepted the connection).
pub async fn accept<S>(mut stream: S, keys: &Keys) -> Result<SecureStream<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = builder(keys)?.build_responder().map_err(noise_err)?;
    let mut msg = vec![0u8; MAX_NOISE_MSG];
    let mut payload = vec![0u8; MAX_NOISE_MSG];
    let mut inbuf = Vec::new();

    // -> e
    read_msg(&mut stream, &mut inbuf, false)
        .await
        .map_err(|e| accept_io("reading the initiator's first message", e))?;
    hs.read_message(&inbuf, &mut payload)
        .map_err(|e| TransportError::Handshake(format!("bad initiator message: {e}")))?;
    // <- e, ee, s, es
    let n = hs.write_message(&[], &mut msg).map_err(noise_err)?;
    write_msg(&mut stream, &msg[..n]).await?;
    // -> s, se, psk
    read_msg(&mut stream, &mut inbuf, false)
        .await
        .map_err(|e| accept_io("reading the initiator's final message", e))?;
    hs.read_message(&inbuf, &mut payload).map_err(|_| {
        TransportError::Handshake(
            "initiator's final message does not verify (wrong cluster secret?)".into(),
        )
    })?;
    let mut noise = hs.into_transport_mode().map_err(noise_err)?;
    let n = noise.write_message(CONFIRM, &mut msg).map_err(noise_err)?;
    write_msg(&mut stream, &msg[..n]).await?;
    SecureStream::new(stream, noise)
}

/// The initiator's view of a failed read: a responder that hangs up
/// mid-handshake refused us (wrong cluster secret), so that is a handshake
/// failure; only socket errors stay i/o errors.
fn handshake_io(what: &str, e: TransportError) -> TransportError {
    match e {
        TransportError::Io(_) => e,
        other => TransportError::Handshake(format!("{what}: {other}")),
    }
}

/// The responder's view: an initiator that hangs up or stops mid-message
/// went away (counted as aborted, not as an authentication failure).
fn accept_io(what: &str, e: TransportError) -> TransportError {
    match e {
        TransportError::Io(_) | TransportError::Closed | TransportError::Truncated => e,
        other => TransportError::Handshake(format!("{what}: {other}")),
    }
}

/// An established, authenticated session. Frames are delivered whole and in
/// order; after any error the stream is poisoned and must be dropped.
pub struct SecureStream<S> {
    io: S,
    /// Shared by the two halves of a split stream ([`SecureStream::into_split`]):
    /// sending uses only the send cipher, receiving only the receive cipher;
    /// the lock is held only while encrypting or decrypting, never across an await.
    noise: Arc<Mutex<snow::TransportState>>,
    remote: [u8; 32],
    inbuf: Vec<u8>,
    plain: Vec<u8>,
    poisoned: bool,
}

impl<S> std::fmt::Debug for SecureStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureStream")
            .field("remote_static", &hex::encode(self.remote))
            .finish_non_exhaustive()
    }
}

impl<S> SecureStream<S> {
    fn new(io: S, noise: snow::TransportState) -> Result<Self, TransportError> {
        let remote: [u8; 32] = noise
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| TransportError::Handshake("peer sent no static key".into()))?;
        Ok(Self {
            io,
            noise: Arc::new(Mutex::new(noise)),
            remote,
            inbuf: Vec::new(),
            plain: vec![0u8; MAX_NOISE_MSG],
            poisoned: false,
        })
    }

    /// The peer's static X25519 public key (its transport identity).
    pub fn remote_static(&self) -> [u8; 32] {
        self.remote
    }

    fn noise(&self) -> std::sync::MutexGuard<'_, snow::TransportState> {
        self.noise.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: AsyncRead + AsyncWrite> SecureStream<S> {
    /// Splits the session into a receiving and a sending half, each usable
    /// from its own task (the multiplexed connections of [`pool`] and
    /// [`serve`]). An error on one half does not poison the other: the
    /// owner drops both.
    pub fn into_split(self) -> (SecureStream<ReadHalf<S>>, SecureStream<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.io);
        let read = SecureStream {
            io: r,
            noise: self.noise.clone(),
            remote: self.remote,
            inbuf: self.inbuf,
            plain: self.plain,
            poisoned: self.poisoned,
        };
        let write = SecureStream {
            io: w,
            noise: self.noise,
            remote: self.remote,
            inbuf: Vec::new(),
            plain: Vec::new(),
            poisoned: self.poisoned,
        };
        (read, write)
    }
}

impl<S: AsyncWrite + Unpin> SecureStream<S> {
    /// Sends one frame of at most [`MAX_FRAME`] bytes.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        if data.len() > MAX_FRAME {
            return Err(TransportError::FrameTooLarge {
                len: data.len(),
                max: MAX_FRAME,
            });
        }
        self.send_frame_unchecked(data.len() as u32, data).await
    }

    /// Encrypts `claimed_len` followed by `data` (the check on the length is
    /// the caller's: tests use this to send a lying header).
    async fn send_frame_unchecked(
        &mut self,
        claimed_len: u32,
        data: &[u8],
    ) -> Result<(), TransportError> {
        if self.poisoned {
            return Err(TransportError::Poisoned);
        }
        let mut framed = Vec::with_capacity(LEN_PREFIX + data.len());
        framed.extend_from_slice(&claimed_len.to_be_bytes());
        framed.extend_from_slice(data);
        let mut wire = Vec::with_capacity(framed.len() + framed.len() / MAX_CHUNK * 18 + 18);
        let mut msg = vec![0u8; MAX_NOISE_MSG];
        {
            let mut noise = self.noise();
            for chunk in framed.chunks(MAX_CHUNK) {
                let n = noise.write_message(chunk, &mut msg).map_err(noise_err)?;
                push_msg(&mut wire, &msg[..n]);
            }
        }
        let r = async {
            self.io.write_all(&wire).await?;
            self.io.flush().await
        }
        .await;
        if r.is_err() {
            self.poisoned = true;
        }
        Ok(r?)
    }

    /// Closes the write side (TCP FIN).
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        Ok(self.io.shutdown().await?)
    }
}

impl<S: AsyncRead + Unpin> SecureStream<S> {
    /// Receives one frame. [`TransportError::Closed`] when the peer closed the
    /// connection cleanly between frames.
    pub async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        if self.poisoned {
            return Err(TransportError::Poisoned);
        }
        let r = self.recv_inner().await;
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    async fn recv_inner(&mut self) -> Result<Vec<u8>, TransportError> {
        let first = self.read_chunk(true).await?;
        if first.len() < LEN_PREFIX {
            return Err(TransportError::Malformed(
                "frame shorter than its length prefix".into(),
            ));
        }
        let len = u32::from_be_bytes(first[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(TransportError::FrameTooLarge {
                len,
                max: MAX_FRAME,
            });
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&first[LEN_PREFIX..]);
        if out.len() > len {
            return Err(TransportError::Malformed(
                "message carries more than its frame".into(),
            ));
        }
        while out.len() < len {
            let chunk = self.read_chunk(false).await?;
            if chunk.is_empty() || out.len() + chunk.len() > len {
                return Err(TransportError::Malformed(format!(
                    "continuation of {} bytes does not fit a {len}-byte frame at {}",
                    chunk.len(),
                    out.len()
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn read_chunk(&mut self, at_boundary: bool) -> Result<Vec<u8>, TransportError> {
        match read_msg(&mut self.io, &mut self.inbuf, at_boundary).await {
            Ok(()) => {}
            Err(TransportError::Closed) if at_boundary => return Err(TransportError::Closed),
            Err(TransportError::Closed) => return Err(TransportError::Truncated),
            Err(e) => return Err(e),
        }
        if self.inbuf.len() < TAG_LEN {
            return Err(TransportError::Malformed(
                "noise message shorter than its tag".into(),
            ));
        }
        let n = self
            .noise
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_message(&self.inbuf, &mut self.plain)
            .map_err(|_| TransportError::Decrypt)?;
        Ok(self.plain[..n].to_vec())
    }
}

/// One request received by [`serve`].
#[derive(Debug, Clone)]
pub struct Request {
    pub peer_addr: SocketAddr,
    /// The peer's static public key, authenticated by the handshake.
    pub peer_static: [u8; 32],
    pub body: Vec<u8>,
}

/// One request/response exchange over a fresh connection to `addr`.
pub async fn call(addr: SocketAddr, keys: &Keys, req: &[u8]) -> Result<Vec<u8>, TransportError> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut s = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(tcp, keys))
            .await
            .map_err(|_| TransportError::Timeout("handshake"))??;
        s.send(req).await?;
        let resp = s.recv().await?;
        let _ = s.shutdown().await;
        Ok(resp)
    };
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| TransportError::Timeout("call"))?
}

/// Why inbound handshakes failed, by cause. Only `unauthenticated` means a
/// peer that does not hold the cluster secret (or speaks no Noise at all);
/// a slow or vanished peer is counted apart, so the security counter means
/// an intruder and nothing else.
#[derive(Debug, Default)]
pub struct HandshakeCounters {
    /// The handshake did not verify: wrong or no cluster secret, garbage.
    pub unauthenticated: AtomicU64,
    /// No complete handshake within [`HANDSHAKE_TIMEOUT`].
    pub timeouts: AtomicU64,
    /// The connection was closed or reset before the handshake finished.
    pub aborted: AtomicU64,
}

impl HandshakeCounters {
    fn count(&self, e: &TransportError) {
        let c = match e {
            TransportError::Io(_) | TransportError::Closed | TransportError::Truncated => {
                &self.aborted
            }
            TransportError::Timeout(_) => &self.timeouts,
            _ => &self.unauthenticated,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    fn keys(secret_byte: u8) -> Keys {
        Keys::derive(&Secret([secret_byte; 32]), Keys::generate_static().unwrap())
    }

    async fn pair(a: &Keys, b: &Keys) -> (SecureStream<DuplexStream>, SecureStream<DuplexStream>) {
        let (x, y) = duplex(1 << 20);
        let (c, s) = tokio::join!(connect(x, a), accept(y, b));
        (c.unwrap(), s.unwrap())
    }

    #[tokio::test]
    async fn roundtrip_and_identities() {
        let (a, b) = (keys(7), keys(7));
        let (mut c, mut s) = pair(&a, &b).await;
        assert_eq!(c.remote_static(), b.public_key().unwrap());
        assert_eq!(s.remote_static(), a.public_key().unwrap());
        for msg in [
            &b""[..],
            b"hello",
            &vec![0xa5; MAX_CHUNK - 4],
            &vec![1; MAX_CHUNK],
        ] {
            let (sent, got) = tokio::join!(c.send(msg), s.recv());
            sent.unwrap();
            assert_eq!(got.unwrap(), msg);
        }
        let big: Vec<u8> = (0..MAX_FRAME).map(|i| (i * 31) as u8).collect();
        let (send, recv) = tokio::join!(s.send(&big), c.recv());
        send.unwrap();
        assert_eq!(recv.unwrap(), big);
        drop(c);
        assert!(matches!(s.recv().await, Err(TransportError::Closed)));
    }

    #[tokio::test]
    async fn psk_is_derived_and_differs_per_secret() {
        assert_eq!(keys(1).psk, keys(1).psk);
        assert_ne!(keys(1).psk, keys(2).psk);
        assert_ne!(keys(1).psk, [1u8; 32]);
        assert!(!format!("{:?}", keys(1)).contains("01"));
    }

    #[tokio::test]
    async fn wrong_secret_fails_on_both_sides() {
        let (x, y) = duplex(1 << 16);
        let (k1, k2) = (keys(1), keys(2));
        let (c, s) = tokio::join!(connect(x, &k1), accept(y, &k2));
        assert!(matches!(c, Err(TransportError::Handshake(_))), "{c:?}");
        assert!(matches!(s, Err(TransportError::Handshake(_))), "{s:?}");
    }

    #[tokio::test]
    async fn bad_static_key_is_an_error() {
        let k = Keys::derive(&Secret([1; 32]), vec![1, 2, 3]);
        let (x, _y) = duplex(64);
        assert!(matches!(
            connect(x, &k).await,
            Err(TransportError::BadKey(3))
        ));
        assert!(k.public_key().is_err());
    }

    #[tokio::test]
    async fn garbage_handshakes_are_rejected() {
        // a plausible length followed by noise
        for garbage in [
            vec![0u8, 32]
                .into_iter()
                .chain([9u8; 32])
                .collect::<Vec<u8>>(),
            vec![0, 0],
            vec![0xff, 0xff, 1, 2, 3],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            vec![],
        ] {
            let (mut x, y) = duplex(1 << 16);
            x.write_all(&garbage).await.unwrap();
            drop(x);
            let r = accept(y, &keys(1)).await;
            assert!(r.is_err(), "{garbage:?}");
            // and the initiator facing a garbage responder
            let (x, mut y) = duplex(1 << 17);
            let k = keys(1);
            let (c, _) = tokio::join!(connect(x, &k), async {
                let mut first = [0u8; 34];
                let _ = y.read_exact(&mut first).await;
                y.write_all(&garbage).await.unwrap();
                drop(y);
            });
            assert!(c.is_err(), "{garbage:?}");
        }
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_both_ways() {
        let (a, b) = (keys(3), keys(3));
        let (mut c, mut s) = pair(&a, &b).await;
        let r = c.send(&vec![0; MAX_FRAME + 1]).await;
        assert!(
            matches!(r, Err(TransportError::FrameTooLarge { .. })),
            "{r:?}"
        );
        // a sender with the secret lying about the length
        c.send_frame_unchecked((MAX_FRAME + 1) as u32, b"x")
            .await
            .unwrap();
        let r = s.recv().await;
        assert!(
            matches!(r, Err(TransportError::FrameTooLarge { .. })),
            "{r:?}"
        );
        assert!(matches!(s.recv().await, Err(TransportError::Poisoned)));
        // a header claiming less than the message carries
        let (mut c, mut s) = pair(&a, &b).await;
        c.send_frame_unchecked(1, b"abc").await.unwrap();
        assert!(matches!(s.recv().await, Err(TransportError::Malformed(_))));
    }

    #[tokio::test]
    async fn truncated_streams_are_errors() {
        let (a, b) = (keys(4), keys(4));
        // frame announces 100000 bytes, only the first chunk arrives
        let (mut c, mut s) = pair(&a, &b).await;
        c.send_frame_unchecked(100_000, &vec![0; MAX_CHUNK - LEN_PREFIX])
            .await
            .unwrap();
        drop(c);
        assert!(matches!(s.recv().await, Err(TransportError::Truncated)));
        // a noise message cut in the middle
        let (x, y) = duplex(1 << 17);
        let (c, s) = tokio::join!(connect(x, &a), accept(y, &b));
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let mut msg = vec![0u8; MAX_NOISE_MSG];
        let n = c
            .noise()
            .write_message(b"\0\0\0\x05hello", &mut msg)
            .unwrap();
        let mut wire = Vec::new();
        push_msg(&mut wire, &msg[..n]);
        c.io.write_all(&wire[..wire.len() - 3]).await.unwrap();
        drop(c);
        assert!(matches!(s.recv().await, Err(TransportError::Truncated)));
    }

    #[tokio::test]
    async fn tampered_ciphertext_is_rejected() {
        let (a, b) = (keys(5), keys(5));
        let (mut c, mut s) = pair(&a, &b).await;
        let mut msg = vec![0u8; MAX_NOISE_MSG];
        let n = c.noise().write_message(b"\0\0\0\x01x", &mut msg).unwrap();
        msg[3] ^= 1;
        let mut wire = Vec::new();
        push_msg(&mut wire, &msg[..n]);
        c.io.write_all(&wire).await.unwrap();
        assert!(matches!(s.recv().await, Err(TransportError::Decrypt)));
        // short message
        let (mut c, mut s) = pair(&a, &b).await;
        c.io.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
        assert!(matches!(s.recv().await, Err(TransportError::Malformed(_))));
    }
}
