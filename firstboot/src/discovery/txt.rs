//! The TXT record format of an announcement and its MAC (see the
//! [module docs](super) for the table of records and what an attacker can
//! do): [`encode_txt`] writes the records of an [`Announcement`],
//! [`verify_txt`] / [`verify_resolved`] check received ones. Pure code: no
//! sockets, no clock.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SERVICE_TYPE;
use crate::cluster::Secret;
use crate::state::NodeId;

/// Value of the `v` record this code writes and accepts.
pub const TXT_VERSION: &str = "1";
/// At most this many TXT records are looked at; more is malformed.
const MAX_RECORDS: usize = 32;

/// The key of the announcement MAC, derived from the cluster secret.
#[derive(Clone, PartialEq, Eq)]
pub struct MdnsKey(pub [u8; 32]);

impl fmt::Debug for MdnsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MdnsKey(<redacted>)")
    }
}

impl MdnsKey {
    /// The key schedule's mDNS MAC key ([`crate::keys::mdns_mac_key`]).
    pub fn derive(secret: &Secret) -> Self {
        Self(crate::keys::mdns_mac_key(secret))
    }
}

/// A node's Raft state as announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RaftState {
    /// Not in a Raft group yet; carries 16 bytes about the voter set this
    /// node would propose (the agent puts its bootstrap advert there, see
    /// `agent::advert`; discovery does not interpret them).
    Forming { voters: [u8; 16] },
    /// Part of a formed Raft group (follower or learner).
    Member,
    /// Leader of the Raft group.
    Leader,
}

impl fmt::Display for RaftState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftState::Forming { voters } => write!(f, "forming:{}", hex::encode(voters)),
            RaftState::Member => f.write_str("member"),
            RaftState::Leader => f.write_str("leader"),
        }
    }
}

impl FromStr for RaftState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "member" => Ok(RaftState::Member),
            "leader" => Ok(RaftState::Leader),
            _ => {
                let h = s
                    .strip_prefix("forming:")
                    .ok_or_else(|| format!("unknown raft state {:?}", clip(s)))?;
                let voters = parse_lower_hex::<16>(h)
                    .ok_or_else(|| "voter-set hash is not 32 lowercase hex digits".to_string())?;
                Ok(RaftState::Forming { voters })
            }
        }
    }
}

/// What one agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub cluster: String,
    pub node: NodeId,
    /// Agent (transport) port.
    pub port: u16,
    pub state: RaftState,
}

impl Announcement {
    /// The DNS-SD instance name: `<cluster>-<node id hex>`.
    pub fn instance_name(&self) -> String {
        instance_name(&self.cluster, self.node)
    }
}

pub fn instance_name(cluster: &str, node: NodeId) -> String {
    format!("{cluster}-{node:016x}")
}

/// Why an announcement was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A well-formed announcement of another cluster (not an attack by itself).
    #[error("announcement of another cluster ({0:?})")]
    OtherCluster(String),
    /// Claims our cluster but its MAC does not verify: no secret, or tampered.
    #[error("announcement MAC does not verify")]
    BadMac,
    #[error("malformed announcement: {0}")]
    Malformed(String),
}

pub(super) fn malformed(s: impl Into<String>) -> Rejection {
    Rejection::Malformed(s.into())
}

/// Attacker-controlled text, shortened for error messages and logs.
pub(super) fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// The MAC input: `key=value` for every record except `m`, sorted, `\n`-joined.
fn mac_input<'a>(records: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut sorted: Vec<(&str, &str)> = records.filter(|(k, _)| *k != "m").collect();
    sorted.sort_unstable();
    let mut out = Vec::new();
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn mac(key: &MdnsKey) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes any key length")
}

/// The TXT records announcing `a`, MAC included.
pub fn encode_txt(a: &Announcement, key: &MdnsKey) -> Vec<(String, String)> {
    let mut records = vec![
        ("c".to_string(), a.cluster.clone()),
        ("n".to_string(), format!("{:016x}", a.node)),
        ("p".to_string(), a.port.to_string()),
        ("s".to_string(), a.state.to_string()),
        ("v".to_string(), TXT_VERSION.to_string()),
    ];
    let mut m = mac(key);
    m.update(&mac_input(
        records.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ));
    records.push(("m".to_string(), hex::encode(m.finalize().into_bytes())));
    records
}

