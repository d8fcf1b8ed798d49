//! WebSocket routes: the bot chat router (`GET /ws/chat?bot=<id>`), its
//! ticket issuer (`POST /v1/ws/tickets`), and OpenAI's Realtime API
//! (`GET /v1/realtime?model=`, see [`realtime`]).
//!
//! Like the model routes, these are answered entirely in `request_filter`:
//! 1. check the upgrade request and authenticate (header, subprotocol or
//!    ticket: see [`handshake`]); the bot must belong to the caller's user,
//!    else 404 with no hint that it exists; take one of the user's
//!    connection slots (429 past `max_connections_per_user`);
//! 2. connect to the bot first, with its gateway token injected, so an
//!    unreachable bot is a plain 502/504 before the upgrade;
//! 3. write the `101` with Pingora's session API, then relay ([`relay`]).
//!
//! Why the data plane terminates the client's WebSocket instead of letting
//! Pingora pass the upgraded bytes through: Pingora relays an upgraded
//! connection as opaque bytes and its body filters cannot add frames, so it
//! could send no pings, no close codes (1001 on shutdown, 1012 on a moved
//! bot, 1009 on an oversized message) and could not count messages or
//! `brain_event`s without a parser anyway. The `101` is written from
//! `request_filter` with Pingora's session API (Pingora 0.9.1's HTTP/1
//! session then marks itself upgraded: `v1/server.rs`,
//! `prepare_response_header`); then the relay takes the client's socket
//! (TCP or TLS) out of the session and reads and writes it directly, so
//! Pingora's 64 KiB body-reader buffer is not held for the life of every
//! idle connection (see [`relay`]). HTTP/2 has no WebSocket in Pingora (no
//! RFC 8441), so a WebSocket request over h2 gets a 400.
//!
//! `permessage-deflate` is never negotiated: the offer is ignored and the
//! `101` carries no `Sec-WebSocket-Extensions` (and none is asked of the
//! bot). Compression would cost a zlib context per direction per connection
//! (tens of KiB each, against a budget of under 20 KiB per idle
//! connection) and CPU on every message; compressing secrets next to
//! attacker-influenced text opens compression oracles (CRIME/BREACH); and
//! accounting needs the plaintext anyway. Chat chunks are small, so little
//! is lost.
//!
//! Accounting: messages and bytes each way, `brain_event`s by type, open
//! connections and connection durations in [`metrics::WsMetrics`]; one
//! usage event per closed connection, built by the proxy's
//! [`Ledger`] like every other (route `ws.chat`, `bot_id` the bot, no
//! provider, zero tokens: the bot's model calls are metered on the model
//! routes).

mod client;
pub mod error;
pub mod handshake;
pub mod metrics;
pub mod realtime;
pub mod registry;
pub mod relay;
pub mod ticket;
pub mod ticket_claims;

use crate::auth::AuthError;
use crate::log_limit::upstream_warnings;
use crate::metrics::Metrics;
use crate::proxy::ledger::{now_ms, Caller as LedgerCaller, Closing, Ledger, Outcome, UsageRecord};
use crate::proxy::respond::{self, Stamp};
use crate::proxy::RouteLabel;
use crate::runtime::{Runtime, RuntimeHandle};
use bytes::Bytes;
use error::{CloseReason, WsReject};
use handshake::Credential;
use http::{header, HeaderValue, Method};
use molt_config::dataplane::Bot;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use registry::{ConnGuard, ConnRegistry, RegisterError};
use relay::{BotStream, Limits, RelayStats};
use std::sync::Arc;
use std::time::Instant;
use ticket::{TicketHolder, Tickets};
use tungstenite::client::IntoClientRequest;

/// The WebSocket routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRoute {
    Chat,
    Tickets,
    Realtime,
}

impl WsRoute {
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/ws/chat" => Some(Self::Chat),
            "/v1/ws/tickets" => Some(Self::Tickets),
            "/v1/realtime" => Some(Self::Realtime),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Chat => "ws.chat",
            Self::Tickets => "ws.tickets",
            Self::Realtime => "realtime",
        }
    }
}

/// What the proxy's `logging` should know about a WebSocket request, for
/// its one access line: filled in as the request goes.
#[derive(Debug, Default)]
pub struct WsOutcome {
    /// The status the client got (101 once upgraded).
    pub status: u16,
    /// The code of a refusal.
    pub error_kind: Option<&'static str>,
    /// The caller's key id, once authenticated.
    pub key_id: Option<String>,
    /// The upgraded session, once it closed.
    pub session: Option<WsSession>,
}

