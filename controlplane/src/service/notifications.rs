//! Notifications as operators and apps see them: a user's in-app entries
//! (newest first, unread filter, mark read), the webhook endpoints of the
//! operator's app (created with a `whsec_` secret shown once and sealed
//! at rest, listed, disabled) and replays of a notification's webhook
//! deliveries. Sending is `notify`'s; the outbox rows are written by the
//! changes that notify (`store::notifications::enqueue`).

use super::{audit_entry, not_found, paginate, range, Operator, Service, ServiceError};
use crate::domain::{
    new_id, now_ms, AuditEntry, Channel, Millis, Notification, Page, PageRequest, WebhookEndpoint,
};
use crate::notify::webhook::new_secret;
use crate::store::{store_trait, Range, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpoint {
    /// Where notifications are POSTed: an `http://` or `https://` URL.
    pub url: String,
    #[serde(default)]
    pub description: String,
}

/// A new endpoint and its signing secret, shown only in this answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhookEndpoint {
    pub endpoint: WebhookEndpoint,
    /// `whsec_` + base64: the key of the Standard Webhooks signature.
    pub secret: String,
}

store_trait! {
    /// Notifications and webhook endpoints, as this service uses them.
    pub trait NotificationStore: Send + Sync {
        /// A page of a user's notifications, newest first.
        async fn list_notifications(
            &self,
            user_id: &str,
            unread_only: bool,
            range: &Range,
        ) -> Result<Vec<Notification>, StoreError>;
        async fn get_notification(&self, id: &str) -> Result<Option<Notification>, StoreError>;
        /// `NotFound` when the user has no such notification.
        async fn mark_notification_read(
            &self,
            user_id: &str,
            id: &str,
            at: Millis,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
        /// Send a notification's deliveries of `channel` again.
        async fn replay_deliveries(
            &self,
            notification_id: &str,
            channel: Channel,
            now: Millis,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
        async fn insert_webhook_endpoint(
            &self,
            endpoint: &WebhookEndpoint,
            secret_sealed: &str,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
        async fn get_webhook_endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError>;
        async fn list_webhook_endpoints(&self, range: &Range) -> Result<Vec<WebhookEndpoint>, StoreError>;
        /// Stop sending to an endpoint; its pending deliveries are skipped.
        async fn disable_webhook_endpoint(
            &self,
            id: &str,
            at: Millis,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
    }
}

fn check_url(url: &str) -> Result<(), ServiceError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 2000
        && url.parse::<hyper::Uri>().is_ok_and(|u| u.host().is_some());
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "url must be an http:// or https:// URL with a host: {url:?}"
        )))
    }
}

// === impl Service ===

impl Service {
    /// A page of a user's notifications, newest first.
    pub async fn list_notifications(
        &self,
        _op: &Operator,
        user_id: &str,
        unread_only: bool,
        page: &PageRequest,
    ) -> Result<Page<Notification>, ServiceError> {
        let range = range(page)?;
        if self.store.get_user(user_id).await?.is_none() {
            return Err(not_found("user", user_id));
        }
        let items = self
            .store
            .list_notifications(user_id, unread_only, &range)
            .await?;
        Ok(paginate(items, page, |n| n.id.clone()))
    }

    /// Mark one of a user's notifications read (the first time counts).
    pub async fn read_notification(
        &self,
        op: &Operator,
        user_id: &str,
        id: &str,
    ) -> Result<Notification, ServiceError> {
        op.require_admin()?;
        let audit = audit_entry::<()>(op, "notification.read", id, None, None);
        match self
            .store
            .mark_notification_read(user_id, id, now_ms(), &audit)
            .await
        {
            Err(StoreError::NotFound) => return Err(not_found("notification", id)),
            other => other?,
        }
        self.store
            .get_notification(id)
            .await?
            .ok_or_else(|| not_found("notification", id))
    }

    /// Send a notification to every webhook endpoint it went to again
    /// (same `webhook-id`, so receivers can tell a replay).
    pub async fn replay_notification(
        &self,
        op: &Operator,
        id: &str,
    ) -> Result<Notification, ServiceError> {
        op.require_admin()?;
        if self.store.get_notification(id).await?.is_none() {
            return Err(not_found("notification", id));
        }
        let audit = audit_entry::<()>(op, "notification.replay", id, None, None);
        self.store
            .replay_deliveries(id, Channel::Webhook, now_ms(), &audit)
            .await?;
        self.store
            .get_notification(id)
            .await?
            .ok_or_else(|| not_found("notification", id))
    }

    pub async fn create_webhook_endpoint(
        &self,
        op: &Operator,
        req: CreateWebhookEndpoint,
    ) -> Result<CreatedWebhookEndpoint, ServiceError> {
        op.require_admin()?;
        check_url(&req.url)?;
        if req.description.len() > 200 {
            return Err(ServiceError::Invalid(
                "description must be at most 200 characters".into(),
            ));
        }
        let endpoint = WebhookEndpoint {
            id: new_id("whe"),
            url: req.url,
            description: req.description,
            created_at: now_ms(),
            disabled_at: None,
        };
        let secret = new_secret();
        let sealed = self.settings.cipher.seal(secret.as_bytes(), &endpoint.id)?;
        let audit = audit_entry(
            op,
            "webhook_endpoint.create",
            &endpoint.id,
            None,
            Some(&endpoint),
        );
        self.store
            .insert_webhook_endpoint(&endpoint, &sealed, &audit)
            .await?;
        Ok(CreatedWebhookEndpoint { endpoint, secret })
    }

    pub async fn list_webhook_endpoints(
        &self,
        _op: &Operator,
        page: &PageRequest,
    ) -> Result<Page<WebhookEndpoint>, ServiceError> {
        let items = self.store.list_webhook_endpoints(&range(page)?).await?;
        Ok(paginate(items, page, |e| e.id.clone()))
    }

    /// Disable an endpoint: nothing more is sent to it.
    pub async fn disable_webhook_endpoint(
        &self,
        op: &Operator,
        id: &str,
    ) -> Result<WebhookEndpoint, ServiceError> {
        op.require_admin()?;
        let before = self
            .store
            .get_webhook_endpoint(id)
            .await?
            .ok_or_else(|| not_found("webhook endpoint", id))?;
        let at = before.disabled_at.unwrap_or_else(now_ms);
        let after = WebhookEndpoint {
            disabled_at: Some(at),
            ..before.clone()
        };
        let audit = audit_entry(
            op,
            "webhook_endpoint.disable",
            id,
            Some(&before),
            Some(&after),
        );
        self.store.disable_webhook_endpoint(id, at, &audit).await?;
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_http_with_a_host() {
        assert!(check_url("https://app.example.com/hooks/molt").is_ok());
        assert!(check_url("http://127.0.0.1:9000/").is_ok());
        for bad in ["ftp://x.example", "app.example.com", "http://", ""] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
