//! [`Pool`] against [`serve`] over loopback TCP: many requests over one
//! connection, a broken connection and a restarted server reached again, an
//! outsider counted and refused, a server from before multiplexing.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::pool::{MAX_BACKOFF, STALL};
use super::*;
use crate::cluster::Secret;

fn keys(secret_byte: u8) -> Keys {
    Keys::derive(&Secret([secret_byte; 32]), Keys::generate_static().unwrap())
}

/// Client ports the server saw (one per connection).
type Seen = Arc<Mutex<BTreeSet<u16>>>;

/// A boxed handler future.
type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>;

/// A server answering `<body>` with `<first 4 bytes of its static key><body>`,
/// after sleeping `<n>` ms for a body `sleep:<n>`; records client ports.
fn handler(server: &Keys, seen: Seen) -> impl Fn(Request) -> Answer + Send + Sync + 'static {
    let me = server.public_key().unwrap();
    move |req: Request| {
        seen.lock().unwrap().insert(req.peer_addr.port());
        Box::pin(async move {
            if let Some(ms) = std::str::from_utf8(&req.body)
                .ok()
                .and_then(|b| b.strip_prefix("sleep:"))
                .and_then(|n| n.parse().ok())
            {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut r = me[..4].to_vec();
            r.extend_from_slice(&req.body);
            r
        })
    }
}

async fn server(keys: &Keys) -> (SocketAddr, Arc<HandshakeCounters>, Seen, JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(HandshakeCounters::default());
    let seen = Seen::default();
    let task = tokio::spawn(serve(
        listener,
        Arc::new(keys.clone()),
        counters.clone(),
        handler(keys, seen.clone()),
    ));
    (addr, counters, seen, task)
}

/// A server in its own runtime on its own thread: dropping it closes every
/// connection it had, like a process that exits.
struct Process {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    fn start(addr: SocketAddr, keys: Keys) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind(addr).await.unwrap();
                ready_tx.send(()).unwrap();
                let counters = Arc::new(HandshakeCounters::default());
                let k = Arc::new(keys.clone());
                tokio::select! {
                    _ = serve(listener, k, counters, handler(&keys, Seen::default())) => {}
                    _ = stopped => {}
                }
            });
            // dropping the runtime cancels every connection task
        });
        ready.recv().unwrap();
        Process {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Calls until one succeeds (a reconnect may first wait out the backoff).
async fn call_until_ok(pool: &Pool, addr: SocketAddr, body: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match pool.call(addr, body).await {
            Ok(r) => return r,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no answer from {addr} within 10 s: {e}"),
        }
    }
}

#[tokio::test]
async fn many_concurrent_requests_share_one_connection() {
    let k = keys(1);
    let (addr, counters, seen, task) = server(&k).await;
    let pool = Arc::new(Pool::new(Arc::new(keys(1))));
    let id = k.public_key().unwrap();
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let body = if i % 50 == 0 {
                    vec![i as u8; 300_000]
                } else {
                    format!("req {i}").into_bytes()
                };
                (body.clone(), pool.call(addr, &body).await.unwrap())
            })
        })
        .collect();
    for c in calls {
        let (body, resp) = c.await.unwrap();
        assert_eq!(&resp[..4], &id[..4]);
        assert_eq!(&resp[4..], &body[..]);
    }
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 1);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "one client port: one connection"
    );

    // multiplexed, not one at a time: a quick request is answered while a
    // slow one on the same connection is still running
    let slow = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(addr, b"sleep:1500").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    assert_eq!(&pool.call(addr, b"quick").await.unwrap()[4..], b"quick");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert!(!slow.is_finished());
    assert_eq!(&slow.await.unwrap().unwrap()[4..], b"sleep:1500");
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 1);
    assert_eq!(seen.lock().unwrap().len(), 1);

    // too large for one multiplexed frame: refused before sending, the
    // connection stays
    let r = pool.call(addr, &vec![0; mux::MAX_BODY + 1]).await;
    assert!(
        matches!(r, Err(TransportError::FrameTooLarge { .. })),
        "{r:?}"
    );
    assert!(pool.call(addr, &vec![1; mux::MAX_BODY - 4]).await.is_ok());
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 1);

    let c = &counters;
    assert_eq!(c.unauthenticated.load(Ordering::Relaxed), 0);
    assert_eq!(c.aborted.load(Ordering::Relaxed), 0);
    task.abort();
}

