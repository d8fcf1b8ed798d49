//! [`SqlStore`]: the [`Store`] over sqlx's `Any` driver, so one set of
//! queries and one migration directory serve both SQLite and PostgreSQL.
//!
//! Why `Any` rather than two implementations: the schema needs nothing
//! either database lacks (TEXT, BIGINT, DOUBLE PRECISION, `ON CONFLICT DO
//! NOTHING`, `RETURNING`), both accept `$n` placeholders, and a single code
//! path means the tests that run against both exercise exactly the code
//! that ships. The price is `Any`'s small type set, which is why times are
//! Unix milliseconds, flags are 0/1 BIGINTs, lists are JSON TEXT and sums
//! are `CAST(... AS BIGINT)` (PostgreSQL's `SUM(bigint)` is NUMERIC).
//!
//! Optional filters use `''` as "no filter" (`$1 = '' OR col = $1`) instead
//! of NULL parameters, whose type PostgreSQL cannot always infer.

use super::{
    IngestCounts, Range, SnapshotSource, Store, StoreError, UsageFilter, UsageSums, UserLimits,
};
use crate::domain::{
    AdminToken, ApiKey, AuditEntry, LimitOverrides, Millis, Model, Plan, Provider, ProviderKind,
    Role, SealedProvider, User, UserStatus,
};
use molt_config::wire::RawLimits;
use molt_config::UsageEvent;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The store over a pool of SQLite or PostgreSQL connections, chosen by the
/// URL's scheme (`sqlite://path?mode=rwc`, `postgres://...`).
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
}

impl SqlStore {
    /// Connect and apply pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// Close every connection (tests drop their database afterwards).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool, for the stores of other modules (`provision`) that share
    /// this database and its migrations.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

// === rows ===

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    status: String,
    plan: Option<String>,
    stripe_customer_id: Option<String>,
    limits: String,
    created_at: i64,
    updated_at: i64,
}

const USER_COLS: &str =
    "id, email, status, plan, stripe_customer_id, limits, created_at, updated_at";

impl TryFrom<UserRow> for User {
    type Error = StoreError;

