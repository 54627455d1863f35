//! Persistent openraft storage (storage-v2) in a directory, e.g.
//! `/var/lib/habuild/raft`.
//!
//! Layout (all files are created by [`open`]):
//!
//! - `log`: append-only records `u32-le length ++ JSON`, each one of
//!   `Append(entry)`, `Truncate(index)` (drop entries `>= index`) or
//!   `Purge(log_id)` (drop entries `<= log_id.index`). Every write call is
//!   fsynced before it returns (or before the `LogFlushed` callback fires).
//!   A torn record at the tail (crash mid-write, never acknowledged) is cut
//!   off on open. On purge the file is compacted (write temp, fsync, rename).
//! - `vote.json`, `committed.json`: written via temp file + fsync + rename
//!   + directory fsync.
//! - `snapshot.json`: the last built or installed snapshot (metadata and the
//!   state machine payload), written the same way.
//!
//! The state machine itself is kept in memory; on open it is restored from
//! `snapshot.json`, and openraft re-applies the committed log entries after
//! it (`committed` is persisted, so it does so before serving anything).

// openraft's error types (fixed by its traits) are large; boxing them buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, LogState, RaftLogReader, RaftSnapshotBuilder, StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};

use super::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::state::{ClusterState, Member, NodeId, Plan, Response, StepRecord};

const LOG_FILE: &str = "log";
const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";
const SNAPSHOT_FILE: &str = "snapshot.json";

/// Opens (creating if needed) the log store and state machine persisted in `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), StorageError> {
    fs::create_dir_all(dir).map_err(|e| io_err(StorageIOError::write, e))?;
    let log = LogStore::open(dir)?;
    let sm = StateMachine::open(dir)?;
    Ok((log, sm))
}

/// Whether `dir` holds Raft state from an earlier run (a vote or log records),
/// i.e. this node has been part of a group and must not bootstrap again.
pub fn has_state(dir: &Path) -> bool {
    dir.join(VOTE_FILE).exists()
        || dir.join(SNAPSHOT_FILE).exists()
        || fs::metadata(dir.join(LOG_FILE)).is_ok_and(|m| m.len() > 0)
}

fn io_err(
    f: fn(AnyError) -> StorageIOError<NodeId>,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageError::IO {
        source: f(AnyError::new(&e)),
    }
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Serialize, Deserialize)]
enum LogRecord {
    Append(Entry),
    Truncate(u64),
    Purge(LogId),
}

fn encode(rec: &LogRecord, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(rec).expect("log records serialize");
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
}

#[derive(Debug, Default)]
struct LogData {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
}

impl LogData {
    fn apply(&mut self, rec: LogRecord) {
        match rec {
            LogRecord::Append(e) => {
                self.entries.insert(e.log_id.index, e);
            }
            LogRecord::Truncate(i) => {
                self.entries.split_off(&i);
            }
            LogRecord::Purge(id) => {
                self.entries = self.entries.split_off(&(id.index + 1));
                self.last_purged = Some(id);
            }
        }
    }
}

struct LogInner {
    dir: PathBuf,
    file: File,
    data: LogData,
    /// Records in the file that no longer hold a live entry (triggers compaction).
    dead: usize,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
}

impl LogInner {
    fn write(&mut self, recs: &[LogRecord]) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in recs {
            encode(r, &mut buf);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }

    /// Rewrites the log file with only the live entries.
    fn compact(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        if let Some(p) = self.data.last_purged {
            encode(&LogRecord::Purge(p), &mut buf);
        }
        for e in self.data.entries.values() {
            encode(&LogRecord::Append(e.clone()), &mut buf);
        }
        write_atomic(&self.dir, LOG_FILE, &buf)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(self.dir.join(LOG_FILE))?;
        self.dead = 0;
        Ok(())
    }
}

