//! habuild's first-boot agent library: the cluster.toml schema, host facts,
//! discovery, the authenticated transport, consensus, the plan and the
//! replicated state.

pub mod agent;
pub mod cluster;
pub mod consensus;
pub mod discovery;
pub mod facts;
pub mod gluster;
pub mod host;
pub mod hostname;
pub mod keys;
pub mod kube;
pub mod netif;
pub mod pki;
pub mod plan;
pub mod protocol;
pub mod secretbox;
pub mod source;
pub mod state;
pub mod steps;
pub mod transport;
