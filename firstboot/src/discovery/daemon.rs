//! The running announcer and browser on an mdns-sd daemon ([`Discovery`]).
//!
//! [`Discovery::start`] registers this node's service and browses for its
//! peers; a thread turns mdns-sd's events into verified [`PeerEvent`]s and
//! counts what it rejects. [`Discovery::update`] re-registers when the TXT
//! records change (mdns-sd sends two unsolicited announcements, one second
//! apart, RFC 6762 section 8.3).
//!
//! A settled node's records do not change, and an announcement lost on the
//! wire would hide it from a peer until that peer's next query (a cache
//! refresh near the end of the records' TTL). So the same thread also
//! re-announces an unchanged record set every [`REANNOUNCE_PERIOD`] ±
//! [`REANNOUNCE_JITTER`] ([`Reannounce`]; a change restarts the period):
//! two packets per interface per minute or so per node, which keeps the
//! steady-state rate low (a cluster of N nodes sends about 2N packets a
//! minute for this).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::txt::{clip, props_from_mdns, verify_resolved, without_conflict_suffix};
use super::{
    encode_txt, Announcement, DiscoveryConfig, DiscoveryError, DiscoveryStats, Interfaces, MdnsKey,
    Peer, PeerEvent, Rejected, Rejection, SERVICE_TYPE,
};

/// Capacity of the [`PeerEvent`] channel; events beyond it are dropped (counted).
const EVENT_CAPACITY: usize = 1024;
/// Mean period of the re-announcement of an unchanged record set.
pub const REANNOUNCE_PERIOD: Duration = Duration::from_secs(60);
/// Each period is drawn uniformly from [`REANNOUNCE_PERIOD`] ± this, so that
/// nodes started together do not keep announcing together.
pub const REANNOUNCE_JITTER: Duration = Duration::from_secs(10);

/// When to re-announce an unchanged record set: `period ± jitter` after the
/// last announcement, whatever caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reannounce {
    period: Duration,
    jitter: Duration,
    next: Instant,
}

impl Reannounce {
    /// A schedule whose last announcement was at `now`; `r` in `[0, 1]` is
    /// the random draw of the first delay (clamped).
    pub fn new(now: Instant, period: Duration, jitter: Duration, r: f64) -> Self {
        let mut s = Self {
            period,
            jitter: jitter.min(period),
            next: now,
        };
        s.announced(now, r);
        s
    }

    /// The delay for the draw `r` (clamped to `[0, 1]`): from
    /// `period - jitter` (`r = 0`) to `period + jitter` (`r = 1`).
    pub fn delay(&self, r: f64) -> Duration {
        let r = if r.is_nan() { 0.5 } else { r.clamp(0.0, 1.0) };
        self.period - self.jitter + self.jitter.mul_f64(2.0 * r)
    }

    /// Whether a re-announcement is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// When the next re-announcement is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Records an announcement at `now` (periodic or because the records
    /// changed); the next one is due after [`Reannounce::delay`]`(r)`.
    pub fn announced(&mut self, now: Instant, r: f64) {
        self.next = now + self.delay(r);
    }
}

/// What this node announces, when it announces it again, and whether it
/// has withdrawn it.
#[derive(Debug)]
struct Announced {
    current: Announcement,
    schedule: Reannounce,
    stopped: bool,
}

impl Announced {
    /// The record set to announce again at `now`, if that is due (and the
    /// schedule moved on), `None` if it is not due or announcing stopped.
    fn take_due(&mut self, now: Instant, r: f64) -> Option<Announcement> {
        if self.stopped || !self.schedule.due(now) {
            return None;
        }
        self.schedule.announced(now, r);
        Some(self.current.clone())
    }

    /// Replaces the record set (the caller announces it at `now`).
    fn replace(&mut self, a: Announcement, now: Instant, r: f64) {
        self.current = a;
        self.schedule.announced(now, r);
    }
}

/// The registering half of [`Discovery`], shared with its event thread.
struct Announcer {
    daemon: mdns_sd::ServiceDaemon,
    config: DiscoveryConfig,
    addrs: Vec<IpAddr>,
    state: Mutex<Announced>,
}

impl Announcer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Announced> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, a: &Announcement) -> Result<(), DiscoveryError> {
        // No probing: the instance name carries the node id, so it is ours
        // alone, and probing raced our own TXT updates into endless
        // conflict renames (` (N)`) that lost announcements.
        self.daemon
            .register(service(&self.config, &self.addrs, a, false)?)?;
        Ok(())
    }

    /// Re-announces the unchanged record set if that is due. Runs under the
    /// lock, so it cannot follow [`Announcer::withdraw`].
    fn tick(&self, now: Instant) {
        let mut st = self.lock();
        if let Some(a) = st.take_due(now, rand::random()) {
            match self.register(&a) {
                Ok(()) => tracing::trace!(instance = %a.instance_name(), "mdns: re-announced"),
                Err(e) => tracing::debug!(error = %e, "mdns: re-announcement failed"),
            }
        }
    }

    /// Stops re-announcing; returns the full name to unregister.
    fn withdraw(&self) -> String {
        let mut st = self.lock();
        st.stopped = true;
        format!("{}.{SERVICE_TYPE}", st.current.instance_name())
    }
}

