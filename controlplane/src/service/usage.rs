//! Usage: idempotent ingest of the data planes' events (the contract's
//! [`UsageBatch`], at most [`MAX_BATCH_EVENTS`] of them), and per-user,
//! per-model, per-day sums priced at the models' current prices.

use super::{Operator, Service, ServiceError};
use crate::domain::Millis;
use crate::domain::{now_ms, PageRequest, UsageRow};
use crate::store::{store_trait, IngestCounts, StoreError, UsageFilter, UsageSums};
use molt_config::contract::{IngestAnswer, UsageBatch, MAX_BATCH_EVENTS, MAX_EVENT_ID_BYTES};
use molt_config::UsageEvent;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UsageTotals {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub rows: Vec<UsageRow>,
    pub totals: UsageTotals,
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
        /// in one transaction.
        async fn insert_usage(
            &self,
            events: &[UsageEvent],
            received_at: Millis,
        ) -> Result<IngestCounts, StoreError>;
        async fn usage_by_day(&self, filter: &UsageFilter) -> Result<Vec<UsageSums>, StoreError>;
    }
}

// === impl Service ===

impl Service {
    /// Store a batch: all or nothing, duplicates (by `event_id`) ignored.
    pub async fn ingest_usage(&self, batch: UsageBatch) -> Result<IngestAnswer, ServiceError> {
        check_events(&batch.events)?;
        let timer = self.metrics.ingest_batch_seconds.start_timer();
        let now = now_ms();
        let IngestCounts {
            accepted,
            duplicates,
        } = self.store.insert_usage(&batch.events, now).await?;
        timer.observe_duration();
        let m = &self.metrics;
        m.ingest_events
            .with_label_values(&["accepted"])
            .inc_by(accepted);
        m.ingest_events
            .with_label_values(&["duplicate"])
            .inc_by(duplicates);
        for e in &batch.events {
            let lag = u64::try_from(now)
                .unwrap_or(0)
                .saturating_sub(e.timestamp_ms);
            m.ingest_lag_seconds.observe(lag as f64 / 1000.0);
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
        let prices = self.model_prices().await?;
        let mut totals = UsageTotals::default();
        let rows = sums
            .into_iter()
            .map(|s| {
                let (pin, pout) = prices.get(&s.model).copied().unwrap_or((0.0, 0.0));
                let cost_usd =
                    (s.input_tokens as f64 * pin + s.output_tokens as f64 * pout) / 1_000_000.0;
                totals.requests += s.requests;
                totals.input_tokens += s.input_tokens;
                totals.output_tokens += s.output_tokens;
                totals.cost_usd += cost_usd;
                UsageRow {
                    user_id: s.user_id,
                    model: s.model,
                    day: s.day,
                    requests: s.requests,
                    input_tokens: s.input_tokens,
                    output_tokens: s.output_tokens,
                    cost_usd,
                }
            })
            .collect();
        Ok(UsageReport { rows, totals })
    }

    /// (input, output) USD per million tokens, by model name.
    async fn model_prices(&self) -> Result<HashMap<String, (f64, f64)>, ServiceError> {
        let mut prices = HashMap::new();
        let mut page = PageRequest {
            cursor: None,
            limit: super::MAX_PAGE,
        };
        loop {
            let range = super::range(&page)?;
            let mut models = self.store.list_models(&range).await?;
            let more = models.len() > page.limit as usize;
            models.truncate(page.limit as usize);
            page.cursor = models.last().map(|m| m.id.clone());
            for m in models {
                prices.insert(m.name, (m.input_price_per_mtok, m.output_price_per_mtok));
            }
            if !more {
                return Ok(prices);
            }
        }
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
