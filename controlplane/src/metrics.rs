//! The control plane's Prometheus metrics, in a registry of its own so
//! several control planes (tests) in one process never collide.
//!
//! Labels are bounded: `route` is the matched route template (never a raw
//! path with ids), `status` an HTTP status code, `result` a fixed word.

use molt_config::metrics::Registrar;
use prometheus::{
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry, TextEncoder,
};

#[derive(Debug, thiserror::Error)]
#[error("metrics registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Every metric the control plane exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub snapshot_version: IntGauge,
    pub snapshot_rejected: IntCounter,
    pub connected_dataplanes: IntGauge,
    pub ingest_events: IntCounterVec,
    pub ingest_batch_seconds: Histogram,
    pub ingest_lag_seconds: Histogram,
    pub job_runs: IntCounterVec,
    pub unpriced_events: IntCounterVec,
    pub budget_thresholds: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("molt_cp".into()), None)?;
        let r = Registrar(&registry);
        Ok(Self {
            http_requests: r.counter_vec(
                "http_requests_total",
                "HTTP requests by route and status",
                &["route", "status"],
            )?,
            http_duration: r.histogram_vec(
                "http_request_duration_seconds",
                "HTTP request latency",
                &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0],
                &["route"],
            )?,
            snapshot_version: r.gauge(
                "snapshot_version",
                "Version of the published config snapshot",
            )?,
            snapshot_rejected: r.counter(
                "snapshot_rejected_total",
                "Compiled snapshots that failed validation and were not published",
            )?,
            connected_dataplanes: r.gauge(
                "connected_dataplanes",
                "Data planes currently holding a config long-poll",
            )?,
            ingest_events: r.counter_vec(
                "ingest_events_total",
                "Usage events received, by result",
                &["result"],
            )?,
            ingest_batch_seconds: r.histogram(
                "ingest_batch_seconds",
                "Time to store one usage batch",
                prometheus::DEFAULT_BUCKETS,
            )?,
            ingest_lag_seconds: r.histogram(
                "ingest_lag_seconds",
                "Time from a request's start to its usage event being stored",
                &[0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0],
            )?,
            job_runs: r.counter_vec(
                "job_runs_total",
                "Background job runs, by job and result",
                &["job", "result"],
            )?,
            unpriced_events: r.counter_vec(
                "usage_unpriced_events_total",
                "Usage events stored without a cost: their model had no price at their time",
                &["model"],
            )?,
            budget_thresholds: r.counter_vec(
                "budget_thresholds_crossed_total",
                "Dollar-budget thresholds (percent) users crossed, each once per user and month",
                &["threshold"],
            )?,
            registry,
        })
    }

    /// The registry, for modules that register metrics of their own
    /// (`provision`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on a metric with invalid names,
        // which `new` would already have refused to register.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Keeps `connected_dataplanes` right however a long-poll ends (answer,
/// timeout or client gone).
#[derive(Debug)]
pub struct ConnectedGuard(IntGauge);

impl ConnectedGuard {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
