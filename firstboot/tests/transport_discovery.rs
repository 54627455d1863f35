//! Transport over loopback TCP, and mDNS discovery between real processes in
//! network namespaces this test creates (nothing is sent on the host's own
//! interfaces: mDNS runs only on veths inside the test's namespaces).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firstboot::cluster::Secret;
use firstboot::discovery::{
    Announcement, Discovery, DiscoveryConfig, Interfaces, MdnsKey, PeerEvent, RaftState,
};
use firstboot::state::NodeId;
use firstboot::transport::{self, Keys, TransportError};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The 16 bytes the agent announces for a voter set: its bootstrap hash
/// (`consensus::bootstrap::voter_set_hash`, the one the agent uses).
fn voter_bytes(ids: &[NodeId]) -> [u8; 16] {
    let set = ids.iter().copied().collect();
    let h = firstboot::consensus::bootstrap::voter_set_hash(&set);
    hex::decode(h).unwrap().try_into().unwrap()
}

fn keys(secret: u8) -> Keys {
    Keys::derive(&Secret([secret; 32]), Keys::generate_static().unwrap())
}

async fn wait_for(counter: &AtomicU64, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = counter.load(Ordering::Relaxed);
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serve_and_call_over_loopback() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_keys = keys(1);
    let counters = Arc::new(transport::HandshakeCounters::default());
    let server = tokio::spawn(transport::serve(
        listener,
        Arc::new(server_keys.clone()),
        counters.clone(),
        |req: transport::Request| async move {
            let mut resp = b"pong:".to_vec();
            resp.extend_from_slice(&req.body);
            resp.extend_from_slice(&req.peer_static[..4]);
            resp
        },
    ));

    // a member: right secret
    let member = keys(1);
    let resp = transport::call(addr, &member, b"ping").await.unwrap();
    let mut want = b"pong:ping".to_vec();
    want.extend_from_slice(&member.public_key().unwrap()[..4]);
    assert_eq!(resp, want);

    // the agents' persistent connection: many concurrent requests over one
    // connection, beside the one-shot clients
    let pool = Arc::new(transport::Pool::new(Arc::new(member.clone())));
    let calls: Vec<_> = (0..20u8)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { (i, pool.call(addr, &[i; 3]).await.unwrap()) })
        })
        .collect();
    for c in calls {
        let (i, resp) = c.await.unwrap();
        assert_eq!(&resp[..5], b"pong:");
        assert_eq!(&resp[5..8], &[i; 3]);
    }
    assert_eq!(pool.stats().opened.load(Ordering::Relaxed), 1);

    // a long-lived connection carrying several requests, one of them large
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = transport::connect(tcp, &member).await.unwrap();
    assert_eq!(s.remote_static(), server_keys.public_key().unwrap());
    for body in [vec![7u8; 10], vec![9u8; 700_000]] {
        s.send(&body).await.unwrap();
        let r = s.recv().await.unwrap();
        assert_eq!(&r[5..5 + body.len()], &body[..]);
    }
    drop(s);
    let unauth = &counters.unauthenticated;
    let aborted = &counters.aborted;
    assert_eq!(unauth.load(Ordering::Relaxed), 0);
    assert_eq!(aborted.load(Ordering::Relaxed), 0);

    // an outsider: wrong secret, counted as unauthenticated
    let r = transport::call(addr, &keys(2), b"ping").await;
    assert!(matches!(r, Err(TransportError::Handshake(_))), "{r:?}");
    assert_eq!(wait_for(unauth, 1).await, 1);

    // a connection that goes away mid-handshake (a port scan, a peer that
    // crashed): aborted, not an intruder
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    raw.shutdown().await.unwrap();
    drop(raw);
    assert_eq!(wait_for(aborted, 1).await, 1);
    drop(TcpStream::connect(addr).await.unwrap());
    assert_eq!(wait_for(aborted, 2).await, 2);

    // the server still serves members afterwards
    assert!(transport::call(addr, &member, b"again").await.is_ok());
    assert_eq!(unauth.load(Ordering::Relaxed), 1);
    assert_eq!(counters.timeouts.load(Ordering::Relaxed), 0);
    server.abort();
}

// ---------------------------------------------------------------------------
// mDNS in network namespaces.

const ROLE_ENV: &str = "HABUILD_TEST_MDNS_ROLE";
const GOOD_IDS: [NodeId; 3] = [0x1111, 0x2222, 0x3333];
const IMPOSTOR_ID: NodeId = 0x6666;
const OTHER_ID: NodeId = 0x7777;
const LAB_SECRET: u8 = 0x42;

