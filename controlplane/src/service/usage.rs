//! Usage: idempotent ingest of the data planes' events, and per-user,
//! per-model, per-day sums priced at the models' current prices.

use super::{Operator, Service, ServiceError};
use crate::domain::{now_ms, PageRequest, UsageRow};
use crate::store::{IngestCounts, UsageFilter};
use molt_config::UsageEvent;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};

/// Most events one ingest batch may carry.
pub const MAX_BATCH: usize = 10_000;
/// Longest accepted `event_id`.
const MAX_EVENT_ID: usize = 128;

/// Body of `POST /internal/v1/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestBatch {
    pub events: Vec<UsageEvent>,
}

/// Answer of `POST /internal/v1/usage`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestResult {
    pub accepted: u64,
    pub duplicates: u64,
}

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

/// `YYYY-MM-DD` (UTC) of a Unix time in milliseconds.
pub fn utc_day(timestamp_ms: u64) -> String {
    let secs = i64::try_from(timestamp_ms / 1000).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        // Beyond year 9999: not a real request time; keep it sortable.
        Err(_) => "9999-12-31".to_owned(),
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
    if events.len() > MAX_BATCH {
        return Err(ServiceError::BadRequest(format!(
            "at most {MAX_BATCH} events per batch"
        )));
    }
    for (i, e) in events.iter().enumerate() {
        if e.event_id.is_empty() || e.event_id.len() > MAX_EVENT_ID {
            return Err(ServiceError::BadRequest(format!(
                "events[{i}].event_id must be 1 to {MAX_EVENT_ID} characters"
            )));
        }
    }
    Ok(())
}

// === impl Service ===

impl Service {
    /// Store a batch: all or nothing, duplicates (by `event_id`) ignored.
    pub async fn ingest_usage(&self, batch: IngestBatch) -> Result<IngestResult, ServiceError> {
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
        Ok(IngestResult {
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
    fn days_are_utc() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(1_700_000_000_000), "2023-11-14");
    }

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
