//! Usage: idempotent ingest of the data planes' events (the contract's
//! [`UsageBatch`], at most [`MAX_BATCH_EVENTS`] of them), each with its
//! cost fixed in the ingest transaction ([`super::prices::price_event`]),
//! and per-user, per-model, per-day sums of the stored costs by token
//! class. After each batch, the dollar budgets of its users are checked
//! ([`super::budget`]).

use super::prices::price_event;
use super::{Operator, Service, ServiceError};
use crate::domain::{now_ms, Millis};
use crate::store::{store_trait, IngestCounts, PriceEvent, StoreError, UsageFilter, UsageSums};
use molt_config::contract::{IngestAnswer, UsageBatch, MAX_BATCH_EVENTS, MAX_EVENT_ID_BYTES};
use molt_config::money::{usd_text, TokenClass};
use molt_config::UsageEvent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// Query of `GET /api/v1/usage`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub user_id: Option<String>,
    pub model: Option<String>,
    /// First day included, `YYYY-MM-DD` (UTC).
    pub from: Option<String>,
    /// Last day included, `YYYY-MM-DD` (UTC).
    pub to: Option<String>,
}

/// Sums of usage: tokens and their stored cost, per class. Money is exact
/// decimal dollars (strings), summed from the integer costs fixed at ingest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UsageTotals {
    pub requests: i64,
    /// Every input token, all classes.
    pub input_tokens: i64,
    /// Every output token, all classes.
    pub output_tokens: i64,
    /// Tokens by class (`input`, `cache_read_input`, `cache_write_5m_input`,
    /// `cache_write_1h_input`, `audio_input`, `output`, `reasoning_output`,
    /// `audio_output`); input classes add up to `input_tokens`, output
    /// classes to `output_tokens`.
    pub tokens_by_class: BTreeMap<String, i64>,
    /// Cost at the models' prices in force at each event's time, USD.
    pub cost_usd: String,
    /// `cost_usd` by class.
    pub cost_by_class: BTreeMap<String, String>,
    /// What users are billed: the cost plus their plans' markups, USD.
    pub billed_usd: String,
    /// Events whose model had no price at their time: in the token sums,
    /// not in the costs (never costed at 0 silently).
    pub unpriced_events: i64,
}

/// One user, model and UTC day.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    pub user_id: String,
    pub model: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// One model over the whole report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelUsage {
    pub model: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub rows: Vec<UsageRow>,
    /// By model, over every row.
    pub models: Vec<ModelUsage>,
    pub totals: UsageTotals,
}

/// Exact sums (u128 picodollars) behind [`UsageTotals`].
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    tokens: [i64; 8],
    cost: [u128; 8],
    cost_total: u128,
    billed: u128,
    unpriced: i64,
}

impl Acc {
    fn add(&mut self, s: &UsageSums) {
        // Sums of non-negative BIGINT columns.
        let pico = |n: i64| u128::try_from(n).unwrap_or(0);
        self.requests += s.requests;
        self.input_tokens += s.input_tokens;
        self.output_tokens += s.output_tokens;
        for i in 0..8 {
            self.tokens[i] += s.tokens[i];
            self.cost[i] += pico(s.cost[i]);
        }
        self.cost_total += pico(s.cost_pico);
        self.billed += pico(s.billed_pico);
        self.unpriced += s.unpriced_events;
    }

    fn totals(&self) -> UsageTotals {
        UsageTotals {
            requests: self.requests,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            tokens_by_class: TokenClass::ALL
                .iter()
                .map(|c| (c.as_str().to_owned(), self.tokens[*c as usize]))
                .collect(),
            cost_usd: usd_text(self.cost_total),
            cost_by_class: TokenClass::ALL
                .iter()
                .map(|c| (c.as_str().to_owned(), usd_text(self.cost[*c as usize])))
                .collect(),
            billed_usd: usd_text(self.billed),
            unpriced_events: self.unpriced,
        }
    }
}

fn check_day(field: &str, day: Option<String>) -> Result<Option<String>, ServiceError> {
    let Some(day) = day else { return Ok(None) };
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(&day, &format)
        .map(|_| Some(day.clone()))
        .map_err(|_| ServiceError::BadRequest(format!("{field} must be a date, YYYY-MM-DD")))
}

