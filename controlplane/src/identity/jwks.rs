//! The identity provider's signing keys: fetched from its JWKS URL (Clerk:
//! `https://<frontend-api>/.well-known/jwks.json`) by the control plane,
//! held in [`JwksKeys`], and compiled into every snapshot's `auth.jwks`,
//! so data planes verify provider tokens without any I/O of their own.
//!
//! Fetching: again after the answer's `Cache-Control: max-age`, but never
//! later than `refresh` (so a new `kid` is picked up within it) nor sooner
//! than [`MIN_REFETCH`]. A failed fetch (transport, status, an unreadable
//! body, or a set with no key this build can use) keeps the last good set
//! serving, is counted (`molt_cp_identity_jwks_fetch_failures_total`) and
//! retried with backoff from [`RETRY_FIRST`] up to `refresh`. A changed set
//! refreshes the snapshot at once; the data planes' long-poll then delivers
//! it within a second.

use super::metrics::IdentityMetrics;
use crate::https::HttpsClient;
use crate::service::Service;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode};
use molt_config::jwks::RawJwk;
use serde::Deserialize;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Soonest refetch, whatever `max-age` says.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// First retry after a failed fetch; doubles up to the refresh interval.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// One fetch's time limit.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS body read.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The keys last fetched (empty until the first success), shared by the
/// fetcher, which replaces them, and the snapshot compiler, which reads
/// them.
#[derive(Debug, Clone, Default)]
pub struct JwksKeys(Arc<RwLock<Arc<Vec<RawJwk>>>>);

impl JwksKeys {
    pub fn current(&self) -> Arc<Vec<RawJwk>> {
        // A poisoned lock still holds a whole set (only `replace` writes,
        // with one assignment).
        match self.0.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Hold `keys`; whether they differ from the held set.
    pub fn replace(&self, keys: Vec<RawJwk>) -> bool {
        let mut held = match self.0.write() {
            Ok(held) => held,
            Err(poisoned) => poisoned.into_inner(),
        };
        if **held == keys {
            return false;
        }
        *held = Arc::new(keys);
        true
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("GET {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: StatusCode },
    #[error("GET {url}: not a JWKS: {reason}")]
    Body { url: String, reason: String },
    #[error("GET {url}: no RS256 or ES256 signing key in the set")]
    NoUsableKey { url: String },
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<RawJwk>,
}

/// A fetch that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The set differs from the one held before.
    pub changed: bool,
    /// The answer's `Cache-Control: max-age`, if any.
    pub max_age: Option<Duration>,
}

/// Fetches one JWKS URL into a [`JwksKeys`].
#[derive(Debug)]
pub struct JwksFetcher {
    url: String,
    client: HttpsClient,
    keys: JwksKeys,
    refresh: Duration,
    metrics: IdentityMetrics,
}

impl JwksFetcher {
    pub fn new(
        url: String,
        client: HttpsClient,
        keys: JwksKeys,
        refresh: Duration,
        metrics: IdentityMetrics,
    ) -> Self {
        Self {
            url,
            client,
            keys,
            refresh,
            metrics,
        }
    }

    /// Fetch once; on success the usable keys are held.
    pub async fn fetch(&self) -> Result<Fetched, JwksError> {
        let result = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .unwrap_or_else(|_| {
                Err(JwksError::Transport {
                    url: self.url.clone(),
                    reason: "timed out".into(),
                })
            });
        let (keys, max_age) = match result {
            Ok(answer) => answer,
            Err(e) => {
                self.metrics.jwks_fetch_failures.inc();
                tracing::warn!(error = %e, "JWKS fetch failed; the last good keys keep serving");
                return Err(e);
            }
        };
        self.metrics
            .jwks_keys
            .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
        self.metrics
            .jwks_last_success
            .set(crate::domain::now_ms() / 1000);
        let changed = self.keys.replace(keys);
        if changed {
            tracing::info!(url = self.url, "identity provider keys changed");
        }
        Ok(Fetched { changed, max_age })
    }

    async fn get(&self) -> Result<(Vec<RawJwk>, Option<Duration>), JwksError> {
        let url = &self.url;
        let transport = |reason: String| JwksError::Transport {
            url: url.clone(),
            reason,
        };
        let req = Request::get(url.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| transport(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| transport(molt_config::outbound::cause_text(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(JwksError::Status {
                url: url.clone(),
                status,
            });
        }
        let max_age = resp
            .headers()
            .get(hyper::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| JwksError::Body {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let keys: Vec<RawJwk> = set.keys.into_iter().filter(RawJwk::is_supported).collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { url: url.clone() });
        }
        Ok((keys, max_age))
    }

    /// When to fetch again after `result`; `failures` counts the failed
    /// fetches in a row, this one included.
    pub fn next_fetch(&self, result: &Result<Fetched, JwksError>, failures: u32) -> Duration {
        match result {
            Ok(f) => f
                .max_age
                .unwrap_or(self.refresh)
                .clamp(MIN_REFETCH.min(self.refresh), self.refresh),
            Err(_) => RETRY_FIRST
                .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
                .min(self.refresh),
        }
    }

    /// Fetch now and then for as long as the task lives, refreshing the
    /// snapshot whenever the keys change.
    pub fn spawn(self, service: Arc<Service>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                let result = self.fetch().await;
                failures = if result.is_ok() { 0 } else { failures + 1 };
                if matches!(result, Ok(Fetched { changed: true, .. })) {
                    service.refresh_snapshot().await;
                }
                tokio::time::sleep(self.next_fetch(&result, failures)).await;
            }
        })
    }
}

/// `max-age` of a `Cache-Control` value (`no-store`/`no-cache` mean 0).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| {
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        let (name, secs) = d.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| secs.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            max_age("max-age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn held_keys_change_only_when_different() {
        let keys = JwksKeys::default();
        assert!(keys.current().is_empty());
        let k = RawJwk {
            kid: "a".into(),
            ..RawJwk::default()
        };
        assert!(keys.replace(vec![k.clone()]));
        assert!(!keys.replace(vec![k]));
        assert_eq!(keys.current()[0].kid, "a");
    }
}
