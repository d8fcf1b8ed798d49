//! The control plane's business logic: every rule about users, plans, keys,
//! providers, models and their prices, usage and its cost, dollar budgets,
//! audit, notifications and operator auth lives here, between the thin HTTP
//! handlers and storage (and re-encryption of secrets at rest,
//! [`secrets`]). Each service file declares the slice
//! of storage it needs ([`users::UserStore`], [`keys::KeyStore`], ...,
//! [`AuditStore`] here) with `store::store_trait!`, which implements it
//! for the store; [`ServiceStore`] is all of them, what [`Service`] holds.
//!
//! Every mutation:
//! 1. is authorised here (`Operator::require_admin`), not in handlers;
//! 2. runs under one write lock, so "check, then write, then publish" is
//!    atomic within this control plane (one instance per database);
//! 3. when it changes what data planes see, is first checked against the
//!    compiled snapshot ([`Publisher::check`]) so an invalid change is
//!    refused before anything is stored;
//! 4. is written together with its audit entry in one transaction;
//! 5. triggers a snapshot refresh.

pub mod auth;
pub mod bots;
pub mod budget;
pub mod identity;
pub mod keys;
pub mod limits;
pub mod models;
pub mod notifications;
pub mod plans;
pub mod prices;
pub mod providers;
pub mod secrets;
pub mod usage;
pub mod users;

use crate::crypto::{Cipher, CryptoError};
use crate::domain::{new_id, now_ms, AuditEntry, Millis, Page, PageRequest, Role};
use crate::metrics::Metrics;
use crate::snapshot::{JwtSettings, Publisher, SnapshotError, SnapshotStore};
use crate::store::{store_trait, Range, SqlStore, StoreError};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

store_trait! {
    /// The audit log, as every service and the retention job use it.
    pub trait AuditStore: Send + Sync {
        /// An entry for an action that changes nothing else in the store (e.g.
        /// minting a client JWT).
        async fn insert_audit(&self, audit: &AuditEntry) -> Result<(), StoreError>;
        /// Newest first.
        async fn list_audit(&self, range: &Range) -> Result<Vec<AuditEntry>, StoreError>;
        /// Delete entries older than `before`; returns how many.
        async fn delete_audit_before(&self, before: Millis) -> Result<u64, StoreError>;
    }
}

/// Everything the services need from storage: each service's slice.
pub trait ServiceStore:
    users::UserStore
    + identity::IdentityStore
    + keys::KeyStore
    + providers::ProviderStore
    + models::ModelStore
    + prices::PriceStore
    + budget::BudgetStore
    + plans::PlanStore
    + limits::LimitsStore
    + usage::UsageStore
    + auth::AdminTokenStore
    + bots::BotWishStore
    + secrets::SealedStore
    + notifications::NotificationStore
    + AuditStore
    + std::fmt::Debug
    + 'static
{
}

impl ServiceStore for SqlStore {}

/// Largest page a list returns.
pub const MAX_PAGE: u32 = 500;
/// Page size when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 50;

/// What a service call can fail with. Mapped to HTTP in `api::error` only.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// Well-formed input that breaks a rule (unknown model, bad reference).
    #[error("{0}")]
    Invalid(String),
    /// Malformed input.
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("this operation needs the admin role")]
    Forbidden,
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate => Self::Conflict("a record with the same value exists".into()),
            StoreError::Reference => {
                Self::Conflict("the change refers to a missing or in-use record".into())
            }
            other => Self::Store(other),
        }
    }
}

impl From<SnapshotError> for ServiceError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Invalid(errors) => Self::Invalid(format!(
                "the change would make the data plane config invalid: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            SnapshotError::Store(e) => e.into(),
            SnapshotError::Decrypt { .. } => Self::Internal(e.to_string()),
        }
    }
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// `admin_token:<id>` or `bootstrap`, recorded in the audit log.
    pub actor: String,
    pub role: Role,
}

impl Operator {
    pub fn require_admin(&self) -> Result<(), ServiceError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::ReadOnly => Err(ServiceError::Forbidden),
        }
    }
}

/// Secrets and knobs the services need, resolved from the config file.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub cipher: Cipher,
    pub jwt: JwtSettings,
    /// Hex SHA-256 of the bootstrap admin token, if one is configured.
    pub bootstrap_admin_sha256: Option<String>,
    /// Hex SHA-256 of the token data planes present.
    pub dataplane_token_sha256: String,
    /// Longest lifetime of a minted client JWT.
    pub max_jwt_ttl: Duration,
    /// `[browser]` shipped to every data plane, if configured.
    pub browser: Option<molt_config::browser::RawBrowser>,
    /// The identity provider's tokens data planes accept (`[identity]`
    /// with a `jwks_url`), if configured.
    pub identity_tokens: Option<crate::snapshot::IdentityTokens>,
}

/// The services, shared by every handler.
#[derive(Debug)]
pub struct Service {
    store: Arc<dyn ServiceStore>,
    publisher: Publisher,
    settings: ServiceSettings,
    metrics: Metrics,
    write_lock: Mutex<()>,
}

