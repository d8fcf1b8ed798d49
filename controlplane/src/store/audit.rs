//! `audit_log`: who did what to which record, written in the transaction
//! of the change it describes ([`write`]), read newest first, and pruned by
//! the retention job.

use super::query::{record, Insertable};
use super::{Range, SqlStore, StoreError};
use crate::domain::{AuditEntry, Millis};
use sqlx::AnyConnection;

record!(AuditEntry in "audit_log" {
    id, at, actor, action, target, diff: json,
});

/// Write `a` on `conn` (inside the transaction of the change it records).
pub(super) async fn write(conn: &mut AnyConnection, a: &AuditEntry) -> Result<(), StoreError> {
    const SQL: &str = concat!(
        "INSERT INTO audit_log (",
        columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6)"
    );
    a.bind_columns(sqlx::query(SQL)).execute(&mut *conn).await?;
    Ok(())
}

impl SqlStore {
    /// An audit entry for an action that changes nothing else in the store
    /// (e.g. minting a client JWT).
    pub async fn insert_audit(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        write(&mut conn, audit).await
    }

    /// Newest first: the cursor is the last id seen, so the next page holds
    /// smaller ids. An empty cursor means "from the newest".
    pub async fn list_audit(&self, range: &Range) -> Result<Vec<AuditEntry>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM audit_log WHERE ($1 = '' OR id < $1) ORDER BY id DESC LIMIT $2"
        );
        self.page(SQL, &[], range).await
    }

    /// Delete entries older than `before`; returns how many.
    pub async fn delete_audit_before(&self, before: Millis) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
