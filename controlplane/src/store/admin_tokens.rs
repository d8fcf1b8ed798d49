//! `admin_tokens`: operator tokens as stored (their hash, never the token).

use super::query::{record, Rows};
use super::{Range, SqlStore, StoreError};
use crate::domain::{AdminToken, AuditEntry, Millis, Role};

record!(AdminToken in "admin_tokens" {
    id, name, role: named(Role::parse), sha256, created_at, revoked_at,
});

impl SqlStore {
    pub async fn insert_admin_token(
        &self,
        t: &AdminToken,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        const SQL: &str = concat!(
            "INSERT INTO admin_tokens (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6)"
        );
        self.insert(SQL, t, audit).await
    }

    pub async fn revoke_admin_token(
        &self,
        id: &str,
        at: Millis,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE admin_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(at);
        self.audited(query, Rows::One, audit).await
    }

    /// An unrevoked token with this hash.
    pub async fn admin_token_by_hash(
        &self,
        sha256: &str,
    ) -> Result<Option<AdminToken>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM admin_tokens WHERE sha256 = $1 AND revoked_at IS NULL"
        );
        self.find(SQL, sha256).await
    }

    pub async fn list_admin_tokens(&self, range: &Range) -> Result<Vec<AdminToken>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM admin_tokens WHERE id > $1 ORDER BY id LIMIT $2"
        );
        self.page(SQL, &[], range).await
    }
}
