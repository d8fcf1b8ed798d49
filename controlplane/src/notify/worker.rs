//! The delivery [`Notifier`]: finds due outbox rows, claims each, sends it
//! (email through the [`Mailer`], webhooks through the
//! [`WebhookSender`]), and records the result.
//!
//! At least once: a row is marked delivered only after the send
//! succeeded, so a crash in between sends it again once the claim
//! expires (webhook receivers drop the repeat by `webhook-id`). A failed
//! send is retried with exponential backoff (`backoff` doubling per
//! attempt, capped at `max_backoff`) until `max_attempts`, then the row is
//! `failed`, which the API shows; a permanent refusal (an SMTP 5xx, an
//! unusable address) fails it at once. Any number of workers may run:
//! the claim lets one send a row at a time.

use super::email::{render, MailError, Mailer};
use super::metrics::NotifyMetrics;
use super::store::{DeliveryJob, DeliveryUpdate, NotifyStore};
use super::webhook::{message, WebhookSender};
use super::NotifySettings;
use crate::crypto::Cipher;
use crate::domain::{millis, now_ms, Channel, DeliveryStatus, Millis};
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Sent,
    /// The channel is not configured here: nothing will ever send it.
    Skip(String),
    /// Retrying cannot help.
    Refused(String),
    /// Try again later.
    Failed(String),
}

/// The senders a [`Notifier`] uses.
#[derive(Debug, Clone)]
pub struct Senders {
    /// `None` without `[notifications.email]`: email deliveries are skipped.
    pub mailer: Option<Arc<dyn Mailer>>,
    pub webhooks: Arc<dyn WebhookSender>,
}

struct Inner {
    /// This worker's claim name.
    owner: String,
    store: Arc<dyn NotifyStore>,
    cipher: Cipher,
    senders: Senders,
    settings: NotifySettings,
    metrics: NotifyMetrics,
}