fn check_events(events: &[UsageEvent]) -> Result<(), ServiceError> {
    if events.len() > MAX_BATCH_EVENTS {
        return Err(ServiceError::BadRequest(format!(
            "at most {MAX_BATCH_EVENTS} events per batch"
        )));
    }
    for (i, e) in events.iter().enumerate() {
        if e.event_id.is_empty() || e.event_id.len() > MAX_EVENT_ID_BYTES {
            return Err(ServiceError::BadRequest(format!(
                "events[{i}].event_id must be 1 to {MAX_EVENT_ID_BYTES} characters"
            )));
        }
    }
    Ok(())
}

store_trait! {
    /// Usage rows, as ingest and the usage report use them.
    pub trait UsageStore: Send + Sync {
        /// Store events, ignoring those whose `event_id` is already stored, all
        /// in one transaction, each with the cost `price` gives it.
        async fn insert_usage(
            &self,
            events: &[UsageEvent],
            received_at: Millis,
            price: PriceEvent,
        ) -> Result<IngestCounts, StoreError>;
        async fn usage_by_day(&self, filter: &UsageFilter) -> Result<Vec<UsageSums>, StoreError>;
    }
}

// === impl Service ===

impl Service {
    /// Store a batch: all or nothing, duplicates (by `event_id`) ignored,
    /// each new event's cost fixed at the price version in force at its
    /// time. Then the budgets of the batch's users are checked.
    pub async fn ingest_usage(&self, batch: UsageBatch) -> Result<IngestAnswer, ServiceError> {
        check_events(&batch.events)?;
        let timer = self.metrics.ingest_batch_seconds.start_timer();
        let now = now_ms();
        let IngestCounts {
            accepted,
            duplicates,
            unpriced,
            spenders,
        } = self
            .store
            .insert_usage(&batch.events, now, price_event)
            .await?;
        timer.observe_duration();
        let m = &self.metrics;
        m.ingest_events
            .with_label_values(&["accepted"])
            .inc_by(accepted);
        m.ingest_events
            .with_label_values(&["duplicate"])
            .inc_by(duplicates);
        for model in &unpriced {
            // Model names of ingested events: bounded by the config (a data
            // plane only records canonical models it was given).
            m.unpriced_events.with_label_values(&[model]).inc();
        }
        for e in &batch.events {
            let lag = u64::try_from(now)
                .unwrap_or(0)
                .saturating_sub(e.timestamp_ms);
            m.ingest_lag_seconds.observe(lag as f64 / 1000.0);
        }
        // The events are stored whatever happens here; a failed check is
        // made again by the user's next batch (crossings are looked for,
        // not remembered), so it only delays an alert.
        if let Err(e) = self.check_budgets(&spenders, now).await {
            tracing::warn!(error = %e, "budget thresholds not checked");
        }
        Ok(IngestAnswer {
            accepted,
            duplicates,
        })
    }

    pub async fn usage_report(
        &self,
        _op: &Operator,
        q: UsageQuery,
    ) -> Result<UsageReport, ServiceError> {
        let filter = UsageFilter {
            user_id: q.user_id,
            model: q.model,
            from_day: check_day("from", q.from)?,
            to_day: check_day("to", q.to)?,
        };
        let sums = self.store.usage_by_day(&filter).await?;
        let mut totals = Acc::default();
        let mut models: BTreeMap<String, Acc> = BTreeMap::new();
        let rows = sums
            .into_iter()
            .map(|s| {
                let mut row = Acc::default();
                row.add(&s);
                totals.add(&s);
                models.entry(s.model.clone()).or_default().add(&s);
                UsageRow {
                    user_id: s.user_id,
                    model: s.model,
                    day: s.day,
                    totals: row.totals(),
                }
            })
            .collect();
        Ok(UsageReport {
            rows,
            models: models
                .into_iter()
                .map(|(model, acc)| ModelUsage {
                    model,
                    totals: acc.totals(),
                })
                .collect(),
            totals: totals.totals(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_filters_must_be_dates() {
        assert!(check_day("from", Some("2024-02-30".into())).is_err());
        assert_eq!(
            check_day("from", Some("2024-02-29".into()))
                .unwrap()
                .as_deref(),
            Some("2024-02-29")
        );
    }
}
