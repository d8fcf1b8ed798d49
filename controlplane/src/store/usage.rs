//! `usage_events`: the data planes' usage, stored once per `event_id` by
//! ingest, summed for reports, and claimed by billing: a row's
//! `meter_report` names the meter report that covers it. This file is the
//! table's only writer; billing reaches it through the claim operations
//! here ([`open_windows`](SqlStore::open_windows), [`claim`],
//! [`reconcile`](SqlStore::reconcile)), never with SQL of its own.

use super::query::{i64_of, named};
use super::{notifications, SqlStore, StoreError};
use crate::domain::{utc_day, Millis, NewNotification, ReportStatus};
use molt_config::UsageEvent;
use sqlx::AnyConnection;

/// An anomaly notifies its user at most once per hour of request time.
const HOUR_MS: i64 = 3_600_000;

/// Filters for usage queries; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub user_id: Option<String>,
    pub model: Option<String>,
    /// First day included, `YYYY-MM-DD`.
    pub from_day: Option<String>,
    /// Last day included, `YYYY-MM-DD`.
    pub to_day: Option<String>,
}

/// Token sums for one user, model and day, before pricing.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageSums {
    pub user_id: String,
    pub model: String,
    pub day: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Result of an ingest batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestCounts {
    pub accepted: u64,
    pub duplicates: u64,
}

/// A (user, window) with usage no report covers yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWindow {
    pub user_id: String,
    pub stripe_customer_id: String,
    pub window_start: Millis,
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

impl UserTokens {
    /// Count `tokens` of this user's rows under the status of the report
    /// that covers them (none: unreported).
    fn add(&mut self, status: Option<ReportStatus>, tokens: i64) {
        self.usage += tokens;
        *match status {
            Some(ReportStatus::Sent) => &mut self.sent,
            Some(ReportStatus::Pending) => &mut self.pending,
            Some(ReportStatus::Unbillable) => &mut self.unbillable,
            Some(ReportStatus::Failed) => &mut self.failed,
            None => &mut self.unreported,
        } += tokens;
    }
}

/// Claim the unreported rows of `user_id` with `from <= timestamp < to`
/// for the report `identifier`, on `conn` (the transaction that stores the
/// report). Returns their token sum, or `None` when there were none (or
/// another flush claimed them first).
pub(super) async fn claim(
    conn: &mut AnyConnection,
    identifier: &str,
    user_id: &str,
    from: Millis,
    to: Millis,
) -> Result<Option<i64>, StoreError> {
    let claimed = sqlx::query(
        "UPDATE usage_events SET meter_report = $1 \
         WHERE meter_report IS NULL AND user_id = $2 AND timestamp_ms >= $3 AND timestamp_ms < $4",
    )
    .bind(identifier)
    .bind(user_id)
    .bind(from)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(None);
    }
    let (value,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) \
         FROM usage_events WHERE meter_report = $1",
    )
    .bind(identifier)
    .fetch_one(conn)
    .await?;
    Ok(Some(value))
}

impl SqlStore {
    /// Store events, ignoring those whose `event_id` is already stored, all
    /// in one transaction, with a notification for a newly stored event
    /// flagged as an anomaly.
    pub async fn insert_usage(
        &self,
        events: &[UsageEvent],
        received_at: Millis,
    ) -> Result<IngestCounts, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut accepted = 0u64;
        for e in events {
            let done = sqlx::query(
                "INSERT INTO usage_events (event_id, request_id, timestamp_ms, day, key_id, \
                 user_id, model, provider, route, status, input_tokens, output_tokens, \
                 estimated, stream, attempts, duration_ms, upstream_ttfb_ms, outcome, \
                 received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                 $13, $14, $15, $16, $17, $18, $19) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&e.event_id)
            .bind(&e.request_id)
            .bind(i64_of(e.timestamp_ms))
            .bind(utc_day(e.timestamp_ms))
            .bind(&e.key_id)
            .bind(&e.user_id)
            .bind(&e.model)
            .bind(&e.provider)
            .bind(&e.route)
            .bind(i64::from(e.status))
            .bind(i64_of(e.input_tokens))
            .bind(i64_of(e.output_tokens))
            .bind(i64::from(e.estimated))
            .bind(i64::from(e.stream))
            .bind(i64::from(e.attempts))
            .bind(i64_of(e.duration_ms))
            .bind(e.upstream_ttfb_ms.map(i64_of))
            .bind(&e.outcome)
            .bind(received_at)
            .execute(&mut *tx)
            .await?;
            accepted += done.rows_affected();
            if e.anomaly && done.rows_affected() == 1 && !e.user_id.is_empty() {
                let hour = i64_of(e.timestamp_ms) / HOUR_MS * HOUR_MS;
                let notice = NewNotification::anomaly_flagged(&e.user_id, hour);
                notifications::enqueue(&mut tx, &notice, received_at).await?;
            }
        }
        tx.commit().await?;
        Ok(IngestCounts {
            accepted,
            duplicates: events.len() as u64 - accepted,
        })
    }

    /// Sums per user, model and day, narrowed by `f`.
    pub async fn usage_by_day(&self, f: &UsageFilter) -> Result<Vec<UsageSums>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT user_id, model, day, CAST(COUNT(*) AS BIGINT) AS requests, \
             CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
             CAST(SUM(output_tokens) AS BIGINT) AS output_tokens \
             FROM usage_events \
             WHERE ($1 = '' OR user_id = $1) AND ($2 = '' OR model = $2) \
             AND ($3 = '' OR day >= $3) AND ($4 = '' OR day <= $4) \
             GROUP BY user_id, model, day ORDER BY day, user_id, model",
        )
        .bind(f.user_id.as_deref().unwrap_or(""))
        .bind(f.model.as_deref().unwrap_or(""))
        .bind(f.from_day.as_deref().unwrap_or(""))
        .bind(f.to_day.as_deref().unwrap_or(""))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Users with a Stripe customer and unreported usage in windows of
    /// `window_ms` that ended by `closed_before`, with each window's start.
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

    /// Per user, tokens of usage rows with `from <= timestamp_ms < to`, and
    /// how they stand with Stripe (by the status of the covering report).
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
            let status = status
                .map(|s| named("meter_reports.status", &s, ReportStatus::parse))
                .transpose()?;
            match out.last_mut() {
                Some(u) if u.user_id == user_id => u.add(status, tokens),
                _ => {
                    let mut u = UserTokens {
                        user_id,
                        stripe_customer_id: customer,
                        ..UserTokens::default()
                    };
                    u.add(status, tokens);
                    out.push(u);
                }
            }
        }
        Ok(out)
    }
}
