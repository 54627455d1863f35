//! The client side of persistent connections: one authenticated,
//! multiplexed connection per peer address, shared by every request to it.
//!
//! [`Pool::call`] sends one request and waits for its response (at most
//! [`CALL_TIMEOUT`]; callers may wrap it in a shorter timeout, as openraft
//! does). Requests to the same peer run concurrently over its one
//! connection ([`super::mux`]: each frame carries a request id).
//!
//! Life of a connection:
//! - opened on the first request to a peer: TCP connect, the Noise handshake
//!   with the responder's confirmation (exactly as [`super::call`]), then
//!   the [`mux::HELLO`] exchange, all within [`HANDSHAKE_TIMEOUT`], in a
//!   task of its own (a request that gives up, e.g. openraft's AppendEntries
//!   after one heartbeat interval, does not abort the handshake); requests
//!   arriving meanwhile wait for that one attempt;
//! - a failed attempt makes the next ones wait: requests to that peer fail
//!   at once ([`TransportError::Unavailable`]) until 50 ms, doubling up to
//!   [`MAX_BACKOFF`], have passed since the failure; a success resets it;
//! - broken when a frame cannot be sent or received (the peer closed it, its
//!   process restarted, a decryption failed): every request waiting on it
//!   fails with [`TransportError::Unavailable`] and the next request opens a
//!   new connection;
//! - broken as well when a request times out (its caller gave up) while
//!   nothing at all arrived on the connection since it was sent and at
//!   least [`STALL`] has passed: a peer that vanished without closing (power
//!   loss, a cut cable) is not waited for until TCP gives up;
//! - closed (FIN) once no request is waiting and none was sent or answered
//!   for [`CLIENT_IDLE`], well before the server's own [`super::IDLE_TIMEOUT`].
//!
//! A peer that answers [`mux::HELLO`] with anything but [`mux::HELLO_ACK`]
//! (an agent from before multiplexing) gets one connection per request
//! ([`super::call`]) for [`LEGACY_RECHECK`], then the pool asks again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::AbortHandle;

use super::{
    call, connect, mux, Keys, SecureStream, TransportError, CALL_TIMEOUT, HANDSHAKE_TIMEOUT,
};

/// Longest wait between two connection attempts to a failing peer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// First wait after a failed attempt (doubled per further failure).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// A connection with no request for this long is closed.
pub const CLIENT_IDLE: Duration = Duration::from_secs(60);
/// A timed-out request with nothing received for this long breaks the connection.
pub const STALL: Duration = Duration::from_secs(1);
/// How long a peer without multiplexing is called one connection per request.
pub const LEGACY_RECHECK: Duration = Duration::from_secs(60);

/// Counters of a [`Pool`], for tests and the bench.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections opened (handshake and mux exchange completed).
    pub opened: AtomicU64,
    /// Connection attempts that failed (connect, handshake, mux exchange).
    pub failed: AtomicU64,
    /// Established connections that broke (not counting idle closes).
    pub broken: AtomicU64,
    /// Connections closed after [`CLIENT_IDLE`] without requests.
    pub idle_closed: AtomicU64,
}

/// Persistent connections to peers, keyed by address.
pub struct Pool {
    keys: Arc<Keys>,
    peers: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot>>>>,
    stats: Arc<PoolStats>,
    /// [`CLIENT_IDLE`] (shorter in tests).
    idle: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What the pool knows about one peer address.
#[derive(Default)]
struct Slot {
    session: Option<Arc<Session>>,
    /// Consecutive failed attempts.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
    legacy_until: Option<Instant>,
}

enum Conn {
    Mux(Arc<Session>),
    Legacy,
}

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

impl Pool {
    pub fn new(keys: Arc<Keys>) -> Self {
        Pool {
            keys,
            peers: Mutex::new(HashMap::new()),
            stats: Arc::default(),
            idle: CLIENT_IDLE,
        }
    }

    /// A pool closing connections idle for `idle` instead of [`CLIENT_IDLE`].
    #[cfg(test)]
    pub(crate) fn with_idle(keys: Arc<Keys>, idle: Duration) -> Self {
        let mut p = Pool::new(keys);
        p.idle = idle;
        p
    }

    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// One request/response exchange with `addr` over its persistent
    /// connection (opened or reopened as needed), within [`CALL_TIMEOUT`].
    pub async fn call(&self, addr: SocketAddr, req: &[u8]) -> Result<Vec<u8>, TransportError> {
        if req.len() > mux::MAX_BODY {
            return Err(TransportError::FrameTooLarge {
                len: req.len(),
                max: mux::MAX_BODY,
            });
        }
        let fut = async {
            // A request not sent because its connection closed just then
            // (idle, broken) is retried once on a new connection.
            for _ in 0..2 {
                match self.conn(addr).await? {
                    Conn::Legacy => return call(addr, &self.keys, req).await,
                    Conn::Mux(s) => match s.call(req).await {
                        Err(Unsent) => continue,
                        Ok(r) => return r,
                    },
                }
            }
            Err(TransportError::Unavailable(format!(
                "{addr}: connection closed before the request was sent"
            )))
        };
        tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .map_err(|_| TransportError::Timeout("call"))?
    }

