//! Rate-limited warnings: the same warning (same key, e.g. one provider's
//! failure kind) is logged at most once per interval, with how many were
//! left out since the last line. A dead provider under load otherwise
//! writes a line per request, which floods logs when they matter most.
//! Keys are bounded by config (providers, bots, kinds), never by clients.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One line per key per this interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether to log the warning for `key` now: `Some(n)` with `n` lines
    /// left out since the last one, or `None` to leave this one out.
    pub fn admit(&self, key: &str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock();
        match seen.get_mut(key) {
            Some((last, left_out)) if now.duration_since(*last) < self.interval => {
                *left_out += 1;
                None
            }
            Some(entry) => {
                let left_out = entry.1;
                *entry = (now, 0);
                Some(left_out)
            }
            None => {
                seen.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// The process's limiter for warnings about upstreams (providers, bots).
pub fn upstream_warnings() -> &'static LogLimiter {
    static LIMITER: std::sync::OnceLock<LogLimiter> = std::sync::OnceLock::new();
    LIMITER.get_or_init(LogLimiter::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_with_the_count_left_out() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at("a", t0), Some(0));
        assert_eq!(limiter.admit_at("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.admit_at("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(limiter.admit_at("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(limiter.admit_at("a", t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(limiter.admit_at("a", t0 + Duration::from_secs(12)), None);
    }
}
