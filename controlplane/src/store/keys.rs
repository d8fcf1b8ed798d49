//! `api_keys`: client keys as stored (their hash, never the key).

use super::query::{fetch_records, record, Rows};
use super::{Range, SqlStore, StoreError};
use crate::domain::{ApiKey, AuditEntry, Millis};
use sqlx::AnyConnection;

record!(ApiKey in "api_keys" as k {
    id, user_id, name, prefix, sha256, models: json_or_null, expires_at, revoked_at,
    created_at,
});

/// Unrevoked, unexpired keys of active users at `now`, by id: the keys a
/// config snapshot carries.
pub(super) async fn live(conn: &mut AnyConnection, now: Millis) -> Result<Vec<ApiKey>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        columns!(),
        " FROM api_keys k JOIN users u ON u.id = k.user_id \
         WHERE u.status = $1 AND k.revoked_at IS NULL \
         AND (k.expires_at IS NULL OR k.expires_at > $2) ORDER BY k.id"
    );
    let query = sqlx::query(SQL)
        .bind(crate::domain::UserStatus::Active.as_str())
        .bind(now);
    fetch_records(query, conn).await
}

impl SqlStore {
    pub async fn insert_api_key(&self, k: &ApiKey, audit: &AuditEntry) -> Result<(), StoreError> {
        // The columns in `columns!()`'s order, unqualified.
        const SQL: &str = "INSERT INTO api_keys (id, user_id, name, prefix, sha256, models, \
             expires_at, revoked_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        self.insert(SQL, k, audit).await
    }

    /// Set `revoked_at` on an unrevoked key; `NotFound` if there is none.
    pub async fn revoke_api_key(
        &self,
        id: &str,
        at: Millis,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let query =
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(at);
        self.audited(query, Rows::One, audit).await
    }

    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        const SQL: &str = concat!("SELECT ", columns!(), " FROM api_keys k WHERE k.id = $1");
        self.find(SQL, id).await
    }

    /// A page of keys, of one user's only when `user_id` is given.
    pub async fn list_api_keys(
        &self,
        user_id: Option<&str>,
        range: &Range,
    ) -> Result<Vec<ApiKey>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM api_keys k WHERE ($1 = '' OR k.user_id = $1) AND k.id > $2 \
             ORDER BY k.id LIMIT $3"
        );
        self.page(SQL, &[user_id.unwrap_or("")], range).await
    }
}
