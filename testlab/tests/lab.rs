//! The lab for real (needs root and iproute2): hosts on the bridge reach
//! each other and the bridge's own address, and every namespace and
//! process is gone after drop, also when the test panics.

use testlab::netns::namespaces_with_prefix;
use testlab::{ChildGuard, Lab, Netns};

/// `addr` answers ARP on the bridge from `ns` (`dev`: its link there).
fn reaches(ns: &Netns, dev: &str, addr: &str) {
    ns.run("arping", &["-c", "1", "-w", "2", "-I", dev, addr])
        .unwrap_or_else(|e| panic!("{} cannot reach {addr}: {e}", ns.name()));
}

fn ours(prefix: &str) -> Vec<String> {
    namespaces_with_prefix(&format!("{prefix}{}-", std::process::id())).unwrap()
}

#[test]
fn hosts_reach_each_other_and_everything_goes_on_drop() {
    let lab = Lab::new("tlab", [10, 95, 0], 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lab.node_cidr(1), "10.95.0.11/24");
    assert_eq!(ours("tlab").len(), 3, "bridge and two hosts");
    reaches(lab.host(0), "eth0", "10.95.0.11");
    reaches(lab.net(), "br0", "10.95.0.10");
    let client = lab.add_host(100).unwrap();
    assert_eq!(client.cidr(), "10.95.0.100/24");
    reaches(&client, "eth0", "10.95.0.1");
    // Nothing leads out: no default route.
    let routes = lab.host(0).ip(&["route", "show"]).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    let sleeper = ChildGuard::new(lab.host(1).exec("sleep").arg("300").spawn().unwrap());
    let pid = sleeper.id();
    assert_eq!(lab.host(1).pids().unwrap(), [pid]);
    drop(client);
    assert_eq!(ours("tlab").len(), 3, "the client's namespace went with it");
    drop(lab);
    assert!(ours("tlab").is_empty(), "{:?}", ours("tlab"));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty()
            || stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        "the process in a host survived: {stat}"
    );
}

#[test]
fn a_failing_test_leaves_no_namespace() {
    let r = std::panic::catch_unwind(|| {
        let lab = Lab::new("tlabp", [10, 96, 0], 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ours("tlabp").len(), 2);
        // Left running on purpose: the namespace's teardown kills it.
        let mut stray = lab.host(0).exec("sleep").arg("300").spawn().unwrap();
        assert!(stray.try_wait().unwrap().is_none());
        panic!("an assertion failed");
    });
    assert!(r.is_err());
    assert!(ours("tlabp").is_empty(), "{:?}", ours("tlabp"));
}
