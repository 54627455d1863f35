//! The test network is `testlab`'s, the lab every namespace and VM test
//! shares: a private namespace per test holding `lo` and the bridge `br0`
//! with one address, tap devices for VMs on that bridge, no link to the
//! root namespace. See [`testlab::bridge`] and [`testlab::netns`].

pub use testlab::bridge::{TestNet, BRIDGE, DEFAULT_BRIDGE_ADDR, DEFAULT_PREFIX_LEN, MAX_NAME_LEN};
pub use testlab::netns::sweep_stale;
