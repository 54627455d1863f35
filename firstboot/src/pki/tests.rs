use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const CP: [u64; 3] = [
    0x1111_0000_0000_0001,
    0x2222_0000_0000_0002,
    0x3333_0000_0000_0003,
];
const WORKER: u64 = 0x4444_0000_0000_0004;

fn node(i: usize, id: NodeId) -> PkiNode {
    PkiNode {
        id,
        hostname: format!("cp{i}"),
        ip: Ipv4Addr::new(10, 0, 0, 10 + i as u8),
    }
}

fn inputs(nodes: Vec<PkiNode>, now: OffsetDateTime) -> PkiInputs {
    PkiInputs {
        vip: Ipv4Addr::new(10, 0, 0, 100),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        dns_domain: "cluster.local".into(),
        members: nodes.clone(),
        control_plane: nodes,
        now,
    }
}

fn three_nodes() -> PkiInputs {
    let nodes = CP
        .iter()
        .enumerate()
        .map(|(i, &id)| node(i + 1, id))
        .collect();
    inputs(nodes, OffsetDateTime::now_utc())
}

/// Runs openssl; (success, stdout, stderr).
fn openssl(args: &[&str]) -> (bool, String, String) {
    let out = match Command::new("openssl").args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("openssl not found: run scripts/setup")
        }
        Err(e) => panic!("running openssl: {e}"),
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn openssl_ok(args: &[&str]) -> String {
    let (ok, out, err) = openssl(args);
    assert!(ok, "openssl {args:?} failed:\n{out}{err}");
    out
}

/// Writes `files` under `root` the way the `pki` step does (the host's file writer).
fn write_all(root: &Path, files: &[PkiFile]) {
    use crate::host::{real::RootFiles, FileSpec, Files};
    let host = RootFiles {
        root: root.to_path_buf(),
    };
    for f in files {
        host.write(&FileSpec::new(&f.path, f.mode, f.contents.as_bytes()))
            .unwrap();
    }
}

/// The items of `issued`, private keys first: a state holding any prefix
/// of this order is one [`issue()`] must complete.
fn keys_first(issued: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    let (mut keys, certs): (Vec<_>, Vec<_>) = issued
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .partition(|(n, _)| n.ends_with(".key"));
    keys.extend(certs);
    keys
}

fn s(p: PathBuf) -> String {
    p.to_str().unwrap().to_string()
}

