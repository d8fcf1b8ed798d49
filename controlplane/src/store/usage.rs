//! `usage_events`: the data planes' usage, stored once per `event_id` by
//! ingest with its token classes and its cost fixed at ingest (from the
//! `model_prices` version in force at the event's time), summed for
//! reports and budgets, and claimed by billing: a row's `meter_report`
//! names the meter report that covers it. This file is the
//! table's only writer; billing reaches it through the claim operations
//! here ([`open_windows`](SqlStore::open_windows), [`claim`],
//! [`reconcile`](SqlStore::reconcile)), never with SQL of its own.

use super::prices;
use super::query::{i64_of, named};
use super::{notifications, SqlStore, StoreError};
use crate::domain::{utc_day, Millis, NewNotification, PriceVersion, ReportStatus};
use molt_config::money::{Cost, Picodollars, TokenClass};
use molt_config::UsageEvent;
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeSet, HashMap};

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

/// Sums for one user, model and day: tokens and stored costs per class
/// (in [`TokenClass::ALL`] order), all of integer picodollars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSums {
    pub user_id: String,
    pub model: String,
    pub day: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub tokens: [i64; 8],
    pub cost: [i64; 8],
    /// Σ `cost_pico` of the priced events.
    pub cost_pico: i64,
    /// Σ `billed_pico` (cost after the plans' markups).
    pub billed_pico: i64,
    /// Events whose model had no price in force at their time.
    pub unpriced_events: i64,
}

/// What an event costs, fixed at ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCost {
    /// The `model_prices` row used.
    pub price_version: String,
    pub markup_bp: i64,
    pub cost: Cost,
    /// The cost with the markup added.
    pub billed: Picodollars,
}

/// How ingest prices an event from the versions of its model's price and
/// its user's plan markup (the usage service's rule); `None`: unpriced.
pub type PriceEvent = fn(&UsageEvent, &[PriceVersion], i64) -> Option<EventCost>;

/// Result of an ingest batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestCounts {
    pub accepted: u64,
    pub duplicates: u64,
    /// The model of each accepted event that had no price.
    pub unpriced: Vec<String>,
    /// (user, `YYYY-MM`) of the accepted priced events, deduplicated.
    pub spenders: Vec<(String, String)>,
}

/// A (user, window) with usage no report covers yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWindow {
    pub user_id: String,
    pub stripe_customer_id: String,
    pub window_start: Millis,
}

/// Per-user sums for reconciliation: tokens and billed picodollars of the
/// usage rows, by the status of the report that covers them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserTokens {
    pub user_id: String,
    pub stripe_customer_id: Option<String>,
    pub tokens: ByStatus,
    /// The rows' billed amounts, in picodollars.
    pub money: ByStatus,
    /// Rows whose model had no price (never in a cost meter's reports).
    pub unpriced_events: i64,
    /// Σ `value` of the sent reports of the meter that cover these rows.
    pub reported_units: i64,
}

/// A sum over usage rows, split by the status of their report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByStatus {
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

impl ByStatus {
    /// Count `n` of rows under the status of the report that covers them
    /// (none: unreported).
    fn add(&mut self, status: Option<ReportStatus>, n: i64) {
        self.usage += n;
        *match status {
            Some(ReportStatus::Sent) => &mut self.sent,
            Some(ReportStatus::Pending) => &mut self.pending,
            Some(ReportStatus::Unbillable) => &mut self.unbillable,
            Some(ReportStatus::Failed) => &mut self.failed,
            None => &mut self.unreported,
        } += n;
    }
}

/// What a report claimed: its rows' tokens and billed amount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claimed {
    pub tokens: i64,
    /// Σ `billed_pico` (unpriced rows count 0).
    pub amount_pico: i64,
}