#[derive(Default)]
struct Shared {
    other_cluster: AtomicU64,
    bad_mac: AtomicU64,
    malformed: AtomicU64,
    announcements: AtomicU64,
    dropped: AtomicU64,
    duplicate_id: AtomicU64,
    duplicate_id_addr: Mutex<Option<IpAddr>>,
    recent: Mutex<VecDeque<Instant>>,
    stop: AtomicBool,
}

impl Shared {
    fn note_announcement(&self, now: Instant) {
        self.announcements.fetch_add(1, Ordering::Relaxed);
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        r.push_back(now);
        prune(&mut r, now);
    }

    fn count(&self, r: &Rejection) {
        let c = match r {
            Rejection::OtherCluster(_) => &self.other_cluster,
            Rejection::BadMac => &self.bad_mac,
            Rejection::Malformed(_) => &self.malformed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn prune(r: &mut VecDeque<Instant>, now: Instant) {
    while r
        .front()
        .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
    {
        r.pop_front();
    }
    // bound memory under a flood; the count saturates at this value
    while r.len() > 100_000 {
        r.pop_front();
    }
}

/// The running mDNS announcer and browser.
pub struct Discovery {
    announcer: Arc<Announcer>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("addrs", &self.announcer.addrs)
            .field("interfaces", &self.announcer.config.interfaces)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts announcing `announcement` on `addrs` (empty: every address of
    /// the selected interfaces) and browsing for peers of the same cluster.
    pub fn start(
        config: DiscoveryConfig,
        announcement: Announcement,
        addrs: Vec<IpAddr>,
    ) -> Result<(Self, mpsc::Receiver<PeerEvent>), DiscoveryError> {
        let daemon = daemon_for(&config)?;
        let shared = Arc::new(Shared::default());
        let schedule = Reannounce::new(
            Instant::now(),
            REANNOUNCE_PERIOD,
            REANNOUNCE_JITTER,
            rand::random(),
        );
        let announcer = Arc::new(Announcer {
            daemon,
            config,
            addrs,
            state: Mutex::new(Announced {
                current: announcement.clone(),
                schedule,
                stopped: false,
            }),
        });
        announcer.register(&announcement)?;
        let browse = announcer.daemon.browse(SERVICE_TYPE)?;
        let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
        let thread = {
            let (announcer, shared) = (announcer.clone(), shared.clone());
            std::thread::Builder::new()
                .name("habuild-discovery".into())
                .spawn(move || event_loop(browse, tx, &announcer, announcement, shared))
                .map_err(DiscoveryError::Thread)?
        };
        Ok((
            Self {
                announcer,
                shared,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Re-announces with new TXT records (e.g. a Raft state change). The
    /// cluster name and node id, hence the instance name, must not change.
    pub fn update(&self, announcement: Announcement) -> Result<(), DiscoveryError> {
        let mut st = self.announcer.lock();
        let cur = &st.current;
        if cur.cluster != announcement.cluster || cur.node != announcement.node {
            return Err(DiscoveryError::IdentityChanged(format!(
                "{} -> {}",
                cur.instance_name(),
                announcement.instance_name()
            )));
        }
        self.announcer.register(&announcement)?;
        st.replace(announcement, Instant::now(), rand::random());
        Ok(())
    }

    pub fn stats(&self) -> DiscoveryStats {
        let s = &self.shared;
        let last_minute = {
            let mut r = s.recent.lock().unwrap_or_else(|e| e.into_inner());
            prune(&mut r, Instant::now());
            r.len() as u64
        };
        DiscoveryStats {
            rejected: Rejected {
                other_cluster: s.other_cluster.load(Ordering::Relaxed),
                bad_mac: s.bad_mac.load(Ordering::Relaxed),
                malformed: s.malformed.load(Ordering::Relaxed),
            },
            announcements_total: s.announcements.load(Ordering::Relaxed),
            announcements_last_minute: last_minute,
            dropped_events: s.dropped.load(Ordering::Relaxed),
            duplicate_id: s.duplicate_id.load(Ordering::Relaxed),
            duplicate_id_addr: *s
                .duplicate_id_addr
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// mdns-sd's own counters (e.g. `respond`, `register-resend`,
    /// `cache-refresh-*`: what this node sent), for packets-per-minute reports.
    pub fn daemon_metrics(&self) -> Result<HashMap<String, i64>, DiscoveryError> {
        let rx = self.announcer.daemon.get_metrics()?;
        rx.recv_timeout(Duration::from_secs(2))
            .map_err(|e| DiscoveryError::Mdns(mdns_sd::Error::Msg(e.to_string())))
    }

    /// Withdraws the announcement (goodbye packets) and stops the daemon.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let fullname = self.announcer.withdraw();
        self.shared.stop.store(true, Ordering::Relaxed);
        let daemon = &self.announcer.daemon;
        if let Ok(rx) = daemon.unregister(&fullname) {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        if let Ok(rx) = daemon.shutdown() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// An mdns-sd daemon on the configured port, limited to the configured
/// interfaces (shut down again if that fails).
pub(super) fn daemon_for(cfg: &DiscoveryConfig) -> Result<mdns_sd::ServiceDaemon, DiscoveryError> {
    let daemon = mdns_sd::ServiceDaemon::new_with_port(cfg.mdns_port)?;
    if let Interfaces::Only(names) = &cfg.interfaces {
        let kinds: Vec<mdns_sd::IfKind> = names
            .iter()
            .map(|n| mdns_sd::IfKind::Name(n.clone()))
            .collect();
        let limited = daemon
            .disable_interface(mdns_sd::IfKind::All)
            .and_then(|_| daemon.enable_interface(kinds));
        if let Err(e) = limited {
            let _ = daemon.shutdown();
            return Err(e.into());
        }
    }
    Ok(daemon)
}

fn service(
    config: &DiscoveryConfig,
    addrs: &[IpAddr],
    a: &Announcement,
    probe: bool,
) -> Result<mdns_sd::ServiceInfo, DiscoveryError> {
    let instance = a.instance_name();
    let host = format!("{instance}.local.");
    let txt = encode_txt(a, &config.key);
    let mut info =
        mdns_sd::ServiceInfo::new(SERVICE_TYPE, &instance, &host, addrs, a.port, &txt[..])?;
    if addrs.is_empty() {
        info = info.enable_addr_auto();
    }
    if let Interfaces::Only(names) = &config.interfaces {
        info.set_interfaces(
            names
                .iter()
                .map(|n| mdns_sd::IfKind::Name(n.clone()))
                .collect(),
        );
    }
    info.set_requires_probe(probe);
    Ok(info)
}

/// Turns mdns-sd's events into verified [`PeerEvent`]s and re-announces
/// when due, until [`Discovery`] stops.
fn event_loop(
    browse: mdns_sd::Receiver<mdns_sd::ServiceEvent>,
    tx: mpsc::Sender<PeerEvent>,
    announcer: &Announcer,
    me: Announcement,
    shared: Arc<Shared>,
) {
    let key: &MdnsKey = &announcer.config.key;
    let mine: &[IpAddr] = &announcer.addrs;
    let mut known: HashMap<String, Peer> = HashMap::new();
    let send = |ev: PeerEvent| {
        if tx.try_send(ev).is_err() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    };
    while !shared.stop.load(Ordering::Relaxed) {
        announcer.tick(Instant::now());
        let ev = match browse.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(_) if browse.is_disconnected() => break,
            Err(_) => continue,
        };
        match ev {
            mdns_sd::ServiceEvent::ServiceResolved(rs) => {
                shared.note_announcement(Instant::now());
                let fullname = rs.get_fullname().to_ascii_lowercase();
                let props = props_from_mdns(rs.get_properties());
                if matches!(&props, Ok(p) if p.is_empty()) {
                    continue; // resolved before its TXT arrived: incomplete, not counted
                }
                // mdns-sd renames an instance (` (N)`) when a re-announcement
                // with new TXT races its own old records: the same genuine
                // announcement under a new name (the MAC covers the records).
                let original = without_conflict_suffix(&fullname);
                let verified =
                    props.and_then(|props| verify_resolved(&original, &props, key, &me.cluster));
                let a = match verified {
                    Ok(a) => a,
                    Err(r) => {
                        tracing::debug!(instance = %clip(&fullname), reason = %r, "mdns: announcement rejected");
                        shared.count(&r);
                        continue;
                    }
                };
                if a.node == me.node {
                    // Our own record, unless it carries an address that is
                    // not ours: then another host uses our node id.
                    let foreign = rs
                        .get_addresses()
                        .iter()
                        .map(|a| a.to_ip_addr())
                        .find(|ip| !mine.is_empty() && !mine.contains(ip));
                    if let Some(ip) = foreign {
                        shared.duplicate_id.fetch_add(1, Ordering::Relaxed);
                        *shared
                            .duplicate_id_addr
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(ip);
                        tracing::warn!(%ip, "another host announces this node's id");
                    }
                    continue;
                }
                let peer =
                    Peer::from_announcement(&a, rs.get_addresses().iter().map(|a| a.to_ip_addr()));
                if known.get(&fullname) != Some(&peer) {
                    // The newest instance of a node replaces its older names.
                    known.retain(|name, p| p.id != peer.id || *name == fullname);
                    known.insert(fullname, peer.clone());
                    send(PeerEvent::Seen(peer));
                }
            }
            mdns_sd::ServiceEvent::ServiceRemoved(_, fullname) => {
                if let Some(p) = known.remove(&fullname.to_ascii_lowercase()) {
                    if !known.values().any(|o| o.id == p.id) {
                        send(PeerEvent::Gone(p.id));
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::RaftState;

    #[test]
    fn announcements_per_minute_window() {
        let s = Shared::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            s.note_announcement(t0);
        }
        let mut r = s.recent.lock().unwrap();
        prune(&mut r, t0 + Duration::from_secs(30));
        assert_eq!(r.len(), 5);
        prune(&mut r, t0 + Duration::from_secs(61));
        assert_eq!(r.len(), 0);
        drop(r);
        assert_eq!(s.announcements.load(Ordering::Relaxed), 5);
    }

    fn schedule(t0: Instant) -> Reannounce {
        Reannounce::new(t0, REANNOUNCE_PERIOD, REANNOUNCE_JITTER, 0.5)
    }

    #[test]
    fn reannounce_delays_stay_within_the_jitter() {
        let t0 = Instant::now();
        let s = schedule(t0);
        assert_eq!(s.next(), t0 + Duration::from_secs(60));
        assert_eq!(s.delay(0.0), Duration::from_secs(50));
        assert_eq!(s.delay(1.0), Duration::from_secs(70));
        // out-of-range draws are clamped, NaN is the middle
        assert_eq!(s.delay(-3.0), Duration::from_secs(50));
        assert_eq!(s.delay(7.0), Duration::from_secs(70));
        assert_eq!(s.delay(f64::NAN), Duration::from_secs(60));
        for i in 0..=100 {
            let d = s.delay(f64::from(i) / 100.0);
            assert!(
                d >= Duration::from_secs(50) && d <= Duration::from_secs(70),
                "{d:?}"
            );
        }
        // jitter larger than the period never makes a zero or negative delay
        let wild = Reannounce::new(t0, Duration::from_secs(10), Duration::from_secs(60), 0.0);
        assert_eq!(wild.delay(0.0), Duration::ZERO);
        assert_eq!(wild.delay(1.0), Duration::from_secs(20));
    }

    #[test]
    fn reannounce_is_due_once_per_period() {
        let t0 = Instant::now();
        let mut s = schedule(t0);
        assert!(!s.due(t0));
        assert!(!s.due(t0 + Duration::from_millis(59_999)));
        assert!(s.due(t0 + Duration::from_secs(60)));
        // ten minutes of 200 ms ticks with draws spread over [0, 1):
        // about one announcement a minute, never two within 50 s
        let mut sent = Vec::new();
        let mut draw = 0.0;
        for tick in 0..3000u32 {
            let now = t0 + Duration::from_millis(200) * tick;
            if s.due(now) {
                sent.push(now);
                draw = (draw + 0.37) % 1.0;
                s.announced(now, draw);
            }
        }
        assert!((8..=12).contains(&sent.len()), "{}", sent.len());
        for w in sent.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_secs(50) && gap <= Duration::from_millis(70_200),
                "{gap:?}"
            );
        }
    }

    #[test]
    fn a_change_restarts_the_period_and_withdrawal_stops_it() {
        let t0 = Instant::now();
        let a = Announcement {
            cluster: "lab".into(),
            node: 7,
            port: 7443,
            state: RaftState::Member,
        };
        let mut st = Announced {
            current: a.clone(),
            schedule: schedule(t0),
            stopped: false,
        };
        assert_eq!(st.take_due(t0 + Duration::from_secs(30), 0.5), None);
        // the records change at 50 s: that announcement counts, the next
        // periodic one is a full period later
        let leader = Announcement {
            state: RaftState::Leader,
            ..a.clone()
        };
        st.replace(leader.clone(), t0 + Duration::from_secs(50), 0.5);
        assert_eq!(st.take_due(t0 + Duration::from_secs(60), 0.5), None);
        assert_eq!(
            st.take_due(t0 + Duration::from_secs(110), 0.5),
            Some(leader.clone())
        );
        // taken: not due again right after
        assert_eq!(st.take_due(t0 + Duration::from_secs(111), 0.5), None);
        assert_eq!(st.schedule.next(), t0 + Duration::from_secs(170));
        st.stopped = true;
        assert_eq!(st.take_due(t0 + Duration::from_secs(600), 0.5), None);
    }
}
