//! Billing metrics, registered in the control plane's registry. Labels are
//! bounded: `result` is a fixed word, `type` a Stripe event type from a
//! fixed list (anything else is `other`); never a user or customer id.

use crate::metrics::{Metrics, MetricsError};
use molt_config::metrics::Registrar;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

/// The `reason` values of `billing_overdue_tokens`, all always exported.
pub const OVERDUE_REASONS: [&str; 4] = ["pending", "failed", "unbillable", "unreported"];

#[derive(Debug, Clone)]
pub struct BillingMetrics {
    /// Meter event outcomes: sent, retried, failed, deferred.
    pub events: IntCounterVec,
    /// Tokens Stripe has accepted (a tokens meter).
    pub tokens_reported: IntCounter,
    /// Picodollars Stripe has accepted (a cost meter: value × unit).
    pub pico_reported: IntCounter,
    /// Tokens in windows too old for Stripe.
    pub unbillable_tokens: IntCounter,
    pub flush_seconds: Histogram,
    /// Webhook deliveries by event type and result (handled, duplicate,
    /// ignored, rejected).
    pub webhooks: IntCounterVec,
    /// Unix time of the last flush that left no report pending (the start
    /// time until the first), so an alert sees a flush that keeps failing.
    pub last_success: IntGauge,
    /// Billable tokens (users with a Stripe customer) that a flush should
    /// have delivered by now and Stripe does not hold, by reason
    /// (`pending`, `failed`, `unbillable`, `unreported`): the
    /// reconciliation's difference, as of the last periodic flush.
    pub overdue_tokens: IntGaugeVec,
}

impl BillingMetrics {
    /// Register in `m`'s registry (once per registry).
    pub fn register(m: &Metrics) -> Result<Self, MetricsError> {
        let r = Registrar(m.registry());
        let last_success = r.gauge(
            "billing_last_flush_success_timestamp_seconds",
            "Unix time of the last meter flush that left no report pending (start time until the first)",
        )?;
        last_success.set(crate::domain::now_ms() / 1000);
        let overdue_tokens = r.gauge_vec(
            "billing_overdue_tokens",
            "Billable tokens a flush should have delivered by now that Stripe does not hold, by reason",
            &["reason"],
        )?;
        for reason in OVERDUE_REASONS {
            overdue_tokens.with_label_values(&[reason]).set(0);
        }
        Ok(Self {
            events: r.counter_vec(
                "billing_meter_events_total",
                "Stripe meter event sends, by result",
                &["result"],
            )?,
            tokens_reported: r.counter(
                "billing_tokens_reported_total",
                "Tokens reported to Stripe and accepted (tokens meter)",
            )?,
            pico_reported: r.counter(
                "billing_reported_picodollars_total",
                "Money reported to Stripe and accepted, in picodollars (cost meter: value x unit)",
            )?,
            unbillable_tokens: r.counter(
                "billing_unbillable_tokens_total",
                "Tokens in windows older than Stripe accepts",
            )?,
            flush_seconds: r.histogram(
                "billing_flush_seconds",
                "Duration of one meter flush",
                &[0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
            )?,
            webhooks: r.counter_vec(
                "billing_webhooks_total",
                "Stripe webhook deliveries, by type and result",
                &["type", "result"],
            )?,
            last_success,
            overdue_tokens,
        })
    }
}
