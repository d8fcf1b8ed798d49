//! The meter flush: usage rows → one Stripe Billing Meter Event per user,
//! customer and closed time window, exactly once.
//!
//! Two phases, each safe to crash in:
//! 1. **prepare** ([`Flusher::prepare`]): for each (user, window) with
//!    unreported usage in a window that has closed (plus `settle` for late
//!    events), one transaction claims the rows (`usage_events.meter_report`)
//!    and stores a `meter_reports` row with its **fixed** value and
//!    deterministic identifier, status `pending` (or `unbillable` when the
//!    window is older than Stripe accepts). A crash before commit leaves
//!    nothing; after, the report is there to send.
//! 2. **send** ([`Flusher::send_pending`]): every `pending` report is sent
//!    with its identifier and an `Idempotency-Key` derived from it, then
//!    marked `sent`. A crash before marking re-sends the same identifier and
//!    value next time; Stripe answers with the saved response (idempotency)
//!    or "an event already exists with identifier" (uniqueness), both of
//!    which count as delivered. 429/5xx/transport errors are retried with
//!    backoff, then left pending for the next flush; other refusals are
//!    `failed` (kept, and visible in reconciliation).
//!
//! Usage that arrives after its window was reported gets a new report for
//! the same window with the next `seq` (so a new identifier): late tokens
//! are billed, never folded into a value Stripe may already hold.
//!
//! What a report counts is the [`Meter`]: tokens, or money (the default):
//! the billed cost of the rows, fixed at ingest, in whole meter units
//! (`meter_unit`, e.g. $0.00001). The part of a sum below one unit is not
//! rounded away: it is the report's `remainder_pico`, carried into the
//! next report of the same user, customer and meter, so that for every
//! chain of reports Σ value × unit + the last remainder = Σ billed cost,
//! to the picodollar.

use super::metrics::BillingMetrics;
use super::store::{BillingStore, OpenWindow, ReportInput};
use super::BillingError;
use crate::domain::{now_ms, MeterReport, Millis, ReportStatus};
use molt_config::money::Picodollars;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Stripe accepts meter event timestamps up to 35 days old; a window whose
/// last second is older than this (minus a margin for the time spent
/// sending) is unbillable.
pub(crate) const STRIPE_MAX_AGE_MS: i64 = 35 * 24 * 3600 * 1000;
const AGE_MARGIN_MS: i64 = 3600 * 1000;

/// One meter event, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterEvent {
    pub event_name: String,
    pub stripe_customer_id: String,
    /// Whole tokens, or whole meter units of money.
    pub value: i64,
    /// Unix seconds, inside the window.
    pub timestamp: i64,
    /// Deterministic per user, customer, window, meter and seq.
    pub identifier: String,
    /// Derived from `identifier`.
    pub idempotency_key: String,
}

/// Why a meter event was not (known to be) delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Stripe already holds an event with this identifier: delivered.
    #[error("an event already exists with this identifier")]
    AlreadyExists,
    /// Worth retrying with the same Idempotency-Key (429, transport
    /// trouble, unknown outcome: a replay tells what happened).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Worth retrying, but Stripe answered (5xx) and saved that answer
    /// under the Idempotency-Key, so the retry needs a new key (the
    /// identifier still dedupes).
    #[error("server error: {0}")]
    ServerError(String),
    /// Stripe refused it for good (other 4xx).
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Where meter events go: Stripe ([`super::stripe_sink::StripeMeterSink`]) or
/// anything that answers like it. The control plane owns this seam so the
/// flush never depends on a Stripe crate's types.
#[async_trait::async_trait]
pub trait MeterSink: std::fmt::Debug + Send + Sync {
    async fn send(&self, event: &MeterEvent) -> Result<(), SendError>;
}

/// What the Stripe meter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    /// Input plus output tokens (every model's alike).
    Tokens,
    /// The billed cost of the usage, in whole `unit`s (e.g. $0.00001, a
    /// thousandth of a cent); remainders are carried, never rounded away.
    Cost { unit: Picodollars },
}

