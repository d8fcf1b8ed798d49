//! The end of a request: [`Admission::settle`] charges what the response
//! really used against the estimate that was reserved, and dropping an
//! [`Admission`] gives back its concurrent-stream slot.

use super::*;
use crate::usage_reader::TokenUsage;

impl Admission {
    /// For every response, success or not.
    pub fn headers(&self) -> &RateLimitHeaders {
        &self.headers
    }

    /// Charge the actual usage against the reservation: its tokens, and
    /// its cost class by class at the price it was admitted at.
    pub fn settle(self, used: &TokenUsage) -> SettleOutcome {
        let sh = &self.shared;
        let charge = Charge::actual(self.price.as_ref(), used);
        let actual = charge.tokens;
        let delta = charge.minus(&self.reserved);
        let (mono, unix) = (sh.clock.mono(), sh.clock.unix());
        let cfg = sh.cfg.load();
        let anomalous = {
            let mut u = self.user.lock();
            let UserState {
                name,
                main,
                models,
                anomaly,
                ..
            } = &mut *u;
            main.settle(self.mode, &delta, &self.windows, &sh.clock, unix);
            if let Some((_, m)) = self.model_idx.and_then(|i| models.get_mut(i)) {
                m.settle(self.mode, &delta, &self.windows, &sh.clock, unix);
            }
            match anomaly.observe(mono, actual, &cfg.limits.anomaly) {
                Transition::Raised { rate, baseline } => {
                    sh.metrics.anomalies.inc();
                    tracing::warn!(
                        user = &**name,
                        rate_tokens_per_minute = rate,
                        baseline_tokens_per_minute = baseline,
                        blocking = cfg.limits.anomaly.block,
                        "limits: unusual token usage"
                    );
                }
                Transition::Cleared => tracing::info!("limits: token usage back to normal"),
                Transition::None => {}
            }
            anomaly.flagged()
        };
        if let Some(p) = &self.provider {
            p.lock()
                .settle(self.mode, &delta, &self.windows, &sh.clock, unix);
        }
        SettleOutcome {
            anomalous,
            charged: actual,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.stream_slot {
            return;
        }
        let mut u = self.user.lock();
        u.main.streams = u.main.streams.saturating_sub(1);
        if let Some((_, m)) = self.model_idx.and_then(|i| u.models.get_mut(i)) {
            m.streams = m.streams.saturating_sub(1);
        }
    }
}