/// One agent process: `index cluster secret-byte node-id ip`.
#[derive(Debug, Clone)]
struct Role {
    cluster: String,
    secret: u8,
    id: NodeId,
    ip: Ipv4Addr,
}

impl Role {
    fn encode(&self) -> String {
        format!("{} {} {:x} {}", self.cluster, self.secret, self.id, self.ip)
    }
    fn decode(s: &str) -> Self {
        let f: Vec<&str> = s.split(' ').collect();
        Self {
            cluster: f[0].into(),
            secret: f[1].parse().unwrap(),
            id: u64::from_str_radix(f[2], 16).unwrap(),
            ip: f[3].parse().unwrap(),
        }
    }
}

/// Not a test by itself: the body of each agent process that
/// `mdns_in_namespaces` starts inside a namespace (does nothing otherwise).
#[test]
fn mdns_role_helper() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let role = Role::decode(&role);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run_role(role));
}

async fn run_role(role: Role) {
    let out = |line: String| {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "HB {line}");
        let _ = o.flush();
    };
    let good = role.cluster == "lab" && role.secret == LAB_SECRET;
    let leader = GOOD_IDS[0];
    let ann = Announcement {
        cluster: role.cluster.clone(),
        node: role.id,
        port: 7000 + (role.id as u16 & 0xff),
        state: RaftState::Forming {
            voters: voter_bytes(&GOOD_IDS),
        },
    };
    let config = DiscoveryConfig {
        key: MdnsKey::derive(&Secret([role.secret; 32])),
        interfaces: Interfaces::Only(vec!["eth0".into()]),
        mdns_port: mdns_sd::MDNS_PORT,
    };
    let (d, mut rx) = Discovery::start(config, ann.clone(), vec![IpAddr::V4(role.ip)]).unwrap();
    out("READY".into());

    // the parent closes our stdin to stop us
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        let _ = stop_tx.send(());
    });

    let mut seen: BTreeMap<NodeId, RaftState> = BTreeMap::new();
    let (mut updated, mut done) = (false, false);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut stop_rx => break,
            ev = rx.recv() => match ev {
                Some(PeerEvent::Seen(p)) => {
                    out(format!("SEEN {:x} {} {:?} {}", p.id, p.state, p.addrs, p.port));
                    seen.insert(p.id, p.state);
                }
                Some(PeerEvent::Gone(id)) => {
                    out(format!("GONE {id:x}"));
                    seen.remove(&id);
                }
                None => break,
            },
            _ = tick.tick() => {
                if !good || done {
                    continue;
                }
                let others: Vec<NodeId> =
                    GOOD_IDS.iter().copied().filter(|i| *i != role.id).collect();
                let all_seen = others.iter().all(|i| seen.contains_key(i));
                if role.id == leader && all_seen && !updated {
                    d.update(Announcement { state: RaftState::Leader, ..ann.clone() }).unwrap();
                    updated = true;
                    out("UPDATED leader".into());
                }
                let leader_ok = role.id == leader || seen.get(&leader) == Some(&RaftState::Leader);
                let st = d.stats();
                if all_seen && leader_ok && st.rejected.bad_mac >= 1 && st.rejected.other_cluster >= 1 {
                    done = true;
                    out("DONE".into());
                }
            }
        }
    }
    let st = d.stats();
    out(format!(
        "STATS bad_mac={} other_cluster={} malformed={} total={} last_minute={} dropped={}",
        st.rejected.bad_mac,
        st.rejected.other_cluster,
        st.rejected.malformed,
        st.announcements_total,
        st.announcements_last_minute,
        st.dropped_events
    ));
    d.shutdown();
    out("EXIT".into());
}

/// Namespaces `hbdisc<pid>-<n>`: the bridge's and one per role (testlab).
const NS_PREFIX: &str = "hbdisc";

