//! The identity provider (Clerk): its webhooks keep Molt's users in step
//! (`POST /webhooks/clerk`, handled here; the HTTP handler is
//! `api::identity`'s), and its signing keys ([`jwks`]) reach every data
//! plane in the snapshot, so clients can call the gateway with the
//! provider's own session tokens.
//!
//! A delivery is verified as Svix signs it ([`svix`]), then applied once:
//! its Svix message id is recorded in `clerk_events` after the change (a
//! redelivery of a handled id changes nothing; every change is idempotent,
//! so a crash between the two and the redelivery re-applies harmlessly).
//! Deliveries are serialised by a mutex so two copies cannot interleave.
//! The user changes themselves are the services' (`service::identity`):
//! `user.created` and `user.updated` make, link or update a user,
//! `user.deleted` deactivates one. A deleted Clerk user stays deleted: a
//! create or update that arrives after its delete (Svix does not promise
//! order) finds the delete in `clerk_events` and does nothing.

pub mod jwks;
pub mod metrics;
pub mod svix;

use crate::domain::{now_ms, Millis, Role};
use crate::service::identity::{IdentityOutcome, IdentityUser};
use crate::service::{Operator, Service, ServiceError};
use crate::store::{store_trait, IdentityEvent, StoreError};
use metrics::IdentityMetrics;
use serde_json::Value;
use std::sync::Arc;
use svix::{SvixHeaders, WebhookSecret};
use tokio::sync::Mutex;

/// What identity webhooks can fail with. Mapped to HTTP in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Missing, unparsable, non-matching or stale Svix headers.
    #[error("invalid webhook signature: {0}")]
    Signature(&'static str),
    /// A verified body that is not a usable event.
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

store_trait! {
    /// The webhook's record of deliveries (`clerk_events`).
    pub trait IdentityEventStore: std::fmt::Debug + Send + Sync {
        async fn identity_event_seen(&self, svix_id: &str) -> Result<bool, StoreError>;
        async fn record_identity_event(&self, event: &IdentityEvent<'_>) -> Result<bool, StoreError>;
        async fn identity_deleted(&self, clerk_id: &str) -> Result<bool, StoreError>;
    }
}

/// What a delivery came to (also the `result` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Applied(IdentityOutcome),
    /// This message id was handled before.
    Duplicate,
    /// An event type Molt does not act on.
    Ignored,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied(o) => o.as_str(),
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }
}

/// Event types with their own metric label; others count as `other`.
const KNOWN_TYPES: [&str; 3] = ["user.created", "user.updated", "user.deleted"];

fn type_label(kind: &str) -> &'static str {
    KNOWN_TYPES
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

/// The operator identity webhooks act as (in the audit log).
fn clerk_operator() -> Operator {
    Operator {
        actor: "clerk_webhook".to_owned(),
        role: Role::Admin,
    }
}

/// Identity webhooks, wired to the services.
#[derive(Debug)]
pub struct Identity {
    service: Arc<Service>,
    store: Arc<dyn IdentityEventStore>,
    secret: WebhookSecret,
    metrics: IdentityMetrics,
    /// One delivery at a time.
    lock: Mutex<()>,
}

impl Identity {
    pub fn new(
        service: Arc<Service>,
        store: Arc<dyn IdentityEventStore>,
        secret: WebhookSecret,
        metrics: IdentityMetrics,
    ) -> Self {
        Self {
            service,
            store,
            secret,
            metrics,
            lock: Mutex::new(()),
        }
    }

    /// Verify and apply one delivery.
    pub async fn handle_webhook(
        &self,
        headers: &SvixHeaders<'_>,
        body: &[u8],
    ) -> Result<Delivery, IdentityError> {
        let result = self.verified_delivery(headers, body).await;
        match &result {
            Ok((kind, delivery)) => self
                .metrics
                .webhooks
                .with_label_values(&[type_label(kind), delivery.as_str()])
                .inc(),
            Err(e) => {
                self.metrics
                    .webhooks
                    .with_label_values(&["unknown", "rejected"])
                    .inc();
                tracing::warn!(error = %e, "clerk webhook rejected");
            }
        }
        result.map(|(_, delivery)| delivery)
    }

