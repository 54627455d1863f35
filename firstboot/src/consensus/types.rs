//! openraft type configuration for habuild's replicated [`ClusterState`](crate::state::ClusterState).

use std::io::Cursor;

use crate::state::{Command, Response};

openraft::declare_raft_types!(
    /// The Raft type configuration: [`Command`]s in, [`Response`]s out, node ids
    /// are [`crate::state::NodeId`] (`u64`), nodes carry their agent address.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft node handle for [`TypeConfig`].
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A node's address record (the agent's `host:port`).
pub type Node = openraft::BasicNode;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// Storage error.
pub type StorageError = openraft::StorageError<u64>;
/// Stored membership (membership config plus the log id it came from).
pub type StoredMembership = openraft::StoredMembership<u64, Node>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, Node>;
/// A snapshot.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// Raft metrics.
pub type RaftMetrics = openraft::RaftMetrics<u64, Node>;
