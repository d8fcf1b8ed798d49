//! Notifications as records: what happened to a user ([`NoticeKind`]), the
//! in-app entry the API shows ([`Notification`]) with how each of its
//! deliveries stands ([`Delivery`]), the operator's webhook endpoints
//! ([`WebhookEndpoint`]), and what a state change writes to the outbox
//! ([`NewNotification`]). Sending is `notify`'s.

use super::Millis;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

molt_config::text_enum! {
    /// What a notification is about; also its webhook event `type`.
    #[derive(ToSchema)]
    pub enum NoticeKind {
        BotRunning = "bot.running",
        BotFailed = "bot.failed",
        PaymentFailed = "invoice.payment_failed",
        AnomalyFlagged = "usage.anomaly",
        BudgetThreshold = "budget.threshold",
    }
}

molt_config::text_enum! {
    /// How a notification leaves the control plane (in-app needs no
    /// delivery: the entry is the notification).
    #[derive(ToSchema)]
    pub enum Channel {
        Email = "email",
        Webhook = "webhook",
    }
}

molt_config::text_enum! {
    /// Where one delivery stands.
    #[derive(ToSchema)]
    pub enum DeliveryStatus {
        /// To send (again) at `next_attempt_at`.
        Pending = "pending",
        Delivered = "delivered",
        /// Gave up after the configured number of attempts.
        Failed = "failed",
        /// The channel is not configured on this control plane.
        Skipped = "skipped",
    }
}

/// One delivery of a notification: by email to the user, or to one
/// webhook endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub id: String,
    pub notification_id: String,
    pub channel: Channel,
    /// The webhook endpoint (`null` for email).
    pub endpoint_id: Option<String>,
    pub status: DeliveryStatus,
    pub attempts: i64,
    /// When a pending delivery is tried next.
    pub next_attempt_at: Millis,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub delivered_at: Option<Millis>,
}

/// A notification as the API shows it: the in-app entry and its
/// deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    pub id: String,
    pub user_id: String,
    pub kind: NoticeKind,
    /// What it is about (a bot, an invoice, an hour of usage).
    pub subject: String,
    pub title: String,
    pub message: String,
    /// The event's fields, as the webhook's `data` carries them.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub created_at: Millis,
    /// `null` while unread.
    pub read_at: Option<Millis>,
    #[serde(default)]
    pub deliveries: Vec<Delivery>,
}

/// An operator's webhook endpoint; its secret is never shown after
/// creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    pub description: String,
    pub created_at: Millis,
    pub disabled_at: Option<Millis>,
}

/// What a state change writes to the outbox, in its own transaction
/// (`store::notifications::enqueue`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub user_id: String,
    pub kind: NoticeKind,
    pub subject: String,
    pub title: String,
    pub message: String,
    pub data: serde_json::Value,
}

impl NewNotification {
    /// `(user, kind, subject)`: unique, so an event applied twice notifies
    /// once.
    pub fn dedupe_key(&self) -> String {
        format!("{}|{}|{}", self.user_id, self.kind.as_str(), self.subject)
    }

    /// The user's bot answered its health check. `run` tells one start of
    /// the bot from the next (its step start time).
    pub fn bot_running(user_id: &str, bot_id: &str, run: Millis) -> Self {
        Self {
            user_id: user_id.to_owned(),
            kind: NoticeKind::BotRunning,
            subject: format!("{bot_id}@{run}"),
            title: "Your bot is ready".to_owned(),
            message: "Your bot is running and ready to chat.".to_owned(),
            data: serde_json::json!({"bot_id": bot_id}),
        }
    }

    /// Provisioning gave up on the user's bot.
    pub fn bot_failed(user_id: &str, bot_id: &str, run: Millis, error: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            kind: NoticeKind::BotFailed,
            subject: format!("{bot_id}@{run}"),
            title: "Your bot could not be started".to_owned(),
            message: format!("Starting your bot failed: {error}"),
            data: serde_json::json!({"bot_id": bot_id, "error": error}),
        }
    }

    /// Stripe could not collect an invoice (`invoice` is its id, or the
    /// event's when the invoice has none).
    pub fn payment_failed(user_id: &str, invoice: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            kind: NoticeKind::PaymentFailed,
            subject: invoice.to_owned(),
            title: "Your payment failed".to_owned(),
            message: "We could not collect your latest invoice. Please update your payment \
                      method to keep your service running."
                .to_owned(),
            data: serde_json::json!({"invoice": invoice}),
        }
    }

    /// The user's token rate was flagged as unusual; at most one per user
    /// per hour (`hour_start`, Unix ms).
    /// The user's spend this month (`YYYY-MM`) reached `pct`% of their
    /// monthly dollar budget; once per (month, threshold).
    pub fn budget_threshold(
        user_id: &str,
        month: &str,
        pct: i64,
        spent: &str,
        budget: &str,
    ) -> Self {
        Self {
            user_id: user_id.to_owned(),
            kind: NoticeKind::BudgetThreshold,
            subject: format!("{month}@{pct}"),
            title: format!("{pct}% of your monthly budget used"),
            message: format!("You have spent ${spent} of your ${budget} budget for {month}."),
            data: serde_json::json!({
                "month": month, "threshold_pct": pct, "spent_usd": spent, "budget_usd": budget,
            }),
        }
    }

    pub fn anomaly_flagged(user_id: &str, hour_start: Millis) -> Self {
        Self {
            user_id: user_id.to_owned(),
            kind: NoticeKind::AnomalyFlagged,
            subject: format!("hour@{hour_start}"),
            title: "Unusual usage on your account".to_owned(),
            message: "Your token usage is well above your usual rate. If this is not you, \
                      revoke your keys."
                .to_owned(),
            data: serde_json::json!({"hour_start": hour_start}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keys_separate_users_kinds_and_subjects() {
        let a = NewNotification::bot_running("usr_1", "bot_1", 5);
        assert_eq!(a.dedupe_key(), "usr_1|bot.running|bot_1@5");
        assert_eq!(
            a.dedupe_key(),
            NewNotification::bot_running("usr_1", "bot_1", 5).dedupe_key()
        );
        for other in [
            NewNotification::bot_running("usr_2", "bot_1", 5),
            NewNotification::bot_running("usr_1", "bot_1", 6),
            NewNotification::bot_failed("usr_1", "bot_1", 5, "x"),
        ] {
            assert_ne!(a.dedupe_key(), other.dedupe_key());
        }
    }
}
