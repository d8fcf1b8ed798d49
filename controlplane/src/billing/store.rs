//! [`BillingStore`]: the billing tables (`stripe_events`, `billing_past_due`,
//! `meter_reports`, `usage_events.meter_report`) over the same `Any` pool and
//! migrations as [`SqlStore`]. Same portability rules as `store::sql`:
//! Unix-millisecond BIGINTs, `CAST(SUM(..) AS BIGINT)`, `$n` placeholders.

use crate::domain::Millis;
use crate::store::{SqlStore, StoreError};
use sqlx::AnyPool;

/// A meter report row: one meter event Molt sends (or decided not to).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MeterReport {
    pub identifier: String,
    pub user_id: String,
    pub stripe_customer_id: String,
    pub event_name: String,
    pub window_start: i64,
    pub window_end: i64,
    pub seq: i64,
    pub value: i64,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// A (user, window) with unreported usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWindow {
    pub user_id: String,
    pub stripe_customer_id: String,
    pub window_start: i64,
}

/// Per-user token sums for reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserTokens {
    pub user_id: String,
    pub stripe_customer_id: Option<String>,
    /// In usage rows.
    pub usage: i64,
    /// In reports Stripe has (`sent`).
    pub sent: i64,
    /// In reports not yet delivered (`pending`).
    pub pending: i64,
    /// In reports too old for Stripe (`unbillable`).
    pub unbillable: i64,
    /// In reports Stripe refused for good (`failed`).
    pub failed: i64,
    /// In usage rows no report covers yet.
    pub unreported: i64,
}

#[derive(Debug, Clone)]
pub struct BillingStore {
    pool: AnyPool,
}

impl BillingStore {
    pub fn new(store: &SqlStore) -> Self {
        Self {
            pool: store.pool().clone(),
        }
    }

    /// Whether a Stripe event id has been handled.
    pub async fn event_seen(&self, id: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT id FROM stripe_events WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Record a handled event; false if it was already recorded.
    pub async fn record_event(
        &self,
        id: &str,
        kind: &str,
        user_id: Option<&str>,
        created: i64,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO stripe_events (id, type, user_id, created, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(kind)
        .bind(user_id)
        .bind(created)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The user whose Stripe customer id this is.
    pub async fn user_by_customer(&self, customer: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM users WHERE stripe_customer_id = $1 ORDER BY id LIMIT 1",
        )
        .bind(customer)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// Start the grace period (kept if already running).
    pub async fn mark_past_due(&self, user_id: &str, since: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO billing_past_due (user_id, since) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(since)
        .execute(&self.pool)
        .await?;
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

    /// Users with a Stripe customer and unreported usage in windows that
    /// ended by `closed_before`, with each window's start.
    pub async fn open_windows(
        &self,
        window_ms: i64,
        closed_before: Millis,
    ) -> Result<Vec<OpenWindow>, StoreError> {
        // Integer division floors for the non-negative times stored here.
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT u.id, u.stripe_customer_id, CAST((e.timestamp_ms / $1) * $1 AS BIGINT) AS ws \
             FROM usage_events e JOIN users u ON u.id = e.user_id \
             WHERE e.meter_report IS NULL AND u.stripe_customer_id IS NOT NULL \
               AND e.timestamp_ms < $2 \
             GROUP BY u.id, u.stripe_customer_id, ws ORDER BY ws, u.id",
        )
        .bind(window_ms)
        .bind(closed_before - closed_before.rem_euclid(window_ms))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user_id, stripe_customer_id, window_start)| OpenWindow {
                user_id,
                stripe_customer_id,
                window_start,
            })
            .collect())
    }