/// A WebSocket session that was upgraded and has closed.
#[derive(Debug)]
pub struct WsSession {
    pub reason: CloseReason,
    /// The bot, for a chat.
    pub bot: Option<String>,
    /// The model and its provider, for a Realtime session.
    pub model: Option<String>,
    pub provider: Option<String>,
    pub stats: RelayStats,
    pub duration: std::time::Duration,
}

/// Who is calling, once authenticated.
struct Caller {
    key_id: String,
    user: String,
}

/// Shared state of the WebSocket routes, one per proxy.
pub struct WsHub {
    runtime: RuntimeHandle,
    metrics: metrics::WsMetrics,
    /// Where every closed session's usage event goes.
    ledger: Ledger,
    /// Secrets masked in upstream messages.
    scrub: crate::scrub::ScrubMetrics,
    tickets: Tickets,
    /// Single use across replicas, through Redis when configured.
    claims: ticket_claims::TicketClaims,
    registry: Arc<ConnRegistry>,
}

impl std::fmt::Debug for WsHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsHub")
            .field("open", &self.registry.open_connections())
            .finish_non_exhaustive()
    }
}

impl WsHub {
    pub fn new(runtime: RuntimeHandle, metrics: &Metrics, ledger: Ledger) -> Self {
        let scrub = metrics.scrub.clone();
        let metrics = metrics::WsMetrics::new(metrics.registry()).unwrap_or_else(|e| {
            // Only a name clash (a bug) gets here; keep serving, unexported.
            tracing::error!(error = %e, "cannot register WebSocket metrics");
            let fallback = prometheus::Registry::new();
            metrics::WsMetrics::new(&fallback).unwrap_or_else(|_| unreachable_metrics())
        });
        let claims = ticket_claims::TicketClaims::new(metrics.ticket_claim_fallbacks.clone());
        Self {
            runtime,
            claims,
            metrics,
            ledger,
            scrub,
            tickets: Tickets::new(),
            registry: Arc::new(ConnRegistry::default()),
        }
    }

    /// Close every open connection with 1001 and refuse new ones. Called on
    /// SIGTERM by the registry itself; exposed for an explicit shutdown
    /// hook.
    pub fn begin_shutdown(&self) {
        self.registry.begin_shutdown();
    }

    /// Answer a WebSocket route; the response (or the whole connection) is
    /// done when this returns.
    pub async fn handle(
        &self,
        session: &mut Session,
        stamp: &Stamp<'_>,
        route: WsRoute,
        rt: &Arc<Runtime>,
    ) -> pingora_error::Result<WsOutcome> {
        let mut out = WsOutcome::default();
        let result = match route {
            WsRoute::Tickets => self.issue_ticket(session, stamp, rt, &mut out).await,
            WsRoute::Chat => self.chat(session, stamp.request_id, rt, &mut out).await,
            WsRoute::Realtime => self.realtime(session, stamp.request_id, rt, &mut out).await,
        };
        match result {
            Ok(status) => out.status = status,
            Err(e) => {
                (out.status, out.error_kind) = (e.status(), Some(e.kind()));
                reject(session, stamp, &e).await?;
            }
        }
        Ok(out)
    }

    /// Refuse an upgrade from a browser page on an origin that is not
    /// allowed, when `[browser] allowed_origins` is set. Clients that send
    /// no `Origin` (anything but a browser) are not affected.
    fn check_origin(session: &Session, rt: &Runtime) -> Result<(), WsReject> {
        let browser = &rt.config.browser;
        if !browser.is_enabled() {
            return Ok(());
        }
        match session.req_header().headers.get(header::ORIGIN) {
            Some(origin) if !origin.to_str().is_ok_and(|o| browser.allows(o)) => {
                Err(WsReject::OriginNotAllowed)
            }
            _ => Ok(()),
        }
    }

    fn authenticate(&self, rt: &Runtime, token: &str) -> Result<Caller, WsReject> {
        let p = rt
            .auth
            .authenticate(Some(token), |n| rt.model(n).map(|m| m.name.clone()))
            .map_err(WsReject::Auth)?;
        Ok(Caller {
            key_id: p.key_id.to_string(),
            user: p.user.to_string(),
        })
    }

