//! The WebSocket relay's Prometheus metrics, registered in the data plane's
//! registry so they appear on the same `/metrics` page.
//!
//! Labels are bounded: direction (two values), close reason (a fixed list),
//! brain event type (the seed's six types, anything else is `other`). No
//! bot, user or key is ever a label.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// The `brain_event` types the seed defines; others count as `other`.
pub const BRAIN_EVENT_TYPES: &[&str] = &[
    "user_message",
    "thinking",
    "tool_call",
    "tool_result",
    "assistant_message",
    "memory_access",
];

/// Connection lifetimes: seconds to a day.
const DURATION_BUCKETS: &[f64] = &[
    0.1,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    24.0 * 3600.0,
];

#[derive(Debug, Clone)]
pub struct WsMetrics {
    pub open: IntGauge,
    pub duration: Histogram,
    /// `direction` = `client_to_bot` | `bot_to_client`.
    pub messages: IntCounterVec,
    pub bytes: IntCounterVec,
    pub brain_events: IntCounterVec,
    /// By close reason label (see `CloseReason::label`).
    pub closed: IntCounterVec,
    /// Ticket claims that fell back to this process's record (Redis away).
    pub ticket_claim_fallbacks: prometheus::IntCounter,
}

impl WsMetrics {
    /// Create the metrics and register them in `registry`. A registration
    /// failure (a name clash, i.e. a bug) is logged and the metrics still
    /// work, just unexported.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let open = IntGauge::new(
            "molt_ws_open_connections",
            "WebSocket connections being relayed right now.",
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "molt_ws_connection_duration_seconds",
                "How long relayed WebSocket connections lasted.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let messages = IntCounterVec::new(
            Opts::new(
                "molt_ws_messages_total",
                "WebSocket data messages relayed, by direction.",
            ),
            &["direction"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "molt_ws_message_bytes_total",
                "Payload bytes of relayed WebSocket data messages, by direction.",
            ),
            &["direction"],
        )?;
        let brain_events = IntCounterVec::new(
            Opts::new(
                "molt_ws_brain_events_total",
                "brain_event messages from bots, by event type.",
            ),
            &["type"],
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "molt_ws_closed_total",
                "Relayed WebSocket connections closed, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(brain_events.clone()))?;
        let ticket_claim_fallbacks = prometheus::IntCounter::new(
            "molt_ws_ticket_claim_fallbacks_total",
            "WebSocket tickets claimed only in this process because Redis could not be reached (single use per replica meanwhile).",
        )?;
        registry.register(Box::new(closed.clone()))?;
        registry.register(Box::new(ticket_claim_fallbacks.clone()))?;
        Ok(Self {
            ticket_claim_fallbacks,
            open,
            duration,
            messages,
            bytes,
            brain_events,
            closed,
        })
    }

    /// The bounded label for a brain event type.
    pub fn brain_label(kind: &str) -> &'static str {
        BRAIN_EVENT_TYPES
            .iter()
            .find(|t| **t == kind)
            .copied()
            .unwrap_or("other")
    }
}
