//! What every resource's SQL shares: reading columns into domain types
//! (JSON text, text enums), a change written with its audit entry in one
//! transaction, a record by key, a page of a list.

use super::{audit, Range, SqlStore, StoreError};
use crate::domain::AuditEntry;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};

pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, AnyArguments<'q>>;

/// A row type and the domain type it becomes.
pub(super) trait Row: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin {
    type Record: TryFrom<Self, Error = StoreError>;
}

pub(super) fn corrupt(field: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{field}: unexpected value {value:?}"))
}

/// A text column holding one of a `text_enum!`'s names.
pub(super) fn named<T>(
    field: &str,
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(value).ok_or_else(|| corrupt(field, value))
}

/// A JSON text column.
pub(super) fn json<T: serde::de::DeserializeOwned>(
    field: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{field}: {e}")))
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising these plain structs and string lists cannot fail: they
    // have no maps with non-string keys and no custom `Serialize`.
    serde_json::to_string(value).unwrap_or_default()
}

/// Saturate a counter into the database's signed 64-bit range.
pub(super) fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn records<R: Row>(rows: Vec<R>) -> Result<Vec<R::Record>, StoreError> {
    rows.into_iter().map(R::Record::try_from).collect()
}

/// Fail with `NotFound` when a targeted write touched no row.
pub(super) fn one_row(result: AnyQueryResult) -> Result<(), StoreError> {
    if result.rows_affected() == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

/// How many rows an audited write must change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rows {
    /// Any number (an insert: a failure is an error from the database).
    Any,
    /// Exactly one; none is `NotFound`, and nothing is written.
    One,
}

impl SqlStore {
    /// Run `query` and write `audit` in one transaction: the change is never
    /// stored without its audit entry, and a failed change leaves neither.
    pub(super) async fn audited(
        &self,
        query: AnyQuery<'_>,
        rows: Rows,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = query.execute(&mut *tx).await?;
        if rows == Rows::One {
            one_row(done)?;
        }
        audit::write(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The record `sql` selects with `key` as `$1`, if any.
    pub(super) async fn find<R: Row>(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Option<R::Record>, StoreError> {
        let row: Option<R> = sqlx::query_as(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(R::Record::try_from).transpose()
    }

    /// One page of a list: `sql` takes the `filters` as its first binds,
    /// then the range's cursor (`''` for the start) and its limit.
    pub(super) async fn page<R: Row>(
        &self,
        sql: &'static str,
        filters: &[&str],
        range: &Range,
    ) -> Result<Vec<R::Record>, StoreError> {
        let mut query = sqlx::query_as::<_, R>(sql);
        for filter in filters {
            query = query.bind(*filter);
        }
        let rows = query
            .bind(range.after.as_deref().unwrap_or(""))
            .bind(range.limit)
            .fetch_all(&self.pool)
            .await?;
        records(rows)
    }
}
