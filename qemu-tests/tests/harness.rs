//! Runs the harness for real: needs root and iproute2, dnsmasq, qemu-utils,
//! qemu-system-x86 and ovmf (`scripts/setup`).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_harness::{qemu_img, sweep_stale, tools, vm, Dhcp, TestNet, Vm, VmSpec, Workdir};

fn ip(args: &[&str]) -> (bool, String) {
    let out = Command::new(tools::require("ip").unwrap())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn netns_exists(name: &str) -> bool {
    ip(&["netns", "list"])
        .1
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Gone, or a zombie waiting for its parent to reap it.
fn process_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn range() -> (Ipv4Addr, Ipv4Addr) {
    (Ipv4Addr::new(10, 77, 0, 50), Ipv4Addr::new(10, 77, 0, 99))
}

#[test]
fn namespace_bridge_tap_and_dhcp_are_created_and_cleaned_up() {
    let net = TestNet::create("hqt").unwrap();
    let name = net.name().to_string();
    assert!(name.len() <= 15, "{name}");
    assert!(name.starts_with(&format!("hqt{}-", std::process::id())));

    let tap = net.add_tap("tap0").unwrap();
    let (start, end) = range();
    let dhcp = Dhcp::start(&net, start, end).unwrap();
    let dnsmasq_pid = dhcp.pid();
    let mut stray = net.exec("sleep").arg("300").spawn().unwrap();

    assert!(netns_exists(&name));
    let (ok, br0) = ip(&["-n", &name, "-o", "addr", "show", "dev", "br0"]);
    assert!(ok && br0.contains("inet 10.77.0.1/24"), "{br0}");
    let (ok, tap_link) = ip(&["-n", &name, "-o", "link", "show", "dev", &tap]);
    assert!(ok && tap_link.contains("master br0"), "{tap_link}");
    // Nothing leads out of the namespace, and nothing leaked into ours.
    let (_, default_route) = ip(&["-n", &name, "route", "show", "default"]);
    assert_eq!(default_route.trim(), "");
    let (_, links) = ip(&["-n", &name, "-o", "link", "show"]);
    assert_eq!(links.lines().count(), 3, "lo, br0, tap0 only: {links}");
    assert!(!ip(&["link", "show", "dev", &tap]).0);

    let pids = net.pids().unwrap();
    assert!(pids.contains(&dnsmasq_pid), "{pids:?}");
    assert!(pids.contains(&stray.id()), "{pids:?}");
    assert!(dhcp
        .log_text()
        .contains("DHCP, IP range 10.77.0.50 -- 10.77.0.99"));
    assert_eq!(dhcp.leases().unwrap(), []);
    // Commands run inside: br0 is visible there.
    let mac = net.run("cat", &["/sys/class/net/br0/address"]).unwrap();
    assert_eq!(mac.trim().len(), 17, "{mac}");

    // The Dhcp holds the namespace: dropping the TestNet first keeps it.
    drop(net);
    assert!(netns_exists(&name));
    assert!(!process_dead(dnsmasq_pid));

    drop(dhcp);
    assert!(process_dead(dnsmasq_pid), "dnsmasq still running");
    assert!(!netns_exists(&name), "{name} still exists");
    assert!(process_dead(stray.id()), "stray process still running");
    assert!(!stray.wait().unwrap().success());
    assert!(
        !ip(&["link", "show", "dev", &tap]).0,
        "tap moved to the root namespace"
    );
}

#[test]
fn namespace_is_removed_when_the_test_panics() {
    let name = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let net = TestNet::create("hqp").unwrap();
        *name.lock().unwrap() = net.name().to_string();
        net.add_tap("tap0").unwrap();
        panic!("test failed");
    });
    assert!(result.is_err());
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert!(!netns_exists(&name));
}

#[test]
fn custom_subnet() {
    let net = TestNet::create_with("hqc", Ipv4Addr::new(10, 78, 4, 1), 22).unwrap();
    assert_eq!(net.netmask(), Ipv4Addr::new(255, 255, 252, 0));
    let (ok, br0) = ip(&["-n", net.name(), "-o", "addr", "show", "dev", "br0"]);
    assert!(ok && br0.contains("inet 10.78.4.1/22"), "{br0}");
    let dhcp = Dhcp::start(
        &net,
        Ipv4Addr::new(10, 78, 5, 0),
        Ipv4Addr::new(10, 78, 5, 9),
    )
    .unwrap();
    assert!(dhcp.log_text().contains("10.78.5.0 -- 10.78.5.9"));
}

