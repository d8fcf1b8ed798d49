//! Identity metrics, registered in the control plane's registry. Labels are
//! bounded: `type` is one of three Clerk event types (anything else is
//! `other`), `result` a fixed word; never a user id.

use crate::metrics::{Metrics, MetricsError};
use molt_config::metrics::Registrar;
use prometheus::{IntCounter, IntCounterVec, IntGauge};

#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    /// Webhook deliveries by event type and result (created, linked,
    /// updated, deactivated, stale, ignored, duplicate, rejected).
    pub webhooks: IntCounterVec,
    /// JWKS fetches that failed (the last good keys kept serving).
    pub jwks_fetch_failures: IntCounter,
    /// Unix time of the last successful JWKS fetch (0 until the first):
    /// the held keys' age is `time() - this`.
    pub jwks_last_success: IntGauge,
    /// Keys in the held set.
    pub jwks_keys: IntGauge,
}

impl IdentityMetrics {
    /// Register in `m`'s registry (once per registry).
    pub fn register(m: &Metrics) -> Result<Self, MetricsError> {
        let r = Registrar(m.registry());
        Ok(Self {
            webhooks: r.counter_vec(
                "identity_webhooks_total",
                "Clerk webhook deliveries, by type and result",
                &["type", "result"],
            )?,
            jwks_fetch_failures: r.counter(
                "identity_jwks_fetch_failures_total",
                "JWKS fetches that failed; the last good keys keep serving",
            )?,
            jwks_last_success: r.gauge(
                "identity_jwks_last_success_timestamp_seconds",
                "Unix time of the last successful JWKS fetch (0 until the first)",
            )?,
            jwks_keys: r.gauge(
                "identity_jwks_keys",
                "Signing keys in the JWKS the data planes are given",
            )?,
        })
    }
}