    fn try_from(r: UserRow) -> Result<Self, StoreError> {
        Ok(User {
            status: UserStatus::parse(&r.status)
                .ok_or_else(|| corrupt("users.status", &r.status))?,
            limits: json::<LimitOverrides>("users.limits", &r.limits)?,
            id: r.id,
            email: r.email,
            plan: r.plan,
            stripe_customer_id: r.stripe_customer_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    user_id: String,
    name: String,
    prefix: String,
    sha256: String,
    models: Option<String>,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    created_at: i64,
}

const KEY_COLS: &str =
    "id, user_id, name, prefix, sha256, models, expires_at, revoked_at, created_at";

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;

    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        Ok(ApiKey {
            models: r
                .models
                .as_deref()
                .map(|m| json::<Vec<String>>("api_keys.models", m))
                .transpose()?,
            id: r.id,
            user_id: r.user_id,
            name: r.name,
            prefix: r.prefix,
            sha256: r.sha256,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ProviderRow {
    id: String,
    name: String,
    kind: String,
    base_url: String,
    keys_sealed: String,
    key_count: i64,
    created_at: i64,
    updated_at: i64,
}

const PROVIDER_COLS: &str =
    "id, name, kind, base_url, keys_sealed, key_count, created_at, updated_at";

impl TryFrom<ProviderRow> for SealedProvider {
    type Error = StoreError;

    fn try_from(r: ProviderRow) -> Result<Self, StoreError> {
        Ok(SealedProvider {
            provider: Provider {
                kind: ProviderKind::parse(&r.kind)
                    .ok_or_else(|| corrupt("providers.kind", &r.kind))?,
                id: r.id,
                name: r.name,
                base_url: r.base_url,
                key_count: r.key_count,
                created_at: r.created_at,
                updated_at: r.updated_at,
            },
            keys_sealed: r.keys_sealed,
        })
    }
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

const MODEL_COLS: &str = "id, name, provider, upstream_name, aliases, fallbacks, \
     input_price_per_mtok, output_price_per_mtok, created_at, updated_at";

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

#[derive(sqlx::FromRow)]
struct PlanRow {
    id: String,
    name: String,
    description: String,
    limits: String,
    created_at: i64,
    updated_at: i64,
}

const PLAN_COLS: &str = "id, name, description, limits, created_at, updated_at";

impl TryFrom<PlanRow> for Plan {
    type Error = StoreError;

    fn try_from(r: PlanRow) -> Result<Self, StoreError> {
        Ok(Plan {
            limits: json("plans.limits", &r.limits)?,
            id: r.id,
            name: r.name,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct UserLimitsRow {
    id: String,
    plan: Option<String>,
    limits: String,
}

impl TryFrom<UserLimitsRow> for UserLimits {
    type Error = StoreError;

    fn try_from(r: UserLimitsRow) -> Result<Self, StoreError> {
        Ok(UserLimits {
            overrides: json::<LimitOverrides>("users.limits", &r.limits)?,
            user_id: r.id,
            plan: r.plan,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: String,
    at: i64,
    actor: String,
    action: String,
    target: String,
    diff: String,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;

    fn try_from(r: AuditRow) -> Result<Self, StoreError> {
        Ok(AuditEntry {
            diff: json("audit_log.diff", &r.diff)?,
            id: r.id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
        })
    }
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

impl TryFrom<AdminTokenRow> for AdminToken {
    type Error = StoreError;

    fn try_from(r: AdminTokenRow) -> Result<Self, StoreError> {
        Ok(AdminToken {
            role: Role::parse(&r.role).ok_or_else(|| corrupt("admin_tokens.role", &r.role))?,
            id: r.id,
            name: r.name,
            sha256: r.sha256,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct UsageSumRow {
    user_id: String,
    model: String,
    day: String,
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
}

fn parse_limits(body: &str) -> Result<RawLimits, StoreError> {
    json("limits_document.body", body)
}

fn corrupt(field: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{field}: unexpected value {value:?}"))
}

fn json<T: serde::de::DeserializeOwned>(field: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{field}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising these plain structs and string lists cannot fail: they
    // have no maps with non-string keys and no custom `Serialize`.
    serde_json::to_string(value).unwrap_or_default()
}

/// Saturate a counter into the database's signed 64-bit range.
fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn rows<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

pub(crate) async fn write_audit(
    conn: &mut AnyConnection,
    a: &AuditEntry,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, target, diff) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&a.id)
    .bind(a.at)
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.target)
    .bind(a.diff.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Fail with `NotFound` when a targeted write touched no row.
fn one_row(result: sqlx::any::AnyQueryResult) -> Result<(), StoreError> {
    if result.rows_affected() == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

/// How many rows an audited write must change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Any number (an insert: a failure is an error from the database).
    Any,
    /// Exactly one; none is `NotFound`, and nothing is written.
    One,
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

impl SqlStore {
    /// Run `query` and write `audit` in one transaction: the change is never
    /// stored without its audit entry, and a failed change leaves neither.
    async fn audited(
        &self,
        query: AnyQuery<'_>,
        rows: Rows,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = query.execute(&mut *tx).await?;
        if rows == Rows::One {
            one_row(done)?;
        }
        write_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The record `sql` selects with `key` as `$1`, if any.
    async fn find<R, T>(&self, sql: &str, key: &str) -> Result<Option<T>, StoreError>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
        T: TryFrom<R, Error = StoreError>,
    {
        let row: Option<R> = sqlx::query_as(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(T::try_from).transpose()
    }

    /// One page of `cols` from `table` in id order (ids after the range's
    /// cursor).
    async fn page<R, T>(&self, cols: &str, table: &str, range: &Range) -> Result<Vec<T>, StoreError>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
        T: TryFrom<R, Error = StoreError>,
    {
        // `cols` and `table` are constants of this module, never input.
        let sql = format!("SELECT {cols} FROM {table} WHERE id > $1 ORDER BY id LIMIT $2");
        let r: Vec<R> = sqlx::query_as(&sql)
            .bind(range.after.as_deref().unwrap_or(""))
            .bind(range.limit)
            .fetch_all(&self.pool)
            .await?;
        rows(r)
    }
}

// === impl Store for SqlStore ===

#[async_trait::async_trait]
impl Store for SqlStore {
    async fn insert_user(&self, u: &User, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO users (id, email, status, plan, stripe_customer_id, limits, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&u.id)
        .bind(&u.email)
        .bind(u.status.as_str())
        .bind(&u.plan)
        .bind(&u.stripe_customer_id)
        .bind(to_json(&u.limits))
        .bind(u.created_at)
        .bind(u.updated_at);
        self.audited(query, Rows::Any, audit).await
    }

    async fn update_user(&self, u: &User, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE users SET email = $2, status = $3, plan = $4, stripe_customer_id = $5, \
             limits = $6, updated_at = $7 WHERE id = $1",
        )
        .bind(&u.id)
        .bind(&u.email)
        .bind(u.status.as_str())
        .bind(&u.plan)
        .bind(&u.stripe_customer_id)
        .bind(to_json(&u.limits))
        .bind(u.updated_at);
        self.audited(query, Rows::One, audit).await
    }

    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        self.find::<UserRow, _>(&sql, id).await
    }

    async fn list_users(&self, range: &Range) -> Result<Vec<User>, StoreError> {
        self.page::<UserRow, _>(USER_COLS, "users", range).await
    }

    async fn insert_api_key(&self, k: &ApiKey, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, prefix, sha256, models, expires_at, \
             revoked_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&k.id)
        .bind(&k.user_id)
        .bind(&k.name)
        .bind(&k.prefix)
        .bind(&k.sha256)
        .bind(k.models.as_ref().map(to_json))
        .bind(k.expires_at)
        .bind(k.revoked_at)
        .bind(k.created_at);
        self.audited(query, Rows::Any, audit).await
    }

    async fn revoke_api_key(
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

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1");
        self.find::<KeyRow, _>(&sql, id).await
    }

    async fn list_api_keys(
        &self,
        user_id: Option<&str>,
        range: &Range,
    ) -> Result<Vec<ApiKey>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE ($1 = '' OR user_id = $1) AND id > $2 \
             ORDER BY id LIMIT $3"
        );
        let r: Vec<KeyRow> = sqlx::query_as(&sql)
            .bind(user_id.unwrap_or(""))
            .bind(range.after.as_deref().unwrap_or(""))
            .bind(range.limit)
            .fetch_all(&self.pool)
            .await?;
        rows(r)
    }

    async fn insert_provider(
        &self,
        p: &SealedProvider,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let v = &p.provider;
        let query = sqlx::query(
            "INSERT INTO providers (id, name, kind, base_url, keys_sealed, key_count, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
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

    async fn update_provider(
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

    async fn get_provider(&self, id_or_name: &str) -> Result<Option<SealedProvider>, StoreError> {
        let sql = format!("SELECT {PROVIDER_COLS} FROM providers WHERE id = $1 OR name = $1");
        self.find::<ProviderRow, _>(&sql, id_or_name).await
    }

    async fn list_providers(&self, range: &Range) -> Result<Vec<SealedProvider>, StoreError> {
        self.page::<ProviderRow, _>(PROVIDER_COLS, "providers", range)
            .await
    }

    async fn insert_model(&self, m: &Model, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO models (id, name, provider, upstream_name, aliases, fallbacks, \
             input_price_per_mtok, output_price_per_mtok, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
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

    async fn update_model(&self, m: &Model, audit: &AuditEntry) -> Result<(), StoreError> {
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

    async fn delete_model(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query("DELETE FROM models WHERE id = $1").bind(id);
        self.audited(query, Rows::One, audit).await
    }

    async fn get_model(&self, id_or_name: &str) -> Result<Option<Model>, StoreError> {
        let sql = format!("SELECT {MODEL_COLS} FROM models WHERE id = $1 OR name = $1");
        self.find::<ModelRow, _>(&sql, id_or_name).await
    }

    async fn list_models(&self, range: &Range) -> Result<Vec<Model>, StoreError> {
        self.page::<ModelRow, _>(MODEL_COLS, "models", range).await
    }

    async fn snapshot_source(&self, now: Millis) -> Result<SnapshotSource, StoreError> {
        let mut tx = self.pool.begin().await?;
        let keys_sql = "SELECT k.id, k.user_id, k.name, k.prefix, k.sha256, k.models, \
             k.expires_at, k.revoked_at, k.created_at \
             FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE u.status = 'active' AND k.revoked_at IS NULL \
             AND (k.expires_at IS NULL OR k.expires_at > $1) ORDER BY k.id";
        let keys: Vec<KeyRow> = sqlx::query_as(keys_sql)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let providers: Vec<ProviderRow> = sqlx::query_as(&format!(
            "SELECT {PROVIDER_COLS} FROM providers ORDER BY id"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let models: Vec<ModelRow> =
            sqlx::query_as(&format!("SELECT {MODEL_COLS} FROM models ORDER BY id"))
                .fetch_all(&mut *tx)
                .await?;
        let (limits,): (String,) = sqlx::query_as("SELECT body FROM limits_document WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let plans: Vec<PlanRow> =
            sqlx::query_as(&format!("SELECT {PLAN_COLS} FROM plans ORDER BY id"))
                .fetch_all(&mut *tx)
                .await?;
        // `limits <> '{}'` is a cheap pre-filter; rows whose overrides
        // parse to nothing are dropped below.
        let user_limits: Vec<UserLimitsRow> = sqlx::query_as(
            "SELECT id, plan, limits FROM users WHERE plan IS NOT NULL OR limits <> '{}' \
             ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(SnapshotSource {
            keys: rows(keys)?,
            providers: rows(providers)?,
            models: rows(models)?,
            limits: parse_limits(&limits)?,
            plans: rows(plans)?,
            user_limits: rows::<_, UserLimits>(user_limits)?
                .into_iter()
                .filter(|u| u.plan.is_some() || !u.overrides.is_empty())
                .collect(),
        })
    }

    async fn insert_plan(&self, p: &Plan, audit: &AuditEntry) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO plans ({PLAN_COLS}) VALUES ($1, $2, $3, $4, $5, $6)");
        let query = sqlx::query(&sql)
            .bind(&p.id)
            .bind(&p.name)
            .bind(&p.description)
            .bind(to_json(&p.limits))
            .bind(p.created_at)
            .bind(p.updated_at);
        self.audited(query, Rows::Any, audit).await
    }

    async fn update_plan(&self, p: &Plan, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE plans SET description = $2, limits = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(&p.id)
        .bind(&p.description)
        .bind(to_json(&p.limits))
        .bind(p.updated_at);
        self.audited(query, Rows::One, audit).await
    }

    async fn delete_plan(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        let query = sqlx::query("DELETE FROM plans WHERE id = $1").bind(id);
        self.audited(query, Rows::One, audit).await
    }

    async fn get_plan(&self, id_or_name: &str) -> Result<Option<Plan>, StoreError> {
        let sql = format!("SELECT {PLAN_COLS} FROM plans WHERE id = $1 OR name = $1");
        self.find::<PlanRow, _>(&sql, id_or_name).await
    }

    async fn list_plans(&self, range: &Range) -> Result<Vec<Plan>, StoreError> {
        self.page::<PlanRow, _>(PLAN_COLS, "plans", range).await
    }

    async fn count_plan_users(&self, name: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT) FROM users WHERE plan = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        Ok(n)
    }

    async fn get_limits(&self) -> Result<RawLimits, StoreError> {
        let (body,): (String,) = sqlx::query_as("SELECT body FROM limits_document WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        parse_limits(&body)
    }

    async fn set_limits(
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

    async fn bump_config_version(&self) -> Result<u64, StoreError> {
        let (version,): (i64,) = sqlx::query_as(
            "UPDATE config_state SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&self.pool)
        .await?;
        u64::try_from(version).map_err(|_| corrupt("config_state.version", &version.to_string()))
    }

    async fn insert_usage(
        &self,
        events: &[UsageEvent],
        received_at: Millis,
    ) -> Result<IngestCounts, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut accepted = 0u64;
        for e in events {
            let done = sqlx::query(
                "INSERT INTO usage_events (event_id, request_id, timestamp_ms, day, key_id, \
                 user_id, model, provider, route, status, input_tokens, output_tokens, \
                 estimated, stream, attempts, duration_ms, upstream_ttfb_ms, outcome, \
                 received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                 $13, $14, $15, $16, $17, $18, $19) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&e.event_id)
            .bind(&e.request_id)
            .bind(i64_of(e.timestamp_ms))
            .bind(crate::service::usage::utc_day(e.timestamp_ms))
            .bind(&e.key_id)
            .bind(&e.user_id)
            .bind(&e.model)
            .bind(&e.provider)
            .bind(&e.route)
            .bind(i64::from(e.status))
            .bind(i64_of(e.input_tokens))
            .bind(i64_of(e.output_tokens))
            .bind(i64::from(e.estimated))
            .bind(i64::from(e.stream))
            .bind(i64::from(e.attempts))
            .bind(i64_of(e.duration_ms))
            .bind(e.upstream_ttfb_ms.map(i64_of))
            .bind(&e.outcome)
            .bind(received_at)
            .execute(&mut *tx)
            .await?;
            accepted += done.rows_affected();
        }
        tx.commit().await?;
        Ok(IngestCounts {
            accepted,
            duplicates: events.len() as u64 - accepted,
        })
    }

    async fn usage_by_day(&self, f: &UsageFilter) -> Result<Vec<UsageSums>, StoreError> {
        let r: Vec<UsageSumRow> = sqlx::query_as(
            "SELECT user_id, model, day, CAST(COUNT(*) AS BIGINT) AS requests, \
             CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
             CAST(SUM(output_tokens) AS BIGINT) AS output_tokens \
             FROM usage_events \
             WHERE ($1 = '' OR user_id = $1) AND ($2 = '' OR model = $2) \
             AND ($3 = '' OR day >= $3) AND ($4 = '' OR day <= $4) \
             GROUP BY user_id, model, day ORDER BY day, user_id, model",
        )
        .bind(f.user_id.as_deref().unwrap_or(""))
        .bind(f.model.as_deref().unwrap_or(""))
        .bind(f.from_day.as_deref().unwrap_or(""))
        .bind(f.to_day.as_deref().unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        Ok(r.into_iter()
            .map(|r| UsageSums {
                user_id: r.user_id,
                model: r.model,
                day: r.day,
                requests: r.requests,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
            })
            .collect())
    }

    async fn insert_audit(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        write_audit(&mut conn, audit).await
    }

    async fn list_audit(&self, range: &Range) -> Result<Vec<AuditEntry>, StoreError> {
        // Newest first: the cursor is the last id seen, so the next page
        // holds smaller ids. An empty cursor means "from the newest".
        let r: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, actor, action, target, diff FROM audit_log \
             WHERE ($1 = '' OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(range.after.as_deref().unwrap_or(""))
        .bind(range.limit)
        .fetch_all(&self.pool)
        .await?;
        rows(r)
    }

    async fn delete_audit_before(&self, before: Millis) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn insert_admin_token(
        &self,
        t: &AdminToken,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO admin_tokens (id, name, role, sha256, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(t.role.as_str())
        .bind(&t.sha256)
        .bind(t.created_at)
        .bind(t.revoked_at);
        self.audited(query, Rows::Any, audit).await
    }

    async fn revoke_admin_token(
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

    async fn admin_token_by_hash(&self, sha256: &str) -> Result<Option<AdminToken>, StoreError> {
        let row: Option<AdminTokenRow> = sqlx::query_as(
            "SELECT id, name, role, sha256, created_at, revoked_at FROM admin_tokens \
             WHERE sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.map(AdminToken::try_from).transpose()
    }

    async fn list_admin_tokens(&self, range: &Range) -> Result<Vec<AdminToken>, StoreError> {
        let r: Vec<AdminTokenRow> = sqlx::query_as(
            "SELECT id, name, role, sha256, created_at, revoked_at FROM admin_tokens \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(range.after.as_deref().unwrap_or(""))
        .bind(range.limit)
        .fetch_all(&self.pool)
        .await?;
        rows(r)
    }
}
