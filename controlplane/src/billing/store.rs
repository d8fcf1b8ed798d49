//! [`BillingStore`]: what billing needs from storage, and its
//! implementation by the store. Billing's own tables are `store::billing`'s;
//! the usage rows a report covers are claimed through `store::usage`, the
//! `usage_events` table's one owner, so billing writes no SQL of its own.

use crate::domain::{MeterReport, Millis, NewNotification, ReportStatus};
use crate::store::{store_trait, StoreError};
pub use crate::store::{HandledEvent, OpenWindow, ReportInput, UserTokens};

/// Turns (seq, what was claimed) into the report to store for a window.
pub type MakeReport<'a> = dyn Fn(i64, &ReportInput) -> MeterReport + Send + Sync + 'a;

store_trait! {
    /// Storage as billing uses it: webhook deliveries, the grace period, meter
    /// reports and the usage they cover.
    pub trait BillingStore: std::fmt::Debug + Send + Sync {
        /// Whether a Stripe event id has been handled.
        async fn event_seen(&self, id: &str) -> Result<bool, StoreError>;
        /// Record a handled event; false if it was already recorded.
        async fn record_event(&self, event: &HandledEvent<'_>) -> Result<bool, StoreError>;
        /// The user whose Stripe customer id this is.
        async fn user_by_customer(&self, customer: &str) -> Result<Option<String>, StoreError>;
        /// Start the grace period (kept if already running) and write
        /// `notice` to the outbox, in one transaction.
        async fn mark_past_due(
            &self,
            user_id: &str,
            since: Millis,
            notice: &NewNotification,
        ) -> Result<(), StoreError>;
        async fn clear_past_due(&self, user_id: &str) -> Result<(), StoreError>;
        /// Users past due since before `before`.
        async fn past_due_before(&self, before: Millis) -> Result<Vec<String>, StoreError>;
        /// Users with a Stripe customer and unreported usage in windows that
        /// ended by `closed_before`, with each window's start.
        async fn open_windows(
            &self,
            window_ms: i64,
            closed_before: Millis,
            priced_only: bool,
        ) -> Result<Vec<OpenWindow>, StoreError>;
        /// In one transaction: claim the window's unreported usage rows and
        /// store the report `make` gives for their sums and the previous
        /// report's remainder. `None` when another flush claimed the rows first.
        async fn create_report(
            &self,
            window: &OpenWindow,
            window_ms: i64,
            event_name: &str,
            priced_only: bool,
            now: Millis,
            make: &MakeReport<'_>,
        ) -> Result<Option<MeterReport>, StoreError>;
        /// Reports still to send, oldest window first.
        async fn pending_reports(&self) -> Result<Vec<MeterReport>, StoreError>;
        /// Move a pending report to `status`, or keep it pending with a new
        /// attempt count and error.
        async fn finish_report(
            &self,
            identifier: &str,
            status: ReportStatus,
            attempts: i64,
            error: Option<&str>,
            now: Millis,
        ) -> Result<(), StoreError>;
        /// Per user, tokens of usage rows with `from <= timestamp < to`, and
        /// how they stand with Stripe.
        async fn reconcile(&self, from: Millis, to: Millis, event_name: &str) -> Result<Vec<UserTokens>, StoreError>;
    }
}