impl Meter {
    /// The default unit of a cost meter: $0.00001.
    pub const DEFAULT_UNIT: Picodollars = Picodollars(10_000_000);

    /// The default meter event name for this kind of meter.
    pub fn default_event_name(self) -> &'static str {
        match self {
            Meter::Tokens => "ai_tokens",
            Meter::Cost { .. } => "ai_cost",
        }
    }
}

/// Knobs of the flush.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    pub meter: Meter,
    pub event_name: String,
    /// Width of a billing window (default 1 h).
    pub window: Duration,
    /// How long after a window ends before it is reported, for late usage.
    pub settle: Duration,
    /// Attempts per report within one flush before leaving it pending.
    pub max_attempts: u32,
    /// First retry delay, doubled each time.
    pub backoff: Duration,
}

impl Default for FlushSettings {
    fn default() -> Self {
        let meter = Meter::Cost {
            unit: Meter::DEFAULT_UNIT,
        };
        Self {
            meter,
            event_name: meter.default_event_name().to_owned(),
            window: Duration::from_secs(3600),
            settle: Duration::from_secs(300),
            max_attempts: 5,
            backoff: Duration::from_millis(200),
        }
    }
}

/// What one flush did (also the body of `POST /api/v1/billing/flush`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct FlushOutcome {
    /// Reports made from closed windows' unreported usage.
    pub prepared: u64,
    /// Reports Stripe confirmed (including ones it already held).
    pub sent: u64,
    /// Reports still pending after retries (sent again next flush).
    pub left_pending: u64,
    /// Reports Stripe refused for good.
    pub failed: u64,
    /// Reports too old for Stripe's 35-day window.
    pub unbillable: u64,
}

/// Runs flushes; one at a time per control plane (a mutex), and the
/// conditional claims make concurrent flushes from another process safe.
#[derive(Debug)]
pub struct Flusher {
    store: Arc<dyn BillingStore>,
    sink: Arc<dyn MeterSink>,
    settings: FlushSettings,
    metrics: BillingMetrics,
    running: tokio::sync::Mutex<()>,
}

/// `mtr_` + the first 40 hex digits of SHA-256 over the report's key: the
/// same inputs always give the same identifier (under Stripe's 100 chars).
pub fn identifier(user: &str, customer: &str, meter: &str, window_start: i64, seq: i64) -> String {
    let mut h = Sha256::new();
    for part in [
        user,
        customer,
        meter,
        &window_start.to_string(),
        &seq.to_string(),
    ] {
        h.update(part.as_bytes());
        // A separator no part contains keeps ("ab","c") apart from ("a","bc").
        h.update([0u8]);
    }
    let hex = hex::encode(h.finalize());
    format!("molt_{}", &hex[..40])
}