#[tokio::test]
async fn one_shot_clients_are_still_served() {
    let k = keys(2);
    let (addr, _, seen, task) = server(&k).await;
    // `habuild cluster status`: one connection per request
    for i in 0..3u8 {
        let r = call(addr, &keys(2), &[b'{', i]).await.unwrap();
        assert_eq!(&r[4..], &[b'{', i]);
    }
    assert_eq!(seen.lock().unwrap().len(), 3);
    // and a plain (untagged) connection carrying several requests in order
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = connect(tcp, &keys(2)).await.unwrap();
    for body in [&b"\"Status\""[..], b"{}"] {
        s.send(body).await.unwrap();
        assert_eq!(&s.recv().await.unwrap()[4..], body);
    }
    task.abort();
}

/// A TCP relay between the pool and a server whose connections the test
/// can cut while the server keeps running.
struct Relay {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let task = tokio::spawn({
            let conns = conns.clone();
            async move {
                while let Ok((mut a, _)) = listener.accept().await {
                    conns.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut b) = TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                        }
                    }));
                }
            }
        });
        Relay { addr, conns, task }
    }

    /// Drops every relayed connection (both sockets close).
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

#[tokio::test]
async fn a_broken_connection_is_reopened() {
    let k = keys(3);
    let (server_addr, counters, seen, task) = server(&k).await;
    let relay = Relay::start(server_addr).await;
    let pool = Pool::new(Arc::new(keys(3)));
    assert_eq!(&pool.call(relay.addr, b"one").await.unwrap()[4..], b"one");
    // a request in flight when the connection breaks fails, not hangs
    let slow = pool.call(relay.addr, b"sleep:2000");
    let cut = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        relay.cut();
    };
    let (r, ()) = tokio::join!(slow, cut);
    assert!(matches!(r, Err(TransportError::Unavailable(_))), "{r:?}");
    // the next request opens a new connection
    assert_eq!(&call_until_ok(&pool, relay.addr, b"two").await[4..], b"two");
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 2);
    assert_eq!(pool.stats().broken.load(Ordering::Relaxed), 1);
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(counters.unauthenticated.load(Ordering::Relaxed), 0);
    relay.task.abort();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reached_again() {
    let addr = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let (old, new) = (keys(4), keys(4));
    let pool = Pool::new(Arc::new(keys(4)));
    let process = Process::start(addr, old.clone());
    let r = pool.call(addr, b"hello").await.unwrap();
    assert_eq!(&r[..4], &old.public_key().unwrap()[..4]);
    drop(process);
    // down: refused (then in backoff), never a hang
    let r = pool.call(addr, b"anyone?").await;
    assert!(
        matches!(
            r,
            Err(TransportError::Io(_) | TransportError::Unavailable(_))
        ),
        "{r:?}"
    );
    // a new process (new static key) on the same address
    let _process = Process::start(addr, new.clone());
    let r = call_until_ok(&pool, addr, b"hello again").await;
    assert_eq!(&r[..4], &new.public_key().unwrap()[..4]);
    assert_eq!(&r[4..], b"hello again");
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn an_outsider_is_counted_and_refused() {
    let k = keys(5);
    let (addr, counters, seen, task) = server(&k).await;
    let outsider = Pool::new(Arc::new(keys(6)));
    let r = outsider.call(addr, b"let me in").await;
    assert!(matches!(r, Err(TransportError::Handshake(_))), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.unauthenticated.load(Ordering::Relaxed) < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counters.unauthenticated.load(Ordering::Relaxed), 1);
    // right after a failure the pool backs off instead of hammering: of
    // quick repeated calls, only those after a backoff reach the server
    let mut attempts = 1;
    let mut refused_at_home = 0;
    for _ in 0..20 {
        match outsider.call(addr, b"let me in").await {
            Err(TransportError::Handshake(_)) => attempts += 1,
            Err(TransportError::Unavailable(_)) => refused_at_home += 1,
            r => panic!("{r:?}"),
        }
    }
    assert!(refused_at_home > 0);
    // once the backoff has passed it tries again, and is counted again
    tokio::time::sleep(MAX_BACKOFF).await;
    let r = outsider.call(addr, b"let me in").await;
    assert!(matches!(r, Err(TransportError::Handshake(_))), "{r:?}");
    attempts += 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.unauthenticated.load(Ordering::Relaxed) < attempts && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counters.unauthenticated.load(Ordering::Relaxed), attempts);
    assert_eq!(outsider.stats().opened.load(Ordering::Relaxed), 0);
    assert!(
        seen.lock().unwrap().is_empty(),
        "no request reached the handler"
    );
    // members are still served
    let member = Pool::new(Arc::new(keys(5)));
    assert_eq!(&member.call(addr, b"hi").await.unwrap()[4..], b"hi");
    task.abort();
}