/// Sends notifications; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(
        store: Arc<dyn NotifyStore>,
        cipher: Cipher,
        senders: Senders,
        settings: NotifySettings,
        metrics: NotifyMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                owner: crate::domain::new_id("ntw"),
                store,
                cipher,
                senders,
                settings,
                metrics,
            }),
        }
    }

    /// Run the loop in the background: a scan, then a pause unless the
    /// scan found work.
    pub fn spawn(&self) -> JoinHandle<()> {
        let me = self.clone();
        let pause = self.inner.settings.poll_interval;
        crate::scan::spawn_scans("notifications", pause, move || {
            let me = me.clone();
            async move { me.tick().await }
        })
    }

    /// One scan: claim the due deliveries (up to `concurrency`) and try
    /// each once. Returns how many attempts were recorded.
    pub async fn tick(&self) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let s = &inner.settings;
        let now = now_ms();
        let limit = i64::try_from(s.concurrency.max(1)).unwrap_or(1);
        let mut set = JoinSet::new();
        for id in inner.store.due_deliveries(now, limit).await? {
            if !inner
                .store
                .claim_delivery(&id, &inner.owner, now, now + millis(s.lease))
                .await?
            {
                continue;
            }
            let me = self.clone();
            set.spawn(async move { me.deliver_claimed(&id).await });
        }
        let mut ran = 0;
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Ok(true)) => ran += 1,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "notification delivery not recorded"),
                Err(e) => tracing::error!(error = %e, "notification delivery panicked"),
            }
        }
        match inner.store.outbox_depth().await {
            Ok(rows) => inner.metrics.set_depth(&rows, now_ms()),
            Err(e) => tracing::warn!(error = %e, "outbox depth not updated"),
        }
        Ok(ran)
    }

    /// Try one claimed delivery and record the result.
    async fn deliver_claimed(&self, id: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let Some(job) = inner.store.delivery_job(id).await? else {
            return Ok(false);
        };
        let attempt = self.attempt(&job).await;
        let update = self.update(&job, attempt, now_ms());
        let recorded = inner
            .store
            .finish_delivery(id, &inner.owner, &update)
            .await?;
        if recorded {
            let result = match update.status {
                DeliveryStatus::Delivered => "delivered",
                DeliveryStatus::Pending => "retried",
                DeliveryStatus::Failed => "failed",
                DeliveryStatus::Skipped => "skipped",
            };
            inner
                .metrics
                .deliveries
                .with_label_values(&[job.delivery.channel.as_str(), result])
                .inc();
        } else {
            tracing::info!(delivery = id, "delivery result dropped: claim lost");
        }
        Ok(recorded)
    }

    async fn attempt(&self, job: &DeliveryJob) -> Attempt {
        let n = &job.notification;
        match job.delivery.channel {
            Channel::Email => {
                let Some(mailer) = &self.inner.senders.mailer else {
                    return Attempt::Skip("email is not configured ([notifications.email])".into());
                };
                let Some(to) = &job.email else {
                    return Attempt::Refused("the user has no email address".into());
                };
                match mailer.send(&render(n, to)).await {
                    Ok(()) => Attempt::Sent,
                    Err(MailError::Permanent(e)) => Attempt::Refused(e),
                    Err(e @ MailError::Transient(_)) => Attempt::Failed(e.to_string()),
                }
            }
            Channel::Webhook => {
                let (Some(endpoint_id), Some((url, sealed))) =
                    (&job.delivery.endpoint_id, &job.endpoint)
                else {
                    return Attempt::Skip("the webhook endpoint is disabled".into());
                };
                let secret = match self.inner.cipher.open(sealed, endpoint_id) {
                    Ok(s) => String::from_utf8_lossy(&s).into_owned(),
                    Err(e) => return Attempt::Refused(format!("endpoint secret: {e}")),
                };
                let signed = match message(n, &secret, now_ms() / 1000) {
                    Ok(m) => m,
                    Err(e) => return Attempt::Refused(e.to_string()),
                };
                match self.inner.senders.webhooks.post(url, &signed).await {
                    Ok(()) => Attempt::Sent,
                    Err(e) => Attempt::Failed(e.to_string()),
                }
            }
        }
    }

    /// What an attempt writes.
    fn update(&self, job: &DeliveryJob, attempt: Attempt, now: Millis) -> DeliveryUpdate {
        let s = &self.inner.settings;
        let attempts = job.delivery.attempts + 1;
        let done = |status, error: Option<String>| DeliveryUpdate {
            status,
            attempts,
            next_attempt_at: now,
            last_error: error,
            delivered_at: (status == DeliveryStatus::Delivered).then_some(now),
        };
        match attempt {
            Attempt::Sent => done(DeliveryStatus::Delivered, None),
            Attempt::Skip(why) => done(DeliveryStatus::Skipped, Some(why)),
            Attempt::Refused(why) => {
                tracing::warn!(delivery = job.delivery.id, error = %why, "notification refused");
                done(DeliveryStatus::Failed, Some(why))
            }
            Attempt::Failed(why) if attempts >= s.max_attempts => {
                tracing::warn!(delivery = job.delivery.id, error = %why, attempts, "notification gave up");
                done(DeliveryStatus::Failed, Some(why))
            }
            Attempt::Failed(why) => {
                let delay = backoff(s, attempts);
                tracing::info!(delivery = job.delivery.id, error = %why, ?delay, "notification will be retried");
                DeliveryUpdate {
                    next_attempt_at: now + millis(delay),
                    ..done(DeliveryStatus::Pending, Some(why))
                }
            }
        }
    }
}

/// The pause after the `attempts`-th failed try: `backoff` doubled per
/// earlier try, at most `max_backoff`.
fn backoff(s: &NotifySettings, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts - 1).unwrap_or(0).min(30);
    s.backoff
        .saturating_mul(2u32.saturating_pow(exp))
        .min(s.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = NotifySettings {
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            ..NotifySettings::default()
        };
        let got: Vec<u64> = (1..=6).map(|a| backoff(&s, a).as_secs()).collect();
        assert_eq!(got, [2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(&s, 1000).as_secs(), 30);
    }
}
