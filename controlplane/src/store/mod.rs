//! The control plane's storage boundary: the [`Store`] trait the services
//! use, and its one implementation, [`SqlStore`], over SQLite or PostgreSQL.
//!
//! The trait is shaped around what the services need, not around tables:
//! every mutating method takes the [`AuditEntry`] describing it and writes
//! both in one transaction, so a change is never stored without its audit
//! record and a failed change leaves neither. The store stores what it is
//! given; validation and diffs are the services' business.

mod sql;

pub(crate) use sql::write_audit;
pub use sql::SqlStore;

use crate::domain::{
    AdminToken, ApiKey, AuditEntry, LimitOverrides, Millis, Model, Plan, SealedProvider, User,
};
use molt_config::wire::RawLimits;
use molt_config::UsageEvent;

/// What went wrong in the database, in terms the services can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record to change does not exist.
    #[error("record not found")]
    NotFound,
    /// A unique constraint (e.g. email, name) rejected the write.
    #[error("a record with the same unique value already exists")]
    Duplicate,
    /// A foreign key rejected the write (the referenced record is missing,
    /// or the record is still referenced).
    #[error("the write refers to a missing record or is still referenced")]
    Reference,
    /// A stored value could not be read back (a bug or manual edit).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Duplicate,
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => Self::Reference,
            _ => Self::Database(e),
        }
    }
}

/// Which rows of a list to read: ids strictly after `after`, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub after: Option<String>,
    pub limit: i64,
}

/// Filters for usage queries; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub user_id: Option<String>,
    pub model: Option<String>,
    /// First day included, `YYYY-MM-DD`.
    pub from_day: Option<String>,
    /// Last day included, `YYYY-MM-DD`.
    pub to_day: Option<String>,
}

/// Token sums for one user, model and day, before pricing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSums {
    pub user_id: String,
    pub model: String,
    pub day: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Everything a config snapshot is compiled from, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct SnapshotSource {
    /// Unrevoked, unexpired keys of active users, by id.
    pub keys: Vec<ApiKey>,
    pub providers: Vec<SealedProvider>,
    pub models: Vec<Model>,
    /// The deployment-wide limits document.
    pub limits: RawLimits,
    /// Every plan, by id.
    pub plans: Vec<Plan>,
    /// The users on a plan or with overrides of their own, by id.
    pub user_limits: Vec<UserLimits>,
}

impl SnapshotSource {
    /// Replace (or add) one user's entry: what the snapshot would hold if
    /// that user's plan and overrides were `u`.
    pub fn set_user_limits(&mut self, u: UserLimits) {
        self.user_limits.retain(|e| e.user_id != u.user_id);
        self.user_limits.push(u);
    }
}

/// What a user's limits are compiled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLimits {
    pub user_id: String,
    /// The plan's name.
    pub plan: Option<String>,
    pub overrides: LimitOverrides,
}

/// Result of an ingest batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestCounts {
    pub accepted: u64,
    pub duplicates: u64,
}

/// The control plane's storage, as the services use it. Bots and their
/// provisioning state are in [`crate::provision::BotStore`].
#[async_trait::async_trait]
pub trait Store: crate::provision::BotStore + std::fmt::Debug + Send + Sync + 'static {
    async fn insert_user(&self, user: &User, audit: &AuditEntry) -> Result<(), StoreError>;
    async fn update_user(&self, user: &User, audit: &AuditEntry) -> Result<(), StoreError>;
    async fn get_user(&self, id: &str) -> Result<Option<User>, StoreError>;
    async fn list_users(&self, range: &Range) -> Result<Vec<User>, StoreError>;

    async fn insert_api_key(&self, key: &ApiKey, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Set `revoked_at` on an unrevoked key; `NotFound` if there is none.
    async fn revoke_api_key(
        &self,
        id: &str,
        at: Millis,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn list_api_keys(
        &self,
        user_id: Option<&str>,
        range: &Range,
    ) -> Result<Vec<ApiKey>, StoreError>;

    async fn insert_provider(
        &self,
        provider: &SealedProvider,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    async fn update_provider(
        &self,
        provider: &SealedProvider,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// By id or by name.
    async fn get_provider(&self, id_or_name: &str) -> Result<Option<SealedProvider>, StoreError>;
    async fn list_providers(&self, range: &Range) -> Result<Vec<SealedProvider>, StoreError>;

    async fn insert_model(&self, model: &Model, audit: &AuditEntry) -> Result<(), StoreError>;
    async fn update_model(&self, model: &Model, audit: &AuditEntry) -> Result<(), StoreError>;
    async fn delete_model(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError>;
    /// By id or by name.
    async fn get_model(&self, id_or_name: &str) -> Result<Option<Model>, StoreError>;
    async fn list_models(&self, range: &Range) -> Result<Vec<Model>, StoreError>;

    async fn insert_plan(&self, plan: &Plan, audit: &AuditEntry) -> Result<(), StoreError>;
    /// Change a plan's description and limits (the name is fixed).
    async fn update_plan(&self, plan: &Plan, audit: &AuditEntry) -> Result<(), StoreError>;
    /// `Reference` while users are on it.
    async fn delete_plan(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError>;
    /// By id or by name.
    async fn get_plan(&self, id_or_name: &str) -> Result<Option<Plan>, StoreError>;
    async fn list_plans(&self, range: &Range) -> Result<Vec<Plan>, StoreError>;
    /// How many users are on the plan named `name`.
    async fn count_plan_users(&self, name: &str) -> Result<i64, StoreError>;

    /// The deployment-wide limits document.
    async fn get_limits(&self) -> Result<RawLimits, StoreError>;
    /// Replace the limits document.
    async fn set_limits(
        &self,
        limits: &RawLimits,
        at: Millis,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Everything the config snapshot needs, as of `now`.
    async fn snapshot_source(&self, now: Millis) -> Result<SnapshotSource, StoreError>;
    /// Increment and return the persisted config version.
    async fn bump_config_version(&self) -> Result<u64, StoreError>;

    /// Store events, ignoring those whose `event_id` is already stored, all
    /// in one transaction.
    async fn insert_usage(
        &self,
        events: &[UsageEvent],
        received_at: Millis,
    ) -> Result<IngestCounts, StoreError>;
    async fn usage_by_day(&self, filter: &UsageFilter) -> Result<Vec<UsageSums>, StoreError>;

    /// An audit entry for an action that changes nothing else in the store
    /// (e.g. minting a client JWT).
    async fn insert_audit(&self, audit: &AuditEntry) -> Result<(), StoreError>;
    async fn list_audit(&self, range: &Range) -> Result<Vec<AuditEntry>, StoreError>;
    /// Delete entries older than `before`; returns how many.
    async fn delete_audit_before(&self, before: Millis) -> Result<u64, StoreError>;

    async fn insert_admin_token(
        &self,
        token: &AdminToken,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    async fn revoke_admin_token(
        &self,
        id: &str,
        at: Millis,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// An unrevoked token with this hash.
    async fn admin_token_by_hash(&self, sha256: &str) -> Result<Option<AdminToken>, StoreError>;
    async fn list_admin_tokens(&self, range: &Range) -> Result<Vec<AdminToken>, StoreError>;
}
