//! The control plane's storage: the SQL of every table, one file per
//! resource, over one pool of SQLite or PostgreSQL connections
//! ([`SqlStore`]).
//!
//! The store depends on the domain types and sqlx, nothing above them. It
//! does not say what its callers need: each caller declares the narrow
//! trait it uses with `store_trait!`, which implements it for
//! [`SqlStore`] by calling the method of the same name here
//! (`service::ServiceStore` and its per-resource parts,
//! `snapshot::SnapshotStore`, `provision::WorkerStore`,
//! `billing::BillingStore`). The store stores what it is given; validation
//! and diffs are the services' business.
//!
//! One owner per table: only the file named writes it (others may read it
//! in a join).
//!
//! | table | owner | written by |
//! | --- | --- | --- |
//! | `users` | [`users`] | user service; billing through the user service |
//! | `api_keys` | [`keys`] | key service |
//! | `providers` | [`providers`] | provider service; re-encryption (`keys_sealed`, through [`sealed`]) |
//! | `models` | [`models`] | model service |
//! | `model_prices` | [`prices`] | model service (insert only: a price change is a new version) |
//! | `plans` | [`plans`] | plan service |
//! | `limits_document`, `config_state` | [`config`] | limits service; snapshot publisher (version) |
//! | `usage_events` | [`usage`] | ingest (insert, with the cost fixed); billing's claim of rows for a report (`meter_report`) |
//! | `budget_events` | [`budget`] | usage service (threshold crossings, once each) |
//! | `audit_log` | [`audit`] | every audited write; audit retention |
//! | `admin_tokens` | [`admin_tokens`] | operator auth service |
//! | `bots` | [`bots`] | bot service (wishes); provisioning worker (steps, claims); re-encryption (`token_sealed`, through [`sealed`]) |
//! | `stripe_events`, `billing_past_due`, `meter_reports` | [`billing`] | billing |
//! | `clerk_events` | [`identity`] | identity webhooks (their user changes go through the user service) |
//! | `notifications`, `notification_deliveries`, `webhook_endpoints` | [`notifications`] | the writes that notify ([`notifications::enqueue`], in their own transaction: provisioning steps, billing's past-due mark, usage ingest); notification service (read marks, replays, endpoints); delivery worker (claims, results) |
//!
//! Every write an operator makes takes the [`AuditEntry`](crate::domain::AuditEntry)
//! describing it and writes both in one transaction, so a change is never
//! stored without its audit record and a failed change leaves neither.
//!
//! Why sqlx's `Any` driver rather than two implementations: the schema needs
//! nothing either database lacks (TEXT, BIGINT, DOUBLE PRECISION, `ON
//! CONFLICT DO NOTHING`, `RETURNING`), both accept `$n` placeholders, and a
//! single code path means the tests that run against both exercise exactly
//! the code that ships. The price is `Any`'s small type set, which is why
//! times are Unix milliseconds, flags are 0/1 BIGINTs, lists are JSON TEXT
//! and sums are `CAST(... AS BIGINT)` (PostgreSQL's `SUM(bigint)` is
//! NUMERIC). Optional filters use `''` as "no filter" (`$1 = '' OR col =
//! $1`) instead of NULL parameters, whose type PostgreSQL cannot always
//! infer. Every value is a bind; SQL text is only ever constant fragments
//! (`concat!` of a file's `columns!()`, which `query::record!` defines
//! from the same field list the record is read and inserted by), never
//! built from values.

mod admin_tokens;
mod audit;
mod billing;
mod bots;
mod budget;
mod config;
mod identity;
mod keys;
mod models;
mod notifications;
mod plans;
mod prices;
mod providers;
mod query;
mod sealed;
mod snapshot;
mod usage;
mod users;

pub use billing::HandledEvent;
pub use billing::ReportInput;
pub use bots::{StepUpdate, WishChange};
pub use budget::BudgetSource;
pub use identity::IdentityEvent;
pub use notifications::{DeliveryJob, DeliveryUpdate, OutboxDepth};
pub use snapshot::{SnapshotSource, UserLimits};
pub use usage::{
    ByStatus, Claimed, EventCost, IngestCounts, OpenWindow, PriceEvent, UsageFilter, UsageSums,
    UserTokens,
};

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::AnyPool;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Declares a caller's narrow storage trait (an `#[async_trait]` trait of
/// `async fn`s) and implements it for [`SqlStore`] by calling the store's
/// inherent method of the same name with the same arguments. So each
/// signature is written once, by the caller that owns the trait, and the
/// SQL has one implementation.
macro_rules! store_trait {
    (
        $(#[$attr:meta])*
        $vis:vis trait $name:ident: $($bound:ident)::+ $(+ $($bounds:ident)::+)* {
            $(
                $(#[$fn_attr:meta])*
                async fn $fn:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        $(#[$attr])*
        #[async_trait::async_trait]
        $vis trait $name: $($bound)::+ $(+ $($bounds)::+)* {
            $(
                $(#[$fn_attr])*
                async fn $fn(&self $(, $arg: $ty)*) -> $ret;
            )*
        }

        #[async_trait::async_trait]
        impl $name for $crate::store::SqlStore {
            $(
                async fn $fn(&self $(, $arg: $ty)*) -> $ret {
                    $crate::store::SqlStore::$fn(self $(, $arg)*).await
                }
            )*
        }
    };
}
pub(crate) use store_trait;

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

/// Every table, over a pool of SQLite or PostgreSQL connections chosen by
/// the URL's scheme (`sqlite://path?mode=rwc`, `postgres://...`).
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
}