    fn slot(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<Slot>> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default()
            .clone()
    }

    /// The open connection to `addr`, or a new one.
    async fn conn(&self, addr: SocketAddr) -> Result<Conn, TransportError> {
        let slot = self.slot(addr);
        if let Some(s) = slot.lock().await.session.as_ref().filter(|s| s.is_open()) {
            return Ok(Conn::Mux(s.clone()));
        }
        // Connecting runs in a task of its own: a caller giving up (openraft
        // allows an AppendEntries one heartbeat interval) does not abort
        // the handshake, and the next request finds the connection ready.
        let connecting = tokio::spawn(connect_slot(
            slot,
            addr,
            self.keys.clone(),
            self.stats.clone(),
            self.idle,
        ));
        connecting
            .await
            .map_err(|e| TransportError::Unavailable(format!("{addr}: connecting: {e}")))?
    }
}

/// Under the peer's slot: the open connection, or (unless backing off) a
/// new one.
async fn connect_slot(
    slot: Arc<tokio::sync::Mutex<Slot>>,
    addr: SocketAddr,
    keys: Arc<Keys>,
    stats: Arc<PoolStats>,
    idle: Duration,
) -> Result<Conn, TransportError> {
    let mut slot = slot.lock().await;
    if let Some(s) = &slot.session {
        if s.is_open() {
            return Ok(Conn::Mux(s.clone()));
        }
        slot.session = None;
    }
    let now = Instant::now();
    if slot.legacy_until.is_some_and(|t| now < t) {
        return Ok(Conn::Legacy);
    }
    if let Some(at) = slot.retry_at.filter(|at| now < *at) {
        return Err(TransportError::Unavailable(format!(
            "{addr}: reconnecting in {:?} after {} failed attempt(s), last: {}",
            at - now,
            slot.failures,
            slot.last_error
        )));
    }
    let e = match tokio::time::timeout(HANDSHAKE_TIMEOUT, open(addr, &keys)).await {
        Ok(Ok(Some(stream))) => {
            if slot.failures > 0 {
                tracing::info!(%addr, failed_attempts = slot.failures, "transport: peer reachable again");
            }
            slot.failures = 0;
            slot.retry_at = None;
            slot.legacy_until = None;
            stats.opened.fetch_add(1, Ordering::Relaxed);
            let s = Session::start(stream, stats, idle);
            slot.session = Some(s.clone());
            tracing::debug!(%addr, "transport: connection opened");
            return Ok(Conn::Mux(s));
        }
        Ok(Ok(None)) => {
            tracing::info!(%addr, "transport: peer without multiplexing, one connection per request");
            slot.legacy_until = Some(now + LEGACY_RECHECK);
            return Ok(Conn::Legacy);
        }
        Ok(Err(e)) => e,
        Err(_) => TransportError::Timeout("handshake"),
    };
    stats.failed.fetch_add(1, Ordering::Relaxed);
    slot.failures = slot.failures.saturating_add(1);
    slot.retry_at = Some(Instant::now() + backoff(slot.failures));
    slot.last_error = e.to_string();
    // Once per outage at info (openraft's own per-retry lines are filtered
    // out of the console, see the agent's log filter); every retry at debug.
    if slot.failures == 1 {
        tracing::info!(%addr, error = %e, "transport: peer unreachable, retrying with backoff");
    } else {
        tracing::debug!(%addr, error = %e, failures = slot.failures, "transport: connecting failed");
    }
    Err(e)
}

impl Drop for Pool {
    fn drop(&mut self) {
        let peers = self.peers.get_mut().unwrap_or_else(|e| e.into_inner());
        for slot in peers.values() {
            if let Ok(slot) = slot.try_lock() {
                if let Some(s) = &slot.session {
                    s.close();
                }
            }
        }
    }
}

type Stream = SecureStream<TcpStream>;

/// Connects, handshakes and asks for multiplexing; `None`: the peer does
/// not multiplex.
async fn open(addr: SocketAddr, keys: &Keys) -> Result<Option<Stream>, TransportError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = connect(tcp, keys).await?;
    s.send(mux::HELLO).await?;
    let answer = s.recv().await?;
    Ok((answer == mux::HELLO_ACK).then_some(s))
}

/// The request was not sent: its connection had just closed.
struct Unsent;

type Reply = oneshot::Sender<Result<Vec<u8>, TransportError>>;

