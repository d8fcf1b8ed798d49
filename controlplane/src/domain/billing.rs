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
    /// What the meter counts: tokens, or whole meter units of money.
    pub value: i64,
    /// The billed picodollars of the usage rows the report claimed.
    pub amount_pico: i64,
    /// The remainder carried in from the previous report of the same
    /// user, customer and meter (a cost meter only).
    pub carried_in_pico: i64,
    /// `carried_in + amount - value × unit`: less than one unit, carried
    /// into the next report.
    pub remainder_pico: i64,
    /// The report whose remainder this one carried in.
    pub carried_from: Option<String>,
    pub status: ReportStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
}
