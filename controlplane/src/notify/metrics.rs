//! Notification metrics, registered in the control plane's registry.
//!
//! Labels are bounded: `channel` is a [`Channel`] name, `result` one of
//! [`RESULTS`]; never a user, notification or endpoint id.

use super::store::OutboxDepth;
use crate::domain::{Channel, Millis};
use crate::metrics::{Metrics, MetricsError};
use molt_config::metrics::Registrar;
use prometheus::{IntCounterVec, IntGaugeVec};

/// What one delivery attempt came to.
pub const RESULTS: [&str; 4] = ["delivered", "retried", "failed", "skipped"];

#[derive(Debug, Clone)]
pub struct NotifyMetrics {
    /// Pending deliveries by channel.
    pub depth: IntGaugeVec,
    /// Age of the oldest pending delivery by channel (0 with none).
    pub oldest_seconds: IntGaugeVec,
    /// Delivery attempts by channel and result.
    pub deliveries: IntCounterVec,
}

impl NotifyMetrics {
    /// Register in `m`'s registry (once per registry).
    pub fn register(m: &Metrics) -> Result<Self, MetricsError> {
        let r = Registrar(m.registry());
        let me = Self {
            depth: r.gauge_vec(
                "notification_outbox_depth",
                "Notification deliveries waiting to be sent, by channel",
                &["channel"],
            )?,
            oldest_seconds: r.gauge_vec(
                "notification_outbox_oldest_seconds",
                "Age of the oldest notification delivery still waiting, by channel (0: none)",
                &["channel"],
            )?,
            deliveries: r.counter_vec(
                "notification_deliveries_total",
                "Notification delivery attempts, by channel and result",
                &["channel", "result"],
            )?,
        };
        for c in Channel::ALL {
            for result in RESULTS {
                me.deliveries.with_label_values(&[c.as_str(), result]);
            }
        }
        me.set_depth(&[], 0);
        Ok(me)
    }

    /// Set the gauges from the outbox's per-channel rows at `now`
    /// (channels without a row are 0).
    pub fn set_depth(&self, rows: &[OutboxDepth], now: Millis) {
        for c in Channel::ALL {
            let row = rows.iter().find(|r| r.channel == c.as_str());
            self.depth
                .with_label_values(&[c.as_str()])
                .set(row.map_or(0, |r| r.pending));
            let age = row.map_or(0, |r| (now - r.oldest_created_at).max(0) / 1000);
            self.oldest_seconds
                .with_label_values(&[c.as_str()])
                .set(age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_and_age_per_channel_and_zero_without_rows() {
        let m = Metrics::new().unwrap();
        let n = NotifyMetrics::register(&m).unwrap();
        let now = 1_000_000;
        n.set_depth(
            &[OutboxDepth {
                channel: "email".into(),
                pending: 3,
                oldest_created_at: now - 90_000,
            }],
            now,
        );
        let text = m.render();
        for line in [
            "molt_cp_notification_outbox_depth{channel=\"email\"} 3",
            "molt_cp_notification_outbox_oldest_seconds{channel=\"email\"} 90",
            "molt_cp_notification_outbox_depth{channel=\"webhook\"} 0",
            "molt_cp_notification_deliveries_total{channel=\"webhook\",result=\"failed\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }
}
