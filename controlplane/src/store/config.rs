//! `limits_document` and `config_state`: the deployment-wide limits
//! document, and the persisted config version snapshots are published
//! under (one row each).

use super::query::{corrupt, json, to_json, Rows};
use super::{SqlStore, StoreError};
use crate::domain::{AuditEntry, Millis};
use molt_config::wire::RawLimits;
use sqlx::AnyConnection;

/// The limits document, read on `conn`.
pub(super) async fn limits(conn: &mut AnyConnection) -> Result<RawLimits, StoreError> {
    let (body,): (String,) = sqlx::query_as("SELECT body FROM limits_document WHERE id = 1")
        .fetch_one(conn)
        .await?;
    json("limits_document.body", &body)
}

impl SqlStore {
    /// The deployment-wide limits document.
    pub async fn get_limits(&self) -> Result<RawLimits, StoreError> {
        let mut conn = self.pool.acquire().await?;
        limits(&mut conn).await
    }

    /// Replace the limits document.
    pub async fn set_limits(
        &self,
        limits: &RawLimits,
        at: Millis,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let query =
            sqlx::query("UPDATE limits_document SET body = $1, updated_at = $2 WHERE id = 1")
                .bind(to_json(limits))
                .bind(at);
        self.audited(query, Rows::One, audit).await
    }

    /// Increment and return the persisted config version.
    pub async fn bump_config_version(&self) -> Result<u64, StoreError> {
        let (version,): (i64,) = sqlx::query_as(
            "UPDATE config_state SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&self.pool)
        .await?;
        u64::try_from(version).map_err(|_| corrupt("config_state.version", &version.to_string()))
    }
}
