//! The signed apt index a Debian/Ubuntu build resolves against, read before
//! anything is installed: `apt-get update` into a private state directory
//! under the cache (kept between builds, so a rebuild only re-fetches the
//! `InRelease` files, verified against the repos' keyrings), then
//! `apt-get install --simulate` of exactly what mmdebstrap's `minbase`
//! variant installs (`?essential`, `?priority(required)`, `apt`, the
//! profile's packages; no recommends). The result is the package set with
//! versions (the base tree's cache key) and the newest `Date:` of the
//! `InRelease` files (the default SOURCE_DATE_EPOCH).

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::InstalledPackage;
use crate::error::{IoContext, Result};
use crate::exec::{Cmd, Exec};
use crate::profile::Profile;

/// What the index says a build of this profile installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Every package with the version apt picked, sorted by name.
    pub packages: Vec<InstalledPackage>,
    /// The newest `Date:` of the signed `InRelease` files, with that file's name.
    pub index_date: Option<(u64, String)>,
}

/// The `deb ...` lines of a profile's repos (what mmdebstrap and the index read).
pub fn sources(p: &Profile) -> Vec<String> {
    let mut lines = Vec::new();
    for r in &p.repos {
        let suites = if r.suites.is_empty() {
            vec![p.distro.release.clone()]
        } else {
            r.suites.clone()
        };
        let signed = r
            .keyring
            .as_ref()
            .map(|k| format!("[signed-by={}] ", k.display()))
            .unwrap_or_default();
        for s in suites {
            lines.push(format!(
                "deb {signed}{} {s} {}",
                r.url,
                r.components.join(" ")
            ));
        }
    }
    lines
}

/// The private apt state directory for these sources and architecture.
pub fn state_dir(cache: &Path, p: &Profile) -> PathBuf {
    let mut h = Sha256::new();
    h.update(p.distro.arch.as_bytes());
    for l in sources(p) {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    cache.join("index").join(hex::encode(&h.finalize()[..8]))
}

fn apt_get(dir: &Path, arch: &str) -> Cmd {
    let d = dir.display();
    Cmd::new("apt-get")
        // the host's apt configuration (apt.conf, apt.conf.d) must not
        // change what is resolved: only ours is read
        .env("APT_CONFIG", format!("{d}/apt.conf"))
        .arg("-q")
        .args(
            [
                format!("Dir={d}/"),
                format!("Dir::State::status={d}/var/lib/dpkg/status"),
                // like mmdebstrap without --keyring: the host's trusted keys
                // for repos without signed-by
                "Dir::Etc::TrustedParts=/etc/apt/trusted.gpg.d/".into(),
                "Dir::Etc::Trusted=/etc/apt/trusted.gpg".into(),
                format!("APT::Architecture={arch}"),
                format!("APT::Architectures={arch}"),
                "APT::Install-Recommends=false".into(),
                "Debug::NoLocking=true".into(),
                "Acquire::Languages=none".into(),
                // kept between builds: the next resolution reads it instead of the lists
                "Dir::Cache::pkgcache=pkgcache.bin".into(),
                "Dir::Cache::srcpkgcache=srcpkgcache.bin".into(),
            ]
            .into_iter()
            .flat_map(|o| ["-o".to_string(), o]),
        )
}

/// The simulated install's command (golden-tested through `resolve`).
pub fn simulate_cmd(dir: &Path, p: &Profile) -> Cmd {
    apt_get(dir, &p.distro.arch)
        .args(["install", "--simulate", "-y"])
        .args(["?essential", "?priority(required)", "apt"])
        .args(p.package_list())
}

/// Update the index and resolve the profile's package set.
pub fn resolve(exec: &dyn Exec, cache: &Path, p: &Profile) -> Result<Resolution> {
    let dir = state_dir(cache, p);
    for sub in [
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
    ] {
        fs::create_dir_all(dir.join(sub)).at(dir.join(sub))?;
    }
    let conf = dir.join("apt.conf");
    let parts = format!(
        "Dir::Etc::Parts \"{}/etc/apt/apt.conf.d\";\n",
        dir.display()
    );
    fs::write(&conf, parts).at(&conf)?;
    let status = dir.join("var/lib/dpkg/status");
    fs::write(&status, b"").at(&status)?;
    let list = dir.join("etc/apt/sources.list");
    fs::write(&list, sources(p).join("\n") + "\n").at(&list)?;
    // a mirror that cannot be fetched fails here (apt-get update only
    // warns by default), named by the caller's classify_failure
    exec.run(
        &apt_get(&dir, &p.distro.arch)
            .arg("update")
            .arg("--error-on=any"),
    )?;
    let out = exec.run(&simulate_cmd(&dir, p))?;
    let lists = dir.join("var/lib/apt/lists");
    let mut dates = Vec::new();
    for e in fs::read_dir(&lists).at(&lists)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("_InRelease") || name.ends_with("_Release") {
            let text = fs::read_to_string(e.path()).at(e.path())?;
            if let Some(t) = release_date(&text) {
                dates.push((t, name));
            }
        }
    }
    dates.sort();
    Ok(Resolution {
        packages: parse_simulation(&out.stdout),
        index_date: dates.pop(),
    })
}

