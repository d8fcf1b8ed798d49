//! Notifications that always arrive: what happened to a user is written
//! to an outbox in the same transaction as the change that caused it
//! (`store::notifications::enqueue`: a bot running or failed, an invoice
//! payment failed, a usage anomaly), and the [`Notifier`] delivers it,
//! at least once, by email ([`email`], SMTP) and to the operator's webhook
//! endpoints ([`webhook`], Standard Webhooks), with retries and backoff.
//! The notification itself is the in-app entry
//! (`GET /api/v1/users/{id}/notifications`, `service::notifications`).
//! SMS is not offered.
//!
//! The worker reaches storage through [`NotifyStore`], and the outside
//! world through the [`Mailer`] and [`WebhookSender`] traits it owns.

pub mod email;
pub mod metrics;
pub mod store;
pub mod webhook;
pub mod worker;

pub use email::{Email, MailError, Mailer, SmtpMailer, SmtpSettings, SmtpTls};
pub use store::NotifyStore;
pub use webhook::{HttpWebhookSender, WebhookSender};
pub use worker::{Notifier, Senders};

use std::time::Duration;

/// Knobs of the delivery worker (`[notifications]`).
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Pause between scans that found nothing.
    pub poll_interval: Duration,
    /// Tries of one delivery before it is `failed`.
    pub max_attempts: i64,
    /// First retry delay; doubles per try.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// A claim older than this is considered abandoned (a crashed worker).
    pub lease: Duration,
    /// Deliveries sent at once by one worker.
    pub concurrency: usize,
    /// Longest wait for a webhook endpoint's answer.
    pub webhook_timeout: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            max_attempts: 12,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
            concurrency: 8,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}
