//! `admin_tokens`: operator tokens as stored (their hash, never the token).

use super::query::{named, Row, Rows};
use super::{Range, SqlStore, StoreError};
use crate::domain::{AdminToken, AuditEntry, Millis, Role};

/// The columns [`AdminTokenRow`] reads.
macro_rules! columns {
    () => {
        "id, name, role, sha256, created_at, revoked_at"
    };
}

#[derive(sqlx::FromRow)]
struct AdminTokenRow {
    id: String,
    name: String,
    role: String,
    sha256: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl Row for AdminTokenRow {
    type Record = AdminToken;
}

impl TryFrom<AdminTokenRow> for AdminToken {
    type Error = StoreError;

    fn try_from(r: AdminTokenRow) -> Result<Self, StoreError> {
        Ok(AdminToken {
            role: named("admin_tokens.role", &r.role, Role::parse)?,
            id: r.id,
            name: r.name,
            sha256: r.sha256,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
    }
}

impl SqlStore {
    pub async fn insert_admin_token(
        &self,
        t: &AdminToken,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(concat!(
            "INSERT INTO admin_tokens (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.role.as_str())
        .bind(&t.sha256)
        .bind(t.created_at)
        .bind(t.revoked_at);
        self.audited(query, Rows::Any, audit).await
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
        self.find::<AdminTokenRow>(SQL, sha256).await
    }

    pub async fn list_admin_tokens(&self, range: &Range) -> Result<Vec<AdminToken>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM admin_tokens WHERE id > $1 ORDER BY id LIMIT $2"
        );
        self.page::<AdminTokenRow>(SQL, &[], range).await
    }
}
