//! Every key of cluster.toml has an effect on what the agent produces.
//!
//! The keys are enumerated twice, and both lists must be covered:
//! - from the schema itself: a tracing deserializer walks the field lists
//!   serde derives for [`ClusterConfig`] (so a field added to the structs is
//!   found even if nobody documents it);
//! - from `configs/cluster.example.toml` (every leaf key, read with
//!   toml_edit), which must also document every schema key, set or in a
//!   `# key = …` comment.
//!
//! Each key has a case in [`EFFECTS`]: it changes the key's value in the
//! example file, loads it the way the agent does ([`ClusterConfig::from_source`])
//! and asserts how a production output changes: the plan
//! ([`firstboot::plan::plan`]), what a converge step renders or runs through
//! the recording host, the mDNS TXT records, keys derived from the secret,
//! the PKI, the bootstrap decision or the choice of the cluster interface.
//! A key without a case, or a case that shows no effect, fails the test by
//! name: a key that does nothing is a defect.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use firstboot::cluster::{ClusterConfig, Ipv4Cidr};
use firstboot::consensus::bootstrap::{self, Advert, BootstrapState, Decision, WaitReason};
use firstboot::discovery::{self, Announcement, MdnsKey, RaftState, Rejection};
use firstboot::host::fake::Recording;
use firstboot::netif::{self, Link, Wish};
use firstboot::secretbox::SecretBox;
use firstboot::source::SourceFile;
use firstboot::state::{ClusterState, Command, Member, NodeId, Plan, Response};
use firstboot::steps::{self, gluster, vip, Ctx, Gate, Step};

const GIB: u64 = 1 << 30;
const SEED: [u8; 32] = [7; 32];
const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const OTHER_SECRET: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

// ---------------------------------------------------------------------------
// The keys

/// Every leaf key of `T`'s schema, dotted ("network.vip"), in field order.
fn schema_keys<T: serde::de::DeserializeOwned>() -> Vec<String> {
    fn walk<T: serde::de::DeserializeOwned>(path: &mut Vec<&'static str>, out: &mut Vec<String>) {
        let found = Cell::new(None);
        // The walk stops with an error once it reached the end of `path`.
        let _ = T::deserialize(schema::Walk {
            path,
            found: &found,
        });
        match found.take() {
            Some(schema::Found::Struct(fields)) => {
                for f in fields {
                    path.push(f);
                    walk::<T>(path, out);
                    path.pop();
                }
            }
            Some(schema::Found::Leaf) => out.push(path.join(".")),
            None => panic!("the schema walk did not reach {:?}", path.join(".")),
        }
    }
    let mut out = Vec::new();
    walk::<T>(&mut Vec::new(), &mut out);
    out
}

/// A serde `Deserializer` that answers only with structure: asked for a
/// struct at the end of its path it records the struct's field names;
/// asked for anything else there, it records a leaf. On the way down it
/// offers exactly one key per struct, the next one of the path.
mod schema {
    use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
    use std::cell::Cell;

    type Error = de::value::Error;

    pub enum Found {
        Struct(&'static [&'static str]),
        Leaf,
    }

    pub struct Walk<'a> {
        pub path: &'a [&'static str],
        pub found: &'a Cell<Option<Found>>,
    }

    fn stop() -> Error {
        de::Error::custom("schema walk: end of path")
    }

    impl<'de> de::Deserializer<'de> for Walk<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            if self.path.is_empty() {
                self.found.set(Some(Found::Leaf));
            }
            Err(stop())
        }

        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_some(self)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            v: V,
        ) -> Result<V::Value, Error> {
            v.visit_newtype_struct(self)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            match self.path.split_first() {
                None => {
                    self.found.set(Some(Found::Struct(fields)));
                    Err(stop())
                }
                Some((key, rest)) => v.visit_map(OneKey {
                    key: Some(key),
                    value: Some(Walk {
                        path: rest,
                        found: self.found,
                    }),
                }),
            }
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf unit unit_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    struct OneKey<'a> {
        key: Option<&'static str>,
        value: Option<Walk<'a>>,
    }

    impl<'de> MapAccess<'de> for OneKey<'_> {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            self.key
                .take()
                .map(|k| seed.deserialize(k.into_deserializer()))
                .transpose()
        }

        fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
            seed.deserialize(self.value.take().ok_or_else(stop)?)
        }
    }
}