#[test]
fn mdns_in_namespaces() {
    if std::env::var(ROLE_ENV).is_ok() {
        return; // we are a helper process
    }
    let roles: Vec<Role> = GOOD_IDS
        .iter()
        .map(|id| ("lab", LAB_SECRET, *id))
        .chain([("lab", 0x99, IMPOSTOR_ID), ("prod", 0x55, OTHER_ID)])
        .enumerate()
        .map(|(i, (cluster, secret, id))| Role {
            cluster: cluster.into(),
            secret,
            id,
            ip: Ipv4Addr::new(10, 88, 0, 10 + i as u8),
        })
        .collect();

    // Never skipped: a test that cannot run fails and says what is missing.
    // Removed on every path (Drop also runs while unwinding from a failed
    // assertion); stale namespaces of killed runs are swept first.
    let lab =
        testlab::Lab::new(NS_PREFIX, [10, 88, 0], roles.len()).unwrap_or_else(|e| panic!("{e}"));
    for (i, role) in roles.iter().enumerate() {
        assert_eq!(
            lab.node_ip(i),
            role.ip,
            "the lab's addresses are the roles'"
        );
    }
    // Dropped before the lab: killed and reaped.
    let mut children: Vec<testlab::ChildGuard> = Vec::new();

    let exe = std::env::current_exe().unwrap();
    let outputs: Vec<Arc<Mutex<Vec<String>>>> = (0..roles.len()).map(|_| Arc::default()).collect();
    let mut stdins: Vec<ChildStdin> = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let mut cmd: Command = lab.host(i).exec(&exe);
        let mut child: Child = cmd
            .args([
                "--exact",
                "mdns_role_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, role.encode())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        stdins.push(child.stdin.take().unwrap());
        let idx = children.len();
        let sink = outputs[idx].clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(l) = line.strip_prefix("HB ") {
                    sink.lock().unwrap().push(l.to_string());
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let sink = outputs[idx].clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        children.push(testlab::ChildGuard::new(child));
    }

    let report = |outputs: &[Arc<Mutex<Vec<String>>>]| -> String {
        let mut s = String::new();
        for (role, o) in roles.iter().zip(outputs) {
            s.push_str(&format!("--- {role:?}\n"));
            for l in o.lock().unwrap().iter() {
                s.push_str(&format!("  {l}\n"));
            }
        }
        s
    };

    // wait until the three members have seen each other, the leader update,
    // and counted both kinds of foreign announcements
    let deadline = Instant::now() + Duration::from_secs(60);
    let good = GOOD_IDS.len();
    loop {
        let done = outputs[..good]
            .iter()
            .filter(|o| o.lock().unwrap().iter().any(|l| l == "DONE"))
            .count();
        if done == good {
            break;
        }
        if Instant::now() > deadline {
            panic!("discovery did not converge in 60 s:\n{}", report(&outputs));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // a member leaving (goodbye packets) is reported as gone by the others
    let mut stdins: Vec<Option<ChildStdin>> = stdins.into_iter().map(Some).collect();
    stdins[2] = None;
    let gone = format!("GONE {:x}", GOOD_IDS[2]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !outputs[..2]
        .iter()
        .all(|o| o.lock().unwrap().contains(&gone))
    {
        if Instant::now() > deadline {
            panic!("departure not noticed in 20 s:\n{}", report(&outputs));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stdins);
    let deadline = Instant::now() + Duration::from_secs(20);
    for c in &mut children {
        while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let text = report(&outputs);
    eprintln!("{text}");

    let stats = |i: usize| -> BTreeMap<String, u64> {
        let o = outputs[i].lock().unwrap();
        let line = o
            .iter()
            .find_map(|l| l.strip_prefix("STATS "))
            .unwrap_or_else(|| panic!("no stats from {:?}:\n{text}", roles[i]))
            .to_string();
        line.split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect()
    };
    let seen = |i: usize| -> Vec<NodeId> {
        let o = outputs[i].lock().unwrap();
        o.iter()
            .filter_map(|l| l.strip_prefix("SEEN "))
            .map(|l| u64::from_str_radix(l.split(' ').next().unwrap(), 16).unwrap())
            .collect()
    };
    for i in 0..good {
        let s = seen(i);
        assert!(
            s.iter()
                .all(|id| GOOD_IDS.contains(id) && *id != GOOD_IDS[i]),
            "{:?} saw a non-member or itself: {s:x?}\n{text}",
            roles[i]
        );
        let st = stats(i);
        assert!(st["bad_mac"] >= 1, "{text}");
        assert!(st["other_cluster"] >= 1, "{text}");
        assert!(st["last_minute"] >= 1, "{text}");
        // members see the leader's new state with its address and port
        if i != 0 {
            let o = outputs[i].lock().unwrap();
            assert!(
                o.iter()
                    .any(|l| l.starts_with("SEEN 1111 leader [10.88.0.10] 7017")),
                "{text}"
            );
        }
    }
    // the impostor (right name, wrong secret) and the other cluster see no one
    assert!(seen(3).is_empty(), "{text}");
    assert!(seen(4).is_empty(), "{text}");
    assert!(stats(3)["bad_mac"] >= good as u64, "{text}");
    assert!(stats(4)["other_cluster"] >= good as u64, "{text}");
    assert!(stats(4)["bad_mac"] == 0, "{text}");

    drop(children);
    drop(lab);
    let left =
        testlab::netns::namespaces_with_prefix(&format!("{NS_PREFIX}{}-", std::process::id()))
            .unwrap();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