/// `Inst <name> (<version> <suites> [<arch>])` lines of `apt-get --simulate`.
pub fn parse_simulation(text: &str) -> Vec<InstalledPackage> {
    let mut v: Vec<InstalledPackage> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("Inst ")?.split_whitespace();
            let name = f.next()?;
            let version = f.next()?.strip_prefix('(')?;
            Some(InstalledPackage {
                name: name.split(':').next().unwrap_or(name).to_string(),
                version: version.to_string(),
            })
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The `Date:` field of a Release/InRelease file, as seconds since 1970.
pub fn release_date(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .take_while(|l| !l.is_empty() || text.starts_with("-----BEGIN"))
        .find_map(|l| l.strip_prefix("Date:"))?;
    parse_rfc2822(line.trim())
}

/// `Sat, 15 Nov 2025 09:35:56 UTC` (the weekday and the zone name optional;
/// `+hhmm` offsets applied).
pub fn parse_rfc2822(s: &str) -> Option<u64> {
    let s = s.split_once(", ").map_or(s, |(_, rest)| rest);
    let f: Vec<&str> = s.split_whitespace().collect();
    let [day, mon, year, time, rest @ ..] = f.as_slice() else {
        return None;
    };
    let day: u32 = day.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == mon)? as u32 + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<u32> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    let offset: i64 = match rest.first() {
        None | Some(&"UTC") | Some(&"GMT") | Some(&"Z") => 0,
        Some(z) if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let hh: i64 = z[1..3].parse().ok()?;
            let mm: i64 = z[3..5].parse().ok()?;
            let o = hh * 3600 + mm * 60;
            if z.starts_with('-') {
                -o
            } else {
                o
            }
        }
        Some(_) => return None,
    };
    let days = days_from_civil(year, month, day);
    let t = days * 86_400 + (*h as i64) * 3600 + (*m as i64) * 60 + *sec as i64 - offset;
    u64::try_from(t).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates_parse() {
        assert_eq!(parse_rfc2822("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(
            parse_rfc2822("Sat, 15 Nov 2025 09:35:56 UTC"),
            Some(1_763_199_356)
        );
        assert_eq!(
            parse_rfc2822("29 Feb 2024 12:00:00 +0100"),
            Some(1_709_204_400)
        );
        assert_eq!(parse_rfc2822("Sat, 15 Foo 2025 09:35:56 UTC"), None);
        assert_eq!(parse_rfc2822("Sat, 15 Nov 2025"), None);
        let inrelease = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nSuite: stable\nDate: Sat, 08 Nov 2025 09:11:47 UTC\nValid-Until: Sat, 15 Nov 2025 09:11:47 UTC\n";
        assert_eq!(release_date(inrelease), Some(1_762_593_107));
        assert_eq!(
            release_date("Origin: x\n\nDate: Sat, 08 Nov 2025 09:11:47 UTC\n"),
            None
        );
    }

    #[test]
    fn simulation_lines_give_names_and_versions() {
        let text = "Reading package lists...\nInst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])\nInst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []\nInst libfoo:amd64 (1.0 x [amd64])\nConf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])\n";
        let v = parse_simulation(text);
        let pairs: Vec<(&str, &str)> = v
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("gcc-12-base", "12.2.0-14+deb12u1"),
                ("libc6", "2.36-9+deb12u14"),
                ("libfoo", "1.0")
            ]
        );
    }
}
