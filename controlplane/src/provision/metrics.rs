//! Provisioning metrics, registered in the control plane's registry.
//!
//! Labels are bounded: `step` and `status` are [`super::BotStatus`] names,
//! `reason` a fixed word ([`crate::fleet::FleetError::reason`], `health`,
//! `boot`, `store`, `crypto`); never a bot, user or machine id.

use super::BotStatus;
use crate::domain::Millis;
use crate::metrics::{Metrics, MetricsError};
use molt_config::metrics::Registrar;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};

#[derive(Debug, Clone)]
pub struct ProvisionMetrics {
    /// Time of one step, by the state it ran in.
    pub step_seconds: HistogramVec,
    /// Failed steps by reason (`final` = 1 when the bot became `failed`).
    pub failures: IntCounterVec,
    /// Bots by status.
    pub bots: IntGaugeVec,
    /// Per status a worker still has a step to run in: how long the bot
    /// longest in it has been there (0 with none), so "stuck" is visible.
    pub oldest_step_seconds: IntGaugeVec,
}

impl ProvisionMetrics {
    /// Register in `m`'s registry. Only one set per registry: a second
    /// registration fails, so the app builds this once.
    pub fn register(m: &Metrics) -> Result<Self, MetricsError> {
        let r = Registrar(m.registry());
        Ok(Self {
            step_seconds: r.histogram_vec(
                "provision_step_seconds",
                "Duration of one provisioning step, by step",
                &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0],
                &["step"],
            )?,
            failures: r.counter_vec(
                "provision_failures_total",
                "Failed provisioning steps, by reason and whether the bot gave up",
                &["reason", "final"],
            )?,
            bots: r.gauge_vec("bots", "Bots by status", &["status"])?,
            oldest_step_seconds: r.gauge_vec(
                "provision_oldest_step_seconds",
                "Seconds the bot longest in an unfinished provisioning state has been in it, by state (0: none)",
                &["status"],
            )?,
        })
    }

    /// Set the per-status gauges from (status, count, oldest step start)
    /// rows at `now` (missing statuses are 0).
    pub fn set_counts(&self, counts: &[(String, i64, Millis)], now: Millis) {
        for s in BotStatus::ALL {
            let row = counts.iter().find(|(name, ..)| name == s.as_str());
            let n = row.map_or(0, |(_, n, _)| *n);
            self.bots.with_label_values(&[s.as_str()]).set(n);
            if s.is_active() {
                let age = row.map_or(0, |(_, _, since)| (now - since).max(0) / 1000);
                self.oldest_step_seconds
                    .with_label_values(&[s.as_str()])
                    .set(age);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_step_is_exported_per_unfinished_state_and_zero_without_bots() {
        let m = Metrics::new().unwrap();
        let p = ProvisionMetrics::register(&m).unwrap();
        let now = 1_000_000_000;
        p.set_counts(
            &[
                ("running".into(), 5, now - 90_000_000),
                ("waiting_health".into(), 2, now - 600_500),
            ],
            now,
        );
        let text = m.render();
        for line in [
            "molt_cp_provision_oldest_step_seconds{status=\"waiting_health\"} 600",
            "molt_cp_provision_oldest_step_seconds{status=\"requested\"} 0",
            "molt_cp_bots{status=\"running\"} 5",
            "molt_cp_bots{status=\"failed\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        // Finished states are not "stuck" however old they are.
        assert!(!text.contains("provision_oldest_step_seconds{status=\"running\"}"));
    }
}
