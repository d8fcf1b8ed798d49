//! Short-lived, single-use tickets for browsers, which cannot set headers
//! on a WebSocket: `POST /v1/ws/tickets` (authenticated like any OpenAI
//! route) issues one, `GET /ws/chat?bot=..&ticket=..` redeems it.
//!
//! A ticket is `base64url(payload) "." base64url(HMAC-SHA256(payload))`,
//! payload `{"k":key_id,"u":user,"e":expiry_ms,"n":nonce}`. It names the
//! key and user, never the key itself, so a ticket in a URL (and so in
//! browser history or a proxy log) is worth at most one connection within
//! its TTL.
//!
//! Single use: the nonces redeemed in this process are kept until they
//! expire. Across replicas, with `[limits.redis]` configured, a redeemed
//! nonce is also claimed in Redis (`SET NX PX` until the ticket's expiry,
//! [`super::ticket_claims`]), so a ticket spent on one replica is refused on
//! every other. Without Redis (or while it is unreachable, counted in
//! `molt_ws_ticket_claim_fallbacks_total`) a ticket could be redeemed once
//! per replica within its TTL (60 s by default), which bounds the exposure.

use crate::ws::error::WsReject;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Redeemed nonces above this count trigger a sweep of the expired ones.
const SWEEP_AT: usize = 1024;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Payload {
    k: String,
    u: String,
    e: u64,
    n: String,
}

/// Who a redeemed ticket was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketHolder {
    pub key_id: String,
    pub user: String,
}

/// A ticket whose signature and expiry check out, not yet marked used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub holder: TicketHolder,
    /// The ticket's unique nonce (what single use is about).
    pub nonce: String,
    /// Unix ms after which the ticket is worthless anyway.
    pub expires_ms: u64,
}

/// Issues and redeems tickets.
pub struct Tickets {
    /// Used when the config sets no `ticket_secret`.
    process_secret: [u8; 32],
    /// Redeemed nonce → expiry (ms).
    used: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").finish_non_exhaustive()
    }
}

impl Default for Tickets {
    fn default() -> Self {
        Self::new()
    }
}

impl Tickets {
    pub fn new() -> Self {
        let mut process_secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut process_secret);
        Self {
            process_secret,
            used: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, secret: Option<&str>) -> Result<HmacSha256, WsReject> {
        let key = secret.map_or(&self.process_secret[..], str::as_bytes);
        // HMAC takes keys of any length, so this never fails in practice.
        HmacSha256::new_from_slice(key).map_err(|_| WsReject::Internal)
    }

    /// A new ticket for `holder`, valid for `ttl` from `now_ms`; returns the
    /// ticket and its expiry (ms).
    pub fn issue(
        &self,
        holder: &TicketHolder,
        ttl: Duration,
        now_ms: u64,
        secret: Option<&str>,
    ) -> Result<(String, u64), WsReject> {
        let mut nonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Saturating: `ticket_ttl` has no upper bound, and a wrapped expiry
        // would lie in the past.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let expires = now_ms.saturating_add(ttl_ms);
        let payload = Payload {
            k: holder.key_id.clone(),
            u: holder.user.clone(),
            e: expires,
            n: hex::encode(nonce),
        };
        // Serialising a struct of strings and an integer cannot fail.
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let mut mac = self.mac(secret)?;
        mac.update(&json);
        let sig = mac.finalize().into_bytes();
        let ticket = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(sig)
        );
        Ok((ticket, expires))
    }

    /// Check a ticket and mark it used in this process.
    pub fn redeem(
        &self,
        ticket: &str,
        now_ms: u64,
        secret: Option<&str>,
    ) -> Result<TicketHolder, WsReject> {
        let verified = self.verify(ticket, now_ms, secret)?;
        self.claim_local(verified, now_ms)
    }

    /// Check a ticket's signature and expiry, without marking it used.
    pub fn verify(
        &self,
        ticket: &str,
        now_ms: u64,
        secret: Option<&str>,
    ) -> Result<Verified, WsReject> {
        let (body, sig) = ticket.split_once('.').ok_or(WsReject::TicketInvalid)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| WsReject::TicketInvalid)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| WsReject::TicketInvalid)?;
        let mut mac = self.mac(secret)?;
        mac.update(&json);
        // Constant-time comparison.
        mac.verify_slice(&sig)
            .map_err(|_| WsReject::TicketInvalid)?;
        let p: Payload = serde_json::from_slice(&json).map_err(|_| WsReject::TicketInvalid)?;
        if p.e <= now_ms {
            return Err(WsReject::TicketExpired);
        }
        Ok(Verified {
            holder: TicketHolder {
                key_id: p.k,
                user: p.u,
            },
            nonce: p.n,
            expires_ms: p.e,
        })
    }

    /// Mark a verified ticket used in this process; refused if it already
    /// was.
    pub fn claim_local(&self, ticket: Verified, now_ms: u64) -> Result<TicketHolder, WsReject> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.len() >= SWEEP_AT {
            used.retain(|_, exp| *exp > now_ms);
        }
        if used.insert(ticket.nonce, ticket.expires_ms).is_some() {
            return Err(WsReject::TicketReused);
        }
        Ok(ticket.holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> TicketHolder {
        TicketHolder {
            key_id: "k1".into(),
            user: "u1".into(),
        }
    }

    #[test]
    fn issue_redeem_once() {
        let t = Tickets::new();
        let (ticket, exp) = t
            .issue(&holder(), Duration::from_secs(60), 1_000, None)
            .unwrap();
        assert_eq!(exp, 61_000);
        assert_eq!(t.redeem(&ticket, 2_000, None).unwrap(), holder());
        assert!(matches!(
            t.redeem(&ticket, 2_000, None),
            Err(WsReject::TicketReused)
        ));
    }

    /// Found while writing `fuzz/`'s ws_ticket target: `now + ttl` overflowed
    /// for a huge `ticket_ttl` (a panic in debug builds; in release ones the
    /// ticket was born expired).
    #[test]
    fn a_huge_ttl_saturates() {
        let t = Tickets::new();
        let (ticket, exp) = t.issue(&holder(), Duration::MAX, 1_000, None).unwrap();
        assert_eq!(exp, u64::MAX);
        assert_eq!(t.redeem(&ticket, 2_000, None).unwrap(), holder());
    }

    #[test]
    fn expired_forged_and_wrong_secret() {
        let t = Tickets::new();
        let (ticket, _) = t
            .issue(&holder(), Duration::from_secs(1), 1_000, None)
            .unwrap();
        assert!(matches!(
            t.redeem(&ticket, 2_000, None),
            Err(WsReject::TicketExpired)
        ));
        let (ticket, _) = t
            .issue(
                &holder(),
                Duration::from_secs(60),
                1_000,
                Some("s".repeat(32).as_str()),
            )
            .unwrap();
        assert!(matches!(
            t.redeem(&ticket, 2_000, None),
            Err(WsReject::TicketInvalid)
        ));
        let (body, sig) = ticket.split_once('.').unwrap();
        let mut forged = URL_SAFE_NO_PAD.decode(body).unwrap();
        forged[7] ^= 1;
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(forged));
        assert!(matches!(
            t.redeem(&forged, 2_000, Some("s".repeat(32).as_str())),
            Err(WsReject::TicketInvalid)
        ));
        assert!(matches!(
            t.redeem("garbage", 0, None),
            Err(WsReject::TicketInvalid)
        ));
    }
}
