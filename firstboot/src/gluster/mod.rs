//! Gluster storage, the pure part: which device a storage node may use,
//! the LVM/XFS commands that make its brick, how the volume is laid out over
//! the storage nodes and grown, the mount units, the parsing of the gluster
//! CLI's answers, and the heketi `topology.json` operators consume. The
//! converge steps that apply these are in [`crate::steps::gluster`].
//! Everything here is a pure function, tested on fixtures.
//!
//! Policies:
//! - A device is used only when it is empty: no partitions, no filesystem
//!   or LVM signature, not mounted, not read-only, not the disk the system
//!   runs from. A configured device that fails any of these is an error
//!   naming the device and why; with no devices configured, the backing
//!   file on the data partition (a loop device) is used.
//! - Layout: `replica` = `storage.replica` (3 by default) capped by the
//!   number of storage nodes. 1 node: a single-brick volume (no
//!   redundancy); 2 nodes: replica 2 (Gluster warns of split-brain; the
//!   plan says so); more than the replica count: distributed-replicated,
//!   bricks in whole replica sets in plan order; nodes beyond the last whole
//!   set carry a brick but wait for enough peers before it is added.
//!
//! Modules: [`devices`] (lsblk, which device may hold a brick), [`brick`]
//! (LVM + XFS commands), [`mount`] (systemd mount units), [`volume`]
//! (layout and growth), [`health`] (a node's safety view for the status), [`safety`] (quorum/timeout options, the
//! clean-shutdown marker, the rebuild of an untrusted brick), [`cli`]
//! (the gluster CLI's bounded queries and their output), [`topology`](mod@topology)
//! (heketi's `topology.json`), [`summary`](mod@summary) (the status section). Their
//! items are re-exported here.

pub mod brick;
pub mod cli;
pub mod devices;
pub mod health;
pub mod mount;
pub mod safety;
pub mod store;
pub mod summary;
pub mod topology;
pub mod volume;

pub use brick::{brick_actions, lv_device, BrickObs};
pub use cli::{
    connected_peers, disconnected_peers, lock_busy, parse_heal_count, parse_status_detail,
    parse_volume_info, query, query_timeout, set_query_timeout, timed_out, VolumeInfo,
    LOCK_RETRIES, LOCK_RETRY_SECS, QUERY_TIMEOUT_EMULATED_SECS, QUERY_TIMEOUT_SECS,
};
pub use devices::{check_configured, parse_lsblk, spare_disks, unusable_reason, BlockDevice};
pub use mount::{brick_mount_unit, fuse_mount_unit, mount_unit_name};
pub use summary::summary;
pub use topology::topology;
pub use volume::{brick_of, layout, volume_actions, Layout};

/// The volume group / thin pool / LV names on every storage node.
pub const VG: &str = "habuild_gluster";
pub const POOL: &str = "thinpool";
pub const LV: &str = "brick0";
/// Where a node's brick filesystem is mounted; the brick directory is below it.
pub const BRICK_MOUNT: &str = "/var/lib/habuild/bricks/brick0";
pub const VOLUME: &str = "habuild";
/// The brick device of a node without a disk: a loop device over a file on
/// the data partition, attached at boot by `habuild-gluster-loop.service`,
/// which keeps this stable name pointing at it.
pub const LOOP_DEVICE: &str = "/dev/habuild/gluster-brick";
/// The backing file of [`LOOP_DEVICE`] and the unit's config.
pub const BACKING_FILE: &str = "/var/lib/habuild/gluster/brick.img";
pub const LOOP_CONF: &str = "var/lib/habuild/gluster/loop.conf";
/// Written on storage nodes for heketi or a CSI driver.
pub const TOPOLOGY_FILE: &str = "var/lib/habuild/gluster/topology.json";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlusterError {
    #[error("storage device {device}: {why}; it is never touched")]
    DeviceNotUsable { device: String, why: String },
    #[error("storage device {0} does not exist on this node")]
    NoSuchDevice(String),
    #[error("cannot read the block devices (lsblk -J): {0}")]
    Lsblk(String),
}

#[cfg(test)]
mod tests;