#[tokio::test]
async fn a_peer_without_multiplexing_gets_one_connection_per_request() {
    // what `serve` did before multiplexing: every frame is a request,
    // answered in order (the HELLO, too, as an undecodable request)
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let k = keys(7);
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let task = tokio::spawn({
        let (k, accepted) = (k.clone(), accepted.clone());
        async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let k = k.clone();
                tokio::spawn(async move {
                    let mut s = accept(tcp, &k).await.unwrap();
                    while let Ok(body) = s.recv().await {
                        let mut r = b"old:".to_vec();
                        r.extend_from_slice(&body);
                        if s.send(&r).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    let pool = Pool::new(Arc::new(keys(7)));
    for body in [&b"a"[..], b"b", b"c"] {
        assert_eq!(&pool.call(addr, body).await.unwrap()[4..], body);
    }
    // the HELLO probe, then one connection per request
    assert_eq!(accepted.load(Ordering::Relaxed), 4);
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 0);
    task.abort();
}

#[tokio::test]
async fn a_timed_out_request_breaks_only_a_silent_connection() {
    let k = keys(8);
    let (addr, _, seen, task) = server(&k).await;
    let pool = Arc::new(Pool::new(Arc::new(keys(8))));
    assert!(pool.call(addr, b"warm up").await.is_ok());
    // the caller gives up on a slow request while other answers keep
    // arriving: the connection is fine and stays
    let chatter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for _ in 0..25 {
                assert!(pool.call(addr, b"tick").await.is_ok());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let r = tokio::time::timeout(STALL + STALL / 5, pool.call(addr, b"sleep:60000")).await;
    assert!(r.is_err(), "the per-request timeout applies");
    chatter.await.unwrap();
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 1);
    assert_eq!(pool.stats().broken.load(Ordering::Relaxed), 0);
    // nothing at all arrives while a request waits past STALL: a peer that
    // vanished without closing; the connection is dropped and reopened
    let r = tokio::time::timeout(STALL + STALL / 5, pool.call(addr, b"sleep:60000")).await;
    assert!(r.is_err());
    assert_eq!(pool.stats().broken.load(Ordering::Relaxed), 1);
    assert_eq!(&pool.call(addr, b"again").await.unwrap()[4..], b"again");
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 2);
    assert_eq!(seen.lock().unwrap().len(), 2);
    task.abort();
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_reopened_on_demand() {
    let k = keys(9);
    let (addr, counters, seen, task) = server(&k).await;
    let pool = Pool::with_idle(Arc::new(keys(9)), Duration::from_millis(300));
    assert!(pool.call(addr, b"one").await.is_ok());
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.stats().idle_closed.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.stats().idle_closed.load(Ordering::Relaxed), 1);
    assert_eq!(&pool.call(addr, b"two").await.unwrap()[4..], b"two");
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 2);
    assert_eq!(pool.stats().broken.load(Ordering::Relaxed), 0);
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(counters.aborted.load(Ordering::Relaxed), 0);
    task.abort();
}
