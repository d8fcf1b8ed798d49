//! A fake of Clerk, the identity provider, as far as Molt meets it: its
//! webhooks, signed as Svix signs them ([`sign_svix`], [`user_event`]), and
//! its JWKS endpoint with tokens signed by the keys it publishes
//! ([`jwks::FakeJwks`]: rotation on demand, faults).

pub mod jwks;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// A webhook endpoint secret as Clerk shows it: `whsec_` + base64 of
/// `key`.
pub fn webhook_secret(key: &[u8]) -> String {
    format!("whsec_{}", STANDARD.encode(key))
}

/// The `svix-signature` value for a delivery: `v1,<base64 HMAC-SHA256 of
/// "{id}.{timestamp}.{body}">`, keyed by the secret's base64 part. An
/// unusable secret signs with no key bytes (and so never verifies).
pub fn sign_svix(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_default();
    // HMAC takes keys of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// A `user.created`/`user.updated` event as Clerk sends it (the fields Molt
/// reads, and a few it does not), for `clerk_id` with one primary email.
pub fn user_event(kind: &str, clerk_id: &str, email: &str, updated_at_ms: i64) -> Value {
    json!({
        "object": "event",
        "type": kind,
        "timestamp": updated_at_ms + 5,
        "instance_id": "ins_fake",
        "data": {
            "id": clerk_id,
            "object": "user",
            "first_name": "Ada",
            "created_at": updated_at_ms,
            "updated_at": updated_at_ms,
            "primary_email_address_id": "idn_primary",
            "email_addresses": [
                {"id": "idn_primary", "object": "email_address", "email_address": email,
                 "verification": {"status": "verified", "strategy": "email_code"}}
            ],
            "external_accounts": [],
            "public_metadata": {}
        }
    })
}

/// A `user.deleted` event as Clerk sends it (no `updated_at`: only the
/// event's `timestamp` says when).
pub fn user_deleted_event(clerk_id: &str, timestamp_ms: i64) -> Value {
    json!({
        "object": "event",
        "type": "user.deleted",
        "timestamp": timestamp_ms,
        "instance_id": "ins_fake",
        "data": {"id": clerk_id, "object": "user", "deleted": true}
    })
}
