//! Provisioning metrics, registered in the control plane's registry.
//!
//! Labels are bounded: `step` and `status` are [`super::BotStatus`] names,
//! `reason` a fixed word ([`crate::fleet::FleetError::reason`], `health`,
//! `boot`, `store`, `crypto`); never a bot, user or machine id.

use super::BotStatus;
use crate::metrics::{Metrics, MetricsError};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

#[derive(Debug, Clone)]
pub struct ProvisionMetrics {
    /// Time of one step, by the state it ran in.
    pub step_seconds: HistogramVec,
    /// Failed steps by reason (`final` = 1 when the bot became `failed`).
    pub failures: IntCounterVec,
    /// Bots by status.
    pub bots: IntGaugeVec,
}

impl ProvisionMetrics {
    /// Register in `m`'s registry. Only one set per registry: a second
    /// registration fails, so the app builds this once.
    pub fn register(m: &Metrics) -> Result<Self, MetricsError> {
        let step_seconds = HistogramVec::new(
            HistogramOpts::new(
                "provision_step_seconds",
                "Duration of one provisioning step, by step",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0]),
            &["step"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "provision_failures_total",
                "Failed provisioning steps, by reason and whether the bot gave up",
            ),
            &["reason", "final"],
        )?;
        let bots = IntGaugeVec::new(Opts::new("bots", "Bots by status"), &["status"])?;
        m.registry().register(Box::new(step_seconds.clone()))?;
        m.registry().register(Box::new(failures.clone()))?;
        m.registry().register(Box::new(bots.clone()))?;
        Ok(Self {
            step_seconds,
            failures,
            bots,
        })
    }

    /// Set the per-status gauge from counts (missing statuses are 0).
    pub fn set_counts(&self, counts: &[(String, i64)]) {
        for s in BotStatus::ALL {
            let n = counts
                .iter()
                .find(|(name, _)| name == s.as_str())
                .map_or(0, |(_, n)| *n);
            self.bots.with_label_values(&[s.as_str()]).set(n);
        }
    }
}