fn example_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cluster.example.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every leaf key set in the example file (arrays count as one leaf).
fn example_keys(text: &str) -> Vec<String> {
    fn walk(prefix: &str, table: &dyn toml_edit::TableLike, out: &mut Vec<String>) {
        for (k, item) in table.iter() {
            let key = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            match item.as_table_like() {
                Some(t) => walk(&key, t, out),
                None => out.push(key),
            }
        }
    }
    let doc: toml_edit::DocumentMut = text.parse().expect("the example is TOML");
    let mut out = Vec::new();
    walk("", doc.as_table(), &mut out);
    out
}

/// Keys the example mentions only in a comment (`# nodes = 6` under `[storage]`).
fn example_commented_keys(text: &str) -> Vec<String> {
    let mut table = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('[') {
            table = t.trim_end_matches(']').trim().to_string();
        } else if let Some(t) = line
            .strip_prefix('#')
            .and_then(|l| l.trim().strip_prefix("[["))
        {
            // A commented array of tables (`# [[nodes]]`) documents its key.
            table = t.trim_end_matches("]]").trim().to_string();
            out.push(table.clone());
        } else if let Some((k, _)) = line.strip_prefix('#').and_then(|l| l.split_once('=')) {
            let k = k.trim();
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.push(format!("{table}.{k}"));
            }
        }
    }
    out
}

/// The union of both enumerations.
fn all_keys() -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = schema_keys::<ClusterConfig>().into_iter().collect();
    keys.extend(example_keys(&example_text()));
    keys
}

// ---------------------------------------------------------------------------
// Inputs

/// The example file with a real secret and `edits` applied (dotted key →
/// TOML value text), as the agent reads it.
fn source_with(edits: &[(&str, &str)]) -> SourceFile {
    let mut doc: toml_edit::DocumentMut = example_text().parse().unwrap();
    doc["cluster"]["secret"] = toml_edit::value(SECRET);
    for (key, value) in edits {
        let (table, leaf) = key.split_once('.').expect("a dotted key");
        let v: toml_edit::Value = value
            .parse()
            .unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
        doc[table][leaf] = toml_edit::Item::Value(v);
    }
    SourceFile::from_text("cluster.toml", doc.to_string())
}

fn cfg_with(edits: &[(&str, &str)]) -> ClusterConfig {
    ClusterConfig::from_source(&source_with(edits))
        .unwrap_or_else(|e| panic!("cluster.toml with {edits:?}: {e}"))
}

fn base() -> ClusterConfig {
    cfg_with(&[])
}

/// A healthy member at 10.77.0.`host`/24, 50 GiB free, no spare disks.
fn member(id: NodeId, host: u8) -> Member {
    Member {
        id,
        hostname: format!("n{id}"),
        ip: Ipv4Addr::new(10, 77, 0, host),
        prefix: 24,
        port: 7946,
        cpus: 4,
        mem_bytes: 8 * GIB,
        spare_disks: vec![],
        data_free_bytes: 50 * GIB,
        labels: BTreeMap::new(),
        kubernetes: true,
        var_in_ram: false,
        healthy: true,
    }
}

/// Members 1..=n at 10.77.0.1..=n.
fn members(n: u8) -> BTreeMap<NodeId, Member> {
    (1..=n)
        .map(|i| (NodeId::from(i), member(i.into(), i)))
        .collect()
}

fn plan(cfg: &ClusterConfig, ms: &BTreeMap<NodeId, Member>) -> Plan {
    firstboot::plan::plan(ms, cfg, None, &SEED).unwrap_or_else(|e| panic!("plan: {e}"))
}

fn plan_err(cfg: &ClusterConfig, ms: &BTreeMap<NodeId, Member>) -> String {
    match firstboot::plan::plan(ms, cfg, None, &SEED) {
        Ok(p) => panic!("expected no plan, got {p:?}"),
        Err(e) => e.to_string(),
    }
}

/// The replicated state with `ms` and their first plan under `cfg`.
fn state(cfg: &ClusterConfig, ms: BTreeMap<NodeId, Member>) -> ClusterState {
    let p = plan(cfg, &ms);
    let mut s = ClusterState {
        members: ms,
        ..Default::default()
    };
    assert_eq!(s.apply(Command::SetPlan(p)), Response::Ok);
    s
}

/// Runs `f` with node `me`'s step context (root `/`, NIC `interface`).
fn with_ctx<R>(
    cfg: &ClusterConfig,
    st: &ClusterState,
    me: NodeId,
    interface: &str,
    f: impl FnOnce(&Ctx) -> R,
) -> R {
    let items = BTreeMap::new();
    let ctx = Ctx {
        me,
        cfg,
        state: st,
        plan: st.plan.as_ref().expect("a plan"),
        items: &items,
        root: Path::new("/"),
        interface,
        agent_exe: "/usr/lib/habuild/habuild-agent",
        emulated: false,
    };
    f(&ctx)
}