impl Service {
    /// Build the services and publish the first snapshot (compiled from
    /// `snapshots`).
    pub async fn start(
        store: Arc<dyn ServiceStore>,
        snapshots: Arc<dyn SnapshotStore>,
        settings: ServiceSettings,
        metrics: Metrics,
    ) -> Result<Self, ServiceError> {
        let publisher = Publisher::start(snapshots, &settings, metrics.clone()).await?;
        Ok(Self {
            store,
            publisher,
            settings,
            metrics,
            write_lock: Mutex::new(()),
        })
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The at-rest cipher (the provisioner opens bots' gateway tokens).
    pub fn cipher(&self) -> &Cipher {
        &self.settings.cipher
    }

    /// Recompile and publish if anything changed (after a write, and
    /// periodically so expiring keys drop out on time).
    pub async fn refresh_snapshot(&self) {
        if let Err(e) = self.publisher.refresh().await {
            tracing::error!(error = %e, "config snapshot not published");
        }
    }

    /// Delete audit entries older than `retention`; returns how many.
    pub async fn run_audit_retention(&self, retention: Duration) -> Result<u64, ServiceError> {
        let cutoff = now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(0));
        let deleted = self.store.delete_audit_before(cutoff).await;
        let result = if deleted.is_ok() { "ok" } else { "error" };
        self.metrics
            .job_runs
            .with_label_values(&["audit_retention", result])
            .inc();
        Ok(deleted?)
    }

    /// Record an admin action that changes nothing the store's other
    /// writes cover (e.g. a billing flush): `detail` is the entry's diff
    /// "to" side. Only admins act, so only admins are recorded here.
    pub async fn audit_action(
        &self,
        op: &Operator,
        action: &str,
        target: &str,
        detail: &serde_json::Value,
    ) -> Result<(), ServiceError> {
        op.require_admin()?;
        let entry = audit_entry(op, action, target, None, Some(detail));
        self.store.insert_audit(&entry).await?;
        Ok(())
    }

    pub async fn list_audit(
        &self,
        _op: &Operator,
        page: &PageRequest,
    ) -> Result<Page<AuditEntry>, ServiceError> {
        let range = range(page)?;
        let items = self.store.list_audit(&range).await?;
        Ok(paginate(items, page, |e| e.id.clone()))
    }
}

/// An audit entry for `action` on `target` by `op`, with the change from
/// `before` to `after` (either may be absent for creates and deletes).
pub fn audit_entry<T: Serialize>(
    op: &Operator,
    action: &str,
    target: &str,
    before: Option<&T>,
    after: Option<&T>,
) -> AuditEntry {
    AuditEntry {
        id: new_id("aud"),
        at: now_ms(),
        actor: op.actor.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        diff: diff(
            before.and_then(|b| serde_json::to_value(b).ok()),
            after.and_then(|a| serde_json::to_value(a).ok()),
        ),
    }
}

/// `{field: {"from": old, "to": new}}` for every top-level field that
/// differs. Only the API views are diffed, and they hold no secrets.
fn diff(before: Option<serde_json::Value>, after: Option<serde_json::Value>) -> serde_json::Value {
    use serde_json::{Map, Value};
    let obj = |v: Option<Value>| match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let (before, after) = (obj(before), obj(after));
    let mut out = Map::new();
    for key in before.keys().chain(after.keys()) {
        let (b, a) = (before.get(key), after.get(key));
        if b != a && !out.contains_key(key) {
            out.insert(
                key.clone(),
                serde_json::json!({"from": b.cloned().unwrap_or(Value::Null), "to": a.cloned().unwrap_or(Value::Null)}),
            );
        }
    }
    Value::Object(out)
}

/// Validate a page request and turn it into a store range that reads one
/// extra row (to know whether there is a next page).
fn range(page: &PageRequest) -> Result<Range, ServiceError> {
    if page.limit == 0 || page.limit > MAX_PAGE {
        return Err(ServiceError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(Range {
        after: page.cursor.clone().filter(|c| !c.is_empty()),
        limit: i64::from(page.limit) + 1,
    })
}

fn paginate<T>(mut items: Vec<T>, page: &PageRequest, id: impl Fn(&T) -> String) -> Page<T> {
    let limit = page.limit as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(id)
    } else {
        None
    };
    Page { items, next_cursor }
}

/// The contract's own check of a limit set (a plan's, a user's overrides),
/// each error under its field path `limits.<field>`.
fn check_limits(limits: &molt_config::limits::RawLimitSet) -> Result<(), ServiceError> {
    limits.validate("limits").map_err(|errors| {
        ServiceError::Invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

fn not_found(kind: &'static str, id: &str) -> ServiceError {
    ServiceError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_lists_changed_fields_only() {
        let d = diff(
            Some(json!({"a": 1, "b": 2, "c": 3})),
            Some(json!({"a": 1, "b": 5, "d": 4})),
        );
        assert_eq!(
            d,
            json!({"b": {"from": 2, "to": 5}, "c": {"from": 3, "to": null}, "d": {"from": null, "to": 4}})
        );
        assert_eq!(
            diff(None, Some(json!({"x": 1}))),
            json!({"x": {"from": null, "to": 1}})
        );
    }

    #[test]
    fn pages_report_a_cursor_only_when_more_remain() {
        let page = PageRequest {
            cursor: None,
            limit: 2,
        };
        let p = paginate(vec![1, 2, 3], &page, |n| n.to_string());
        assert_eq!((p.items, p.next_cursor), (vec![1, 2], Some("2".into())));
        let p = paginate(vec![1, 2], &page, |n| n.to_string());
        assert_eq!(p.next_cursor, None);
    }
}