struct State {
    open: bool,
    next_id: u64,
    pending: HashMap<u64, Reply>,
    /// Last frame received, and last frame sent or received.
    last_recv: Instant,
    last_active: Instant,
}

/// One multiplexed connection: a writer task sending queued frames, a
/// reader task routing responses to their waiting requests.
struct Session {
    state: Mutex<State>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// Wakes the writer to close the connection.
    stop: Notify,
    reader: Mutex<Option<AbortHandle>>,
    stats: Arc<PoolStats>,
}

impl Session {
    fn start(stream: Stream, stats: Arc<PoolStats>, idle: Duration) -> Arc<Self> {
        let (rx, tx) = stream.into_split();
        let (out, queue) = mpsc::unbounded_channel();
        let now = Instant::now();
        let s = Arc::new(Session {
            state: Mutex::new(State {
                open: true,
                next_id: 0,
                pending: HashMap::new(),
                last_recv: now,
                last_active: now,
            }),
            out,
            stop: Notify::new(),
            reader: Mutex::new(None),
            stats,
        });
        let reader = tokio::spawn(read_loop(s.clone(), rx));
        *s.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader.abort_handle());
        tokio::spawn(write_loop(s.clone(), tx, queue, idle));
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Marks the connection closed and fails every waiting request with
    /// `why`; the writer and reader stop.
    fn fail(&self, why: &str) {
        let pending = {
            let mut st = self.lock();
            if st.open {
                self.stats.broken.fetch_add(1, Ordering::Relaxed);
            }
            st.open = false;
            std::mem::take(&mut st.pending)
        };
        for (_, reply) in pending {
            let _ = reply.send(Err(TransportError::Unavailable(format!(
                "connection lost: {why}"
            ))));
        }
        self.close();
    }

    /// Stops both tasks (the socket closes with them).
    fn close(&self) {
        self.lock().open = false;
        self.stop.notify_one();
        if let Some(r) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.abort();
        }
    }

    async fn call(&self, req: &[u8]) -> Result<Result<Vec<u8>, TransportError>, Unsent> {
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut st = self.lock();
            if !st.open {
                return Err(Unsent);
            }
            let id = st.next_id;
            st.next_id += 1;
            // Queued under the lock: the writer's idle check sees either
            // no request (and closes) or this one (and stays).
            if self.out.send(mux::tag(id, req)).is_err() {
                st.open = false;
                return Err(Unsent);
            }
            st.pending.insert(id, reply);
            st.last_active = Instant::now();
            id
        };
        let guard = Waiting {
            session: self,
            id,
            sent: Instant::now(),
        };
        let r = match answer.await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Unavailable("connection lost".into())),
        };
        std::mem::forget(guard);
        Ok(r)
    }
}

/// A request waiting for its answer; dropped early when its caller gives
/// up (a timeout), which may reveal a dead connection.
struct Waiting<'a> {
    session: &'a Session,
    id: u64,
    sent: Instant,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let stalled = {
            let mut st = self.session.lock();
            st.pending.remove(&self.id);
            st.open && st.last_recv < self.sent && self.sent.elapsed() >= STALL
        };
        if stalled {
            tracing::debug!(
                "transport: nothing received for {:?} while a request waited, dropping the connection",
                self.sent.elapsed()
            );
            self.session.fail("the peer stopped answering");
        }
    }
}

async fn read_loop(s: Arc<Session>, mut rx: SecureStream<ReadHalf<TcpStream>>) {
    let why = loop {
        let frame = match rx.recv().await {
            Ok(f) => f,
            Err(e) => break e.to_string(),
        };
        let (id, body) = match mux::untag(frame) {
            Ok(x) => x,
            Err(e) => break e.to_string(),
        };
        let reply = {
            let mut st = s.lock();
            let now = Instant::now();
            st.last_recv = now;
            st.last_active = now;
            st.pending.remove(&id)
        };
        // None: its caller gave up already.
        if let Some(reply) = reply {
            let _ = reply.send(Ok(body));
        }
    };
    tracing::debug!(error = %why, "transport: connection ended");
    s.fail(&why);
}

async fn write_loop(
    s: Arc<Session>,
    mut tx: SecureStream<WriteHalf<TcpStream>>,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    idle: Duration,
) {
    loop {
        let idle_for = idle.saturating_sub(s.lock().last_active.elapsed());
        tokio::select! {
            frame = queue.recv() => {
                let Some(frame) = frame else { break };
                if let Err(e) = tx.send(&frame).await {
                    s.fail(&e.to_string());
                    break;
                }
            }
            _ = s.stop.notified() => break,
            _ = tokio::time::sleep(idle_for) => {
                let mut st = s.lock();
                if st.pending.is_empty() && st.last_active.elapsed() >= idle {
                    st.open = false;
                    s.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    let _ = tx.shutdown().await;
    // The reader sees the server close its side, or is aborted by fail().
}