/// Renders `step` for node `me` and applies it to a recording host; returns the record.
fn applied(cfg: &ClusterConfig, me: NodeId, interface: &str, step: &dyn Step) -> Recording {
    let st = state(cfg, members(6));
    let rec = Recording::default();
    with_ctx(cfg, &st, me, interface, |ctx| {
        let r = step.render(ctx).unwrap_or_else(|e| panic!("render: {e}"));
        steps::apply(&r, &rec.host()).unwrap_or_else(|e| panic!("apply: {e}"));
    });
    rec
}

/// The keepalived configuration node 1 (control plane) writes.
fn keepalived(cfg: &ClusterConfig, interface: &str) -> String {
    applied(cfg, 1, interface, &vip::Vip)
        .file(vip::KEEPALIVED_CONF)
        .expect("keepalived.conf written")
}

/// One `key value` line of a rendered configuration.
fn conf_value(text: &str, key: &str) -> String {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

/// etcd's `--initial-cluster-token` as node 1 would start it.
fn etcd_token(cfg: &ClusterConfig) -> String {
    let rec = applied(cfg, 1, "eth0", &steps::etcd::Etcd);
    let svc = rec.lock().services["habuild-etcd"].clone();
    svc.argv
        .iter()
        .find_map(|a| a.strip_prefix("--initial-cluster-token="))
        .expect("etcd has a cluster token")
        .to_string()
}

/// The commands the storage leader's gluster-volume step runs on a host
/// without the volume.
fn volume_commands(cfg: &ClusterConfig) -> Vec<String> {
    let mut st = state(cfg, members(6));
    let plan = st.plan.clone().unwrap();
    let leader = plan.storage_leader.expect("a storage leader");
    // every brick built: the leader creates the volume over them
    for node in &plan.storage {
        st.apply(Command::RecordStep(firstboot::state::StepRecord {
            node: *node,
            step: "gluster-brick".into(),
            status: firstboot::state::StepStatus::Done,
            detail: String::new(),
            attempts: 0,
        }));
    }
    let rec = Recording::default();
    with_ctx(cfg, &st, leader, "eth0", |ctx| {
        gluster::Volume
            .act(ctx, &rec.host())
            .unwrap_or_else(|e| panic!("gluster-volume: {e}"))
    });
    rec.commands()
        .into_iter()
        .filter(|c| c.contains("volume create"))
        .collect()
}

/// A host with eth0 on 10.77.0.0/24 (listed first) and eth1 on 10.88.0.0/24.
fn host_links() -> Vec<Link> {
    netif::parse_ip_addr(
        r#"[{"ifname":"lo","flags":["LOOPBACK","UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"eth0","flags":["UP"],"addr_info":[{"family":"inet","local":"10.77.0.1","prefixlen":24}]},
            {"ifname":"eth1","flags":["UP"],"addr_info":[{"family":"inet","local":"10.88.0.1","prefixlen":24}]}]"#,
    )
    .unwrap()
}

/// The interface choice the agent makes for `src` (no `--interface` flag).
fn chosen(src: &SourceFile) -> Result<netif::Choice, String> {
    let cfg = ClusterConfig::from_source(src).unwrap();
    let line = src.locate("network.interface").map(|(l, _)| l);
    let wish = Wish::new(None, &cfg.network, line);
    netif::choose(&wish, cfg.network.subnet, &host_links()).map_err(|e| e.to_string())
}

