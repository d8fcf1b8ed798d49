//! Svix webhook signatures, as Clerk sends them: headers `svix-id`,
//! `svix-timestamp` (Unix seconds) and `svix-signature`, a space-separated
//! list of `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed by
//! the base64 part of the endpoint's `whsec_...` secret. Several signatures
//! may be present (during a secret rotation); any matching `v1` is enough,
//! other schemes are skipped. The timestamp must be within the tolerance
//! either way (5 minutes, as Svix's own libraries check).

use super::IdentityError;
use crate::signing::{hmac_sha256_matches, within_tolerance};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use molt_config::Secret;

/// The tolerance Svix's libraries apply.
pub const TOLERANCE_SECS: i64 = 5 * 60;

const SECRET_PREFIX: &str = "whsec_";

/// An endpoint's signing secret, decoded.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(redacted)")
    }
}

impl WebhookSecret {
    /// `whsec_<base64>` (the prefix may be left out, as Svix allows).
    pub fn parse(text: &Secret) -> Result<Self, String> {
        let text = text.expose().trim();
        let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        match STANDARD.decode(b64) {
            Ok(key) if key.len() >= 16 => Ok(Self(key)),
            Ok(_) => Err("the decoded secret is shorter than 16 bytes".into()),
            Err(e) => Err(format!("not whsec_<base64>: {e}")),
        }
    }
}

/// The three Svix headers of a delivery, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct SvixHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Check a delivery's headers against its raw body; the verified message
/// id on success.
pub fn verify<'a>(
    headers: &SvixHeaders<'a>,
    body: &[u8],
    secret: &WebhookSecret,
    now_secs: i64,
) -> Result<&'a str, IdentityError> {
    let id = headers
        .id
        .filter(|s| !s.is_empty())
        .ok_or(IdentityError::Signature("missing svix-id header"))?;
    let timestamp = headers
        .timestamp
        .ok_or(IdentityError::Signature("missing svix-timestamp header"))?;
    let signature = headers
        .signature
        .ok_or(IdentityError::Signature("missing svix-signature header"))?;
    let t: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| IdentityError::Signature("svix-timestamp is not a number"))?;
    if !within_tolerance(now_secs, t, TOLERANCE_SECS) {
        return Err(IdentityError::Signature(
            "timestamp outside the tolerance (stale or replayed delivery)",
        ));
    }
    let v1: Vec<Vec<u8>> = signature
        .split_whitespace()
        .filter_map(|s| s.split_once(','))
        .filter(|(scheme, _)| *scheme == "v1")
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .collect();
    if v1.is_empty() {
        return Err(IdentityError::Signature(
            "no v1 signature in svix-signature",
        ));
    }
    let t = t.to_string();
    let signed: [&[u8]; 5] = [id.as_bytes(), b".", t.as_bytes(), b".", body];
    if hmac_sha256_matches(&secret.0, &signed, &v1) {
        Ok(id)
    } else {
        Err(IdentityError::Signature("no v1 signature matches"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::hmac_sha256;

    fn secret(bytes: &[u8]) -> (String, WebhookSecret) {
        let text = format!("whsec_{}", STANDARD.encode(bytes));
        let parsed = WebhookSecret::parse(&Secret::new(text.clone())).unwrap();
        (text, parsed)
    }

    fn sign(key: &[u8], id: &str, t: i64, body: &[u8]) -> String {
        let prefix = format!("{id}.{t}.");
        let mac = hmac_sha256(key, &[prefix.as_bytes(), body]);
        format!("v1,{}", STANDARD.encode(mac))
    }

    fn headers<'a>(id: &'a str, t: &'a str, sig: &'a str) -> SvixHeaders<'a> {
        SvixHeaders {
            id: Some(id),
            timestamp: Some(t),
            signature: Some(sig),
        }
    }

    #[test]
    fn valid_and_rotated_signatures_verify() {
        let (_, s) = secret(b"0123456789abcdef0123");
        let body = br#"{"type":"user.created"}"#;
        let good = sign(b"0123456789abcdef0123", "msg_1", 1000, body);
        let old = sign(b"another-old-secret!!", "msg_1", 1000, body);
        let both = format!("v1a,AAAA {old} {good}");
        assert_eq!(
            verify(&headers("msg_1", "1000", &both), body, &s, 1000).unwrap(),
            "msg_1"
        );
        // Tampered body, other id, other timestamp: no match.
        for (id, t, b) in [
            ("msg_1", "1000", &br#"{"type":"user.deleted"}"#[..]),
            ("msg_2", "1000", &body[..]),
            ("msg_1", "1001", &body[..]),
        ] {
            assert!(verify(&headers(id, t, &good), b, &s, 1000).is_err());
        }
        assert!(verify(&headers("msg_1", "1000", &old), body, &s, 1000).is_err());
    }

    #[test]
    fn stale_future_and_missing_are_refused() {
        let (_, s) = secret(b"0123456789abcdef0123");
        let sig = sign(b"0123456789abcdef0123", "m", 1000, b"{}");
        assert!(verify(&headers("m", "1000", &sig), b"{}", &s, 1300).is_ok());
        assert!(verify(&headers("m", "1000", &sig), b"{}", &s, 1301).is_err());
        assert!(verify(&headers("m", "1000", &sig), b"{}", &s, 699).is_err());
        let missing = SvixHeaders {
            id: Some("m"),
            timestamp: Some("1000"),
            signature: None,
        };
        assert!(verify(&missing, b"{}", &s, 1000).is_err());
        assert!(verify(&headers("m", "1000", "v2,abc"), b"{}", &s, 1000).is_err());
    }

    #[test]
    fn secrets_parse_with_or_without_the_prefix() {
        let (text, _) = secret(b"0123456789abcdef");
        assert!(WebhookSecret::parse(&Secret::new(text.trim_start_matches("whsec_"))).is_ok());
        assert!(WebhookSecret::parse(&Secret::new("whsec_!!!")).is_err());
        assert!(WebhookSecret::parse(&Secret::new("whsec_c2hvcnQ=")).is_err());
    }
}
