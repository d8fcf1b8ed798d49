//! `model_prices`: every version of every model's price, per class in
//! picodollars per token. Rows are only inserted (with their audit entry),
//! never updated or deleted: an event's `price_version` names its row for
//! ever.

use super::query::{i64_of, Columns, Record, Rows};
use super::{SqlStore, StoreError};
use crate::domain::{AuditEntry, Millis, PriceVersion};
use molt_config::money::{ModelPrice, TokenPrice};
use sqlx::AnyConnection;

/// The columns, in the order [`PriceVersion`] is read and inserted.
macro_rules! columns {
    () => {
        "id, model, effective_from, input, output, cache_read_input, cache_write_5m_input, \
         cache_write_1h_input, audio_input, reasoning_output, audio_output, created_at, created_by"
    };
}

fn price(c: &Columns<'_>, column: &str) -> Result<TokenPrice, StoreError> {
    let p: i64 = c.get(column)?;
    u64::try_from(p)
        .map(TokenPrice)
        .map_err(|_| super::query::corrupt(&format!("model_prices.{column}"), &p.to_string()))
}

fn optional(c: &Columns<'_>, column: &str) -> Result<Option<TokenPrice>, StoreError> {
    let p: Option<i64> = c.get(column)?;
    p.map(|_| price(c, column)).transpose()
}

impl Record for PriceVersion {
    const TABLE: &'static str = "model_prices";

    fn read(c: &Columns<'_>) -> Result<Self, StoreError> {
        Ok(PriceVersion {
            id: c.get("id")?,
            model: c.get("model")?,
            effective_from: c.get("effective_from")?,
            price: ModelPrice {
                input: price(c, "input")?,
                output: price(c, "output")?,
                cache_read_input: optional(c, "cache_read_input")?,
                cache_write_5m_input: optional(c, "cache_write_5m_input")?,
                cache_write_1h_input: optional(c, "cache_write_1h_input")?,
                audio_input: optional(c, "audio_input")?,
                reasoning_output: optional(c, "reasoning_output")?,
                audio_output: optional(c, "audio_output")?,
            },
            created_at: c.get("created_at")?,
            created_by: c.get("created_by")?,
        })
    }
}

/// Every version of `model`'s price, oldest first.
pub(super) async fn versions(
    conn: &mut AnyConnection,
    model: &str,
) -> Result<Vec<PriceVersion>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        columns!(),
        " FROM model_prices WHERE model = $1 ORDER BY effective_from, id"
    );
    super::query::fetch_records(sqlx::query(SQL).bind(model), conn).await
}

/// For each model with one, the version in force at `at`.
pub(super) async fn in_force(
    conn: &mut AnyConnection,
    at: Millis,
) -> Result<Vec<PriceVersion>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        columns!(),
        " FROM model_prices p WHERE p.effective_from <= $1 AND NOT EXISTS ( \
           SELECT 1 FROM model_prices q WHERE q.model = p.model AND q.effective_from <= $1 \
           AND (q.effective_from > p.effective_from \
                OR (q.effective_from = p.effective_from AND q.id > p.id))) \
         ORDER BY p.model"
    );
    super::query::fetch_records(sqlx::query(SQL).bind(at), conn).await
}

impl SqlStore {
    /// Add a version, with its audit entry.
    pub async fn insert_price(
        &self,
        v: &PriceVersion,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        const SQL: &str = concat!(
            "INSERT INTO model_prices (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        );
        let p = &v.price;
        let opt = |t: Option<TokenPrice>| t.map(|t| i64_of(t.0));
        let query = sqlx::query(SQL)
            .bind(&v.id)
            .bind(&v.model)
            .bind(v.effective_from)
            .bind(i64_of(p.input.0))
            .bind(i64_of(p.output.0))
            .bind(opt(p.cache_read_input))
            .bind(opt(p.cache_write_5m_input))
            .bind(opt(p.cache_write_1h_input))
            .bind(opt(p.audio_input))
            .bind(opt(p.reasoning_output))
            .bind(opt(p.audio_output))
            .bind(v.created_at)
            .bind(&v.created_by);
        self.audited(query, Rows::Any, audit).await
    }

    /// Every version of `model`'s price, oldest first.
    pub async fn price_history(&self, model: &str) -> Result<Vec<PriceVersion>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        versions(&mut conn, model).await
    }

    /// For each model with one, the version in force at `at`.
    pub async fn prices_in_force(&self, at: Millis) -> Result<Vec<PriceVersion>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        in_force(&mut conn, at).await
    }
}