/// Claim the unreported rows of `user_id` with `from <= timestamp < to`
/// (only priced ones when `priced_only`) for the report `identifier`, on
/// `conn` (the transaction that stores the report). Returns their sums, or
/// `None` when there were none (or another flush claimed them first).
pub(super) async fn claim(
    conn: &mut AnyConnection,
    identifier: &str,
    w: &OpenWindow,
    to: Millis,
    priced_only: bool,
) -> Result<Option<Claimed>, StoreError> {
    let claimed = sqlx::query(
        "UPDATE usage_events SET meter_report = $1 \
         WHERE meter_report IS NULL AND user_id = $2 AND timestamp_ms >= $3 AND timestamp_ms < $4 \
         AND ($5 = 0 OR cost_pico IS NOT NULL)",
    )
    .bind(identifier)
    .bind(&w.user_id)
    .bind(w.window_start)
    .bind(to)
    .bind(i64::from(priced_only))
    .execute(&mut *conn)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(None);
    }
    let (tokens, amount_pico): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT), \
                CAST(COALESCE(SUM(COALESCE(billed_pico, 0)), 0) AS BIGINT) \
         FROM usage_events WHERE meter_report = $1",
    )
    .bind(identifier)
    .fetch_one(conn)
    .await?;
    Ok(Some(Claimed {
        tokens,
        amount_pico,
    }))
}

/// (user, customer, report status, tokens, billed picodollars, unpriced
/// rows) of one reconciliation group.
type StatusSums = (String, Option<String>, Option<String>, i64, i64, i64);

/// The markup of `user_id`'s plan (0 without a plan, or for an unknown
/// user).
async fn markup_of(conn: &mut AnyConnection, user_id: &str) -> Result<i64, StoreError> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT CAST(COALESCE(p.markup_bp, 0) AS BIGINT) FROM users u \
         LEFT JOIN plans p ON p.name = u.plan WHERE u.id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map_or(0, |r| r.0))
}

/// The cost columns of `usage_events`, in [`TokenClass::ALL`] order.
macro_rules! cost_columns {
    () => {
        "cost_input, cost_cache_read_input, cost_cache_write_5m_input, cost_cache_write_1h_input, \
         cost_audio_input, cost_output, cost_reasoning_output, cost_audio_output"
    };
}