fn announcement(cfg: &ClusterConfig) -> Vec<(String, String)> {
    discovery::encode_txt(
        &Announcement {
            cluster: cfg.cluster.name.clone(),
            node: 1,
            port: 7946,
            state: RaftState::Member,
        },
        &MdnsKey::derive(&cfg.cluster.secret),
    )
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The bytes of the first PEM block of `pem` (base64 decoded).
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in b64.bytes().filter(|c| *c != b'=') {
        acc = acc << 6 | u32::from(val(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Whether the DER of a certificate names `ip` as an IP subjectAltName
/// (context tag [7], 4 bytes).
fn has_ip_san(der: &[u8], ip: Ipv4Addr) -> bool {
    let mut want = vec![0x87, 4];
    want.extend(ip.octets());
    der.windows(6).any(|w| w == want)
}

/// The kube-apiserver certificate the leader issues for node 1.
fn apiserver_cert(cfg: &ClusterConfig) -> Vec<u8> {
    let st = state(cfg, members(3));
    let sbox = SecretBox::derive(&cfg.cluster.secret);
    let cmd = firstboot::agent::converge::issue_pki(&st, cfg, &sbox)
        .unwrap_or_else(|e| panic!("issue_pki: {e}"))
        .expect("the PKI is issued");
    let Command::PutSecretsIfAbsent(items) = cmd else {
        panic!("unexpected command {cmd:?}")
    };
    let name = format!("{}apiserver.crt", firstboot::pki::node_prefix(1));
    let pem = sbox
        .open(&name, &items[&name])
        .expect("sealed with our key");
    pem_der(&String::from_utf8(pem).unwrap())
}

// ---------------------------------------------------------------------------
// The effects, one per key

type Effect = fn();

const EFFECTS: &[(&str, Effect)] = &[
    ("cluster.name", cluster_name),
    ("cluster.secret", cluster_secret),
    ("cluster.bootstrap_expect", cluster_bootstrap_expect),
    ("cluster.control_plane_size", cluster_control_plane_size),
    ("network.interface", network_interface),
    ("network.subnet", network_subnet),
    ("network.vip", network_vip),
    ("network.hostname", network_hostname),
    ("network.metallb_range", network_metallb_range),
    ("network.pod_cidr", network_pod_cidr),
    ("network.service_cidr", network_service_cidr),
    ("storage.enabled", storage_enabled),
    ("storage.brick_file_size_gib", storage_brick_file_size_gib),
    ("storage.devices", storage_devices),
    ("storage.replica", storage_replica),
    ("storage.nodes", storage_nodes),
    ("storage.mount_path", storage_mount_path),
    ("kubernetes.enabled", kubernetes_enabled),
    ("nodes", nodes),
    (
        "kubernetes.control_plane_schedulable",
        kubernetes_control_plane_schedulable,
    ),
];

/// The mDNS instance and TXT cluster name, what peers accept, the etcd
/// cluster token and the VRRP router id.
fn cluster_name() {
    let (lab, prod) = (base(), cfg_with(&[("cluster.name", r#""prod""#)]));
    let txt = announcement(&prod);
    assert!(txt.contains(&("c".into(), "prod".into())), "{txt:?}");
    // A "lab" node takes a "prod" announcement for another cluster.
    let key = MdnsKey::derive(&lab.cluster.secret);
    assert_eq!(
        discovery::verify_txt(&txt, &key, &lab.cluster.name),
        Err(Rejection::OtherCluster("prod".into()))
    );
    assert!(etcd_token(&lab).starts_with("habuild-lab-"));
    assert!(etcd_token(&prod).starts_with("habuild-prod-"));
    assert_eq!(
        conf_value(&keepalived(&prod, "eth0"), "virtual_router_id"),
        vip::vrid("prod").to_string()
    );
    assert_ne!(vip::vrid("prod"), vip::vrid("lab"));
}

/// The mDNS MAC key (another secret's announcements fail), the transport
/// PSK, the secret box and the VRRP password.
fn cluster_secret() {
    let (a, b) = (
        base(),
        cfg_with(&[("cluster.secret", &format!("{OTHER_SECRET:?}"))]),
    );
    let txt = announcement(&b);
    assert_eq!(
        discovery::verify_txt(&txt, &MdnsKey::derive(&a.cluster.secret), "lab"),
        Err(Rejection::BadMac)
    );
    assert!(discovery::verify_txt(&txt, &MdnsKey::derive(&b.cluster.secret), "lab").is_ok());
    assert_ne!(
        firstboot::transport::derive_psk(&a.cluster.secret),
        firstboot::transport::derive_psk(&b.cluster.secret)
    );
    let sealed = SecretBox::derive(&b.cluster.secret).seal("pki/ca.key", b"k");
    assert!(SecretBox::derive(&a.cluster.secret)
        .open("pki/ca.key", &sealed)
        .is_err());
    let (pa, pb) = (
        conf_value(&keepalived(&a, "eth0"), "auth_pass"),
        conf_value(&keepalived(&b, "eth0"), "auth_pass"),
    );
    assert_eq!(pa.len(), 8);
    assert_ne!(pa, pb);
}

/// How many nodes must see each other before the group forms (the
/// bootstrap decision), and the size of the first plan's control plane.
fn cluster_bootstrap_expect() {
    let peers: Vec<bootstrap::Peer> = (2..=4)
        .map(|id| bootstrap::Peer {
            id,
            advert: Advert::Booting {
                proposal: None,
                locked: false,
            },
        })
        .collect();
    let decide = |cfg: &ClusterConfig| {
        bootstrap::decide(
            1,
            cfg.cluster.bootstrap_expect as usize,
            &BootstrapState::default(),
            &peers,
        )
    };
    // Four nodes in view: 3 expected proposes the three lowest, 5 waits.
    match decide(&base()) {
        Decision::Propose { set, .. } => assert_eq!(set, BTreeSet::from([1, 2, 3])),
        d => panic!("expected a proposal, got {d:?}"),
    }
    assert_eq!(
        decide(&cfg_with(&[("cluster.bootstrap_expect", "5")])),
        Decision::Wait(WaitReason::NotEnoughPeers {
            seen: 4,
            expected: 5
        })
    );
}

fn cluster_control_plane_size() {
    let ms = members(6);
    assert_eq!(plan(&base(), &ms).control_plane.len(), 3);
    let one = cfg_with(&[("cluster.control_plane_size", "1")]);
    assert_eq!(plan(&one, &ms).control_plane.len(), 1);
    let five = cfg_with(&[
        ("cluster.control_plane_size", "5"),
        ("cluster.bootstrap_expect", "5"),
    ]);
    assert_eq!(plan(&five, &ms).control_plane.len(), 5);
}

/// Which NIC carries the cluster network: its address is advertised, and
/// keepalived holds the VIP on it; a NIC that is not there is an error
/// naming the key's line.
fn network_interface() {
    assert_eq!(chosen(&source_with(&[])).unwrap().interface, "eth0");
    let named = chosen(&source_with(&[("network.interface", r#""eth1""#)])).unwrap();
    assert_eq!(
        named,
        netif::Choice {
            interface: "eth1".into(),
            addr: cidr("10.88.0.1/24"),
        }
    );
    let conf = keepalived(&base(), &named.interface);
    assert_eq!(conf_value(&conf, "interface"), "eth1");
    let src = source_with(&[("network.interface", r#""eth7""#)]);
    let line = src
        .text
        .lines()
        .position(|l| l.starts_with("interface"))
        .unwrap()
        + 1;
    assert_eq!(
        chosen(&src).unwrap_err(),
        format!(
            "network.interface = \"eth7\" (cluster.toml line {line}): no such interface; \
             interfaces here: eth0, eth1"
        )
    );
}

/// The address "auto" picks (inside the subnet), and where the planner
/// puts the VIP and checks given addresses.
fn network_subnet() {
    let src = source_with(&[("network.subnet", r#""10.88.0.0/24""#)]);
    assert_eq!(chosen(&src).unwrap().addr, cidr("10.88.0.1/24"));
    let ms = members(3);
    assert_eq!(plan(&base(), &ms).vip, ip("10.77.0.254"));
    let half = cfg_with(&[("network.subnet", r#""10.77.0.0/25""#)]);
    assert_eq!(plan(&half, &ms).vip, ip("10.77.0.126"));
}

fn network_vip() {
    let cfg = cfg_with(&[("network.vip", r#""10.77.0.100""#)]);
    assert_eq!(plan(&cfg, &members(3)).vip, ip("10.77.0.100"));
    let conf = keepalived(&cfg, "eth0");
    assert!(conf.contains("10.77.0.100/24 dev eth0"), "{conf}");
    assert!(!keepalived(&base(), "eth0").contains("10.77.0.100/"));
}

fn network_metallb_range() {
    let ms = members(3);
    assert_eq!(
        plan(&base(), &ms).metallb,
        "10.77.0.238-10.77.0.253".parse().unwrap()
    );
    let cfg = cfg_with(&[("network.metallb_range", r#""10.77.0.50-10.77.0.60""#)]);
    assert_eq!(
        plan(&cfg, &ms).metallb,
        "10.77.0.50-10.77.0.60".parse().unwrap()
    );
}

fn network_pod_cidr() {
    let ms = members(3);
    let inside = |p: &Plan, net: &str| p.pod_cidrs.values().all(|c| cidr(net).contains(c.addr));
    assert!(inside(&plan(&base(), &ms), "10.244.0.0/16"));
    let cfg = cfg_with(&[("network.pod_cidr", r#""10.200.0.0/16""#)]);
    let p = plan(&cfg, &ms);
    assert_eq!(p.pod_cidrs.len(), 3);
    assert!(inside(&p, "10.200.0.0/16"), "{:?}", p.pod_cidrs);
}

/// The name a node gives itself on first boot (persisted in its state
/// directory) and writes to /etc/hostname, /etc/hosts and the kernel through
/// the recording host; a pattern that cannot name nodes apart is refused at
/// its line.
fn network_hostname() {
    use firstboot::hostname::{apply, establish, Inputs};
    let named = |cfg: &ClusterConfig| {
        let dir = tempfile::tempdir().unwrap();
        let got = establish(dir.path(), None, &cfg.network.hostname, || Inputs {
            id: 0x0123_4567_89ab_cdef,
            mac: Some("525400c0ffee".into()),
            cluster: cfg.cluster.name.clone(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let rec = Recording::default();
        apply(&*rec.host().files, &rec, &got.name).unwrap();
        let kernel = rec.lock().kernel_hostname.clone();
        (got.name, rec.file("/etc/hostname").unwrap(), kernel)
    };
    assert_eq!(
        named(&base()),
        (
            "node-abcdef".to_string(),
            "node-abcdef\n".to_string(),
            "node-abcdef".to_string()
        )
    );
    let cfg = cfg_with(&[("network.hostname", r#""{cluster}-{mac}""#)]);
    assert_eq!(named(&cfg).0, format!("{}-525400c0ffee", cfg.cluster.name));
    let src = source_with(&[("network.hostname", r#""worker""#)]);
    let e = ClusterConfig::from_source(&src).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("network.hostname"));
    let line = src
        .text
        .lines()
        .position(|l| l.starts_with("hostname"))
        .unwrap()
        + 1;
    assert_eq!(e.line, Some(line));
    assert!(e.message.contains("every node's name differs"), "{e}");
}

/// The `kubernetes` service IP in the API server's certificate, and the
/// planner's overlap check against the nodes' subnet.
fn network_service_cidr() {
    assert!(has_ip_san(&apiserver_cert(&base()), ip("10.96.0.1")));
    let cfg = cfg_with(&[("network.service_cidr", r#""10.100.0.0/16""#)]);
    let der = apiserver_cert(&cfg);
    assert!(has_ip_san(&der, ip("10.100.0.1")));
    assert!(!has_ip_san(&der, ip("10.96.0.1")));
    let overlapping = cfg_with(&[("network.service_cidr", r#""10.77.0.0/16""#)]);
    assert_eq!(
        plan_err(&overlapping, &members(3)),
        "network.service_cidr 10.77.0.0/16 overlaps the node subnet 10.77.0.0/24"
    );
}

fn storage_enabled() {
    let ms = members(3);
    let on = plan(&base(), &ms);
    assert_eq!((on.storage.len(), on.storage_leader.is_some()), (3, true));
    let cfg = cfg_with(&[("storage.enabled", "false")]);
    let off = plan(&cfg, &ms);
    assert!(off.storage.is_empty() && off.storage_leader.is_none());
    let st = state(&cfg, ms);
    with_ctx(&cfg, &st, 1, "eth0", |ctx| {
        assert_eq!(gluster::Brick.gate(ctx), Gate::NotHere);
        assert_eq!(gluster::Mount.gate(ctx), Gate::NotHere);
    });
}

/// The loop device's backing file size, and which members can carry one.
fn storage_brick_file_size_gib() {
    let size_of = |cfg: &ClusterConfig| {
        let st = state(cfg, members(6));
        let me = st.plan.as_ref().unwrap().storage[0];
        let rec = Recording::default();
        with_ctx(cfg, &st, me, "eth0", |ctx| {
            let r = gluster::Brick.render(ctx).unwrap();
            steps::apply(&r, &rec.host()).unwrap();
        });
        rec.file(firstboot::gluster::LOOP_CONF)
            .expect("the loop configuration is written")
    };
    assert!(size_of(&base()).contains("SIZE_GIB=10\n"));
    let cfg = cfg_with(&[("storage.brick_file_size_gib", "20")]);
    assert!(size_of(&cfg).contains("SIZE_GIB=20\n"));
    // 50 GiB free: a 60 GiB file fits on no member.
    let big = cfg_with(&[("storage.brick_file_size_gib", "60")]);
    assert!(plan_err(&big, &members(3)).contains("60 GiB free on its data partition"));
}

/// Which disks carry bricks: only members with a named disk qualify.
fn storage_devices() {
    let mut ms = members(4);
    ms.get_mut(&4).unwrap().spare_disks = vec!["/dev/nvme1n1".into()];
    let any = plan(&base(), &ms);
    assert_eq!(any.storage.len(), 3);
    assert_eq!(
        any.storage_devices[&4], "/dev/nvme1n1",
        "a spare disk is preferred"
    );
    assert!(any
        .storage_devices
        .values()
        .any(|d| d == firstboot::gluster::LOOP_DEVICE));
    let cfg = cfg_with(&[("storage.devices", r#"["/dev/nvme1n1"]"#)]);
    let p = plan(&cfg, &ms);
    assert_eq!(p.storage, vec![4]);
    assert_eq!(
        p.storage_devices,
        BTreeMap::from([(4, "/dev/nvme1n1".to_string())])
    );
}

/// The replica count of the volume the storage leader creates (and, with
/// `nodes` unset, how many nodes carry a brick).
fn storage_replica() {
    let three = volume_commands(&base());
    assert_eq!(three.len(), 1, "{three:?}");
    assert!(three[0].contains(" replica 3 "), "{three:?}");
    let cfg = cfg_with(&[("storage.replica", "2")]);
    assert_eq!(plan(&cfg, &members(6)).storage.len(), 2);
    let two = volume_commands(&cfg);
    assert!(two[0].contains(" replica 2 "), "{two:?}");
    assert_eq!(two[0].matches(":/").count(), 2, "{two:?}");
}

/// How many nodes carry a brick: whole replica sets of a
/// distributed-replicated volume.
fn storage_nodes() {
    let cfg = cfg_with(&[("storage.nodes", "6")]);
    assert_eq!(plan(&cfg, &members(6)).storage.len(), 6);
    let create = volume_commands(&cfg);
    assert!(create[0].contains(" replica 3 "), "{create:?}");
    assert_eq!(create[0].matches(":/").count(), 6, "{create:?}");
    assert_eq!(volume_commands(&base())[0].matches(":/").count(), 3);
}

/// Where every node mounts the volume: the mount unit's name and target.
fn storage_mount_path() {
    let unit = |cfg: &ClusterConfig| {
        let rec = applied(cfg, 4, "eth0", &gluster::Mount);
        let files = rec.lock().files.clone();
        files
            .iter()
            .find(|(k, _)| k.ends_with(".mount"))
            .map(|(k, f)| (k.clone(), String::from_utf8_lossy(&f.contents).into_owned()))
            .expect("a mount unit")
    };
    let (name, text) = unit(&base());
    assert_eq!(name, "etc/systemd/system/mnt-gluster.mount");
    assert!(text.contains("Where=/mnt/gluster\n"), "{text}");
    let (name, text) = unit(&cfg_with(&[("storage.mount_path", r#""/var/lib/shared""#)]));
    assert_eq!(name, "etc/systemd/system/var-lib-shared.mount");
    assert!(text.contains("Where=/var/lib/shared\n"), "{text}");
}

/// Whether the Kubernetes steps run at all: off, they are not this node's
/// business on any node (etcd, the VIP and Gluster still assemble).
fn kubernetes_enabled() {
    use steps::kube_bootstrap::KubeBootstrap;
    use steps::kube_control_plane::KubeControlPlane;
    let gates = |cfg: &ClusterConfig, me: NodeId| {
        let st = state(cfg, members(4));
        with_ctx(cfg, &st, me, "eth0", |ctx| {
            (
                KubeControlPlane.gate(ctx),
                KubeBootstrap.gate(ctx),
                vip::Vip.gate(ctx),
            )
        })
    };
    let (cp, boot, v) = gates(&base(), 1);
    assert!(
        matches!(cp, Gate::Wait(ref w) if w.contains("kube/admin.crt")),
        "{cp:?}"
    );
    assert!(matches!(boot, Gate::Wait(_)), "{boot:?}");
    assert_eq!(v, Gate::Run);
    let off = cfg_with(&[("kubernetes.enabled", "false")]);
    assert_eq!(gates(&off, 1), (Gate::NotHere, Gate::NotHere, Gate::Run));
}

/// `[[nodes]]`: the machine with the entry's MAC carries its `kubernetes`
/// and `labels` in its member record; `kubernetes = false` keeps it out of
/// the control plane and out of every Kubernetes step.
fn nodes() {
    use steps::node::Kubelet;
    let mac = "52:54:00:00:00:01";
    let text = format!(
        "{}\n[[nodes]]\nmac = \"{}\"\nkubernetes = false\nlabels = {{ zone = \"b\" }}\n",
        source_with(&[]).text,
        mac.to_uppercase()
    );
    let with = ClusterConfig::from_source(&SourceFile::from_text("cluster.toml", text))
        .unwrap_or_else(|e| panic!("{e}"));
    // Member 1's record, as the agent fills it from the entry of its MAC.
    let record = |cfg: &ClusterConfig| {
        let mut ms = members(4);
        if let Some(n) = cfg.node_entry(&[mac.to_string()]) {
            let m = ms.get_mut(&1).unwrap();
            m.kubernetes = n.kubernetes;
            m.labels = n.labels.clone();
        }
        ms
    };
    let (off, on) = (record(&with), record(&base()));
    assert_eq!(off[&1].labels.get("zone").map(String::as_str), Some("b"));
    assert!(on[&1].labels.is_empty() && on[&1].kubernetes);
    assert!(plan(&base(), &on).control_plane.contains(&1));
    let p = plan(&with, &off);
    assert!(!p.control_plane.contains(&1), "{p:?}");
    let gate = |cfg: &ClusterConfig, ms: BTreeMap<NodeId, Member>| {
        let st = state(cfg, ms);
        with_ctx(cfg, &st, 1, "eth0", |ctx| Kubelet.gate(ctx))
    };
    assert_ne!(gate(&base(), on), Gate::NotHere);
    assert_eq!(gate(&with, off), Gate::NotHere);
}

/// The `node-role.kubernetes.io/master:NoSchedule` taint on registered
/// control-plane nodes: only when they must not run workloads.
fn kubernetes_control_plane_schedulable() {
    use steps::kube_bootstrap::KubeBootstrap;
    let commands = |cfg: &ClusterConfig| {
        let st = state(cfg, members(4));
        let rec = Recording::default();
        rec.answer(
            "/usr/bin/kubectl --kubeconfig=/etc/kubernetes/habuild/admin-local.conf --request-timeout=30s get nodes",
            0,
            r#"{"items":[{"metadata":{"name":"n1","labels":{}},"spec":{}}]}"#,
            "",
        );
        with_ctx(cfg, &st, 1, "eth0", |ctx| {
            KubeBootstrap
                .act(ctx, &rec.host())
                .unwrap_or_else(|e| panic!("kube-bootstrap: {e}"))
        });
        rec.commands()
    };
    let taint = "taint --overwrite node n1 node-role.kubernetes.io/master=:NoSchedule";
    let label = "label --overwrite node n1 node-role.kubernetes.io/control-plane=";
    let yes = commands(&base());
    assert!(yes.iter().any(|c| c.contains(label)), "{yes:?}");
    assert!(!yes.iter().any(|c| c.contains(taint)), "{yes:?}");
    let no = commands(&cfg_with(&[(
        "kubernetes.control_plane_schedulable",
        "false",
    )]));
    assert!(no.iter().any(|c| c.contains(label)), "{no:?}");
    assert!(no.iter().any(|c| c.contains(taint)), "{no:?}");
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn the_schema_walk_finds_every_section_and_optional_key() {
    let keys = schema_keys::<ClusterConfig>();
    for k in [
        "cluster.name",
        "network.interface",
        "storage.nodes",
        "storage.devices",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    // Sections' keys, and the one top-level array of tables, `[[nodes]]`.
    assert!(
        keys.iter()
            .all(|k| k.split('.').count() == 2 || k == "nodes"),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k == "nodes"), "{keys:?}");
}

#[test]
fn the_example_documents_every_schema_key() {
    let text = example_text();
    let mut documented: BTreeSet<String> = example_keys(&text).into_iter().collect();
    documented.extend(example_commented_keys(&text));
    let missing: Vec<String> = schema_keys::<ClusterConfig>()
        .into_iter()
        .filter(|k| !documented.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "configs/cluster.example.toml does not mention {missing:?} (set it, or show it in a `# key = value` comment)"
    );
}

#[test]
fn every_cluster_toml_key_has_an_effect() {
    let keys = all_keys();
    let cases: BTreeMap<&str, Effect> = EFFECTS.iter().copied().collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !cases.contains_key(k.as_str()))
        .collect();
    let stale: Vec<&&str> = cases.keys().filter(|k| !keys.contains(**k)).collect();
    let mut no_effect = Vec::new();
    for key in &keys {
        if let Some(case) = cases.get(key.as_str()) {
            eprintln!("effect of {key}");
            if std::panic::catch_unwind(*case).is_err() {
                no_effect.push(key.clone());
            }
        }
    }
    assert!(
        missing.is_empty() && stale.is_empty() && no_effect.is_empty(),
        "cluster.toml keys without an effect case: {missing:?}; \
         cases for keys the schema no longer has: {stale:?}; \
         cases that failed to show their key's effect (see above): {no_effect:?}"
    );
}
