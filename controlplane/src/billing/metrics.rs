//! Billing metrics, registered in the control plane's registry. Labels are
//! bounded: `result` is a fixed word, `type` a Stripe event type from a
//! fixed list (anything else is `other`); never a user or customer id.

use crate::metrics::{Metrics, MetricsError};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

#[derive(Debug, Clone)]
pub struct BillingMetrics {
    /// Meter event outcomes: sent, retried, failed, deferred.
    pub events: IntCounterVec,
    /// Tokens Stripe has accepted.
    pub tokens_reported: IntCounter,
    /// Tokens in windows too old for Stripe.
    pub unbillable_tokens: IntCounter,
    pub flush_seconds: Histogram,
    /// Webhook deliveries by event type and result (handled, duplicate,
    /// ignored, rejected).
    pub webhooks: IntCounterVec,
}

impl BillingMetrics {
    /// Register in `m`'s registry (once per registry).
    pub fn register(m: &Metrics) -> Result<Self, MetricsError> {
        let events = IntCounterVec::new(
            Opts::new(
                "billing_meter_events_total",
                "Stripe meter event sends, by result",
            ),
            &["result"],
        )?;
        let tokens_reported = IntCounter::new(
            "billing_tokens_reported_total",
            "Tokens reported to Stripe and accepted",
        )?;
        let unbillable_tokens = IntCounter::new(
            "billing_unbillable_tokens_total",
            "Tokens in windows older than Stripe accepts",
        )?;
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new("billing_flush_seconds", "Duration of one meter flush")
                .buckets(vec![0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
        )?;
        let webhooks = IntCounterVec::new(
            Opts::new(
                "billing_webhooks_total",
                "Stripe webhook deliveries, by type and result",
            ),
            &["type", "result"],
        )?;
        let r = m.registry();
        r.register(Box::new(events.clone()))?;
        r.register(Box::new(tokens_reported.clone()))?;
        r.register(Box::new(unbillable_tokens.clone()))?;
        r.register(Box::new(flush_seconds.clone()))?;
        r.register(Box::new(webhooks.clone()))?;
        Ok(Self {
            events,
            tokens_reported,
            unbillable_tokens,
            flush_seconds,
            webhooks,
        })
    }
}
