//! What every resource's SQL shares: a table's columns declared once
//! ([`record!`]) and read into its domain record ([`Record`], [`Columns`]:
//! plain values, JSON text, text enums) or bound for an insert
//! ([`Insertable`]), a change written with its audit entry in one
//! transaction, a record by key, a page of a list.

use super::{audit, Range, SqlStore, StoreError};
use crate::domain::AuditEntry;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::{Any, AnyConnection, Row};

pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, AnyArguments<'q>>;

/// A domain record stored as one row, read straight from the row's
/// columns by name ([`record!`] for the plain ones), so its fields are
/// listed once.
pub(super) trait Record: Sized {
    /// The table, for messages about corrupt values (`users.status: ...`).
    const TABLE: &'static str;
    fn read(columns: &Columns<'_>) -> Result<Self, StoreError>;
}

/// A record written as a whole row: [`record!`]'s.
pub(super) trait Insertable: Record {
    /// Bind every column, in the order of the file's `columns!()`.
    fn bind_columns<'q>(&'q self, query: AnyQuery<'q>) -> AnyQuery<'q>;
}

/// Declares how a domain struct is stored in `table`, one column per field
/// of the same name: `field` as the driver decodes and encodes it, `field:
/// json` as JSON text, `field: json_or_null` as nullable JSON text, `field:
/// named(parse)` as a `text_enum!`'s name. From that one list it defines
/// `columns!()` (the column list, as `alias.column` with `as alias`, for
/// the file's SQL) and implements [`Record`] and [`Insertable`]. (sqlx's
/// `FromRow` derive cannot decode JSON or text enums on the `Any` driver;
/// this needs no row struct mirroring the record.)
macro_rules! record {
    ($record:ident in $table:literal as $alias:ident {
        $($field:ident $(: $how:ident $(($parse:path))?)?),+ $(,)?
    }) => {
        /// The columns, in order, as the file's SQL selects and inserts them.
        macro_rules! columns {
            () => {
                stringify!($($alias.$field),+)
            };
        }
        record!(@impl $record $table { $($field $(: $how $(($parse))?)?),+ });
    };
    ($record:ident in $table:literal {
        $($field:ident $(: $how:ident $(($parse:path))?)?),+ $(,)?
    }) => {
        /// The columns, in order, as the file's SQL selects and inserts them.
        macro_rules! columns {
            () => {
                stringify!($($field),+)
            };
        }
        record!(@impl $record $table { $($field $(: $how $(($parse))?)?),+ });
    };
    (@impl $record:ident $table:literal {
        $($field:ident $(: $how:ident $(($parse:path))?)?),+
    }) => {
        impl $crate::store::query::Record for $record {
            const TABLE: &'static str = $table;

            fn read(
                c: &$crate::store::query::Columns<'_>,
            ) -> Result<Self, $crate::store::StoreError> {
                Ok($record {
                    $($field: record!(@read c, $field $(, $how $(, $parse)?)?)?,)+
                })
            }
        }

        impl $crate::store::query::Insertable for $record {
            fn bind_columns<'q>(
                &'q self,
                query: $crate::store::query::AnyQuery<'q>,
            ) -> $crate::store::query::AnyQuery<'q> {
                query $(.bind(record!(@write self, $field $(, $how)?)))+
            }
        }
    };
    (@read $c:ident, $field:ident) => {
        $c.get(stringify!($field))
    };
    (@read $c:ident, $field:ident, $how:ident) => {
        $c.$how(stringify!($field))
    };
    (@read $c:ident, $field:ident, $how:ident, $parse:path) => {
        $c.$how(stringify!($field), $parse)
    };
    (@write $r:ident, $field:ident) => {
        &$r.$field
    };
    (@write $r:ident, $field:ident, json) => {
        $crate::store::query::to_json(&$r.$field)
    };
    (@write $r:ident, $field:ident, json_or_null) => {
        $r.$field.as_ref().map($crate::store::query::to_json)
    };
    (@write $r:ident, $field:ident, named) => {
        $r.$field.as_str()
    };
}
pub(super) use record;

/// One row's columns, as a [`Record`] reads them.
pub(super) struct Columns<'r> {
    row: &'r AnyRow,
    table: &'static str,
}

impl<'r> Columns<'r> {
    /// A column the `Any` driver decodes as is: text, BIGINT, DOUBLE
    /// PRECISION, and NULL as `None`.
    pub(super) fn get<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
    {
        Ok(self.row.try_get(column)?)
    }

    /// A text column holding one of a `text_enum!`'s names.
    pub(super) fn named<T>(
        &self,
        column: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, StoreError> {
        let text: String = self.get(column)?;
        named(&self.path(column), &text, parse)
    }

    /// A JSON text column.
    pub(super) fn json<T: serde::de::DeserializeOwned>(
        &self,
        column: &str,
    ) -> Result<T, StoreError> {
        let text: String = self.get(column)?;
        json(&self.path(column), &text)
    }

    /// A nullable JSON text column.
    pub(super) fn json_or_null<T: serde::de::DeserializeOwned>(
        &self,
        column: &str,
    ) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self.get(column)?;
        text.map(|t| json(&self.path(column), &t)).transpose()
    }

    fn path(&self, column: &str) -> String {
        format!("{}.{column}", self.table)
    }
}

/// `row` read as an `R`.
pub(super) fn from_row<R: Record>(row: &AnyRow) -> Result<R, StoreError> {
    R::read(&Columns {
        row,
        table: R::TABLE,
    })
}

pub(super) fn records<R: Record>(rows: &[AnyRow]) -> Result<Vec<R>, StoreError> {
    rows.iter().map(from_row).collect()
}

/// Every record `query` selects, read on `conn` (inside a transaction).
pub(super) async fn fetch_records<R: Record>(
    query: AnyQuery<'_>,
    conn: &mut AnyConnection,
) -> Result<Vec<R>, StoreError> {
    records(&query.fetch_all(conn).await?)
}

pub(super) fn corrupt(field: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{field}: unexpected value {value:?}"))
}

/// Text holding one of a `text_enum!`'s names.
pub(super) fn named<T>(
    field: &str,
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(value).ok_or_else(|| corrupt(field, value))
}

/// JSON text.
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

    /// Insert `record` with `sql` (an INSERT of the file's `columns!()`, one
    /// placeholder each) and its audit entry.
    pub(super) async fn insert<R: Insertable>(
        &self,
        sql: &'static str,
        record: &R,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        self.audited(record.bind_columns(sqlx::query(sql)), Rows::Any, audit)
            .await
    }

    /// The record `sql` selects with `key` as `$1`, if any.
    pub(super) async fn find<R: Record>(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Option<R>, StoreError> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// One page of a list: `sql` takes the `filters` as its first binds,
    /// then the range's cursor (`''` for the start) and its limit.
    pub(super) async fn page<R: Record>(
        &self,
        sql: &'static str,
        filters: &[&str],
        range: &Range,
    ) -> Result<Vec<R>, StoreError> {
        let mut query = sqlx::query(sql);
        for filter in filters {
            query = query.bind(*filter);
        }
        let rows = query
            .bind(range.after.as_deref().unwrap_or(""))
            .bind(range.limit)
            .fetch_all(&self.pool)
            .await?;
        records(&rows)
    }
}
