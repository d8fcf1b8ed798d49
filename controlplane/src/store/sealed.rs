//! Values sealed at rest, across the tables that hold them
//! ([`SealedKind`]): a page of them, and one rewritten only if unchanged
//! since it was read. The SQL is each table's owner's (`providers.rs`,
//! `bots.rs`); this file only picks it by kind.

use super::{bots, providers, SqlStore, StoreError};
use crate::domain::{SealedKind, SealedValue};
use sqlx::Row;

/// The owner's (page, reseal) SQL for `kind`.
fn sql(kind: SealedKind) -> (&'static str, &'static str) {
    match kind {
        SealedKind::ProviderKeys => (providers::SEALED_PAGE, providers::RESEAL),
        SealedKind::BotToken => (bots::SEALED_PAGE, bots::RESEAL),
    }
}

impl SqlStore {
    /// Up to `limit` values of `kind` whose row id sorts after `after`
    /// (`""` for the start), by id.
    pub async fn sealed_values(
        &self,
        kind: SealedKind,
        after: &str,
        limit: i64,
    ) -> Result<Vec<SealedValue>, StoreError> {
        let rows = sqlx::query(sql(kind).0)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SealedValue {
                    id: row.try_get("id")?,
                    sealed: row.try_get("sealed")?,
                })
            })
            .collect()
    }

    /// Replace `value` by `resealed` (the same plaintext, sealed again) in
    /// one statement, only if the row still holds `value.sealed`: `false`
    /// when it changed meanwhile (or is gone), and then nothing is written.
    pub async fn reseal(
        &self,
        kind: SealedKind,
        value: &SealedValue,
        resealed: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql(kind).1)
            .bind(&value.id)
            .bind(&value.sealed)
            .bind(resealed)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