impl Flusher {
    pub fn new(
        store: Arc<dyn BillingStore>,
        sink: Arc<dyn MeterSink>,
        settings: FlushSettings,
        metrics: BillingMetrics,
    ) -> Self {
        Self {
            store,
            sink,
            settings,
            metrics,
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn settings(&self) -> &FlushSettings {
        &self.settings
    }

    fn window_ms(&self) -> i64 {
        i64::try_from(self.settings.window.as_millis())
            .unwrap_or(i64::MAX)
            .max(1000)
    }

    /// Both phases.
    pub async fn flush(&self) -> Result<FlushOutcome, BillingError> {
        let _one = self.running.lock().await;
        let timer = self.metrics.flush_seconds.start_timer();
        let prepared = self.prepare_locked(now_ms()).await?;
        let mut out = self.send_locked().await?;
        out.prepared = prepared.0;
        out.unbillable += prepared.1;
        timer.observe_duration();
        if out.left_pending == 0 {
            self.metrics.last_success.set(now_ms() / 1000);
        }
        Ok(out)
    }

    /// Phase 1 only (tests stop here to simulate a crash before sending).
    pub async fn prepare(&self, now: Millis) -> Result<u64, BillingError> {
        let _one = self.running.lock().await;
        Ok(self.prepare_locked(now).await?.0)
    }

    /// Phase 2 only.
    pub async fn send_pending(&self) -> Result<FlushOutcome, BillingError> {
        let _one = self.running.lock().await;
        self.send_locked().await
    }

    /// (reports made, of which unbillable)
    async fn prepare_locked(&self, now: Millis) -> Result<(u64, u64), BillingError> {
        let window_ms = self.window_ms();
        let settle = i64::try_from(self.settings.settle.as_millis()).unwrap_or(i64::MAX);
        // A cost meter reports only priced usage: an unpriced event stays
        // unreported (and visible in reconciliation) rather than billed at 0.
        let priced_only = matches!(self.settings.meter, Meter::Cost { .. });
        let windows = self
            .store
            .open_windows(window_ms, now.saturating_sub(settle), priced_only)
            .await?;
        let (mut made, mut unbillable) = (0, 0);
        for w in windows {
            let make = |seq: i64, input: &ReportInput| self.report_for(&w, seq, input, now);
            if let Some(r) = self
                .store
                .create_report(
                    &w,
                    window_ms,
                    &self.settings.event_name,
                    priced_only,
                    now,
                    &make,
                )
                .await?
            {
                made += 1;
                if r.status == ReportStatus::Unbillable {
                    unbillable += 1;
                    self.metrics
                        .unbillable_tokens
                        .inc_by(r.value.unsigned_abs());
                    tracing::warn!(
                        identifier = %r.identifier, tokens = r.value,
                        "usage window older than Stripe accepts: marked unbillable"
                    );
                }
            }
        }
        Ok((made, unbillable))
    }

    async fn send_locked(&self) -> Result<FlushOutcome, BillingError> {
        let mut out = FlushOutcome::default();
        for r in self.store.pending_reports().await? {
            let now = now_ms();
            if too_old(r.window_end, now) {
                self.store
                    .finish_report(
                        &r.identifier,
                        ReportStatus::Unbillable,
                        r.attempts,
                        Some("too old for Stripe"),
                        now,
                    )
                    .await?;
                self.metrics
                    .unbillable_tokens
                    .inc_by(r.value.unsigned_abs());
                out.unbillable += 1;
                continue;
            }
            let mut event = MeterEvent {
                event_name: r.event_name.clone(),
                stripe_customer_id: r.stripe_customer_id.clone(),
                value: r.value,
                // The window's last second: inside the window, and the
                // latest time Stripe's 35-day limit is measured against.
                timestamp: (r.window_end - 1000) / 1000,
                idempotency_key: idempotency_key(&r.identifier, r.attempts),
                identifier: r.identifier.clone(),
            };
            let mut attempts = r.attempts;
            let mut delay = self.settings.backoff;
            let result = loop {
                attempts += 1;
                match self.sink.send(&event).await {
                    Ok(()) => break Ok(()),
                    Err(SendError::AlreadyExists) => break Ok(()),
                    Err(e @ (SendError::Retryable(_) | SendError::ServerError(_)))
                        if attempts - r.attempts < i64::from(self.settings.max_attempts) =>
                    {
                        if matches!(e, SendError::ServerError(_)) {
                            // Stripe saved its 5xx under the key: a replay
                            // would repeat it. A new key; same identifier.
                            event.idempotency_key = idempotency_key(&r.identifier, attempts);
                        }
                        self.metrics.events.with_label_values(&["retried"]).inc();
                        tracing::info!(identifier = %r.identifier, error = %e, "meter event retry");
                        tokio::time::sleep(delay).await;
                        delay = delay.saturating_mul(2).min(Duration::from_secs(30));
                    }
                    Err(e) => break Err(e),
                }
            };
            let now = now_ms();
            match result {
                Ok(()) => {
                    self.store
                        .finish_report(&r.identifier, ReportStatus::Sent, attempts, None, now)
                        .await?;
                    self.metrics.events.with_label_values(&["sent"]).inc();
                    match self.settings.meter {
                        Meter::Tokens => {
                            self.metrics.tokens_reported.inc_by(r.value.unsigned_abs())
                        }
                        Meter::Cost { unit } => self
                            .metrics
                            .pico_reported
                            .inc_by(r.value.unsigned_abs().saturating_mul(unit.0)),
                    }
                    out.sent += 1;
                }
                Err(SendError::Rejected(e)) => {
                    self.store
                        .finish_report(&r.identifier, ReportStatus::Failed, attempts, Some(&e), now)
                        .await?;
                    self.metrics.events.with_label_values(&["failed"]).inc();
                    tracing::error!(identifier = %r.identifier, error = %e, "meter event rejected");
                    out.failed += 1;
                }
                Err(e) => {
                    self.store
                        .finish_report(
                            &r.identifier,
                            ReportStatus::Pending,
                            attempts,
                            Some(&e.to_string()),
                            now,
                        )
                        .await?;
                    self.metrics.events.with_label_values(&["deferred"]).inc();
                    tracing::warn!(identifier = %r.identifier, error = %e, "meter event left pending");
                    out.left_pending += 1;
                }
            }
        }
        Ok(out)
    }
}

/// The Idempotency-Key of a report from `epoch` on: derived from the
/// identifier, and from the attempt count at which it was introduced, so a
/// later flush (or a retry after a saved 5xx) uses a fresh key while Stripe's
/// identifier uniqueness still stops a duplicate.
fn idempotency_key(identifier: &str, epoch: i64) -> String {
    format!("{identifier}-{epoch}")
}

fn too_old(window_end: i64, now: Millis) -> bool {
    window_end - 1000 < now - STRIPE_MAX_AGE_MS + AGE_MARGIN_MS
}

impl Flusher {
    /// The report for window `w` with sequence number `seq`, made from
    /// what its transaction claimed (and, for a cost meter, the previous
    /// report's remainder).
    fn report_for(
        &self,
        w: &OpenWindow,
        seq: i64,
        input: &ReportInput,
        now: Millis,
    ) -> MeterReport {
        let window_ms = self.window_ms();
        let meter = &self.settings.event_name;
        let window_end = w.window_start + window_ms;
        let amount = input.claimed.amount_pico;
        let (value, carried_in, remainder, carried_from) = match self.settings.meter {
            Meter::Tokens => (input.claimed.tokens, 0, 0, None),
            Meter::Cost { unit } => {
                let unit = i64::try_from(unit.0).unwrap_or(i64::MAX).max(1);
                let (from, carried_in) = input
                    .previous
                    .clone()
                    .map_or((None, 0), |(id, r)| (Some(id), r));
                let total = carried_in.saturating_add(amount);
                (total / unit, carried_in, total % unit, from)
            }
        };
        // Nothing to bill is recorded as sent without calling Stripe.
        let status = if value == 0 {
            ReportStatus::Sent
        } else if too_old(window_end, now) {
            ReportStatus::Unbillable
        } else {
            ReportStatus::Pending
        };
        MeterReport {
            identifier: identifier(
                &w.user_id,
                &w.stripe_customer_id,
                meter,
                w.window_start,
                seq,
            ),
            user_id: w.user_id.clone(),
            stripe_customer_id: w.stripe_customer_id.clone(),
            event_name: meter.clone(),
            window_start: w.window_start,
            window_end,
            seq,
            value,
            amount_pico: amount,
            carried_in_pico: carried_in,
            remainder_pico: remainder,
            carried_from,
            status,
            attempts: 0,
            last_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_deterministic_and_distinct() {
        let a = identifier("usr_1", "cus_1", "ai_tokens", 3_600_000, 0);
        assert_eq!(a, identifier("usr_1", "cus_1", "ai_tokens", 3_600_000, 0));
        assert_ne!(a, identifier("usr_1", "cus_1", "ai_tokens", 3_600_000, 1));
        assert_ne!(a, identifier("usr_1", "cus_1", "ai_tokens", 7_200_000, 0));
        assert_ne!(a, identifier("usr_1", "cus_2", "ai_tokens", 3_600_000, 0));
        assert!(a.len() <= 100);
    }

    #[test]
    fn windows_older_than_35_days_are_unbillable() {
        let now = 100 * 24 * 3600 * 1000;
        assert!(too_old(now - 36 * 24 * 3600 * 1000, now));
        assert!(!too_old(now - 3600 * 1000, now));
    }
}
