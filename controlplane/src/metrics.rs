//! The control plane's Prometheus metrics, in a registry of its own so
//! several control planes (tests) in one process never collide.
//!
//! Labels are bounded: `route` is the matched route template (never a raw
//! path with ids), `status` an HTTP status code, `result` a fixed word.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
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
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("molt_cp".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["route"],
        )?;
        let snapshot_version = IntGauge::new(
            "snapshot_version",
            "Version of the published config snapshot",
        )?;
        let snapshot_rejected = IntCounter::new(
            "snapshot_rejected_total",
            "Compiled snapshots that failed validation and were not published",
        )?;
        let connected_dataplanes = IntGauge::new(
            "connected_dataplanes",
            "Data planes currently holding a config long-poll",
        )?;
        let ingest_events = IntCounterVec::new(
            Opts::new("ingest_events_total", "Usage events received, by result"),
            &["result"],
        )?;
        let ingest_batch_seconds = Histogram::with_opts(HistogramOpts::new(
            "ingest_batch_seconds",
            "Time to store one usage batch",
        ))?;
        let ingest_lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ingest_lag_seconds",
                "Time from a request's start to its usage event being stored",
            )
            .buckets(vec![0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0]),
        )?;
        let job_runs = IntCounterVec::new(
            Opts::new("job_runs_total", "Background job runs, by job and result"),
            &["job", "result"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(snapshot_version.clone()))?;
        registry.register(Box::new(snapshot_rejected.clone()))?;
        registry.register(Box::new(connected_dataplanes.clone()))?;
        registry.register(Box::new(ingest_events.clone()))?;
        registry.register(Box::new(ingest_batch_seconds.clone()))?;
        registry.register(Box::new(ingest_lag_seconds.clone()))?;
        registry.register(Box::new(job_runs.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            snapshot_version,
            snapshot_rejected,
            connected_dataplanes,
            ingest_events,
            ingest_batch_seconds,
            ingest_lag_seconds,
            job_runs,
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
