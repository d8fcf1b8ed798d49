//! `models`: the models clients may name, their provider, aliases and
//! fallbacks (their prices are `prices.rs`'s versions).

use super::query::{fetch_records, record, to_json, Rows};
use super::{Range, SqlStore, StoreError};
use crate::domain::{AuditEntry, Model};
use sqlx::AnyConnection;

record!(Model in "models" {
    id, name, provider, upstream_name, aliases: json, fallbacks: json, created_at, updated_at,
});

/// Every model, by id.
pub(super) async fn all(conn: &mut AnyConnection) -> Result<Vec<Model>, StoreError> {
    const SQL: &str = concat!("SELECT ", columns!(), " FROM models ORDER BY id");
    fetch_records(sqlx::query(SQL), conn).await
}

impl SqlStore {
    pub async fn insert_model(&self, m: &Model, audit: &AuditEntry) -> Result<(), StoreError> {
        const SQL: &str = concat!(
            "INSERT INTO models (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        self.insert(SQL, m, audit).await
    }

    pub async fn update_model(&self, m: &Model, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE models SET provider = $2, upstream_name = $3, aliases = $4, fallbacks = $5, \
             updated_at = $6 WHERE id = $1",
        )
        .bind(&m.id)
        .bind(&m.provider)
        .bind(&m.upstream_name)
        .bind(to_json(&m.aliases))
        .bind(to_json(&m.fallbacks))
        .bind(m.updated_at);
        self.audited(query, Rows::One, audit).await
    }

    pub async fn delete_model(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query("DELETE FROM models WHERE id = $1").bind(id);
        self.audited(query, Rows::One, audit).await
    }

    /// By id or by name.
    pub async fn get_model(&self, id_or_name: &str) -> Result<Option<Model>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM models WHERE id = $1 OR name = $1"
        );
        self.find(SQL, id_or_name).await
    }

    pub async fn list_models(&self, range: &Range) -> Result<Vec<Model>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM models WHERE id > $1 ORDER BY id LIMIT $2"
        );
        self.page(SQL, &[], range).await
    }
}
