//! The data plane's Prometheus metrics, in a registry of its own.
//!
//! Labels are bounded by config: route, canonical model, provider, status,
//! error kind. No label ever carries a user, key or request id; a model
//! name the config doesn't know is reported as `unknown`.

use molt_config::metrics::Registrar;
use prometheus::{
    Encoder, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry, TextEncoder,
};

/// Buckets in seconds for whole requests and upstream first bytes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Buckets in seconds for the proxy's own time, which should be tiny.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_ttfb: HistogramVec,
    pub proxy_overhead: HistogramVec,
    pub tokens: IntCounterVec,
    pub active_streams: IntGauge,
    pub upstream_errors: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub config_version: IntGauge,
    pub config_reloads: IntCounter,
    pub config_reload_failures: IntCounter,
    pub usage_events_dropped: IntCounter,
    pub usage_record_wait_timeouts: IntCounter,
    /// Client connections and how they end.
    pub clients: ClientMetrics,
    /// Secrets masked in what upstreams sent back.
    pub scrub: crate::scrub::ScrubMetrics,
}

/// Client connections: held, refused at the cap, and ended by the client
/// before a request (closed, reset, too slow), which are the client's doing
/// and so are counted here rather than logged as errors.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    pub connections: IntGauge,
    pub refused: IntCounter,
    pub ends: IntCounterVec,
}

impl ClientMetrics {
    fn new(r: Registrar<'_>) -> Result<Self, prometheus::Error> {
        let connections = r.gauge(
            "molt_client_connections",
            "Client connections this process holds.",
        )?;
        let refused = r.counter(
            "molt_client_connections_refused_total",
            "Client connections turned away at server.max_connections.",
        )?;
        let ends = r.counter_vec(
            "molt_client_ends_total",
            "Connections and requests the client ended early, by kind (closed, reset, header_timeout, body_timeout, gone_mid_response).",
            &["kind"],
        )?;
        Ok(Self {
            connections,
            refused,
            ends,
        })
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let requests = r.counter_vec(
            "molt_requests_total",
            "Requests by route, model, provider and status.",
            &["route", "model", "provider", "status"],
        )?;
        let request_duration = r.histogram_vec(
            "molt_request_duration_seconds",
            "Time from request start to the last byte sent.",
            LATENCY_BUCKETS,
            &["route"],
        )?;
        let upstream_ttfb = r.histogram_vec(
            "molt_upstream_ttfb_seconds",
            "Time from sending the request upstream to the upstream's response header.",
            LATENCY_BUCKETS,
            &["provider"],
        )?;
        let proxy_overhead = r.histogram_vec(
            "molt_proxy_overhead_seconds",
            "The proxy's own time on a request: from the body fully read to the request sent upstream, plus from the upstream header to the client header.",
            OVERHEAD_BUCKETS,
            &["route"],
        )?;
        let tokens = r.counter_vec(
            "molt_tokens_total",
            "Tokens used, by direction (input/output), model and provider.",
            &["direction", "model", "provider"],
        )?;
        let active_streams =
            r.gauge("molt_active_streams", "Responses being streamed right now.")?;
        let upstream_errors = r.counter_vec(
            "molt_upstream_errors_total",
            "Upstream failures by provider and kind.",
            &["provider", "kind"],
        )?;
        let fallbacks = r.counter_vec(
            "molt_fallbacks_total",
            "Requests retried on a fallback model, by the model that failed.",
            &["model"],
        )?;
        let config_version =
            r.gauge("molt_config_version", "Version of the config being served.")?;
        let config_reloads = r.counter("molt_config_reloads_total", "Config reloads applied.")?;
        let config_reload_failures = r.counter(
            "molt_config_reload_failures_total",
            "Config reloads rejected as invalid.",
        )?;
        let usage_events_dropped = r.counter(
            "molt_usage_events_dropped_total",
            "Usage events dropped because the sink could not keep up or failed.",
        )?;
        let usage_record_wait_timeouts = r.counter(
            "molt_usage_record_wait_timeouts_total",
            "Responses ended before their usage event was durable because the spool's commit took too long.",
        )?;
        let clients = ClientMetrics::new(r)?;
        let scrub = crate::scrub::ScrubMetrics::new(&registry)?;
        Ok(Self {
            clients,
            scrub,
            registry,
            requests,
            request_duration,
            upstream_ttfb,
            proxy_overhead,
            tokens,
            active_streams,
            upstream_errors,
            fallbacks,
            config_version,
            config_reloads,
            config_reload_failures,
            usage_events_dropped,
            usage_record_wait_timeouts,
        })
    }

    /// The registry, so other modules (the WebSocket relay) can add their
    /// own metrics to the same `/metrics` page.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec can only fail on a broken metric family, which
        // registration already ruled out; an empty page is the fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
