//! Meter reports: one meter event Molt sends to Stripe (or decided not
//! to), with its value fixed before it is sent. How they are made and sent
//! is `billing::meter`'s.

use super::Millis;

molt_config::text_enum! {
    /// Where a meter report stands with Stripe (`meter_reports.status`).
    pub enum ReportStatus {
        /// To send (again, after a retryable failure).
        Pending = "pending",
        /// Stripe holds it (or there was nothing to bill).
        Sent = "sent",
        /// Its window is older than Stripe accepts.
        Unbillable = "unbillable",
        /// Stripe refused it for good.
        Failed = "failed",
    }
}

/// A meter report row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterReport {
    pub identifier: String,
    pub user_id: String,
    pub stripe_customer_id: String,
    pub event_name: String,
    pub window_start: Millis,
    pub window_end: Millis,
    pub seq: i64,
    pub value: i64,
    pub status: ReportStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
}