#[test]
fn sweep_removes_namespaces_of_dead_creators_only() {
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("hqs{dead_pid}-0");
    let ours = format!("hqs{}-999", std::process::id());
    for name in [&stale, &ours] {
        assert!(ip(&["netns", "add", name]).0, "cannot add {name}");
    }
    assert!(ip(&["-n", &stale, "tuntap", "add", "dev", "tapx", "mode", "tap"]).0);

    let removed = sweep_stale("hqs").unwrap();
    let still_ours = netns_exists(&ours);
    ip(&["netns", "del", &ours]);

    assert_eq!(removed, std::slice::from_ref(&stale));
    assert!(!netns_exists(&stale));
    assert!(still_ours, "a live creator's namespace was removed");
}

#[test]
fn dnsmasq_failure_names_the_cause() {
    let net = TestNet::create("hqd").unwrap();
    let (start, end) = range();
    let err = Dhcp::start_with(&net, start, end, &["--no-such-option"]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("dnsmasq exited"), "{msg}");
    assert!(msg.contains("bad command line options"), "{msg}");
    assert!(msg.contains("--no-such-option"), "{msg}");
}

#[test]
fn missing_tool_error_text() {
    let err = tools::require("definitely-not-here").unwrap_err();
    assert_eq!(
        err.to_string(),
        "definitely-not-here not found: run scripts/setup"
    );
}

/// Boots the firmware with an empty disk: OVMF falls through to iPXE on the
/// virtio NIC, which gets a lease from our dnsmasq over the tap and bridge.
#[test]
fn vm_firmware_gets_a_lease_over_the_test_network() {
    let work = Workdir::new("smoke").unwrap();
    let net = TestNet::create("hqv").unwrap();
    let (start, end) = range();
    let dhcp = Dhcp::start(&net, start, end).unwrap();
    let base = work.join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let disk = work.join("smoke.qcow2");
    qemu_img::create_overlay(&base, "raw", &disk, Some(64 << 20)).unwrap();
    let tap = net.add_tap("tap1").unwrap();
    let mac = vm::mac_address(1);
    let mut spec = VmSpec::new("smoke", &disk, &mac, &tap);
    spec.memory_mib = 256;
    let vm = Vm::start(&net, spec, work.path()).unwrap();
    println!("accelerator: {}", vm.accel());

    vm.wait_for("BdsDxe", Duration::from_secs(120)).unwrap();
    let mark = vm.serial_len();
    let line = vm
        .wait_for_line_with_prefix_after(mark, "net0: 10.77.0.", Duration::from_secs(120))
        .unwrap();
    let lease = dhcp.wait_for_lease(&mac, Duration::from_secs(10)).unwrap();
    assert!(
        line.starts_with(&format!("net0: {}/255.255.255.0", lease.ip)),
        "{line} vs {lease:?}"
    );
    assert!(lease.ip >= start && lease.ip <= end);
    println!("{line} after {:.1?}", vm.elapsed());

    assert_eq!(vm.monitor("info status").unwrap(), "VM status: running");
    let timeout = vm
        .wait_for_after(vm.serial_len(), "no such text", Duration::from_millis(400))
        .unwrap_err()
        .to_string();
    assert!(
        timeout.contains("timed out after") && timeout.contains("vm smoke"),
        "{timeout}"
    );

    // `quit` makes QEMU exit; a later wait fails fast naming the exit.
    let _ = vm.monitor("quit");
    vm.wait_exit(Duration::from_secs(20)).unwrap();
    let started = Instant::now();
    let err = vm
        .wait_for("never printed", Duration::from_secs(60))
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.contains("qemu exited"), "{err}");
    assert!(!vm.is_running());
}

#[test]
fn vm_is_killed_on_drop() {
    let work = Workdir::new("kill").unwrap();
    let net = TestNet::create("hqk").unwrap();
    let base = work.join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let disk = work.join("k.qcow2");
    qemu_img::create_overlay(&base, "raw", &disk, None).unwrap();
    let tap = net.add_tap("tap0").unwrap();
    let vm = Vm::start(
        &net,
        VmSpec::new("k", &disk, vm::mac_address(2), &tap),
        work.path(),
    )
    .unwrap();
    let pid = vm.pid();
    let name = net.name().to_string();
    assert!(vm.is_running());
    drop(net);
    assert!(netns_exists(&name), "the Vm keeps the namespace");
    drop(vm);
    assert!(process_dead(pid));
    assert!(!netns_exists(&name));
    let dir = work.path().to_path_buf();
    drop(work);
    assert!(!dir.exists());
}
