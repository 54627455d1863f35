//! Where a guest's CPU and memory went: its processes by CPU time, and
//! by resident memory, read through the guest agent (issue 13: the emulated nodes are saturated, and the
//! slowest part of a test is whatever the guests burn their vCPU on).

use std::time::Duration;

use crate::Vm;

/// The script: uptime and idle seconds (idle near 0 means the vCPUs were
/// saturated), then the top processes by CPU seconds: their own, and their exited
/// children's. (`cat` reads the process files: awk itself stops at the
/// first one whose process exited meanwhile.) (the agent's children are
/// the commands it ran; systemd's, the units that exited).
const SCRIPT: &str = r#"read up idle _ < /proc/uptime; echo "uptime ${up}s idle ${idle}s ($(nproc) vCPU)"
cat /proc/[0-9]*/stat 2>/dev/null | awk '{ n = $0; sub(/^[0-9]+ \(/, "", n); sub(/\) .*/, "", n); r = $0; sub(/^.*\) /, "", r); split(r, f, " "); a = (f[12] + f[13]) / 100; c = (f[14] + f[15]) / 100; printf "%.1f %8.1f %8.1f %s\n", a + c, a, c, n }' | sort -rn | head -n 16 | cut -d' ' -f2-"#;

/// The report as printable text (its own lines); an error reading it is
/// the report (a guest that cannot answer fails nothing here).
pub fn report(vm: &Vm) -> String {
    match vm.guest().sh(SCRIPT, Duration::from_secs(120)) {
        Ok(o) => format!("     self  children command\n{}", o.stdout.trim_end()),
        Err(e) => format!("not read: {e:#}"),
    }
}

/// Prints [`report`] for each VM under `title`.
pub fn print(test: &str, title: &str, vms: &[&Vm]) {
    for vm in vms {
        eprintln!("{test}: {} CPU seconds {title}:\n{}", vm.name(), report(vm));
    }
}

/// The memory script: the ten largest processes by RSS, the guest's total
/// and available memory, and its clocksource.
const MEMORY: &str = "ps -eo rss=,comm= --sort=-rss | head -n 10; grep -E 'MemTotal|MemAvailable' /proc/meminfo; echo clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)";

/// Prints `vm`'s memory (RSS KiB per command, MemTotal, MemAvailable) and
/// clocksource on one line under `test`; an error reading it is printed
/// instead (measured, not asserted).
pub fn print_memory(test: &str, vm: &Vm) {
    match vm.guest().sh(MEMORY, Duration::from_secs(60)) {
        Ok(o) => {
            let lines: Vec<String> = o
                .stdout
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            eprintln!(
                "{test}: {} memory (RSS KiB, command): {}",
                vm.name(),
                lines.join("; ")
            );
        }
        Err(e) => eprintln!("{test}: {} memory not read: {e:#}", vm.name()),
    }
}