/// The SANs of a certificate, as openssl prints them ("DNS:x", "IP Address:y").
fn sans(cert: &str) -> BTreeSet<String> {
    let out = openssl_ok(&["x509", "-noout", "-in", cert, "-ext", "subjectAltName"]);
    out.lines()
        .skip(1)
        .flat_map(|l| l.split(", "))
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

fn ext(cert: &str, name: &str) -> String {
    openssl_ok(&["x509", "-noout", "-in", cert, "-ext", name])
}

fn subject(cert: &str) -> String {
    openssl_ok(&[
        "x509", "-noout", "-in", cert, "-subject", "-nameopt", "RFC2253",
    ])
    .trim()
    .to_string()
}

fn pubkey_of_key(key: &str) -> String {
    openssl_ok(&["pkey", "-in", key, "-pubout"])
}

/// What each leaf must look like: (file, CA file, subject, EKU text, verify purpose).
const LEAVES: [(&str, &str, &str, &str, &str); 7] = [
    (
        "etcd/server",
        "etcd/ca",
        "",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "sslserver",
    ),
    (
        "etcd/peer",
        "etcd/ca",
        "",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "sslclient",
    ),
    (
        "etcd/healthcheck-client",
        "etcd/ca",
        "subject=CN=kube-etcd-healthcheck-client",
        "TLS Web Client Authentication",
        "sslclient",
    ),
    (
        "apiserver-etcd-client",
        "etcd/ca",
        "subject=CN=kube-apiserver-etcd-client,O=system:masters",
        "TLS Web Client Authentication",
        "sslclient",
    ),
    (
        "apiserver",
        "ca",
        "subject=CN=kube-apiserver",
        "TLS Web Server Authentication",
        "sslserver",
    ),
    (
        "apiserver-kubelet-client",
        "ca",
        "subject=CN=kube-apiserver-kubelet-client,O=system:masters",
        "TLS Web Client Authentication",
        "sslclient",
    ),
    (
        "front-proxy-client",
        "front-proxy-ca",
        "subject=CN=front-proxy-client",
        "TLS Web Client Authentication",
        "sslclient",
    ),
];

/// Verifies every leaf of a control-plane node whose files are under `root`.
fn check_node(root: &Path, n: &PkiNode, serials: &mut BTreeSet<String>) {
    let pki = root.join(PKI_DIR);
    for (file, ca, subj, eku, purpose) in LEAVES {
        let cert = s(pki.join(format!("{file}.crt")));
        let key = s(pki.join(format!("{file}.key")));
        let ca = s(pki.join(format!("{ca}.crt")));
        let out = openssl_ok(&["verify", "-purpose", purpose, "-CAfile", &ca, &cert]);
        assert_eq!(out.trim(), format!("{cert}: OK"));
        // Not against the other CAs.
        for other in ["ca", "etcd/ca", "front-proxy-ca"] {
            let other = s(pki.join(format!("{other}.crt")));
            if other != ca {
                let (ok, ..) = openssl(&["verify", "-CAfile", &other, &cert]);
                assert!(!ok, "{cert} verified against {other}");
            }
        }
        let expected_subject = if subj.is_empty() {
            format!("subject=CN={}", n.hostname)
        } else {
            subj.to_string()
        };
        assert_eq!(subject(&cert), expected_subject, "{cert}");
        let eku_out = ext(&cert, "extendedKeyUsage");
        assert_eq!(
            eku_out.lines().nth(1).map(str::trim),
            Some(eku),
            "{cert}: {eku_out}"
        );
        let bc = ext(&cert, "basicConstraints");
        assert!(bc.contains("CA:FALSE"), "{cert}: {bc}");
        // Valid now, expired in a year and a day.
        openssl_ok(&["x509", "-noout", "-in", &cert, "-checkend", "0"]);
        let (ok, ..) = openssl(&[
            "x509",
            "-noout",
            "-in",
            &cert,
            "-checkend",
            &(366 * 86400).to_string(),
        ]);
        assert!(!ok, "{cert} is valid for more than a year");
        // The key is the certificate's.
        let cert_pub = openssl_ok(&["x509", "-noout", "-in", &cert, "-pubkey"]);
        assert_eq!(cert_pub, pubkey_of_key(&key), "{cert} vs {key}");
        let serial = openssl_ok(&["x509", "-noout", "-in", &cert, "-serial"]);
        assert!(serials.insert(serial.clone()), "serial {serial} repeated");
    }

    let ip = format!("IP Address:{}", n.ip);
    let host = format!("DNS:{}", n.hostname);
    let vip = "IP Address:10.0.0.100".to_string();
    let set = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
    let mut etcd = set(&[
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    ]);
    etcd.extend([ip.clone(), host.clone()]);
    assert_eq!(sans(&s(pki.join("etcd/peer.crt"))), etcd);
    etcd.insert(vip.clone());
    assert_eq!(sans(&s(pki.join("etcd/server.crt"))), etcd);
    let mut api = set(&[
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "IP Address:10.96.0.1",
    ]);
    api.extend([ip, host, vip]);
    assert_eq!(sans(&s(pki.join("apiserver.crt"))), api);
    for client in [
        "apiserver-etcd-client",
        "front-proxy-client",
        "etcd/healthcheck-client",
    ] {
        let out = ext(&s(pki.join(format!("{client}.crt"))), "subjectAltName");
        assert!(out.trim().is_empty(), "{client} has SANs: {out}");
    }
}

fn check_cas(pki: &Path) {
    for (file, cn) in [
        ("ca", "kubernetes"),
        ("etcd/ca", "etcd-ca"),
        ("front-proxy-ca", "front-proxy-ca"),
    ] {
        let cert = s(pki.join(format!("{file}.crt")));
        assert_eq!(subject(&cert), format!("subject=CN={cn}"));
        let bc = ext(&cert, "basicConstraints");
        assert!(bc.contains("CA:TRUE"), "{cert}: {bc}");
        let ku = ext(&cert, "keyUsage");
        for u in ["Digital Signature", "Key Encipherment", "Certificate Sign"] {
            assert!(ku.contains(u), "{cert}: {ku}");
        }
        // Self-signed, valid for 9 years and not for 11.
        openssl_ok(&["verify", "-CAfile", &cert, &cert]);
        openssl_ok(&[
            "x509",
            "-noout",
            "-in",
            &cert,
            "-checkend",
            &(9 * 365 * 86400).to_string(),
        ]);
        let (ok, ..) = openssl(&[
            "x509",
            "-noout",
            "-in",
            &cert,
            "-checkend",
            &(11 * 365 * 86400).to_string(),
        ]);
        assert!(!ok, "{cert} valid for more than 10 years");
        let key = s(pki.join(format!("{file}.key")));
        let cert_pub = openssl_ok(&["x509", "-noout", "-in", &cert, "-pubkey"]);
        assert_eq!(cert_pub, pubkey_of_key(&key), "{cert} vs {key}");
    }
}

fn union(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut u = a.clone();
    for (k, v) in b {
        assert!(u.insert(k.clone(), v.clone()).is_none(), "{k} issued twice");
    }
    u
}

#[test]
fn three_control_plane_nodes_verify_with_openssl() {
    let inputs = three_nodes();
    let items = issue(&BTreeMap::new(), &inputs).unwrap();
    let mut expected: BTreeSet<String> = shared_items().into_iter().collect();
    for id in CP {
        expected.extend(node_items(id));
        expected.extend(kube_items(&crate::kube::kubelet_item(id)));
    }
    for stem in KUBE_CLIENTS.map(|(stem, _)| stem) {
        expected.extend(kube_items(stem));
    }
    assert_eq!(items.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(items.len(), 8 + 3 * 14 + 4 * 2 + 3 * 2);

    let tmp = tempfile::tempdir().unwrap();
    let mut serials = BTreeSet::new();
    for n in &inputs.control_plane {
        let root = tmp.path().join(&n.hostname);
        let files = files_for_node(&items, n.id, true).unwrap();
        assert_eq!(files.len(), 22);
        write_all(&root, &files);
        check_node(&root, n, &mut serials);
        check_cas(&root.join(PKI_DIR));

        // Modes, in the list and on disk; the kubeadm layout.
        use std::os::unix::fs::PermissionsExt;
        let mut paths = BTreeSet::new();
        for f in &files {
            let private = f.path.ends_with(".key");
            assert_eq!(f.mode, if private { 0o600 } else { 0o644 }, "{}", f.path);
            assert_eq!(
                private,
                f.contents.contains("-----BEGIN PRIVATE KEY-----"),
                "{}",
                f.path
            );
            let meta = std::fs::metadata(root.join(&f.path)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, f.mode, "{}", f.path);
            paths.insert(
                f.path
                    .strip_prefix("etc/kubernetes/pki/")
                    .unwrap()
                    .to_string(),
            );
        }
        let layout: BTreeSet<String> = [
            "ca.crt",
            "ca.key",
            "sa.key",
            "sa.pub",
            "front-proxy-ca.crt",
            "front-proxy-ca.key",
            "front-proxy-client.crt",
            "front-proxy-client.key",
            "apiserver.crt",
            "apiserver.key",
            "apiserver-kubelet-client.crt",
            "apiserver-kubelet-client.key",
            "apiserver-etcd-client.crt",
            "apiserver-etcd-client.key",
            "etcd/ca.crt",
            "etcd/ca.key",
            "etcd/server.crt",
            "etcd/server.key",
            "etcd/peer.crt",
            "etcd/peer.key",
            "etcd/healthcheck-client.crt",
            "etcd/healthcheck-client.key",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        assert_eq!(paths, layout);
    }
    // The CA certificates' serials are random too.
    for file in ["ca.crt", "etcd/ca.crt", "front-proxy-ca.crt"] {
        let cert = s(tmp.path().join("cp1").join(PKI_DIR).join(file));
        assert!(serials.insert(openssl_ok(&["x509", "-noout", "-in", &cert, "-serial"])));
    }
}

#[test]
fn service_account_key_pair_matches() {
    let items = issue(&BTreeMap::new(), &three_nodes()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_all(tmp.path(), &files_for_node(&items, CP[0], true).unwrap());
    let pki = tmp.path().join(PKI_DIR);
    let key = s(pki.join("sa.key"));
    assert!(items["pki/sa.key"].starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(items["pki/sa.pub"].starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(pubkey_of_key(&key), items["pki/sa.pub"]);
    let text = openssl_ok(&["pkey", "-in", &key, "-noout", "-text"]);
    assert!(text.contains("prime256v1"), "{text}");
    openssl_ok(&["pkey", "-pubin", "-in", &s(pki.join("sa.pub")), "-noout"]);
}

#[test]
fn worker_gets_only_ca_certificates() {
    let items = issue(&BTreeMap::new(), &three_nodes()).unwrap();
    let files = files_for_node(&items, WORKER, false).unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "etc/kubernetes/pki/ca.crt",
            "etc/kubernetes/pki/etcd/ca.crt",
            "etc/kubernetes/pki/front-proxy-ca.crt"
        ]
    );
    for f in &files {
        assert_eq!(f.mode, 0o644);
        assert!(f.contents.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!f.contents.contains("PRIVATE KEY"));
    }
    // A control-plane node asked as a worker gets the same.
    assert_eq!(files_for_node(&items, CP[0], false).unwrap(), files);
    // The CA key files exist only for control_plane = true.
    let cp = files_for_node(&items, CP[0], true).unwrap();
    for key in ["ca.key", "etcd/ca.key", "front-proxy-ca.key"] {
        let path = format!("{PKI_DIR}/{key}");
        assert!(cp.iter().any(|f| f.path == path && f.mode == 0o600));
        assert!(!files.iter().any(|f| f.path == path));
    }
}

fn kube_items(stem: &str) -> [String; 2] {
    [format!("{stem}.crt"), format!("{stem}.key")]
}

/// The cluster-wide Kubernetes client certificates and their subjects.
const KUBE_CLIENTS: [(&str, &str); 4] = [
    (
        crate::kube::ADMIN_ITEM,
        "subject=CN=kubernetes-admin,O=system:masters",
    ),
    (
        crate::kube::CONTROLLER_MANAGER_ITEM,
        "subject=CN=system:kube-controller-manager",
    ),
    (
        crate::kube::SCHEDULER_ITEM,
        "subject=CN=system:kube-scheduler",
    ),
    (crate::kube::KUBE_PROXY_ITEM, "subject=CN=system:kube-proxy"),
];

/// Writes item `stem` as files under `dir`, and checks it is a client
/// certificate of the cluster CA (not of the others) with `subject`, whose
/// key is the certificate's.
fn check_kube_client(dir: &Path, items: &BTreeMap<String, String>, stem: &str, subject_: &str) {
    let file = |name: &str, text: &str| {
        let p = dir.join(name.replace('/', "_"));
        std::fs::write(&p, text).unwrap();
        s(p)
    };
    let ca = file("ca.crt", &items["pki/ca.crt"]);
    let etcd_ca = file("etcd-ca.crt", &items["pki/etcd/ca.crt"]);
    let cert = file(&format!("{stem}.crt"), &items[&format!("{stem}.crt")]);
    let key = file(&format!("{stem}.key"), &items[&format!("{stem}.key")]);
    let out = openssl_ok(&["verify", "-purpose", "sslclient", "-CAfile", &ca, &cert]);
    assert_eq!(out.trim(), format!("{cert}: OK"));
    let (ok, ..) = openssl(&["verify", "-CAfile", &etcd_ca, &cert]);
    assert!(!ok, "{stem} verified against the etcd CA");
    assert_eq!(subject(&cert), subject_, "{stem}");
    let eku = ext(&cert, "extendedKeyUsage");
    assert_eq!(
        eku.lines().nth(1).map(str::trim),
        Some("TLS Web Client Authentication"),
        "{stem}: {eku}"
    );
    assert_eq!(pubkey_of_key(&key), pubkey_of_cert(&cert), "{stem}");
}

fn pubkey_of_cert(cert: &str) -> String {
    openssl_ok(&["x509", "-noout", "-pubkey", "-in", cert])
}

#[test]
fn kubernetes_client_certificates_for_the_cluster_and_every_member() {
    let mut inputs = three_nodes();
    let items = issue(&BTreeMap::new(), &inputs).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (stem, subj) in KUBE_CLIENTS {
        check_kube_client(tmp.path(), &items, stem, subj);
    }
    for n in &inputs.members {
        check_kube_client(
            tmp.path(),
            &items,
            &crate::kube::kubelet_item(n.id),
            &format!("subject=CN=system:node:{},O=system:nodes", n.hostname),
        );
    }
    // A worker joins: only its kubelet certificate is added.
    let mut w = node(4, WORKER);
    w.hostname = "node-w4".into();
    inputs.members.push(w.clone());
    let added = issue(&items, &inputs).unwrap();
    let stem = crate::kube::kubelet_item(WORKER);
    assert_eq!(
        added.keys().cloned().collect::<Vec<_>>(),
        kube_items(&stem).to_vec()
    );
    let all = union(&items, &added);
    check_kube_client(
        tmp.path(),
        &all,
        &stem,
        "subject=CN=system:node:node-w4,O=system:nodes",
    );
    assert!(issue(&all, &inputs).unwrap().is_empty());
    // A member without a name yet waits for it; the rest is issued.
    let mut nameless = inputs.clone();
    nameless.members.push(PkiNode {
        id: 5,
        hostname: String::new(),
        ip: Ipv4Addr::new(10, 0, 0, 15),
    });
    assert!(issue(&all, &nameless).unwrap().is_empty());
    // A fresh cluster CA would orphan the client certificates: refused.
    let no_ca: BTreeMap<String, String> = all
        .iter()
        .filter(|(k, _)| k.starts_with("kube/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let err = issue(&no_ca, &inputs).unwrap_err();
    assert!(
        matches!(&err, PkiError::CaMissing { ca_key, .. } if ca_key == "pki/ca.key"),
        "{err}"
    );
}

#[test]
fn second_issue_adds_nothing() {
    let inputs = three_nodes();
    let items = issue(&BTreeMap::new(), &inputs).unwrap();
    assert!(issue(&items, &inputs).unwrap().is_empty());
    // Nor does a smaller control plane (a node left): nothing is removed either.
    let mut fewer = inputs.clone();
    fewer.control_plane.truncate(1);
    assert!(issue(&items, &fewer).unwrap().is_empty());
}

#[test]
fn fourth_node_is_signed_by_the_existing_cas() {
    let mut inputs = three_nodes();
    let items = issue(&BTreeMap::new(), &inputs).unwrap();
    let n4 = node(4, WORKER);
    inputs.control_plane.push(n4.clone());
    let added = issue(&items, &inputs).unwrap();
    assert_eq!(
        added.keys().cloned().collect::<Vec<_>>(),
        node_items(n4.id)
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let all = union(&items, &added);
    let tmp = tempfile::tempdir().unwrap();
    write_all(tmp.path(), &files_for_node(&all, n4.id, true).unwrap());
    // The CA files written are the ones issued first.
    let pki = tmp.path().join(PKI_DIR);
    assert_eq!(
        std::fs::read_to_string(pki.join("etcd/ca.crt")).unwrap(),
        items["pki/etcd/ca.crt"]
    );
    check_node(tmp.path(), &n4, &mut BTreeSet::new());
    assert!(issue(&all, &inputs).unwrap().is_empty());
}

#[test]
fn missing_items_are_named() {
    let inputs = three_nodes();
    let mut items = issue(&BTreeMap::new(), &inputs).unwrap();
    items.remove("pki/etcd/ca.key");
    let apiserver = format!("{}apiserver.crt", node_prefix(CP[1]));
    items.remove(&apiserver);
    let err = files_for_node(&items, CP[1], true).unwrap_err();
    assert!(matches!(&err, PkiError::Missing { node, missing }
        if *node == CP[1] && missing == &["pki/etcd/ca.key".to_string(), apiserver.clone()]));
    assert_eq!(
        err.to_string(),
        format!(
            "node {:016x}: PKI items not issued yet: pki/etcd/ca.key, {apiserver}",
            CP[1]
        )
    );
    // A worker needs no keys.
    assert_eq!(files_for_node(&items, CP[1], false).unwrap().len(), 3);
    items.remove("pki/front-proxy-ca.crt");
    let err = files_for_node(&items, WORKER, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pki/front-proxy-ca.crt"), "{err}");
    // A node that is not (yet) in the control plane has no leaves.
    let err = files_for_node(&issue(&BTreeMap::new(), &inputs).unwrap(), WORKER, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("pki/node/{WORKER:016x}/etcd/server.crt")),
        "{err}"
    );
    // Nothing issued at all.
    let err = files_for_node(&BTreeMap::new(), WORKER, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pki/ca.crt, pki/etcd/ca.crt, pki/front-proxy-ca.crt"),
        "{err}"
    );
}

#[test]
fn validity_follows_now() {
    // 2030-01-02 03:04:05 UTC.
    let now = time::Date::from_calendar_date(2030, time::Month::January, 2)
        .unwrap()
        .with_hms(3, 4, 5)
        .unwrap()
        .assume_utc();
    let items = issue(&BTreeMap::new(), &inputs(vec![node(1, CP[0])], now)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_all(tmp.path(), &files_for_node(&items, CP[0], true).unwrap());
    let pki = tmp.path().join(PKI_DIR);
    let dates = |f: &str| {
        openssl_ok(&[
            "x509",
            "-noout",
            "-in",
            &s(pki.join(f)),
            "-startdate",
            "-enddate",
        ])
    };
    assert_eq!(
        dates("apiserver.crt"),
        "notBefore=Jan  2 02:59:05 2030 GMT\nnotAfter=Jan  2 03:04:05 2031 GMT\n"
    );
    assert_eq!(
        dates("etcd/ca.crt"),
        "notBefore=Jan  2 02:59:05 2030 GMT\nnotAfter=Dec 31 03:04:05 2039 GMT\n"
    );
    // Not yet valid today; valid at `now`.
    let cert = s(pki.join("apiserver.crt"));
    let ca = s(pki.join("ca.crt"));
    let (ok, ..) = openssl(&["verify", "-CAfile", &ca, &cert]);
    assert!(!ok);
    let at = now.unix_timestamp().to_string();
    openssl_ok(&["verify", "-attime", &at, "-CAfile", &ca, &cert]);
}

#[test]
fn partial_state_is_completed_or_refused() {
    let inputs = three_nodes();
    let items = issue(&BTreeMap::new(), &inputs).unwrap();

    // Keys first: every prefix of that order is completed by issue().
    let order = keys_first(&items);
    let keys = order
        .iter()
        .take_while(|(n, _)| n.ends_with(".key"))
        .count();
    assert_eq!(keys, 4 + 3 * 7 + 4 + 3);
    assert!(order[keys..].iter().all(|(n, _)| !n.ends_with(".key")));
    for cut in [1, 4, 10, 24, 25, 30, order.len() - 1] {
        let stored: BTreeMap<String, String> = order[..cut]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let added = issue(&stored, &inputs).unwrap();
        for (n, v) in &added {
            assert!(!stored.contains_key(n), "{n} re-issued");
            if n.ends_with(".key") {
                assert_ne!(v, &items[n]);
            }
        }
        let all = union(&stored, &added);
        assert_eq!(all.len(), items.len(), "cut at {cut}");
    }

    // The CA key without its certificate: the certificate is re-created
    // for the same key and name, so existing leaves still verify.
    let mut stored = items.clone();
    stored.remove("pki/etcd/ca.crt");
    let added = issue(&stored, &inputs).unwrap();
    assert_eq!(added.keys().collect::<Vec<_>>(), ["pki/etcd/ca.crt"]);
    let all = union(&stored, &added);
    let tmp = tempfile::tempdir().unwrap();
    write_all(tmp.path(), &files_for_node(&all, CP[0], true).unwrap());
    check_node(tmp.path(), &inputs.control_plane[0], &mut BTreeSet::new());

    // A certificate without its key is refused, naming both.
    for (cert, key) in [
        ("pki/ca.crt".to_string(), "pki/ca.key".to_string()),
        ("pki/sa.pub".to_string(), "pki/sa.key".to_string()),
        (
            format!("{}etcd/peer.crt", node_prefix(CP[2])),
            format!("{}etcd/peer.key", node_prefix(CP[2])),
        ),
    ] {
        let mut stored = items.clone();
        stored.remove(&key);
        let err = issue(&stored, &inputs).unwrap_err();
        assert!(
            matches!(&err, PkiError::KeyMissing { cert: c, key: k } if *c == cert && *k == key),
            "{err}"
        );
    }

    // A CA certificate that is not the key's.
    let mut stored = items.clone();
    stored.insert("pki/etcd/ca.crt".into(), items["pki/ca.crt"].clone());
    let err = issue(&stored, &inputs).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pki/etcd/ca.crt does not match pki/etcd/ca.key (different key or subject name); \
         the CA in the state is not one habuild can sign with"
    );
    stored.insert("pki/etcd/ca.crt".into(), "garbage".into());
    assert!(matches!(
        issue(&stored, &inputs),
        Err(PkiError::BadCert { .. })
    ));

    // Leaves whose CA is gone: no new CA.
    let mut stored = items.clone();
    stored.remove("pki/front-proxy-ca.crt");
    stored.remove("pki/front-proxy-ca.key");
    let err = issue(&stored, &inputs).unwrap_err().to_string();
    assert!(
        err.contains(
            "front-proxy-client.crt is in the state but its CA key pki/front-proxy-ca.key is not"
        ),
        "{err}"
    );
}

#[test]
fn bad_inputs() {
    let mut i = three_nodes();
    i.service_cidr = "10.96.0.0/31".parse().unwrap();
    assert_eq!(
        issue(&BTreeMap::new(), &i).unwrap_err().to_string(),
        "service CIDR 10.96.0.0/31 has no host address for the kubernetes service"
    );
    let mut i = three_nodes();
    i.control_plane[1].hostname.clear();
    assert!(
        matches!(issue(&BTreeMap::new(), &i), Err(PkiError::EmptyHostname { id }) if id == CP[1])
    );
    let mut i = three_nodes();
    i.control_plane[0].hostname = "cp\u{e9}".into();
    let err = issue(&BTreeMap::new(), &i).unwrap_err().to_string();
    assert!(
        err.starts_with("generating pki/node/1111000000000001/etcd/server.crt"),
        "{err}"
    );
    assert_eq!(
        kubernetes_service_ip(&"10.96.0.0/12".parse().unwrap()),
        Some(Ipv4Addr::new(10, 96, 0, 1))
    );
    assert_eq!(
        kubernetes_service_ip(&"10.100.7.9/16".parse().unwrap()),
        Some(Ipv4Addr::new(10, 100, 0, 1))
    );
}

/// A stored CA certificate with the right subject and public key, but not
/// signed by that key (a forgery by another issuer), is refused; so is a PEM
/// block that is not a certificate.
#[test]
fn a_stored_ca_must_be_self_signed_by_its_key() {
    use rcgen::{CertificateParams, DnType, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};
    let inputs = three_nodes();
    let items = issue(&BTreeMap::new(), &inputs).unwrap();

    let etcd_key = KeyPair::from_pem(&items["pki/etcd/ca.key"]).unwrap();
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut other = CertificateParams::default();
    other
        .distinguished_name
        .push(DnType::CommonName, "intruder");
    other.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = other.self_signed(&other_key).unwrap();
    let mut forged = CertificateParams::default();
    forged
        .distinguished_name
        .push(DnType::CommonName, "etcd-ca");
    forged.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let forged = forged.signed_by(&etcd_key, &other, &other_key).unwrap();

    let mut stored = items.clone();
    stored.insert("pki/etcd/ca.crt".into(), forged.pem());
    let err = issue(&stored, &inputs).unwrap_err();
    assert!(
        matches!(&err, PkiError::BadCert { name, .. } if name == "pki/etcd/ca.crt"),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(
            "pki/etcd/ca.crt is not a CA certificate habuild can use: \
             its self-signature does not verify with its key"
        ),
        "{err}"
    );

    // The key's PEM where the certificate should be.
    stored.insert("pki/etcd/ca.crt".into(), items["pki/etcd/ca.key"].clone());
    let err = issue(&stored, &inputs).unwrap_err().to_string();
    assert_eq!(
        err,
        "pki/etcd/ca.crt is not a CA certificate habuild can use: \
         a PEM PRIVATE KEY block, not a CERTIFICATE"
    );
}
