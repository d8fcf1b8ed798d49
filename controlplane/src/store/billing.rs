//! Billing's tables: `stripe_events` (each webhook delivery once),
//! `billing_past_due` (the grace period of users whose payment failed) and
//! `meter_reports` (the meter events Molt sends to Stripe, each with its
//! value fixed before it is sent). The usage rows a report covers are
//! claimed through [`usage::claim`](super::usage), in the transaction that
//! stores the report.

use super::query::{record, records, Insertable};
use super::usage::{self, Claimed, OpenWindow};
use super::{notifications, SqlStore, StoreError};
use crate::domain::{MeterReport, Millis, NewNotification, ReportStatus};

/// A handled Stripe event, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct HandledEvent<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    /// The user it concerned, if any.
    pub user_id: Option<&'a str>,
    /// Stripe's `created`, Unix seconds.
    pub created: i64,
    pub received_at: Millis,
}

record!(MeterReport in "meter_reports" {
    identifier, user_id, stripe_customer_id, event_name, window_start, window_end, seq,
    value, amount_pico, carried_in_pico, remainder_pico, carried_from,
    status: named(ReportStatus::parse), attempts, last_error,
});

/// What a new report is made from: the claimed rows' sums, and the
/// remainder of the last report of the same user, customer and meter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportInput {
    pub claimed: Claimed,
    /// (identifier, remainder) of the report this one would carry from.
    pub previous: Option<(String, i64)>,
}

/// The last report of `w`'s user and customer for `event_name`: the one no
/// other report carries from (the newest, should two be).
async fn chain_tail(
    conn: &mut sqlx::AnyConnection,
    w: &OpenWindow,
    event_name: &str,
) -> Result<Option<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.identifier, r.remainder_pico FROM meter_reports r \
         WHERE r.user_id = $1 AND r.stripe_customer_id = $2 AND r.event_name = $3 \
         AND NOT EXISTS (SELECT 1 FROM meter_reports n WHERE n.carried_from = r.identifier) \
         ORDER BY r.created_at DESC, r.identifier DESC LIMIT 1",
    )
    .bind(&w.user_id)
    .bind(&w.stripe_customer_id)
    .bind(event_name)
    .fetch_optional(conn)
    .await?)
}

impl SqlStore {
    /// Whether a Stripe event id has been handled.
    pub async fn event_seen(&self, id: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT id FROM stripe_events WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Record a handled event; false if it was already recorded.
    pub async fn record_event(&self, e: &HandledEvent<'_>) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO stripe_events (id, type, user_id, created, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(e.id)
        .bind(e.kind)
        .bind(e.user_id)
        .bind(e.created)
        .bind(e.received_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Start the grace period (kept if already running) and write
    /// `notice` to the outbox, in one transaction.
    pub async fn mark_past_due(
        &self,
        user_id: &str,
        since: Millis,
        notice: &NewNotification,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO billing_past_due (user_id, since) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(since)
        .execute(&mut *tx)
        .await?;
        notifications::enqueue(&mut tx, notice, since).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn clear_past_due(&self, user_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM billing_past_due WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Users past due since before `before`.
    pub async fn past_due_before(&self, before: Millis) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT user_id FROM billing_past_due WHERE since < $1 ORDER BY user_id",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// In one transaction: claim the window's unreported usage rows (only
    /// priced ones when `priced_only`) for a new report and store the
    /// report `make` gives for (seq, their sums and the previous report's
    /// remainder), its value fixed. Returns `None` when another flush
    /// claimed the rows first. A remainder is carried once only
    /// (`carried_from` is unique): a concurrent flush carrying the same one
    /// fails its transaction, leaving its rows for the next flush.
    pub async fn create_report(
        &self,
        w: &OpenWindow,
        window_ms: i64,
        event_name: &str,
        priced_only: bool,
        now: Millis,
        make: &(dyn Fn(i64, &ReportInput) -> MeterReport + Send + Sync),
    ) -> Result<Option<MeterReport>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (seq,): (i64,) = sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM meter_reports \
             WHERE user_id = $1 AND event_name = $2 AND window_start = $3",
        )
        .bind(&w.user_id)
        .bind(event_name)
        .bind(w.window_start)
        .fetch_one(&mut *tx)
        .await?;
        // The identifier is fixed before the claim so the claim can name it.
        let identifier = make(seq, &ReportInput::default()).identifier;
        let window_end = w.window_start + window_ms;
        let claimed = usage::claim(&mut tx, &identifier, w, window_end, priced_only).await?;
        let Some(claimed) = claimed else {
            tx.rollback().await?;
            return Ok(None);
        };
        let previous = chain_tail(&mut tx, w, event_name).await?;
        let report = make(seq, &ReportInput { claimed, previous });
        const INSERT: &str = concat!(
            "INSERT INTO meter_reports (",
            columns!(),
            ", created_at, sent_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        );
        report
            .bind_columns(sqlx::query(INSERT))
            .bind(now)
            .bind((report.status == ReportStatus::Sent).then_some(now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(report))
    }

    /// Reports still to send, oldest window first.
    pub async fn pending_reports(&self) -> Result<Vec<MeterReport>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM meter_reports WHERE status = $1 ORDER BY window_start, identifier"
        );
        let rows = sqlx::query(SQL)
            .bind(ReportStatus::Pending.as_str())
            .fetch_all(&self.pool)
            .await?;
        records(&rows)
    }

    /// Move a pending report to `status` (sent, unbillable, failed) or
    /// keep it pending with a new attempt count and error.
    pub async fn finish_report(
        &self,
        identifier: &str,
        status: ReportStatus,
        attempts: i64,
        error: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE meter_reports SET status = $1, attempts = $2, last_error = $3, \
             sent_at = CASE WHEN $1 = $6 THEN $4 ELSE sent_at END \
             WHERE identifier = $5 AND status = $7",
        )
        .bind(status.as_str())
        .bind(attempts)
        .bind(error)
        .bind(now)
        .bind(identifier)
        .bind(ReportStatus::Sent.as_str())
        .bind(ReportStatus::Pending.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
