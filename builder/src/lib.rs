//! habuild's builder: profile loading, rootfs backends, overlay staging, disk
//! writer, manifest. The `habuild` binary (main.rs) is a thin CLI over this.

pub mod build;
pub mod cluster_status;
pub mod disk;
pub mod embedded;
pub mod error;
pub mod exec;
pub mod fsimage;
pub mod images;
pub mod kube;
pub mod kubeconfig;
pub mod locate;
pub mod manifest;
pub mod oci;
pub mod output;
pub mod overlay;
pub mod profile;
pub mod pxe;
pub mod rootcache;
pub mod rootfs;
pub mod stages;
