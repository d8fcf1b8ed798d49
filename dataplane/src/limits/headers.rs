//! The OpenAI-style rate-limit headers every response carries:
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, and, in the
//! same style, `x-ratelimit-{limit,remaining,reset}-usd` for a monthly
//! dollar budget (amounts as dollar strings, `"25.00"`).
//!
//! Reset times are written the way OpenAI writes them (`1s`, `6m0s`,
//! `20ms`), so SDKs and dashboards that parse OpenAI's headers parse ours.

use http::HeaderValue;
use std::fmt::Write as _;
use std::time::Duration;

/// Header names, in the order [`RateLimitHeaders::pairs`] yields them.
pub const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
pub const REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
pub const RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
pub const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";
pub const REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
pub const RESET_TOKENS: &str = "x-ratelimit-reset-tokens";
pub const LIMIT_USD: &str = "x-ratelimit-limit-usd";
pub const REMAINING_USD: &str = "x-ratelimit-remaining-usd";
pub const RESET_USD: &str = "x-ratelimit-reset-usd";

/// The request, token and dollar limit nearest to binding for this user,
/// as of the decision. A `None` field (no such limit configured) is not
/// sent. Dollar amounts are in micro-dollars (the limiter's unit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
    pub limit_micro_usd: Option<u64>,
    pub remaining_micro_usd: Option<u64>,
    pub reset_usd: Option<Duration>,
}

// === impl RateLimitHeaders ===

impl RateLimitHeaders {
    /// The headers to send, skipping unset ones. Allocates one small
    /// string per header; callers insert them into the response header.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, HeaderValue)> + '_ {
        let n = |v: Option<u64>| v.map(HeaderValue::from);
        let d = |v: Option<Duration>| v.and_then(|d| HeaderValue::from_str(&format_reset(d)).ok());
        let usd =
            |v: Option<u64>| v.and_then(|m| HeaderValue::from_str(&super::budget::usd(m)).ok());
        [
            (LIMIT_REQUESTS, n(self.limit_requests)),
            (REMAINING_REQUESTS, n(self.remaining_requests)),
            (RESET_REQUESTS, d(self.reset_requests)),
            (LIMIT_TOKENS, n(self.limit_tokens)),
            (REMAINING_TOKENS, n(self.remaining_tokens)),
            (RESET_TOKENS, d(self.reset_tokens)),
            (LIMIT_USD, usd(self.limit_micro_usd)),
            (REMAINING_USD, usd(self.remaining_micro_usd)),
            (RESET_USD, d(self.reset_usd)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }

    pub fn is_empty(&self) -> bool {
        *self == RateLimitHeaders::default()
    }
}

/// A reset time as OpenAI writes it: `20ms` under a second, else hours,
/// minutes and seconds with the leading zero units left out (`1s`, `6m0s`,
/// `1h2m3s`); seconds keep up to three decimals (`1.5s`).
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut out = String::with_capacity(12);
    let total_s = d.as_secs();
    let (h, m, s) = (total_s / 3600, (total_s / 60) % 60, total_s % 60);
    // `write!` into a String cannot fail; the results are ignored for that reason.
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let frac_ms = d.subsec_millis();
    if frac_ms == 0 {
        let _ = write!(out, "{s}s");
    } else {
        let frac = format!("{frac_ms:03}");
        let _ = write!(out, "{s}.{}s", frac.trim_end_matches('0'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_is_formatted_like_openai() {
        let check = |ms: u64, want: &str| assert_eq!(format_reset(Duration::from_millis(ms)), want);
        check(0, "0ms");
        check(20, "20ms");
        check(999, "999ms");
        check(1000, "1s");
        check(1500, "1.5s");
        check(6 * 60_000, "6m0s");
        check(61_250, "1m1.25s");
        check(3_723_000, "1h2m3s");
    }

    #[test]
    fn only_set_headers_are_sent() {
        let h = RateLimitHeaders {
            limit_requests: Some(60),
            remaining_requests: Some(59),
            reset_requests: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let got: Vec<(&str, String)> = h
            .pairs()
            .map(|(k, v)| (k, v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            got,
            [
                (LIMIT_REQUESTS, "60".to_owned()),
                (REMAINING_REQUESTS, "59".to_owned()),
                (RESET_REQUESTS, "1s".to_owned()),
            ]
        );
        assert!(RateLimitHeaders::default().is_empty());
    }
}
