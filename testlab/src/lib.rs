//! habuild's one test lab, shared by every test and bench that needs a
//! network: the namespace tests and the agent bench of `habuild-firstboot`,
//! `habuild`'s `cluster status` test and the QEMU harness.
//!
//! - [`netns`]: network namespaces of this process (`<prefix><pid>-<n>`),
//!   each torn down when its last handle drops (processes inside killed,
//!   namespace deleted), also while unwinding from a failed assertion;
//!   leftovers of runs that were SIGKILLed are swept when a new one of the
//!   same prefix is made, and [`netns::teardown_all`] removes every live
//!   one (for a signal handler).
//! - [`bridge`]: [`TestNet`], a namespace holding the bridge `br0`, with
//!   tap devices for VMs and [`Host`]s: namespaces joined to the bridge by
//!   a veth (`eth0` inside).
//! - [`dhcp`]: dnsmasq serving DHCP on the bridge (no DNS).
//! - [`agent`]: one `habuild-agent run` in a host namespace, its log in a
//!   file, killed on drop; [`status`] reads its status socket into
//!   [`firstboot::protocol::StatusDoc`].
//! - [`lab`]: [`Lab`], the shape most agent tests want: a bridge with N
//!   hosts at `<net>.10+i/24`, a temp directory with one directory per
//!   node, and the agents.
//! - [`fixture`]: the test clusters' `cluster.toml`.
//! - [`wait`]: polling with a deadline.
//! - [`cmd`]: finding host tools and running them with errors that name
//!   the command.
//!
//! Network rule: every packet stays inside namespaces made here. There is
//! no veth to the root namespace and no route out.
//!
//! Needs root and iproute2 (and dnsmasq for [`dhcp`]): run `scripts/setup`.

pub mod agent;
pub mod bridge;
pub mod cmd;
pub mod dhcp;
pub mod fixture;
pub mod lab;
pub mod netns;
pub mod status;
pub mod wait;

pub use agent::{Agent, AgentArgs, ChildGuard};
pub use bridge::{Host, TestNet};
pub use dhcp::{Dhcp, Lease};
pub use fixture::ClusterToml;
pub use lab::Lab;
pub use netns::{sweep_stale, Netns};
pub use wait::wait_until;

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong in the lab, naming the command, file or limit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host tool is not installed.
    #[error("{0} not found: run scripts/setup")]
    Missing(String),
    /// A command could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// A command exited non-zero.
    #[error("command {cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A name, prefix, range or argument the lab refuses.
    #[error("{0}")]
    Invalid(String),
    /// A process misbehaved or answered wrongly (dnsmasq exited or gave
    /// no lease, a status document that does not parse).
    #[error("{0}")]
    Process(String),
    /// The lab's namespaces could not be made: nothing else will work.
    #[error(
        "cannot create network namespaces: {0} (needs root, iproute2 and veth/bridge support: \
         run scripts/setup as root)"
    )]
    NoNamespaces(Box<Error>),
    /// A condition was not reached in time.
    #[error("{what}: not reached within {limit:?}")]
    Timeout { what: String, limit: Duration },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