/// Checks TXT records received for `cluster` and returns what they announce.
pub fn verify_txt(
    props: &[(String, String)],
    key: &MdnsKey,
    cluster: &str,
) -> Result<Announcement, Rejection> {
    if props.len() > MAX_RECORDS {
        return Err(malformed(format!("{} TXT records", props.len())));
    }
    let mut map: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in props {
        if k.is_empty() || k.contains(['=', '\n']) || v.contains('\n') {
            return Err(malformed(format!("invalid TXT record {:?}", clip(k))));
        }
        if map.insert(k, v).is_some() {
            return Err(malformed(format!("TXT key {:?} repeated", clip(k))));
        }
    }
    let get = |k: &str| {
        map.get(k)
            .copied()
            .ok_or_else(|| malformed(format!("TXT key {k:?} missing")))
    };
    let c = get("c")?;
    if c != cluster {
        return Err(Rejection::OtherCluster(clip(c)));
    }
    let v = get("v")?;
    if v != TXT_VERSION {
        return Err(malformed(format!("TXT version {:?}", clip(v))));
    }
    let tag = parse_lower_hex::<32>(get("m")?).ok_or(Rejection::BadMac)?;
    let mut m = mac(key);
    m.update(&mac_input(map.iter().map(|(k, v)| (*k, *v))));
    m.verify_slice(&tag).map_err(|_| Rejection::BadMac)?;

    let node = parse_lower_hex::<8>(get("n")?)
        .map(u64::from_be_bytes)
        .filter(|id| *id != 0)
        .ok_or_else(|| malformed("node id is not 16 lowercase hex digits, nonzero"))?;
    let p = get("p")?;
    let port = p
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0 && port.to_string() == p)
        .ok_or_else(|| malformed(format!("port {:?}", clip(p))))?;
    let state = get("s")?
        .parse::<RaftState>()
        .map_err(Rejection::Malformed)?;
    Ok(Announcement {
        cluster: c.to_string(),
        node,
        port,
        state,
    })
}

/// TXT records as received from mdns-sd; a key without value or a
/// non-UTF-8 value is malformed (our encoder never produces either).
pub fn props_from_mdns(props: &mdns_sd::TxtProperties) -> Result<Vec<(String, String)>, Rejection> {
    let mut out = Vec::with_capacity(props.len());
    for p in props.iter() {
        let v = p
            .val()
            .ok_or_else(|| malformed(format!("TXT key {:?} without value", clip(p.key()))))?;
        let v = std::str::from_utf8(v)
            .map_err(|_| malformed(format!("TXT value of {:?} is not UTF-8", clip(p.key()))))?;
        out.push((p.key().to_string(), v.to_string()));
    }
    Ok(out)
}

/// Verifies a resolved service: its TXT records and that its instance name is
/// the one its records imply.
pub fn verify_resolved(
    fullname: &str,
    props: &[(String, String)],
    key: &MdnsKey,
    cluster: &str,
) -> Result<Announcement, Rejection> {
    let a = verify_txt(props, key, cluster)?;
    let expected = format!("{}.{SERVICE_TYPE}", a.instance_name());
    if !fullname.eq_ignore_ascii_case(&expected) {
        return Err(malformed(format!(
            "instance {:?} does not match its records",
            clip(fullname)
        )));
    }
    Ok(a)
}

