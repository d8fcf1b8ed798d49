//! `POST /webhooks/stripe`: signature verification and the handling of the
//! events Molt acts on.
//!
//! Verification is done here rather than by `stripe_webhook`: the typed
//! parser there rejects events missing any of ~50 fields, and Molt only
//! needs a handful, so the body is verified as raw bytes (HMAC-SHA256 over
//! `"{t}.{body}"` with the endpoint secret as-is, any matching `v1`
//! accepted so secret rotation works, constant-time `verify_slice`,
//! timestamp within the tolerance both ways) and then parsed loosely.
//!
//! Once only: a delivery whose event id is in `stripe_events` is
//! acknowledged and changes nothing. A new event is applied first and its id
//! recorded after; every handler is idempotent (setting a status, requesting
//! a bot only when the user has none), so a crash between the two and
//! Stripe's redelivery re-applies harmlessly. Deliveries are serialised by
//! a mutex so two copies of one event cannot interleave.

use super::store::HandledEvent;
use super::{Billing, BillingError};
use crate::domain::{now_ms, NewNotification, Role, User, UserStatus};
use crate::service::bots::{BotAction, CreateBot};
use crate::service::users::UpdateUser;
use crate::service::{Operator, ServiceError};
use crate::signing::{hmac_sha256_matches, within_tolerance};
use serde_json::Value;

/// What a delivery came to (also the `result` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    Duplicate,
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }
}

/// Event types with their own metric label; others count as `other`.
const KNOWN_TYPES: [&str; 6] = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "customer.subscription.deleted",
    "invoice.payment_failed",
    "invoice.paid",
    "invoice.payment_succeeded",
];

pub fn type_label(kind: &str) -> &'static str {
    KNOWN_TYPES
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

