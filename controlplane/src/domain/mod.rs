//! The control plane's records as the API shows them: users, plans, keys,
//! providers, models, usage, audit entries and operator roles; bots
//! ([`bots`]), meter reports ([`billing`]), notifications
//! ([`notifications`]), price versions and budget events ([`money`]).
//!
//! These types are what the store returns and what handlers serialise, so
//! none of them holds a secret: API keys carry only their display prefix,
//! providers only how many master keys they have. They sit below every
//! other module: the store maps them to rows, the services, provisioner and
//! billing act on them, and none of them depends on any of those.
//!
//! Every status stored as text is a [`molt_config::text_enum!`], whose one
//! mapping is both the database value and the API's spelling.

pub mod billing;
pub mod bots;
pub mod money;
pub mod notifications;

pub use billing::{MeterReport, ReportStatus};
pub use bots::{Bot, BotRecord, BotStatus, Desired};
pub use molt_config::ProviderKind;
pub use money::{BudgetEvent, PriceVersion};
pub use notifications::{
    Channel, Delivery, DeliveryStatus, NewNotification, NoticeKind, Notification, WebhookEndpoint,
};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Unix time in milliseconds.
pub type Millis = i64;

/// The current Unix time in milliseconds.
pub fn now_ms() -> Millis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: std::time::Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `YYYY-MM-DD` (UTC) of a Unix time in milliseconds.
pub fn utc_day(timestamp_ms: u64) -> String {
    let secs = i64::try_from(timestamp_ms / 1000).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        // Beyond year 9999: not a real request time; keep it sortable.
        Err(_) => "9999-12-31".to_owned(),
    }
}

/// A new time-ordered id with a type prefix (`usr_`, `key_`, ...).
///
/// UUIDv7 in simple (hex) form sorts by creation time, so `ORDER BY id`
/// is creation order and the id of the last row is the pagination cursor.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

molt_config::text_enum! {
    /// Whether a user may use the gateway. Only `active` users' keys reach the
    /// data planes.
    #[derive(ToSchema)]
    pub enum UserStatus {
        Active = "active",
        Suspended = "suspended",
        PastDue = "past_due",
        /// Deleted at the identity provider: keys revoked, bots stopped.
        Deactivated = "deactivated",
    }
}

/// A user's own limits, each field overriding the plan's (the contract's
/// six-field limit set; absent fields use the plan's, then the defaults).
pub type LimitOverrides = molt_config::limits::RawLimitSet;

/// A named limit set users are on. Its limits apply to each of its users
/// over the deployment defaults, field by field; a user's own overrides
/// win over them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub id: String,
    /// A slug (`pro`, `team-2025`); what `users.plan` names.
    pub name: String,
    pub description: String,
    pub limits: molt_config::limits::RawLimitSet,
    /// Added to the models' prices in what its users are billed, in basis
    /// points (100 = 1%); applied at ingest, kept apart from the cost.
    pub markup_bp: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub status: UserStatus,
    /// The name of the plan the user is on; `null` means the deployment
    /// defaults.
    pub plan: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub limits: LimitOverrides,
    /// The identity provider's (Clerk's) user id, once its webhook linked
    /// the user; `null` for users made through the API only.
    pub clerk_id: Option<String>,
    /// Clerk's time (Unix ms) of the last identity change applied; internal
    /// (orders webhook deliveries), never serialised.
    #[serde(skip)]
    pub clerk_updated_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A client API key as stored: the hash, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The first characters of the key, to tell keys apart in listings.
    pub prefix: String,
    /// Models (names or aliases) the key may use; `null` means all.
    pub models: Option<Vec<String>>,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    pub created_at: Millis,
    /// Hex SHA-256 of the key; internal, never serialised.
    #[serde(skip)]
    pub sha256: String,
}

/// A provider as the API shows it: its master keys are never included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// How many master keys are stored (encrypted).
    pub key_count: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A provider row with its sealed (encrypted) master keys, for the snapshot
/// compiler and key rotation. Not `Serialize`: it never leaves the service.
#[derive(Debug, Clone)]
pub struct SealedProvider {
    pub provider: Provider,
    /// Output of [`crate::crypto::Cipher::seal`]; opaque to the store.
    pub keys_sealed: String,
}

molt_config::text_enum! {
    /// What holds a value sealed at rest: each kind is one column of one
    /// table, sealed bound to its row's id.
    #[derive(ToSchema, PartialOrd, Ord)]
    pub enum SealedKind {
        /// `providers.keys_sealed`: a provider's master keys.
        ProviderKeys = "provider_keys",
        /// `bots.token_sealed`: a bot's gateway token.
        BotToken = "bot_token",
    }
}

/// One value sealed at rest and the id of its row (bound into it).
#[derive(Debug, Clone)]
pub struct SealedValue {
    pub id: String,
    pub sealed: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// Name the provider knows the model by; `null` means `name`.
    pub upstream_name: Option<String>,
    pub aliases: Vec<String>,
    /// Canonical names of the models tried next, in order.
    pub fallbacks: Vec<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A model as the API shows it: the record and the price version in force
/// now (`null`: unpriced, its usage is flagged rather than costed at 0).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PricedModel {
    #[serde(flatten)]
    pub model: Model,
    pub price: Option<PriceVersion>,
}

/// One audit log entry: who did what to which record, and what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: Millis,
    /// The operator: `admin_token:<id>` or `bootstrap`.
    pub actor: String,
    /// `<resource>.<verb>`, e.g. `user.create`.
    pub action: String,
    /// The id of the record acted on.
    pub target: String,
    /// `{field: {"from": old, "to": new}}`, secrets removed.
    #[schema(value_type = Object)]
    pub diff: serde_json::Value,
}

molt_config::text_enum! {
    /// Operator roles. `ReadOnly` may read everything and change nothing.
    #[derive(ToSchema)]
    pub enum Role {
        Admin = "admin",
        ReadOnly = "read_only",
    }
}

/// An operator token as stored (hashed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdminToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
    #[serde(skip)]
    pub sha256: String,
}

/// A page of a list and the cursor for the next one (`null` at the end).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Which page of a list to read.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// Return rows with ids strictly after this one.
    pub cursor: Option<String>,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(1_700_000_000_000), "2023-11-14");
    }
}