    /// `POST /v1/ws/tickets` → `{"ticket","expires_at"}`.
    async fn issue_ticket(
        &self,
        session: &mut Session,
        stamp: &Stamp<'_>,
        rt: &Runtime,
        out: &mut WsOutcome,
    ) -> Result<u16, WsReject> {
        if session.req_header().method != Method::POST {
            return Err(WsReject::MethodNotAllowed);
        }
        let token = match handshake::credential(session.req_header(), None) {
            Credential::Bearer(t) => t,
            _ => return Err(WsReject::Auth(AuthError::Missing)),
        };
        let caller = self.authenticate(rt, token)?;
        out.key_id = Some(caller.key_id.clone());
        let cfg = &rt.config.websocket;
        let (ticket, expires_ms) = self.tickets.issue(
            &TicketHolder {
                key_id: caller.key_id,
                user: caller.user,
            },
            cfg.ticket_ttl,
            now_ms(),
            cfg.ticket_secret.as_ref().map(|s| s.expose()),
        )?;
        let body = Bytes::from(
            serde_json::json!({"ticket": ticket, "expires_at": expires_ms / 1000,
                "expires_in": cfg.ticket_ttl.as_secs()})
            .to_string(),
        );
        let write = respond::write_json(session, stamp, 200, body, |resp| {
            resp.insert_header(header::CACHE_CONTROL, "no-store")
        });
        // The client may have gone away; there is nobody left to tell.
        let _ = write.await;
        Ok(200)
    }

    /// What every upgrade route does first: never reuse the connection
    /// (nothing after the handshake is HTTP) and refuse while draining.
    fn begin_upgrade(session: &mut Session, rt: &Runtime) -> Result<(), WsReject> {
        session.set_keepalive(None);
        if session.is_process_shutting_down() {
            return Err(WsReject::ShuttingDown);
        }
        Self::check_origin(session, rt)
    }

    /// Take a connection slot for `user`, starting the registry's config
    /// watcher if it is not running yet.
    fn register(
        &self,
        take: impl FnOnce(&Arc<ConnRegistry>) -> Result<ConnGuard, RegisterError>,
        max_per_user: u32,
    ) -> Result<ConnGuard, WsReject> {
        let guard = take(&self.registry).map_err(|e| match e {
            RegisterError::TooMany => WsReject::TooManyConnections(max_per_user),
            RegisterError::ShuttingDown => WsReject::ShuttingDown,
        })?;
        self.registry.ensure_watcher(self.runtime.clone());
        Ok(guard)
    }

    /// `GET /ws/chat?bot=<id>`: the whole connection.
    async fn chat(
        &self,
        session: &mut Session,
        request_id: &str,
        rt: &Arc<Runtime>,
        out: &mut WsOutcome,
    ) -> Result<u16, WsReject> {
        let start = Instant::now();
        let mut usage = UsageRecord::starting_now();
        Self::begin_upgrade(session, rt)?;
        let req = session.req_header();
        let up = handshake::parse(req)?;
        let caller = match handshake::credential(req, up.ticket.as_deref()) {
            Credential::Bearer(t) | Credential::Protocol(t) => self.authenticate(rt, t)?,
            Credential::Ticket(t) => {
                let cfg = &rt.config.websocket;
                let now = now_ms();
                let verified =
                    self.tickets
                        .verify(t, now, cfg.ticket_secret.as_ref().map(|s| s.expose()))?;
                let redis = rt.config.limits.redis.as_ref();
                let h = self
                    .claims
                    .claim(&self.tickets, verified, redis, now)
                    .await?;
                Caller {
                    key_id: h.key_id,
                    user: h.user,
                }
            }
            Credential::None => return Err(WsReject::Auth(AuthError::Missing)),
        };
        out.key_id = Some(caller.key_id.clone());
        let bot_id = up.bot.clone().ok_or(WsReject::MissingBot)?;
        let bot = rt
            .config
            .bots
            .iter()
            .find(|b| b.id == bot_id && b.user == caller.user)
            .ok_or_else(|| WsReject::BotNotFound(bot_id.chars().take(100).collect()))?;
        let cfg = &rt.config.websocket;
        let max = cfg.max_connections_per_user;
        let guard = self.register(|r| r.register(&caller.user, bot, max), max)?;
        let limits = Limits::from(cfg);
        // Boxed: the connect future (TCP, TLS, handshake: ~11 KiB) lives on
        // the heap only while connecting. Inline, it would size this
        // function's state, and so every open connection, for the relay's
        // whole life.
        let mut bot_stream = Box::pin(connect_bot(bot, limits, rt, request_id)).await?;
        let protocol = up.offers_molt.then_some(handshake::PROTOCOL);
        let resp = handshake::switching_protocols(&up, request_id, protocol)
            .map_err(|_| WsReject::Internal)?;

        let mut stats = RelayStats::default();
        let Some(reason) = self
            .relay_upgraded(session, resp, &mut bot_stream, limits, &guard, &mut stats)
            .await
        else {
            return Ok(101);
        };
        drop(guard);
        usage.bot_id = Some(bot.id.clone());
        usage.stream = true;
        usage.attempts = 1;
        let closing = Closing {
            request_id,
            route: RouteLabel::Ws(WsRoute::Chat),
            caller: LedgerCaller {
                key_id: &caller.key_id,
                user_id: &caller.user,
            },
            status: 101,
            outcome: Outcome::Closed(reason),
            duration: start.elapsed(),
        };
        out.session = Some(WsSession {
            reason,
            bot: Some(bot.id.clone()),
            model: None,
            provider: None,
            stats,
            duration: closing.duration,
        });
        self.ledger.record(self.ledger.event(&closing, &usage));
        Ok(101)
    }

