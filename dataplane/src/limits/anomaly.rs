//! "Unusual token usage": one user's token rate against their own baseline.
//!
//! Time is cut into fixed windows (`anomaly.window`). The baseline is an
//! EWMA of past windows' rates (tokens per minute) with the configured
//! half-life, so it follows a user's habits over hours, not seconds. The
//! current window's rate so far is compared with it on every settle, so a
//! runaway key is flagged within the window rather than after it: anomalous
//! when `rate > multiple × baseline` and `rate > floor`. A user with no
//! completed window yet has no baseline and is not judged (a first minute
//! says nothing about habits). The flag clears when a window closes with a
//! rate back under the threshold.

use molt_config::limits::AnomalyConfig;
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct AnomalyState {
    window_start: Duration,
    tokens: u64,
    baseline: Option<f64>,
    flagged: bool,
}

/// What one observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    /// The user just became anomalous (log and count it once).
    Raised {
        rate: u64,
        baseline: u64,
    },
    Cleared,
}

// === impl AnomalyState ===

impl AnomalyState {
    pub(crate) fn flagged(&self) -> bool {
        self.flagged
    }

    /// Close every window that ended before `now`, folding it into the
    /// baseline. Returns `Cleared` if that lifted the flag.
    pub(crate) fn roll(&mut self, now: Duration, cfg: &AnomalyConfig) -> Transition {
        let window = cfg.window.max(Duration::from_secs(1));
        if self.window_start.is_zero() && self.tokens == 0 && self.baseline.is_none() {
            self.window_start = now;
            return Transition::None;
        }
        let elapsed = now.saturating_sub(self.window_start);
        let closed = elapsed.as_nanos() / window.as_nanos();
        if closed == 0 {
            return Transition::None;
        }
        let was = self.flagged;
        let per_window = 0.5f64.powf(window.as_secs_f64() / cfg.baseline_half_life.as_secs_f64());
        let alpha = 1.0 - per_window;
        let rate = per_minute(self.tokens, window);
        self.flagged = match self.baseline {
            Some(b) => closed == 1 && is_anomalous(rate, b, cfg),
            None => false,
        };
        let mut b = match self.baseline {
            Some(b) => b + alpha * (rate - b),
            None => rate,
        };
        // Windows with no traffic at all pull the baseline towards zero.
        let idle = u32::try_from(closed - 1).unwrap_or(u32::MAX);
        b *= per_window.powi(i32::try_from(idle).unwrap_or(i32::MAX));
        self.baseline = Some(b);
        self.tokens = 0;
        let advance = window.as_nanos() * closed;
        self.window_start += Duration::from_nanos(u64::try_from(advance).unwrap_or(u64::MAX));
        if was && !self.flagged {
            Transition::Cleared
        } else {
            Transition::None
        }
    }

    /// Count `tokens` just used at `now`.
    pub(crate) fn observe(
        &mut self,
        now: Duration,
        tokens: u64,
        cfg: &AnomalyConfig,
    ) -> Transition {
        let rolled = self.roll(now, cfg);
        self.tokens = self.tokens.saturating_add(tokens);
        let Some(baseline) = self.baseline else {
            return rolled;
        };
        let rate = per_minute(self.tokens, cfg.window.max(Duration::from_secs(1)));
        if !self.flagged && is_anomalous(rate, baseline, cfg) {
            self.flagged = true;
            return Transition::Raised {
                rate: rate as u64,
                baseline: baseline as u64,
            };
        }
        rolled
    }
}

fn per_minute(tokens: u64, window: Duration) -> f64 {
    tokens as f64 * 60.0 / window.as_secs_f64()
}

fn is_anomalous(rate: f64, baseline: f64, cfg: &AnomalyConfig) -> bool {
    rate > cfg.multiple * baseline && rate > cfg.floor_tokens_per_minute as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AnomalyConfig {
        AnomalyConfig::default()
    }

    #[test]
    fn spike_over_baseline_and_floor_is_flagged_then_clears() {
        let c = cfg();
        let mut a = AnomalyState::default();
        let min = |m: u64| Duration::from_secs(60 * m + 1);
        a.roll(min(0), &c);
        // Ten quiet minutes at 3,000 tokens/min build the baseline.
        for m in 0..10 {
            assert_eq!(a.observe(min(m), 3_000, &c), Transition::None);
        }
        assert!(!a.flagged());
        // 14,000/min: over the floor but under 5 × 3,000.
        assert_eq!(a.observe(min(10), 14_000, &c), Transition::None);
        // 40,000/min: over both.
        let t = a.observe(min(11), 40_000, &c);
        assert!(matches!(t, Transition::Raised { .. }), "{t:?}");
        assert!(a.flagged());
        // Back to normal: the flag lifts when the anomalous window closes
        // and the next one is quiet.
        a.observe(min(12), 2_000, &c);
        assert_eq!(a.roll(min(13), &c), Transition::Cleared);
        assert!(!a.flagged());
    }

    #[test]
    fn no_baseline_no_judgement_and_floor_protects_small_users() {
        let c = cfg();
        let mut a = AnomalyState::default();
        a.roll(Duration::from_secs(1), &c);
        assert_eq!(
            a.observe(Duration::from_secs(2), 500_000, &c),
            Transition::None
        );
        let mut small = AnomalyState::default();
        small.roll(Duration::from_secs(1), &c);
        small.observe(Duration::from_secs(2), 10, &c);
        // 100× the baseline but under the floor.
        assert_eq!(
            small.observe(Duration::from_secs(62), 1_000, &c),
            Transition::None
        );
    }
}
