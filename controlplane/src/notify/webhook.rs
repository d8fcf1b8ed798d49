//! Webhooks to the operator's app, per the Standard Webhooks spec: the
//! body is `{"type", "timestamp", "data"}`, and three headers go with it:
//! `webhook-id` (the notification's id: the same on every retry and
//! replay, so the receiver can drop repeats), `webhook-timestamp` (Unix
//! seconds) and `webhook-signature` (`v1,` + base64 of HMAC-SHA256 over
//! `"{id}.{timestamp}.{body}"`, keyed by the base64-decoded part of the
//! endpoint's `whsec_` secret).
//!
//! [`WebhookSender`] is the worker's view of HTTP; [`HttpWebhookSender`]
//! posts with the control plane's one outbound client (`crate::https`).

use crate::domain::Notification;
use crate::https::{HttpsClient, TlsSetupError};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use sha2::Sha256;
use std::time::Duration;

/// Prefix of an endpoint secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new endpoint secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("endpoint secret is not whsec_ + base64")]
    Secret,
    #[error("bad endpoint URL {0:?}")]
    Url(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Connect(String),
}

/// The HMAC key of a `whsec_` secret.
fn secret_key(secret: &str) -> Result<Vec<u8>, WebhookError> {
    let b64 = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(WebhookError::Secret)?;
    STANDARD.decode(b64).map_err(|_| WebhookError::Secret)
}

/// `v1,<base64 signature>` of `body` sent as message `id` at `timestamp`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, WebhookError> {
    let key = secret_key(secret)?;
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| WebhookError::Secret)?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// One signed request, ready to post.
#[derive(Debug, Clone)]
pub struct SignedMessage {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: Bytes,
}

/// The Standard Webhooks message for `n`, signed with `secret` at
/// `now_secs`.
pub fn message(
    n: &Notification,
    secret: &str,
    now_secs: i64,
) -> Result<SignedMessage, WebhookError> {
    let body = serde_json::json!({
        "type": n.kind.as_str(),
        "timestamp": rfc3339(n.created_at),
        "data": {
            "id": n.id,
            "user_id": n.user_id,
            "subject": n.subject,
            "title": n.title,
            "message": n.message,
            "created_at": n.created_at,
            "details": n.data,
        },
    });
    let body = Bytes::from(body.to_string());
    Ok(SignedMessage {
        signature: sign(secret, &n.id, now_secs, &body)?,
        id: n.id.clone(),
        timestamp: now_secs,
        body,
    })
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Posts signed messages; the worker's view of HTTP.
#[async_trait::async_trait]
pub trait WebhookSender: std::fmt::Debug + Send + Sync {
    /// Ok on a 2xx answer.
    async fn post(&self, url: &str, message: &SignedMessage) -> Result<(), WebhookError>;
}

/// [`WebhookSender`] over `http://` and `https://`.
#[derive(Debug, Clone)]
pub struct HttpWebhookSender {
    client: HttpsClient,
    timeout: Duration,
}

impl HttpWebhookSender {
    pub fn new(timeout: Duration) -> Result<Self, TlsSetupError> {
        Ok(Self {
            client: crate::https::client(None)?,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn post(&self, url: &str, m: &SignedMessage) -> Result<(), WebhookError> {
        let uri: hyper::Uri = url.parse().map_err(|_| WebhookError::Url(url.into()))?;
        let req = hyper::Request::post(uri)
            .header("content-type", "application/json")
            .header("user-agent", "molt-webhooks")
            .header("webhook-id", &m.id)
            .header("webhook-timestamp", m.timestamp.to_string())
            .header("webhook-signature", &m.signature)
            .body(Full::new(m.body.clone()))
            .map_err(|_| WebhookError::Url(url.into()))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| WebhookError::Timeout(self.timeout))?
            .map_err(|e| WebhookError::Connect(molt_config::outbound::cause_text(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status(resp.status().as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference implementation's test vector.
    #[test]
    fn signs_the_spec_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(matches!(
            sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "m", 1, body),
            Err(WebhookError::Secret)
        ));
    }

    #[test]
    fn new_secrets_are_whsec_base64() {
        let s = new_secret();
        assert_eq!(secret_key(&s).unwrap().len(), 32);
        assert_ne!(new_secret(), s);
    }
}
