//! The `cluster.toml` the namespace tests, the simulation and the bench
//! give their agents: one text, parameterised by what differs between labs
//! (name, secret, `bootstrap_expect`, addresses), so a schema change is
//! made here once.

/// A test cluster's site file. Storage, when enabled, has 1 GiB loop
/// bricks, replica 3, mounted at `/mnt/gluster`; mDNS and the agent run on
/// `eth0`.
#[derive(Debug, Clone)]
pub struct ClusterToml<'a> {
    pub name: &'a str,
    /// 64 hex digits.
    pub secret: &'a str,
    pub bootstrap_expect: usize,
    /// `cluster.control_plane_size` (1, 3 or 5; at most `bootstrap_expect`).
    pub control_plane_size: usize,
    /// `storage.enabled`.
    pub storage: bool,
    /// `network.subnet`, e.g. `10.90.0.0/24`.
    pub subnet: &'a str,
    pub vip: &'a str,
    pub metallb_range: &'a str,
}

impl<'a> ClusterToml<'a> {
    /// A lab on `<net>.0/24`: VIP `.250`, MetalLB `.200-.215` (the lab's
    /// hosts are `.10` and up, its bridge `.1`).
    pub fn lab(name: &'a str, secret: &'a str, bootstrap_expect: usize, net: [u8; 3]) -> String {
        Self::lab_with(name, secret, bootstrap_expect, net, true)
    }

    /// [`ClusterToml::lab`] with storage off (`[storage] enabled = false`).
    pub fn lab_without_storage(
        name: &'a str,
        secret: &'a str,
        bootstrap_expect: usize,
        net: [u8; 3],
    ) -> String {
        Self::lab_with(name, secret, bootstrap_expect, net, false)
    }

    fn lab_with(
        name: &'a str,
        secret: &'a str,
        bootstrap_expect: usize,
        net: [u8; 3],
        storage: bool,
    ) -> String {
        let [a, b, c] = net;
        ClusterToml {
            name,
            secret,
            bootstrap_expect,
            control_plane_size: 3,
            storage,
            subnet: &format!("{a}.{b}.{c}.0/24"),
            vip: &format!("{a}.{b}.{c}.250"),
            metallb_range: &format!("{a}.{b}.{c}.200-{a}.{b}.{c}.215"),
        }
        .render()
    }

    pub fn render(&self) -> String {
        let storage = if self.storage {
            "[storage]\nenabled = true\nbrick_file_size_gib = 1\ndevices = []\nreplica = 3\nmount_path = \"/mnt/gluster\"\n"
        } else {
            "[storage]\nenabled = false\n"
        };
        format!(
            r#"[cluster]
name = "{name}"
secret = "{secret}"
bootstrap_expect = {expect}
control_plane_size = {cp}

[network]
interface = "eth0"
subnet = "{subnet}"
vip = "{vip}"
metallb_range = "{metallb}"
pod_cidr = "10.244.0.0/16"
service_cidr = "10.96.0.0/12"

{storage}"#,
            name = self.name,
            secret = self.secret,
            expect = self.bootstrap_expect,
            cp = self.control_plane_size,
            subnet = self.subnet,
            vip = self.vip,
            metallb = self.metallb_range,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_file_is_a_valid_cluster_toml() {
        let text = ClusterToml::lab("lab", &"42".repeat(32), 3, [10, 90, 0]);
        let cfg = firstboot::cluster::ClusterConfig::from_source(
            &firstboot::source::SourceFile::from_text("lab.toml", &text),
        )
        .unwrap();
        assert_eq!(cfg.cluster.name, "lab");
        assert_eq!(cfg.cluster.bootstrap_expect, 3);
        assert!(matches!(
            cfg.network.vip,
            firstboot::cluster::Auto::Value(v) if v == std::net::Ipv4Addr::new(10, 90, 0, 250)
        ));
    }
}
