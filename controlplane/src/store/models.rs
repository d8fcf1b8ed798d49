//! `models`: the models clients may name, their provider, aliases,
//! fallbacks and prices.

use super::query::{json, records, to_json, Row, Rows};
use super::{Range, SqlStore, StoreError};
use crate::domain::{AuditEntry, Model};
use sqlx::AnyConnection;

/// The columns [`ModelRow`] reads.
macro_rules! columns {
    () => {
        "id, name, provider, upstream_name, aliases, fallbacks, input_price_per_mtok, \
         output_price_per_mtok, created_at, updated_at"
    };
}

#[derive(sqlx::FromRow)]
struct ModelRow {
    id: String,
    name: String,
    provider: String,
    upstream_name: Option<String>,
    aliases: String,
    fallbacks: String,
    input_price_per_mtok: f64,
    output_price_per_mtok: f64,
    created_at: i64,
    updated_at: i64,
}

impl Row for ModelRow {
    type Record = Model;
}

impl TryFrom<ModelRow> for Model {
    type Error = StoreError;

    fn try_from(r: ModelRow) -> Result<Self, StoreError> {
        Ok(Model {
            aliases: json("models.aliases", &r.aliases)?,
            fallbacks: json("models.fallbacks", &r.fallbacks)?,
            id: r.id,
            name: r.name,
            provider: r.provider,
            upstream_name: r.upstream_name,
            input_price_per_mtok: r.input_price_per_mtok,
            output_price_per_mtok: r.output_price_per_mtok,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Every model, by id.
pub(super) async fn all(conn: &mut AnyConnection) -> Result<Vec<Model>, StoreError> {
    const SQL: &str = concat!("SELECT ", columns!(), " FROM models ORDER BY id");
    let rows: Vec<ModelRow> = sqlx::query_as(SQL).fetch_all(conn).await?;
    records(rows)
}

impl SqlStore {
    pub async fn insert_model(&self, m: &Model, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(concat!(
            "INSERT INTO models (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&m.id)
        .bind(&m.name)
        .bind(&m.provider)
        .bind(&m.upstream_name)
        .bind(to_json(&m.aliases))
        .bind(to_json(&m.fallbacks))
        .bind(m.input_price_per_mtok)
        .bind(m.output_price_per_mtok)
        .bind(m.created_at)
        .bind(m.updated_at);
        self.audited(query, Rows::Any, audit).await
    }

    pub async fn update_model(&self, m: &Model, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE models SET provider = $2, upstream_name = $3, aliases = $4, fallbacks = $5, \
             input_price_per_mtok = $6, output_price_per_mtok = $7, updated_at = $8 WHERE id = $1",
        )
        .bind(&m.id)
        .bind(&m.provider)
        .bind(&m.upstream_name)
        .bind(to_json(&m.aliases))
        .bind(to_json(&m.fallbacks))
        .bind(m.input_price_per_mtok)
        .bind(m.output_price_per_mtok)
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
        self.find::<ModelRow>(SQL, id_or_name).await
    }

    pub async fn list_models(&self, range: &Range) -> Result<Vec<Model>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM models WHERE id > $1 ORDER BY id LIMIT $2"
        );
        self.page::<ModelRow>(SQL, &[], range).await
    }
}
