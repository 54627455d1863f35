//! Polling with a deadline.

use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Calls `f` every `poll` until it gives a value, or fails with
/// [`Error::Timeout`] naming `what` once `limit` has passed.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > limit {
            return Err(Error::Timeout {
                what: what.to_string(),
                limit,
            });
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_or_names_the_timeout() {
        let mut n = 0;
        let v = wait_until(
            "three calls",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                (n == 3).then_some(n)
            },
        );
        assert_eq!(v.unwrap(), 3);
        let e = wait_until::<()>(
            "never",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || None,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "never: not reached within 30ms");
    }
}