/// `fullname` without the ` (N)` that mDNS conflict resolution (RFC 6762
/// section 9; mdns-sd) appends to an instance label: the same announcement
/// under a new name. The name is not covered by the MAC, so checking the
/// records under the original name admits nothing the MAC does not.
pub(super) fn without_conflict_suffix(fullname: &str) -> String {
    let suffix = format!(".{SERVICE_TYPE}");
    let renamed = fullname
        .strip_suffix(&suffix)
        .and_then(|inst| inst.strip_suffix(')'))
        .and_then(|inst| inst.rsplit_once(" ("))
        .filter(|(_, n)| (1..=5).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()));
    match renamed {
        Some((base, _)) => format!("{base}{suffix}"),
        None => fullname.to_string(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The bytes the agent announces for a voter set (its bootstrap hash).
    fn voters(ids: &[NodeId]) -> [u8; 16] {
        let set = ids.iter().copied().collect();
        let h = crate::consensus::bootstrap::voter_set_hash(&set);
        hex::decode(h).unwrap().try_into().unwrap()
    }

    pub(in crate::discovery) fn key(b: u8) -> MdnsKey {
        MdnsKey::derive(&Secret([b; 32]))
    }

    pub(in crate::discovery) fn ann() -> Announcement {
        Announcement {
            cluster: "lab".into(),
            node: 0x0123_4567_89ab_cdef,
            port: 7443,
            state: RaftState::Forming {
                voters: voters(&[3, 1, 2]),
            },
        }
    }

    fn set(props: &mut [(String, String)], k: &str, v: &str) {
        props.iter_mut().find(|(key, _)| key == k).unwrap().1 = v.into();
    }

    #[test]
    fn roundtrip_every_state() {
        let k = key(1);
        for state in [ann().state, RaftState::Member, RaftState::Leader] {
            let a = Announcement { state, ..ann() };
            let txt = encode_txt(&a, &k);
            assert_eq!(verify_txt(&txt, &k, "lab"), Ok(a.clone()));
            // order of records does not matter
            let mut rev = txt.clone();
            rev.reverse();
            assert_eq!(verify_txt(&rev, &k, "lab"), Ok(a.clone()));
            let full = format!("{}.{SERVICE_TYPE}", a.instance_name());
            assert_eq!(verify_resolved(&full, &txt, &k, "lab"), Ok(a));
        }
        let txt = encode_txt(&ann(), &k);
        let keys: Vec<&str> = txt.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["c", "n", "p", "s", "v", "m"]);
        assert_eq!(txt[1].1, "0123456789abcdef");
        assert!(txt[3].1.starts_with("forming:") && txt[3].1.len() == 8 + 32);
        assert_eq!(txt[5].1.len(), 64);
        assert!(txt.iter().all(|(k, v)| k.len() + v.len() < 255));
    }

    /// The records of a fixed announcement under the key of the secret
    /// 0, 1, …, 31, as the code wrote them before the key moved to
    /// [`crate::keys`]: the TXT format and the MAC stay what they were.
    #[test]
    fn golden_records() {
        let mut s = [0u8; 32];
        for (i, b) in s.iter_mut().enumerate() {
            *b = i as u8;
        }
        let k = MdnsKey::derive(&Secret(s));
        let a = Announcement {
            cluster: "lab".into(),
            node: 0x0123_4567_89ab_cdef,
            port: 7946,
            state: RaftState::Forming { voters: [0xab; 16] },
        };
        let txt = encode_txt(&a, &k);
        let want = [
            ("c", "lab"),
            ("n", "0123456789abcdef"),
            ("p", "7946"),
            ("s", "forming:abababababababababababababababab"),
            ("v", "1"),
            (
                "m",
                "5279397c73127234ea447233a955a45af7f00ee89434397294182a8096723ba6",
            ),
        ];
        let got: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        assert_eq!(verify_txt(&txt, &k, "lab"), Ok(a));
    }

    #[test]
    fn tampering_breaks_the_mac() {
        let k = key(1);
        let txt = encode_txt(&ann(), &k);
        for (field, value) in [
            ("n", "0123456789abcdee"),
            ("p", "7444"),
            ("s", "leader"),
            ("m", &"0".repeat(64)),
            ("m", "zz"),
        ] {
            let mut t = txt.clone();
            set(&mut t, field, value);
            assert_eq!(verify_txt(&t, &k, "lab"), Err(Rejection::BadMac), "{field}");
        }
        // an extra record is covered by the MAC too
        let mut t = txt.clone();
        t.push(("x".into(), "1".into()));
        assert_eq!(verify_txt(&t, &k, "lab"), Err(Rejection::BadMac));
        // the right cluster name but another secret
        assert_eq!(verify_txt(&txt, &key(2), "lab"), Err(Rejection::BadMac));
        // a valid record set under another instance name
        let r = verify_resolved("lab-0000000000000001._habuild._tcp.local.", &txt, &k, "lab");
        assert!(matches!(r, Err(Rejection::Malformed(_))), "{r:?}");
    }

    #[test]
    fn other_cluster_is_told_apart() {
        let k = key(1);
        let a = Announcement {
            cluster: "prod".into(),
            ..ann()
        };
        let txt = encode_txt(&a, &key(9));
        assert_eq!(
            verify_txt(&txt, &k, "lab"),
            Err(Rejection::OtherCluster("prod".into()))
        );
    }

    #[test]
    fn missing_repeated_and_bad_fields_are_malformed() {
        let k = key(1);
        let txt = encode_txt(&ann(), &k);
        for drop in ["c", "n", "p", "s", "v", "m"] {
            let t: Vec<_> = txt.iter().filter(|(key, _)| key != drop).cloned().collect();
            let r = verify_txt(&t, &k, "lab");
            if drop == "m" {
                assert!(matches!(r, Err(Rejection::Malformed(_))), "{drop}: {r:?}");
            } else {
                // without the field the MAC no longer matches, or the shape check fails first
                assert!(r.is_err(), "{drop}: {r:?}");
                if matches!(drop, "c" | "v") {
                    assert!(matches!(r, Err(Rejection::Malformed(_))), "{drop}: {r:?}");
                }
            }
        }
        let mut t = txt.clone();
        t.push(("n".into(), "0123456789abcdef".into()));
        assert!(matches!(
            verify_txt(&t, &k, "lab"),
            Err(Rejection::Malformed(_))
        ));
        let mut t = txt.clone();
        set(&mut t, "v", "2");
        assert!(matches!(
            verify_txt(&t, &k, "lab"),
            Err(Rejection::Malformed(_))
        ));
        let mut t = txt.clone();
        set(&mut t, "c", "lab\nx=1");
        assert!(matches!(
            verify_txt(&t, &k, "lab"),
            Err(Rejection::Malformed(_))
        ));

        // correctly MAC'd but unparsable values (a buggy or future sender)
        let sign = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            let mut m = mac(&k);
            m.update(&mac_input(pairs.iter().copied()));
            v.push(("m".into(), hex::encode(m.finalize().into_bytes())));
            v
        };
        for (n, p, s) in [
            ("0000000000000000", "1", "member"),
            ("0123456789ABCDEF", "1", "member"),
            ("12", "1", "member"),
            ("0123456789abcdef", "0", "member"),
            ("0123456789abcdef", "+80", "member"),
            ("0123456789abcdef", "65536", "member"),
            ("0123456789abcdef", "80", "follower"),
            ("0123456789abcdef", "80", "forming:abc"),
        ] {
            let t = sign(&[("c", "lab"), ("n", n), ("p", p), ("s", s), ("v", "1")]);
            let r = verify_txt(&t, &k, "lab");
            assert!(
                matches!(r, Err(Rejection::Malformed(_))),
                "{n} {p} {s}: {r:?}"
            );
        }
        let ok = sign(&[
            ("c", "lab"),
            ("n", "0000000000000002"),
            ("p", "80"),
            ("s", "member"),
            ("v", "1"),
        ]);
        assert_eq!(verify_txt(&ok, &k, "lab").unwrap().node, 2);
    }

    #[test]
    fn too_many_records_are_malformed() {
        let k = key(1);
        let mut t = encode_txt(&ann(), &k);
        for i in 0..40 {
            t.push((format!("x{i}"), String::new()));
        }
        assert!(matches!(
            verify_txt(&t, &k, "lab"),
            Err(Rejection::Malformed(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_records_never_panic(
            props in proptest::collection::vec((".{0,4}", ".{0,80}"), 0..12),
            cluster in "[a-z]{0,5}",
        ) {
            let _ = verify_txt(&props, &key(1), &cluster);
            let _ = verify_resolved("x", &props, &key(1), &cluster);
        }

        #[test]
        fn mutated_genuine_records_never_verify_wrongly(
            idx in 0usize..6,
            bytes in proptest::collection::vec(any::<u8>(), 0..70),
        ) {
            let k = key(1);
            let mut t = encode_txt(&ann(), &k);
            let v = String::from_utf8_lossy(&bytes).into_owned();
            let changed = t[idx].1 != v;
            t[idx].1 = v;
            let r = verify_txt(&t, &k, "lab");
            if changed {
                prop_assert!(r.is_err());
            } else {
                prop_assert_eq!(r, Ok(ann()));
            }
        }

        #[test]
        fn states_roundtrip(ids in proptest::collection::vec(any::<u64>(), 0..8)) {
            let s = RaftState::Forming { voters: voters(&ids) };
            prop_assert_eq!(s.to_string().parse::<RaftState>(), Ok(s));
        }
    }
}
