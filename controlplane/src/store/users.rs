//! `users`: who may use the gateway, on which plan, with which overrides
//! and Stripe customer.

use super::query::{fetch_records, record, to_json, Columns, Record, Rows};
use super::snapshot::UserLimits;
use super::{Range, SqlStore, StoreError};
use crate::domain::{AuditEntry, User, UserStatus};
use sqlx::AnyConnection;

record!(User in "users" {
    id, email, status: named(UserStatus::parse), plan, stripe_customer_id, limits: json,
    clerk_id, clerk_updated_at, created_at, updated_at,
});

impl Record for UserLimits {
    const TABLE: &'static str = "users";

    fn read(c: &Columns<'_>) -> Result<Self, StoreError> {
        Ok(UserLimits {
            user_id: c.get("id")?,
            plan: c.get("plan")?,
            overrides: c.json("limits")?,
        })
    }
}

/// The users on a plan or with overrides of their own, by id: whose limits
/// a config snapshot compiles.
pub(super) async fn limited(conn: &mut AnyConnection) -> Result<Vec<UserLimits>, StoreError> {
    // `limits <> '{}'` is a cheap pre-filter; rows whose overrides parse to
    // nothing are dropped below.
    let query = sqlx::query(
        "SELECT id, plan, limits FROM users WHERE plan IS NOT NULL OR limits <> '{}' ORDER BY id",
    );
    Ok(fetch_records::<UserLimits>(query, conn)
        .await?
        .into_iter()
        .filter(|u| u.plan.is_some() || !u.overrides.is_empty())
        .collect())
}

/// `(clerk_id, user_id)` of the active users linked to the identity
/// provider, by Clerk id: whose provider tokens a config snapshot maps.
pub(super) async fn identities(
    conn: &mut AnyConnection,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT clerk_id, id FROM users WHERE clerk_id IS NOT NULL AND status = $1 \
         ORDER BY clerk_id",
    )
    .bind(UserStatus::Active.as_str())
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

impl SqlStore {
    pub async fn insert_user(&self, u: &User, audit: &AuditEntry) -> Result<(), StoreError> {
        const SQL: &str = concat!(
            "INSERT INTO users (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        self.insert(SQL, u, audit).await
    }

    pub async fn update_user(&self, u: &User, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE users SET email = $2, status = $3, plan = $4, stripe_customer_id = $5, \
             limits = $6, clerk_id = $7, clerk_updated_at = $8, updated_at = $9 WHERE id = $1",
        )
        .bind(&u.id)
        .bind(&u.email)
        .bind(u.status.as_str())
        .bind(&u.plan)
        .bind(&u.stripe_customer_id)
        .bind(to_json(&u.limits))
        .bind(&u.clerk_id)
        .bind(u.clerk_updated_at)
        .bind(u.updated_at);
        self.audited(query, Rows::One, audit).await
    }

    pub async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        const SQL: &str = concat!("SELECT ", columns!(), " FROM users WHERE id = $1");
        self.find(SQL, id).await
    }

    /// The user linked to this Clerk user id.
    pub async fn user_by_clerk_id(&self, clerk_id: &str) -> Result<Option<User>, StoreError> {
        const SQL: &str = concat!("SELECT ", columns!(), " FROM users WHERE clerk_id = $1");
        self.find(SQL, clerk_id).await
    }

    /// The user with this (normalised) email.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        const SQL: &str = concat!("SELECT ", columns!(), " FROM users WHERE email = $1");
        self.find(SQL, email).await
    }

    pub async fn list_users(&self, range: &Range) -> Result<Vec<User>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM users WHERE id > $1 ORDER BY id LIMIT $2"
        );
        self.page(SQL, &[], range).await
    }

    /// The user whose Stripe customer id this is.
    pub async fn user_by_customer(&self, customer: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM users WHERE stripe_customer_id = $1 ORDER BY id LIMIT 1",
        )
        .bind(customer)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// How many users are on the plan named `name`.
    pub async fn count_plan_users(&self, name: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT) FROM users WHERE plan = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        Ok(n)
    }
}