impl SqlStore {
    /// Store events, ignoring those whose `event_id` is already stored, all
    /// in one transaction, each with the cost `price` gives it from the
    /// versions of its model's price read in that transaction, and with a
    /// notification for a newly stored event flagged as an anomaly.
    pub async fn insert_usage(
        &self,
        events: &[UsageEvent],
        received_at: Millis,
        price: PriceEvent,
    ) -> Result<IngestCounts, StoreError> {
        const SQL: &str = concat!(
            "INSERT INTO usage_events (event_id, request_id, timestamp_ms, day, key_id, \
             user_id, model, provider, route, status, input_tokens, output_tokens, \
             estimated, stream, attempts, duration_ms, upstream_ttfb_ms, outcome, \
             received_at, cache_read_input, cache_write_5m_input, cache_write_1h_input, \
             audio_input, reasoning_output, audio_output, price_version, markup_bp, \
             cost_pico, billed_pico, ",
            cost_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, \
             $33, $34, $35, $36, $37) ON CONFLICT (event_id) DO NOTHING"
        );
        let mut tx = self.pool.begin().await?;
        let mut versions: HashMap<&str, Vec<PriceVersion>> = HashMap::new();
        let mut markups: HashMap<&str, i64> = HashMap::new();
        let mut counts = IngestCounts::default();
        let mut spenders = BTreeSet::new();
        for e in events {
            if !versions.contains_key(e.model.as_str()) {
                let v = prices::versions(&mut tx, &e.model).await?;
                versions.insert(&e.model, v);
            }
            if !markups.contains_key(e.user_id.as_str()) {
                let m = markup_of(&mut tx, &e.user_id).await?;
                markups.insert(&e.user_id, m);
            }
            let markup = markups.get(e.user_id.as_str()).copied().unwrap_or(0);
            let cost = price(
                e,
                versions.get(e.model.as_str()).map_or(&[], Vec::as_slice),
                markup,
            );
            let c = &e.classes;
            let day = utc_day(e.timestamp_ms);
            let mut query = sqlx::query(SQL)
                .bind(&e.event_id)
                .bind(&e.request_id)
                .bind(i64_of(e.timestamp_ms))
                .bind(&day)
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
                .bind(received_at);
            for n in [
                c.cache_read_input,
                c.cache_write_5m_input,
                c.cache_write_1h_input,
                c.audio_input,
                c.reasoning_output,
                c.audio_output,
            ] {
                query = query.bind(i64_of(n));
            }
            query = query
                .bind(cost.as_ref().map(|c| c.price_version.clone()))
                .bind(cost.as_ref().map_or(0, |c| c.markup_bp))
                .bind(cost.as_ref().map(|c| i64_of(c.cost.total().0)))
                .bind(cost.as_ref().map(|c| i64_of(c.billed.0)));
            for class in TokenClass::ALL {
                query = query.bind(cost.as_ref().map(|c| i64_of(c.cost.of(class).0)));
            }
            if query.execute(&mut *tx).await?.rows_affected() == 0 {
                continue;
            }
            counts.accepted += 1;
            if e.anomaly && !e.user_id.is_empty() {
                let hour = i64_of(e.timestamp_ms) / HOUR_MS * HOUR_MS;
                let notice = NewNotification::anomaly_flagged(&e.user_id, hour);
                notifications::enqueue(&mut tx, &notice, received_at).await?;
            }
            match cost {
                Some(_) => {
                    spenders.insert((e.user_id.clone(), day[..7].to_owned()));
                }
                None => counts.unpriced.push(e.model.clone()),
            }
        }
        tx.commit().await?;
        counts.duplicates = events.len() as u64 - counts.accepted;
        counts.spenders = spenders.into_iter().collect();
        Ok(counts)
    }

    /// Sums per user, model and day, narrowed by `f`.
    pub async fn usage_by_day(&self, f: &UsageFilter) -> Result<Vec<UsageSums>, StoreError> {
        // Plain input and output are what the classes leave of the totals
        // (never negative), as `ClassTokens::split` counts them.
        const SQL: &str =
            "SELECT user_id, model, day, CAST(COUNT(*) AS BIGINT), \
             CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
             CAST(SUM(CASE WHEN input_tokens > cache_read_input + cache_write_5m_input \
                 + cache_write_1h_input + audio_input THEN input_tokens - cache_read_input \
                 - cache_write_5m_input - cache_write_1h_input - audio_input ELSE 0 END) AS BIGINT), \
             CAST(SUM(cache_read_input) AS BIGINT), CAST(SUM(cache_write_5m_input) AS BIGINT), \
             CAST(SUM(cache_write_1h_input) AS BIGINT), CAST(SUM(audio_input) AS BIGINT), \
             CAST(SUM(CASE WHEN output_tokens > reasoning_output + audio_output \
                 THEN output_tokens - reasoning_output - audio_output ELSE 0 END) AS BIGINT), \
             CAST(SUM(reasoning_output) AS BIGINT), CAST(SUM(audio_output) AS BIGINT), \
             CAST(COALESCE(SUM(cost_input), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_cache_read_input), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_cache_write_5m_input), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_cache_write_1h_input), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_audio_input), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_output), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_reasoning_output), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_audio_output), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_pico), 0) AS BIGINT), \
             CAST(COALESCE(SUM(billed_pico), 0) AS BIGINT), \
             CAST(SUM(CASE WHEN cost_pico IS NULL THEN 1 ELSE 0 END) AS BIGINT) \
             FROM usage_events \
             WHERE ($1 = '' OR user_id = $1) AND ($2 = '' OR model = $2) \
             AND ($3 = '' OR day >= $3) AND ($4 = '' OR day <= $4) \
             GROUP BY user_id, model, day ORDER BY day, user_id, model"
        ;
        let rows = sqlx::query(SQL)
            .bind(f.user_id.as_deref().unwrap_or(""))
            .bind(f.model.as_deref().unwrap_or(""))
            .bind(f.from_day.as_deref().unwrap_or(""))
            .bind(f.to_day.as_deref().unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let mut tokens = [0i64; 8];
                let mut cost = [0i64; 8];
                for i in 0..8 {
                    tokens[i] = r.try_get(6 + i)?;
                    cost[i] = r.try_get(14 + i)?;
                }
                Ok(UsageSums {
                    user_id: r.try_get(0)?,
                    model: r.try_get(1)?,
                    day: r.try_get(2)?,
                    requests: r.try_get(3)?,
                    input_tokens: r.try_get(4)?,
                    output_tokens: r.try_get(5)?,
                    tokens,
                    cost,
                    cost_pico: r.try_get(22)?,
                    billed_pico: r.try_get(23)?,
                    unpriced_events: r.try_get(24)?,
                })
            })
            .collect()
    }

    /// A user's stored cost (before markup) over the days `from_day` to
    /// `to_day` (inclusive, `YYYY-MM-DD`), and how many of their events
    /// there are unpriced.
    pub async fn user_spend(
        &self,
        user_id: &str,
        from_day: &str,
        to_day: &str,
    ) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(cost_pico), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN cost_pico IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM usage_events WHERE user_id = $1 AND day >= $2 AND day <= $3",
        )
        .bind(user_id)
        .bind(from_day)
        .bind(to_day)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Users with a Stripe customer and unreported usage (priced usage
    /// only, when `priced_only`) in windows of `window_ms` that ended by
    /// `closed_before`, with each window's start.
    pub async fn open_windows(
        &self,
        window_ms: i64,
        closed_before: Millis,
        priced_only: bool,
    ) -> Result<Vec<OpenWindow>, StoreError> {
        // Integer division floors for the non-negative times stored here.
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT u.id, u.stripe_customer_id, CAST((e.timestamp_ms / $1) * $1 AS BIGINT) AS ws \
             FROM usage_events e JOIN users u ON u.id = e.user_id \
             WHERE e.meter_report IS NULL AND u.stripe_customer_id IS NOT NULL \
               AND e.timestamp_ms < $2 AND ($3 = 0 OR e.cost_pico IS NOT NULL) \
             GROUP BY u.id, u.stripe_customer_id, ws ORDER BY ws, u.id",
        )
        .bind(window_ms)
        .bind(closed_before - closed_before.rem_euclid(window_ms))
        .bind(i64::from(priced_only))
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

    /// Per user, tokens and billed amounts of usage rows with `from <=
    /// timestamp_ms < to`, how they stand with Stripe (by the status of the
    /// covering report), and the units the sent reports of `event_name`
    /// covering them carried.
    pub async fn reconcile(
        &self,
        from: Millis,
        to: Millis,
        event_name: &str,
    ) -> Result<Vec<UserTokens>, StoreError> {
        let rows: Vec<StatusSums> = sqlx::query_as(
            "SELECT e.user_id, u.stripe_customer_id, r.status, \
                    CAST(SUM(e.input_tokens + e.output_tokens) AS BIGINT), \
                    CAST(COALESCE(SUM(e.billed_pico), 0) AS BIGINT), \
                    CAST(SUM(CASE WHEN e.cost_pico IS NULL THEN 1 ELSE 0 END) AS BIGINT) \
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
        let units: Vec<(String, i64)> = sqlx::query_as(
            "SELECT r.user_id, CAST(SUM(r.value) AS BIGINT) FROM meter_reports r \
             WHERE r.status = $3 AND r.event_name = $4 AND r.identifier IN ( \
                SELECT e.meter_report FROM usage_events e \
                WHERE e.timestamp_ms >= $1 AND e.timestamp_ms < $2 AND e.meter_report IS NOT NULL) \
             GROUP BY r.user_id",
        )
        .bind(from)
        .bind(to)
        .bind(ReportStatus::Sent.as_str())
        .bind(event_name)
        .fetch_all(&self.pool)
        .await?;
        let units: HashMap<String, i64> = units.into_iter().collect();
        let mut out: Vec<UserTokens> = Vec::new();
        for (user_id, customer, status, tokens, pico, unpriced) in rows {
            let status = status
                .map(|s| named("meter_reports.status", &s, ReportStatus::parse))
                .transpose()?;
            if out.last().is_none_or(|u| u.user_id != user_id) {
                out.push(UserTokens {
                    reported_units: units.get(&user_id).copied().unwrap_or(0),
                    user_id,
                    stripe_customer_id: customer,
                    ..UserTokens::default()
                });
            }
            if let Some(u) = out.last_mut() {
                u.tokens.add(status, tokens);
                u.money.add(status, pico);
                u.unpriced_events += unpriced;
            }
        }
        Ok(out)
    }
}