    async fn verified_delivery(
        &self,
        headers: &SvixHeaders<'_>,
        body: &[u8],
    ) -> Result<(String, Delivery), IdentityError> {
        let svix_id = svix::verify(headers, body, &self.secret, now_ms() / 1000)?;
        let event: Value = serde_json::from_slice(body)
            .map_err(|e| IdentityError::Malformed(format!("body is not JSON: {e}")))?;
        let kind = text(&event, &["type"])
            .ok_or_else(|| IdentityError::Malformed("event has no type".into()))?
            .to_owned();
        let _one = self.lock.lock().await;
        if self.store.identity_event_seen(svix_id).await? {
            return Ok((kind, Delivery::Duplicate));
        }
        let (delivery, clerk_id, at) = match kind.as_str() {
            "user.created" | "user.updated" | "user.deleted" => {
                let change = UserChange::parse(&event)?;
                let outcome = self.apply(&kind, &change).await?;
                (Delivery::Applied(outcome), Some(change.clerk_id), change.at)
            }
            _ => (Delivery::Ignored, None, event_time(&event).unwrap_or(0)),
        };
        let user = match &clerk_id {
            Some(id) => self
                .service
                .user_by_clerk_id(&clerk_operator(), id)
                .await?
                .map(|u| u.id),
            None => None,
        };
        self.store
            .record_identity_event(&IdentityEvent {
                svix_id,
                kind: &kind,
                clerk_id: clerk_id.as_deref(),
                user_id: user.as_deref(),
                event_at: at,
                received_at: now_ms(),
            })
            .await?;
        Ok((kind, delivery))
    }

    async fn apply(
        &self,
        kind: &str,
        change: &UserChange,
    ) -> Result<IdentityOutcome, IdentityError> {
        let op = clerk_operator();
        if kind == "user.deleted" {
            return Ok(self
                .service
                .identity_delete(&op, &change.clerk_id, change.at)
                .await?);
        }
        if self.store.identity_deleted(&change.clerk_id).await? {
            // Its delete was handled already: this is an older state.
            return Ok(IdentityOutcome::Stale);
        }
        let who = IdentityUser {
            clerk_id: change.clerk_id.clone(),
            email: change.email.clone(),
            at: change.at,
        };
        Ok(self.service.identity_upsert(&op, &who).await?)
    }
}

/// The user a `user.*` event is about, as of when.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserChange {
    clerk_id: String,
    /// The primary email address (or the first one), if any.
    email: Option<String>,
    /// Clerk's `data.updated_at`, else the event's `timestamp` (Unix ms).
    at: Millis,
}

impl UserChange {
    fn parse(event: &Value) -> Result<Self, IdentityError> {
        let data = event
            .get("data")
            .filter(|d| d.is_object())
            .ok_or_else(|| IdentityError::Malformed("event has no data object".into()))?;
        let clerk_id = text(data, &["id"])
            .ok_or_else(|| IdentityError::Malformed("event data has no user id".into()))?
            .to_owned();
        let at = data
            .get("updated_at")
            .and_then(Value::as_i64)
            .or_else(|| event_time(event))
            .ok_or_else(|| {
                IdentityError::Malformed("event has neither data.updated_at nor timestamp".into())
            })?;
        Ok(Self {
            clerk_id,
            email: primary_email(data),
            at,
        })
    }
}

/// The event's own time (Clerk's envelope `timestamp`, Unix ms).
fn event_time(event: &Value) -> Option<Millis> {
    event.get("timestamp").and_then(Value::as_i64)
}

/// The address `primary_email_address_id` names, else the first one.
fn primary_email(data: &Value) -> Option<String> {
    let list = data.get("email_addresses")?.as_array()?;
    let primary = text(data, &["primary_email_address_id"]);
    list.iter()
        .find(|e| primary.is_some() && text(e, &["id"]) == primary)
        .or_else(|| list.first())
        .and_then(|e| text(e, &["email_address"]))
        .map(str::to_owned)
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_events_parse_as_clerk_sends_them() {
        let created = json!({"object": "event", "type": "user.created", "timestamp": 1_700_000_000_500i64,
            "data": {"id": "user_2a", "object": "user", "updated_at": 1_700_000_000_000i64,
                "primary_email_address_id": "idn_2",
                "email_addresses": [
                    {"id": "idn_1", "email_address": "old@example.com"},
                    {"id": "idn_2", "email_address": "Ada@Example.com"}]}});
        let c = UserChange::parse(&created).unwrap();
        assert_eq!(c.clerk_id, "user_2a");
        assert_eq!(c.email.as_deref(), Some("Ada@Example.com"));
        assert_eq!(c.at, 1_700_000_000_000);

        let deleted = json!({"object": "event", "type": "user.deleted", "timestamp": 1_700_000_009_000i64,
            "data": {"id": "user_2a", "object": "user", "deleted": true}});
        let d = UserChange::parse(&deleted).unwrap();
        assert_eq!((d.email, d.at), (None, 1_700_000_009_000));

        for bad in [
            json!({"type": "user.created"}),
            json!({"type": "user.created", "data": {"updated_at": 1}}),
            json!({"type": "user.created", "data": {"id": "user_1"}}),
        ] {
            assert!(UserChange::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn type_labels_are_bounded() {
        assert_eq!(type_label("user.created"), "user.created");
        assert_eq!(type_label("session.created"), "other");
    }
}
