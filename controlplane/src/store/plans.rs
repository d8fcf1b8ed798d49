//! `plans`: named limit sets users are on (`users.plan` names one).

use super::query::{fetch_records, record, to_json, Rows};
use super::{Range, SqlStore, StoreError};
use crate::domain::{AuditEntry, Plan};
use sqlx::AnyConnection;

record!(Plan in "plans" {
    id, name, description, limits: json, markup_bp, created_at, updated_at,
});

/// The plan named `name`, read on `conn`.
pub(super) async fn by_name(
    conn: &mut AnyConnection,
    name: &str,
) -> Result<Option<Plan>, StoreError> {
    const SQL: &str = concat!("SELECT ", columns!(), " FROM plans WHERE name = $1");
    Ok(fetch_records(sqlx::query(SQL).bind(name), conn)
        .await?
        .into_iter()
        .next())
}

/// Every plan, by id.
pub(super) async fn all(conn: &mut AnyConnection) -> Result<Vec<Plan>, StoreError> {
    const SQL: &str = concat!("SELECT ", columns!(), " FROM plans ORDER BY id");
    fetch_records(sqlx::query(SQL), conn).await
}

impl SqlStore {
    pub async fn insert_plan(&self, p: &Plan, audit: &AuditEntry) -> Result<(), StoreError> {
        const SQL: &str = concat!(
            "INSERT INTO plans (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        );
        self.insert(SQL, p, audit).await
    }

    /// Change a plan's description, limits and markup (the name is fixed).
    pub async fn update_plan(&self, p: &Plan, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE plans SET description = $2, limits = $3, markup_bp = $4, updated_at = $5 \
             WHERE id = $1",
        )
        .bind(&p.id)
        .bind(&p.description)
        .bind(to_json(&p.limits))
        .bind(p.markup_bp)
        .bind(p.updated_at);
        self.audited(query, Rows::One, audit).await
    }

    /// `Reference` while users are on it.
    pub async fn delete_plan(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query("DELETE FROM plans WHERE id = $1").bind(id);
        self.audited(query, Rows::One, audit).await
    }

    /// By id or by name.
    pub async fn get_plan(&self, id_or_name: &str) -> Result<Option<Plan>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM plans WHERE id = $1 OR name = $1"
        );
        self.find(SQL, id_or_name).await
    }

    pub async fn list_plans(&self, range: &Range) -> Result<Vec<Plan>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM plans WHERE id > $1 ORDER BY id LIMIT $2"
        );
        self.page(SQL, &[], range).await
    }
}
