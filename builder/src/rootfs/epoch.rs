//! The build's SOURCE_DATE_EPOCH: every timestamp and every GUID of the
//! image is derived from it, so it must come from the inputs for two builds
//! of the same inputs to be bit-identical. In order of precedence:
//! `--source-date-epoch`, `$SOURCE_DATE_EPOCH`, the profile's
//! `[rootfs] source_date_epoch`, the newest `Date:` of the signed
//! `InRelease` files the build resolved its packages against (apt), and
//! only when none exists (dnf without the profile key) the build time.

use crate::error::{BuildError, Result};

/// The epoch and where it came from (recorded in the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub seconds: u64,
    /// `--source-date-epoch`, `SOURCE_DATE_EPOCH`, `profile`,
    /// `index: <InRelease file>` or `build time (not reproducible)`.
    pub source: String,
}

/// Pick the epoch (see the module docs for the order).
pub fn choose(
    flag: Option<u64>,
    env: Option<&str>,
    profile: Option<u64>,
    index_date: Option<&(u64, String)>,
    now: impl FnOnce() -> u64,
) -> Result<Epoch> {
    let e = |seconds, source: &str| Epoch {
        seconds,
        source: source.to_string(),
    };
    if let Some(s) = flag {
        return Ok(e(s, "--source-date-epoch"));
    }
    if let Some(v) = env.filter(|v| !v.is_empty()) {
        let s = v.trim().parse().map_err(|_| {
            BuildError::Invalid(format!(
                "SOURCE_DATE_EPOCH={v:?}: expected seconds since 1970 (an integer)"
            ))
        })?;
        return Ok(e(s, "SOURCE_DATE_EPOCH"));
    }
    if let Some(s) = profile {
        return Ok(e(s, "profile"));
    }
    if let Some((s, file)) = index_date {
        return Ok(e(*s, &format!("index: {file}")));
    }
    Ok(e(now(), "build time (not reproducible)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_flag_env_profile_index_now() {
        let idx = (
            1_762_593_107,
            "deb.debian.org_debian_dists_bookworm_InRelease".to_string(),
        );
        let now = || 42;
        let c = |f, e, p, i| choose(f, e, p, i, now).unwrap();
        assert_eq!(
            c(Some(7), Some("8"), Some(9), Some(&idx)).source,
            "--source-date-epoch"
        );
        assert_eq!(c(Some(7), Some("8"), Some(9), Some(&idx)).seconds, 7);
        let env = c(None, Some("8"), Some(9), Some(&idx));
        assert_eq!((env.seconds, env.source.as_str()), (8, "SOURCE_DATE_EPOCH"));
        let prof = c(None, Some(""), Some(9), Some(&idx));
        assert_eq!((prof.seconds, prof.source.as_str()), (9, "profile"));
        let index = c(None, None, None, Some(&idx));
        assert_eq!(index.seconds, 1_762_593_107);
        assert_eq!(
            index.source,
            "index: deb.debian.org_debian_dists_bookworm_InRelease"
        );
        let late = c(None, None, None, None);
        assert_eq!(
            (late.seconds, late.source.as_str()),
            (42, "build time (not reproducible)")
        );
        let bad = choose(None, Some("yesterday"), None, None, now).unwrap_err();
        assert!(
            bad.to_string().contains("SOURCE_DATE_EPOCH=\"yesterday\""),
            "{bad}"
        );
    }
}