    /// Write the `101` and relay until the connection ends; returns why it
    /// ended, or `None` if the client left before the `101` was written.
    async fn relay_upgraded(
        &self,
        session: &mut Session,
        resp: ResponseHeader,
        upstream: &mut BotStream,
        limits: Limits,
        guard: &ConnGuard,
        stats: &mut RelayStats,
    ) -> Option<CloseReason> {
        // Our own idle logic replaces Pingora's per-read and per-write
        // timeouts, which would otherwise cut idle connections at 60 s.
        session.set_read_timeout(None);
        session.set_write_timeout(None);
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_err()
        {
            // The client left during the upstream handshake.
            let _ = upstream.close(None).await;
            return None;
        }
        let upgraded = Instant::now();
        self.metrics.open.inc();
        let secrets = &self.runtime.load().secrets;
        let watch = relay::Watch {
            limits,
            secrets,
            signal: &guard.signal,
            registry: &self.registry,
            metrics: &self.metrics,
        };
        let reason = relay::run(session, upstream, watch, stats).await;
        self.metrics.open.dec();
        self.scrub.count("websocket", stats.secrets_masked as usize);
        self.metrics
            .duration
            .observe(upgraded.elapsed().as_secs_f64());
        self.metrics
            .closed
            .with_label_values(&[reason.label()])
            .inc();
        Some(reason)
    }
}

#[cold]
fn unreachable_metrics() -> metrics::WsMetrics {
    // A fresh registry has no names to clash with, so registering there
    // cannot fail; reaching this is a bug in the prometheus crate.
    #[allow(clippy::panic)]
    {
        panic!("cannot create WebSocket metrics in a fresh registry")
    }
}

/// Open the bot's WebSocket with its gateway token, within the upstream
/// connect timeout.
async fn connect_bot(
    bot: &Bot,
    limits: Limits,
    rt: &Runtime,
    request_id: &str,
) -> Result<BotStream, WsReject> {
    let mut req = bot
        .gateway_url
        .ws_url()
        .into_client_request()
        .map_err(|_| WsReject::BotUnreachable)?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", bot.gateway_token.expose()))
        .map_err(|_| WsReject::Internal)?;
    auth.set_sensitive(true);
    req.headers_mut().insert(header::AUTHORIZATION, auth);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        req.headers_mut().insert("x-request-id", v);
    }
    let timeout = rt.config.server.upstream_connect_timeout;
    let connect = tokio_tungstenite::connect_async_with_config(req, Some(limits.framing()), true);
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok((stream, _resp))) => Ok(stream),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            if let Some(left_out) = upstream_warnings().admit(&format!("bot {}/refused", bot.id)) {
                tracing::warn!(bot = %bot.id, status = resp.status().as_u16(), left_out, "bot refused the WebSocket handshake");
            }
            Err(WsReject::BotRefused(resp.status().as_u16()))
        }
        Ok(Err(e)) => {
            if let Some(left_out) =
                upstream_warnings().admit(&format!("bot {}/unreachable", bot.id))
            {
                tracing::warn!(bot = %bot.id, error = %e, left_out, "bot unreachable");
            }
            Err(WsReject::BotUnreachable)
        }
        Err(_) => {
            if let Some(left_out) = upstream_warnings().admit(&format!("bot {}/timeout", bot.id)) {
                tracing::warn!(bot = %bot.id, left_out, "bot handshake timed out");
            }
            Err(WsReject::BotTimeout)
        }
    }
}

/// Answer with an OpenAI-style error.
async fn reject(
    session: &mut Session,
    stamp: &Stamp<'_>,
    err: &WsReject,
) -> pingora_error::Result<()> {
    respond::write_json(session, stamp, err.status(), err.body(), |resp| {
        for (k, v) in err.headers() {
            resp.insert_header(*k, *v)?;
        }
        Ok(())
    })
    .await
}