    /// In one transaction: claim the window's unreported usage rows for a
    /// new report and store the report with their token sum as its fixed
    /// value. `make` turns (seq, value) into the report to store. Returns
    /// `None` when another flush claimed the rows first.
    pub async fn create_report(
        &self,
        w: &OpenWindow,
        window_ms: i64,
        event_name: &str,
        now: Millis,
        make: impl Fn(i64, i64) -> MeterReport,
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
        let placeholder = make(seq, 0);
        let claimed = sqlx::query(
            "UPDATE usage_events SET meter_report = $1 \
             WHERE meter_report IS NULL AND user_id = $2 AND timestamp_ms >= $3 AND timestamp_ms < $4",
        )
        .bind(&placeholder.identifier)
        .bind(&w.user_id)
        .bind(w.window_start)
        .bind(w.window_start + window_ms)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let (value,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) \
             FROM usage_events WHERE meter_report = $1",
        )
        .bind(&placeholder.identifier)
        .fetch_one(&mut *tx)
        .await?;
        let report = make(seq, value);
        sqlx::query(
            "INSERT INTO meter_reports (identifier, user_id, stripe_customer_id, event_name, \
             window_start, window_end, seq, value, status, attempts, last_error, created_at, sent_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&report.identifier)
        .bind(&report.user_id)
        .bind(&report.stripe_customer_id)
        .bind(&report.event_name)
        .bind(report.window_start)
        .bind(report.window_end)
        .bind(report.seq)
        .bind(report.value)
        .bind(&report.status)
        .bind(report.attempts)
        .bind(&report.last_error)
        .bind(now)
        .bind((report.status == "sent").then_some(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(report))
    }

    /// Reports still to send, oldest window first.
    pub async fn pending_reports(&self) -> Result<Vec<MeterReport>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT identifier, user_id, stripe_customer_id, event_name, window_start, window_end, \
             seq, value, status, attempts, last_error FROM meter_reports \
             WHERE status = 'pending' ORDER BY window_start, identifier",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Move a pending report to `status` (sent, unbillable, failed) or
    /// keep it pending with a new attempt count and error.
    pub async fn finish_report(
        &self,
        identifier: &str,
        status: &str,
        attempts: i64,
        error: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE meter_reports SET status = $1, attempts = $2, last_error = $3, \
             sent_at = CASE WHEN $1 = 'sent' THEN $4 ELSE sent_at END \
             WHERE identifier = $5 AND status = 'pending'",
        )
        .bind(status)
        .bind(attempts)
        .bind(error)
        .bind(now)
        .bind(identifier)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Per user, tokens of usage rows with `from <= timestamp_ms < to`, and
    /// how they stand with Stripe.
    pub async fn reconcile(&self, from: Millis, to: Millis) -> Result<Vec<UserTokens>, StoreError> {
        let rows: Vec<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
            "SELECT e.user_id, u.stripe_customer_id, r.status, \
                    CAST(SUM(e.input_tokens + e.output_tokens) AS BIGINT) \
             FROM usage_events e \
             LEFT JOIN users u ON u.id = e.user_id \
             LEFT JOIN meter_reports r ON r.identifier = e.meter_report \
             WHERE e.timestamp_ms >= $1 AND e.timestamp_ms < $2 \
             GROUP BY e.user_id, u.stripe_customer_id, r.status ORDER BY e.user_id",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<UserTokens> = Vec::new();
        for (user_id, customer, status, tokens) in rows {
            if out.last().is_none_or(|u| u.user_id != user_id) {
                out.push(UserTokens {
                    user_id: user_id.clone(),
                    stripe_customer_id: customer,
                    ..UserTokens::default()
                });
            }
            let Some(u) = out.last_mut() else { continue };
            u.usage += tokens;
            match status.as_deref() {
                Some("sent") => u.sent += tokens,
                Some("pending") => u.pending += tokens,
                Some("unbillable") => u.unbillable += tokens,
                Some(_) => u.failed += tokens,
                None => u.unreported += tokens,
            }
        }
        Ok(out)
    }

    /// Sum of report values Stripe holds for a user in the window range
    /// (the "reported" side, read from the reports, not the usage rows).
    pub async fn sent_values(
        &self,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT user_id, CAST(SUM(value) AS BIGINT) FROM meter_reports \
             WHERE status = 'sent' AND window_start >= $1 AND window_start < $2 \
             GROUP BY user_id ORDER BY user_id",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }
}