/// The Raft log (and vote, committed id) persisted in a directory.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogStore {
    fn open(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(LOG_FILE);
        let rd = |e| io_err(StorageIOError::read_logs, e);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(rd)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(rd(e)),
        }
        let mut data = LogData::default();
        let mut pos = 0usize;
        let mut records = 0usize;
        while pos + 4 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            let Some(body) = bytes.get(pos + 4..pos + 4 + len) else {
                break;
            };
            let Ok(rec) = serde_json::from_slice::<LogRecord>(body) else {
                break;
            };
            data.apply(rec);
            records += 1;
            pos += 4 + len;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        if pos < bytes.len() {
            tracing::warn!(path = %path.display(), at = pos, "cutting off a torn raft log tail");
            file.set_len(pos as u64)
                .map_err(|e| io_err(StorageIOError::write_logs, e))?;
            file.sync_all()
                .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        }
        let vote =
            read_json(&dir.join(VOTE_FILE)).map_err(|e| io_err(StorageIOError::read_vote, e))?;
        let committed = read_json::<Option<LogId>>(&dir.join(COMMITTED_FILE))
            .map_err(|e| io_err(StorageIOError::read, e))?
            .flatten();
        let dead = records.saturating_sub(data.entries.len());
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_path_buf(),
                file,
                data,
                dead,
                vote,
                committed,
            })),
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = lock(&self.inner);
        Ok(inner
            .data
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = lock(&self.inner);
        let last_purged_log_id = inner.data.last_purged;
        let last_log_id = inner
            .data
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        let bytes = serde_json::to_vec(vote).map_err(|e| io_err(StorageIOError::write_vote, e))?;
        write_atomic(&inner.dir, VOTE_FILE, &bytes)
            .map_err(|e| io_err(StorageIOError::write_vote, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(lock(&self.inner).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        let bytes = serde_json::to_vec(&committed).map_err(|e| io_err(StorageIOError::write, e))?;
        write_atomic(&inner.dir, COMMITTED_FILE, &bytes)
            .map_err(|e| io_err(StorageIOError::write, e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.inner).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = lock(&self.inner);
        let recs: Vec<LogRecord> = entries.into_iter().map(LogRecord::Append).collect();
        let res = inner.write(&recs);
        if let Err(e) = res {
            let err = io_err(
                StorageIOError::write_logs,
                io::Error::new(e.kind(), e.to_string()),
            );
            callback.log_io_completed(Err(e));
            return Err(err);
        }
        for r in recs {
            if let LogRecord::Append(e) = &r {
                if inner.data.entries.contains_key(&e.log_id.index) {
                    inner.dead += 1;
                }
            }
            inner.data.apply(r);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        let rec = LogRecord::Truncate(log_id.index);
        inner
            .write(std::slice::from_ref(&rec))
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        let before = inner.data.entries.len();
        inner.data.apply(rec);
        inner.dead += before - inner.data.entries.len() + 1;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        if inner
            .data
            .last_purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        let rec = LogRecord::Purge(log_id);
        inner
            .write(std::slice::from_ref(&rec))
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        let before = inner.data.entries.len();
        inner.data.apply(rec);
        inner.dead += before - inner.data.entries.len() + 1;
        if inner.dead > 256 && inner.dead > inner.data.entries.len() {
            inner
                .compact()
                .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        }
        Ok(())
    }
}

/// [`ClusterState`] in a JSON-friendly shape (`steps` has tuple keys, which
/// JSON maps can't hold).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct StateRepr {
    members: Vec<Member>,
    plan: Option<Plan>,
    secrets: BTreeMap<String, Vec<u8>>,
    steps: Vec<StepRecord>,
}

impl From<&ClusterState> for StateRepr {
    fn from(s: &ClusterState) -> Self {
        StateRepr {
            members: s.members.values().cloned().collect(),
            plan: s.plan.clone(),
            secrets: s.secrets.clone(),
            steps: s.steps.values().cloned().collect(),
        }
    }
}

impl From<StateRepr> for ClusterState {
    fn from(r: StateRepr) -> Self {
        ClusterState {
            members: r.members.into_iter().map(|m| (m.id, m)).collect(),
            plan: r.plan,
            secrets: r.secrets,
            steps: r
                .steps
                .into_iter()
                .map(|s| ((s.node, s.step.clone()), s))
                .collect(),
        }
    }
}

/// The snapshot data sent between nodes: the state machine plus what it has applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    state: StateRepr,
}

/// `snapshot.json`.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    payload: SnapshotPayload,
}

struct SmInner {
    dir: PathBuf,
    state: ClusterState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    current: Option<(SnapshotMeta, Vec<u8>)>,
    snapshot_seq: u64,
}

/// The replicated [`ClusterState`] with its snapshots, persisted in a directory.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<SmInner>>,
}

impl StateMachine {
    fn open(dir: &Path) -> Result<Self, StorageError> {
        let file: Option<SnapshotFile> = read_json(&dir.join(SNAPSHOT_FILE))
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
        let mut inner = SmInner {
            dir: dir.to_path_buf(),
            state: ClusterState::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            current: None,
            snapshot_seq: 0,
        };
        if let Some(f) = file {
            let bytes = serde_json::to_vec(&f.payload)
                .map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
            inner.state = f.payload.state.into();
            inner.last_applied = f.payload.last_applied;
            inner.last_membership = f.payload.last_membership;
            inner.current = Some((f.meta, bytes));
        }
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// A copy of the current replicated state (as applied on this node).
    pub fn state(&self) -> ClusterState {
        lock(&self.inner).state.clone()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        lock(&self.inner).last_applied
    }
}

fn persist_snapshot(
    dir: &Path,
    meta: &SnapshotMeta,
    payload: &SnapshotPayload,
) -> Result<(), StorageError> {
    let file = SnapshotFile {
        meta: meta.clone(),
        payload: payload.clone(),
    };
    let sig = Some(meta.signature());
    let bytes = serde_json::to_vec(&file).map_err(|e| StorageError::IO {
        source: StorageIOError::write_snapshot(sig.clone(), AnyError::new(&e)),
    })?;
    write_atomic(dir, SNAPSHOT_FILE, &bytes).map_err(|e| StorageError::IO {
        source: StorageIOError::write_snapshot(sig, AnyError::new(&e)),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let mut inner = lock(&self.inner);
        let payload = SnapshotPayload {
            last_applied: inner.last_applied,
            last_membership: inner.last_membership.clone(),
            state: StateRepr::from(&inner.state),
        };
        inner.snapshot_seq += 1;
        let snapshot_id = match inner.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.snapshot_seq),
            None => format!("--{}", inner.snapshot_seq),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.last_membership.clone(),
            snapshot_id,
        };
        persist_snapshot(&inner.dir, &meta, &payload)?;
        let bytes = serde_json::to_vec(&payload)
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
        inner.current = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = lock(&self.inner);
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = lock(&self.inner);
        let mut out = Vec::new();
        for e in entries {
            inner.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Response::Ok),
                EntryPayload::Normal(cmd) => out.push(inner.state.apply(cmd)),
                EntryPayload::Membership(m) => {
                    inner.last_membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Response::Ok);
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let payload: SnapshotPayload =
            serde_json::from_slice(&bytes).map_err(|e| StorageError::IO {
                source: StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)),
            })?;
        let mut inner = lock(&self.inner);
        persist_snapshot(&inner.dir, meta, &payload)?;
        inner.state = payload.state.into();
        inner.last_applied = meta.last_log_id;
        inner.last_membership = meta.last_membership.clone();
        inner.current = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let inner = lock(&self.inner);
        Ok(inner.current.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("tempdir");
            let (log, sm) = open(dir.path())?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft storage suite");
    }
}