/// Check `Stripe-Signature` against the raw body.
pub fn verify_signature(
    header: &str,
    body: &[u8],
    secret: &str,
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), BillingError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            // Only v1 counts; v0 and unknown schemes are ignored.
            Some(("v1", value)) => {
                if let Ok(sig) = hex::decode(value) {
                    v1.push(sig);
                }
            }
            _ => {}
        }
    }
    let t = t.ok_or(BillingError::Signature("no timestamp in Stripe-Signature"))?;
    if v1.is_empty() {
        return Err(BillingError::Signature(
            "no v1 signature in Stripe-Signature",
        ));
    }
    if !within_tolerance(now_secs, t, tolerance_secs) {
        return Err(BillingError::Signature(
            "timestamp outside the tolerance (stale or replayed delivery)",
        ));
    }
    let t = t.to_string();
    let signed: [&[u8]; 3] = [t.as_bytes(), b".", body];
    if hmac_sha256_matches(secret.as_bytes(), &signed, &v1) {
        Ok(())
    } else {
        Err(BillingError::Signature("no v1 signature matches"))
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

fn stripe_operator() -> Operator {
    Operator {
        actor: "stripe_webhook".to_owned(),
        role: Role::Admin,
    }
}

impl Billing {
    /// Verify and apply one delivery.
    pub async fn handle_webhook(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Outcome, BillingError> {
        let secret = self.settings.webhook_secret.expose();
        let header = signature.ok_or(BillingError::Signature("missing Stripe-Signature header"))?;
        let result = async {
            verify_signature(
                header,
                body,
                secret,
                now_ms() / 1000,
                self.settings.webhook_tolerance_secs,
            )?;
            let event: Value = serde_json::from_slice(body)
                .map_err(|e| BillingError::Malformed(format!("body is not JSON: {e}")))?;
            let id = text(&event, &["id"])
                .ok_or_else(|| BillingError::Malformed("event has no id".into()))?
                .to_owned();
            let kind = text(&event, &["type"])
                .ok_or_else(|| BillingError::Malformed("event has no type".into()))?
                .to_owned();
            let object = event
                .get("data")
                .and_then(|d| d.get("object"))
                .filter(|o| o.is_object())
                .ok_or_else(|| BillingError::Malformed("event has no data.object".into()))?;
            let created = event.get("created").and_then(Value::as_i64).unwrap_or(0);
            let _one = self.webhook_lock.lock().await;
            if self.store.event_seen(&id).await? {
                return Ok((kind, Outcome::Duplicate));
            }
            let (outcome, user) = self.apply(&id, &kind, object).await?;
            self.store
                .record_event(&HandledEvent {
                    id: &id,
                    kind: &kind,
                    user_id: user.as_deref(),
                    created,
                    received_at: now_ms(),
                })
                .await?;
            Ok((kind, outcome))
        }
        .await;
        match result {
            Ok((kind, outcome)) => {
                self.metrics
                    .webhooks
                    .with_label_values(&[type_label(&kind), outcome.as_str()])
                    .inc();
                Ok(outcome)
            }
            Err(e) => {
                self.metrics
                    .webhooks
                    .with_label_values(&["unknown", "rejected"])
                    .inc();
                tracing::warn!(error = %e, "stripe webhook rejected");
                Err(e)
            }
        }
    }

    /// Apply an event; returns the outcome and the user it concerned.
    async fn apply(
        &self,
        event_id: &str,
        kind: &str,
        obj: &Value,
    ) -> Result<(Outcome, Option<String>), BillingError> {
        match kind {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                let paid = matches!(
                    text(obj, &["payment_status"]),
                    Some("paid" | "no_payment_required")
                );
                if !paid {
                    // Delayed payment methods finish with
                    // `async_payment_succeeded`; nothing to do yet.
                    return Ok((Outcome::Ignored, None));
                }
                let user_id = text(obj, &["client_reference_id"])
                    .or_else(|| text(obj, &["metadata", "user_id"]))
                    .ok_or_else(|| {
                        BillingError::Malformed(
                            "checkout session has neither client_reference_id nor metadata.user_id"
                                .into(),
                        )
                    })?;
                let user = self.known_user(user_id).await?;
                if user.status == UserStatus::Deactivated {
                    // Deleted at the identity provider: paying does not
                    // bring the account back.
                    tracing::warn!(user = user.id, "checkout for a deactivated user ignored");
                    return Ok((Outcome::Ignored, Some(user.id)));
                }
                let user = user.id;
                let customer = text(obj, &["customer"]).map(str::to_owned);
                self.activate(&user, customer).await?;
                self.request_bot(&user).await?;
                Ok((Outcome::Handled, Some(user)))
            }
            "customer.subscription.deleted" => {
                let user = self.user_of_customer(obj).await?;
                self.set_status(&user, UserStatus::Suspended).await?;
                self.store.clear_past_due(&user).await?;
                self.stop_bots(&user).await?;
                Ok((Outcome::Handled, Some(user)))
            }
            "invoice.payment_failed" => {
                let user = self.user_of_customer(obj).await?;
                let op = stripe_operator();
                let current = self.service.get_user(&op, &user).await?;
                if current.status == UserStatus::Active {
                    self.set_status(&user, UserStatus::PastDue).await?;
                }
                // The invoice dedupes: Stripe's retries of one invoice
                // (new events) notify once.
                let invoice = text(obj, &["id"]).unwrap_or(event_id);
                let notice = NewNotification::payment_failed(&user, invoice);
                self.store.mark_past_due(&user, now_ms(), &notice).await?;
                if self.settings.past_due_grace.is_zero() {
                    self.enforce_grace(now_ms()).await?;
                }
                Ok((Outcome::Handled, Some(user)))
            }
            "invoice.paid" | "invoice.payment_succeeded" => {
                let user = self.user_of_customer(obj).await?;
                let op = stripe_operator();
                if self.service.get_user(&op, &user).await?.status == UserStatus::PastDue {
                    self.set_status(&user, UserStatus::Active).await?;
                }
                self.store.clear_past_due(&user).await?;
                Ok((Outcome::Handled, Some(user)))
            }
            _ => Ok((Outcome::Ignored, None)),
        }
    }

    /// Suspend users whose grace period has run out (and stop their bots).
    pub async fn enforce_grace(&self, now: i64) -> Result<u64, BillingError> {
        let grace = i64::try_from(self.settings.past_due_grace.as_millis()).unwrap_or(i64::MAX);
        let mut n = 0;
        // `<=` for a zero grace: "suspend at once" includes this instant.
        for user in self
            .store
            .past_due_before(now.saturating_sub(grace) + 1)
            .await?
        {
            let op = stripe_operator();
            if self.service.get_user(&op, &user).await?.status == UserStatus::PastDue {
                self.set_status(&user, UserStatus::Suspended).await?;
                self.stop_bots(&user).await?;
                n += 1;
            }
            self.store.clear_past_due(&user).await?;
        }
        Ok(n)
    }

    /// The user a checkout names: by Molt user id, or by the identity
    /// provider's (Clerk's) user id, which is what a front end signed in
    /// with Clerk has at hand.
    async fn known_user(&self, id: &str) -> Result<User, BillingError> {
        let op = stripe_operator();
        match self.service.get_user(&op, id).await {
            Ok(u) => return Ok(u),
            Err(ServiceError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.service
            .user_by_clerk_id(&op, id)
            .await?
            .ok_or_else(|| {
                BillingError::UnknownCustomer(format!(
                    "no user {id:?} (client_reference_id / metadata.user_id, a Molt or Clerk user id)"
                ))
            })
    }

    async fn user_of_customer(&self, obj: &Value) -> Result<String, BillingError> {
        let customer = text(obj, &["customer"])
            .ok_or_else(|| BillingError::Malformed("event object has no customer".into()))?;
        self.store.user_by_customer(customer).await?.ok_or_else(|| {
            BillingError::UnknownCustomer(format!("no user has customer {customer:?}"))
        })
    }

    async fn activate(&self, user: &str, customer: Option<String>) -> Result<(), BillingError> {
        let req = UpdateUser {
            status: Some(UserStatus::Active),
            stripe_customer_id: customer.map(Some),
            ..UpdateUser::default()
        };
        self.service
            .update_user(&stripe_operator(), user, req)
            .await?;
        self.store.clear_past_due(user).await?;
        Ok(())
    }

    async fn set_status(&self, user: &str, status: UserStatus) -> Result<(), BillingError> {
        let op = stripe_operator();
        if self.service.get_user(&op, user).await?.status == UserStatus::Deactivated {
            // Deactivation (deleted at the identity provider) is final here.
            return Ok(());
        }
        let req = UpdateUser {
            status: Some(status),
            ..UpdateUser::default()
        };
        self.service.update_user(&op, user, req).await?;
        Ok(())
    }

    /// Ask for the user's bot: create one if none lives, start a stopped one.
    async fn request_bot(&self, user: &str) -> Result<(), BillingError> {
        let op = stripe_operator();
        let bots = self.service.live_bots(&op, user).await?;
        if bots.is_empty() {
            let req = CreateBot {
                user_id: user.to_owned(),
                region: None,
                model: None,
            };
            match self.service.create_bot(&op, req).await {
                // One live bot per user: a concurrent request made it.
                Ok(_) | Err(ServiceError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for b in bots {
            match self.service.bot_action(&op, &b.id, BotAction::Start).await {
                Ok(_) | Err(ServiceError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn stop_bots(&self, user: &str) -> Result<(), BillingError> {
        Ok(self
            .service
            .stop_user_bots(&stripe_operator(), user)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(body: &[u8], secret: &str, t: i64) -> String {
        let t = format!("{t}.");
        let signed: [&[u8]; 2] = [t.as_bytes(), body];
        hex::encode(crate::signing::hmac_sha256(secret.as_bytes(), &signed))
    }

    #[test]
    fn any_v1_matches_and_others_do_not() {
        let body = br#"{"id":"evt_1"}"#;
        let good = sign(body, "whsec_new", 1000);
        let old = sign(body, "whsec_old", 1000);
        let h = format!("t=1000,v1={old},v1={good},v0=abcd");
        assert!(verify_signature(&h, body, "whsec_new", 1000, 300).is_ok());
        assert!(verify_signature(&h, body, "whsec_old", 1000, 300).is_ok());
        assert!(verify_signature(&h, body, "whsec_other", 1000, 300).is_err());
        assert!(verify_signature(&h, b"{}", "whsec_new", 1000, 300).is_err());
        let v0_only = format!("t=1000,v0={good}");
        assert!(verify_signature(&v0_only, body, "whsec_new", 1000, 300).is_err());
    }

    /// Found while writing `fuzz/`'s stripe_signature target: `now - t`
    /// overflowed for a timestamp near `i64::MIN`: a panic in debug builds, and
    /// in release builds a wrap to `i64::MIN` that passed the tolerance check.
    #[test]
    fn extreme_timestamps_are_refused_not_overflowed() {
        let body = b"{}";
        for t in [i64::MIN, i64::MIN + 1000, i64::MAX] {
            let h = format!("t={t},v1={}", sign(body, "s", t));
            assert!(verify_signature(&h, body, "s", 1000, 300).is_err(), "t={t}");
        }
    }

    #[test]
    fn stale_or_future_timestamps_are_refused() {
        let body = b"{}";
        let h = format!("t=1000,v1={}", sign(body, "s", 1000));
        assert!(verify_signature(&h, body, "s", 1301, 300).is_err());
        assert!(verify_signature(&h, body, "s", 699, 300).is_err());
        assert!(verify_signature(&h, body, "s", 1300, 300).is_ok());
    }
}
