//! `providers`: upstream providers with their master keys sealed.

use super::query::{fetch_records, Columns, Record, Rows};
use super::{Range, SqlStore, StoreError};
use crate::domain::{AuditEntry, Provider, ProviderKind, SealedProvider};
use sqlx::AnyConnection;

/// The columns a [`SealedProvider`] is read from.
macro_rules! columns {
    () => {
        "id, name, kind, base_url, keys_sealed, key_count, created_at, updated_at"
    };
}

impl Record for SealedProvider {
    const TABLE: &'static str = "providers";

    fn read(c: &Columns<'_>) -> Result<Self, StoreError> {
        Ok(SealedProvider {
            provider: Provider {
                id: c.get("id")?,
                name: c.get("name")?,
                kind: c.named("kind", ProviderKind::parse)?,
                base_url: c.get("base_url")?,
                key_count: c.get("key_count")?,
                created_at: c.get("created_at")?,
                updated_at: c.get("updated_at")?,
            },
            keys_sealed: c.get("keys_sealed")?,
        })
    }
}

/// Sealed master keys (`id`, `sealed`) after id `$1`, by id, at most `$2`
/// (for re-encryption, `sealed.rs`).
pub(super) const SEALED_PAGE: &str =
    "SELECT id, keys_sealed AS sealed FROM providers WHERE id > $1 ORDER BY id LIMIT $2";

/// Re-sealed master keys `$3` for provider `$1`, only while they are still
/// `$2` (a concurrent update wins).
pub(super) const RESEAL: &str =
    "UPDATE providers SET keys_sealed = $3 WHERE id = $1 AND keys_sealed = $2";

/// Every provider, by id.
pub(super) async fn all(conn: &mut AnyConnection) -> Result<Vec<SealedProvider>, StoreError> {
    const SQL: &str = concat!("SELECT ", columns!(), " FROM providers ORDER BY id");
    fetch_records(sqlx::query(SQL), conn).await
}

impl SqlStore {
    pub async fn insert_provider(
        &self,
        p: &SealedProvider,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let v = &p.provider;
        let query = sqlx::query(concat!(
            "INSERT INTO providers (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&v.id)
        .bind(&v.name)
        .bind(v.kind.as_str())
        .bind(&v.base_url)
        .bind(&p.keys_sealed)
        .bind(v.key_count)
        .bind(v.created_at)
        .bind(v.updated_at);
        self.audited(query, Rows::Any, audit).await
    }

    pub async fn update_provider(
        &self,
        p: &SealedProvider,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let v = &p.provider;
        let query = sqlx::query(
            "UPDATE providers SET base_url = $2, keys_sealed = $3, key_count = $4, \
             updated_at = $5 WHERE id = $1",
        )
        .bind(&v.id)
        .bind(&v.base_url)
        .bind(&p.keys_sealed)
        .bind(v.key_count)
        .bind(v.updated_at);
        self.audited(query, Rows::One, audit).await
    }

    /// By id or by name.
    pub async fn get_provider(
        &self,
        id_or_name: &str,
    ) -> Result<Option<SealedProvider>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM providers WHERE id = $1 OR name = $1"
        );
        self.find(SQL, id_or_name).await
    }

    pub async fn list_providers(&self, range: &Range) -> Result<Vec<SealedProvider>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM providers WHERE id > $1 ORDER BY id LIMIT $2"
        );
        self.page(SQL, &[], range).await
    }
}
