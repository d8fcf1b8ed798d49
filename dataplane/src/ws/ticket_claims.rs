//! Tickets single-use across replicas: a verified ticket's nonce is claimed
//! in Redis (`SET <prefix>ticket:<nonce> 1 NX PX <until expiry>`) before it
//! is accepted, so a ticket spent on one data plane is refused on every
//! other that shares the Redis of `[limits.redis]`.
//!
//! This is one Redis round trip per WebSocket connection that uses a
//! ticket, never per request or per message. If Redis cannot be reached
//! within a second, the claim falls back to this process's own record
//! (the ticket is still single-use here, and its TTL bounds the rest),
//! counted in `molt_ws_ticket_claim_fallbacks_total` and warned about at
//! most once per 10 s: a Redis outage must not stop browsers from chatting.

use super::error::WsReject;
use super::ticket::{TicketHolder, Tickets, Verified};
use crate::log_limit::upstream_warnings;
use molt_config::limits::RedisLimitsConfig;
use prometheus::IntCounter;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::time::Duration;

/// How long a claim may take before it falls back to the local record.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(1);

/// The shared claims, with one cached Redis connection.
pub struct TicketClaims {
    /// The URL it was opened for (a reload may change it) and the
    /// connection, multiplexed: clones share it.
    conn: tokio::sync::Mutex<Option<(String, MultiplexedConnection)>>,
    fallbacks: IntCounter,
}

impl std::fmt::Debug for TicketClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketClaims").finish_non_exhaustive()
    }
}

impl TicketClaims {
    pub fn new(fallbacks: IntCounter) -> Self {
        Self {
            conn: tokio::sync::Mutex::new(None),
            fallbacks,
        }
    }

    /// Accept `ticket` once: in Redis when configured (and reachable), and
    /// in this process's record either way.
    pub async fn claim(
        &self,
        tickets: &Tickets,
        ticket: Verified,
        redis: Option<&RedisLimitsConfig>,
        now_ms: u64,
    ) -> Result<TicketHolder, WsReject> {
        if let Some(redis) = redis {
            let ttl_ms = ticket.expires_ms.saturating_sub(now_ms).max(1);
            let key = format!("{}ticket:{}", redis.key_prefix, ticket.nonce);
            match tokio::time::timeout(CLAIM_TIMEOUT, self.set_nx(redis, &key, ttl_ms)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Err(WsReject::TicketReused),
                Ok(Err(e)) => self.fell_back(&e.to_string()).await,
                Err(_) => self.fell_back("timed out").await,
            }
        }
        tickets.claim_local(ticket, now_ms)
    }

    async fn set_nx(
        &self,
        redis: &RedisLimitsConfig,
        key: &str,
        ttl_ms: u64,
    ) -> Result<bool, redis::RedisError> {
        let url = redis.url.expose();
        let mut conn = {
            let mut cached = self.conn.lock().await;
            match cached.as_ref() {
                Some((for_url, conn)) if for_url == url => conn.clone(),
                _ => {
                    let client = redis::Client::open(url)?;
                    let cfg = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CLAIM_TIMEOUT))
                        .set_response_timeout(Some(CLAIM_TIMEOUT));
                    let conn = client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?;
                    *cached = Some((url.to_owned(), conn.clone()));
                    conn
                }
            }
        };
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Redis failed: count it, warn (rate-limited), forget the connection.
    async fn fell_back(&self, why: &str) {
        self.fallbacks.inc();
        *self.conn.lock().await = None;
        if let Some(left_out) = upstream_warnings().admit("redis/ticket_claims") {
            // The error text never holds the URL's password: redis-rs
            // reports the kind and the server's message.
            tracing::warn!(error = why, left_out, "cannot claim a WebSocket ticket in Redis; single use is per replica until it returns");
        }
    }
}
