//! The limiter's Prometheus metrics. Labels are the decision and the limit
//! kind only: never a user, key or model, so cardinality is fixed.

use super::LimitKind;
use molt_config::metrics::Registrar;
use prometheus::{Histogram, IntCounter, IntGauge, Registry};

/// Redis round trips are expected in the sub-millisecond to few-ms range.
const REDIS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Debug, Clone)]
pub(crate) struct LimitMetrics {
    /// Resolved once so the request path never hashes label values.
    pub(crate) admitted: IntCounter,
    rejected: Vec<IntCounter>,
    pub(crate) redis_latency: Histogram,
    pub(crate) redis_errors: IntCounter,
    pub(crate) redis_fallback: IntGauge,
    pub(crate) anomalies: IntCounter,
}

// === impl LimitMetrics ===

impl LimitMetrics {
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let r = Registrar(registry);
        let decisions = r.counter_vec(
            "molt_limit_decisions_total",
            "Limiter decisions: admitted, or rejected by the limit kind that refused.",
            &["decision", "kind"],
        )?;
        Ok(LimitMetrics {
            admitted: decisions.with_label_values(&["admitted", "none"]),
            rejected: LimitKind::ALL
                .iter()
                .map(|k| decisions.with_label_values(&["rejected", k.as_str()]))
                .collect(),
            redis_latency: r.histogram(
                "molt_limits_redis_seconds",
                "Latency of the limiter's Redis lease operations (off the request path).",
                REDIS_BUCKETS,
            )?,
            redis_errors: r.counter(
                "molt_limits_redis_errors_total",
                "Failed Redis connects and lease operations.",
            )?,
            redis_fallback: r.gauge(
                "molt_limits_redis_fallback",
                "1 while Redis is configured but unreachable and limits are enforced locally (limit / replicas).",
            )?,
            anomalies: r.counter(
                "molt_anomalies_total",
                "Users flagged for unusual token usage (counted when a user becomes anomalous).",
            )?,
        })
    }

    pub(crate) fn rejected(&self, kind: LimitKind) {
        // `ALL` lists every kind in declaration order, so the index exists.
        if let Some(c) = self.rejected.get(kind as usize) {
            c.inc();
        }
    }
}
