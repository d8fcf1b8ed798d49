//! The proxy: Pingora's `ProxyHttp` for every client request.
//!
//! A model request (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses`, `/v1/messages`) goes through four
//! stages, each a room of its own, all driven from `request_filter`:
//!
//! 1. [`admission`]: route, method, the client's credential, the body read
//!    whole and validated ([`body`]), the model (alias, allowlist,
//!    fallbacks) and the limits. It ends in one [`admission::Admitted`]
//!    value, or a refusal that nothing upstream ever saw.
//! 2. [`exchange`]: for the model and then each fallback, a pooled upstream
//!    session from Pingora's client [`Connector`], the request head
//!    ([`headers`]: client credentials out, master key in) and the held body
//!    chunks (spliced where needed), and the response head; the next
//!    candidate on connect failure, 429 or 5xx while the client has seen
//!    nothing.
//! 3. [`relay`]: the response to the client chunk by chunk as it arrives,
//!    usage read on the way, the end held until the usage is recorded.
//! 4. [`ledger`]: the usage event, built the same way for every route (the
//!    WebSocket routes in [`crate::ws`] use it too), recorded once.
//!
//! `logging` then counts the request and writes its access line. Refusals
//! all take one path ([`MoltProxy::reject`], through [`respond`]).
//!
//! Why the proxy drives the upstream exchange itself rather than returning a
//! peer from `upstream_peer`: Pingora's proxy loop can only replay a body
//! already read in `request_filter` from its 64 KiB retry buffer (Pingora
//! issues #575, #780), and the body must be read first: it names the model,
//! malformed JSON must never reach an upstream, and a fallback must re-send
//! it. Holding the chunks and writing them through Pingora's own client
//! sessions keeps pooling, h1/h2 upstreams and timeouts, and copies no byte.
//!
//! Byte copies on this path: Pingora's HTTP/1 reader copies each request
//! chunk out of the socket buffer once; after that the body is only
//! re-referenced (`Bytes` clones and slices). Response chunks are forwarded
//! as the same `Bytes` they were read into; the one exception is an SSE
//! event split across reads while the proxy is cutting out the usage chunk
//! it asked for, whose tail is held in a small buffer until it completes.

mod access;
mod admission;
mod body;
mod cors;
mod ctx;
mod exchange;
mod headers;
pub mod ledger;
mod relay;
pub mod respond;
pub mod route;

pub use ctx::RequestCtx;
pub use ledger::{Ledger, Outcome};
pub use route::{Route, RouteLabel};

use crate::auth::Principal;
use crate::error::ClientError;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeHandle};
use crate::sink::UsageSink;
use admission::Admit;
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora_core::connectors::http::Connector;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

/// Why a request did not end with a complete response.
pub(crate) enum Failure {
    /// Nothing reached the client: answer with this error.
    Refuse(ClientError),
    /// The response had started and then broke: the client connection is
    /// closed without a clean end, so the client sees the failure.
    Broken(Box<Error>),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self::Refuse(e)
    }
}

/// The data plane's proxy application.
pub struct MoltProxy {
    runtime: RuntimeHandle,
    connector: Connector,
    metrics: Arc<Metrics>,
    ledger: Ledger,
    /// Per-process; outlives config reloads so counters are kept.
    limiter: Limiter,
    /// The WebSocket routes (`/ws/chat`, `/v1/ws/tickets`, `/v1/realtime`).
    ws: crate::ws::WsHub,
}

impl MoltProxy {
    pub fn new(
        runtime: RuntimeHandle,
        metrics: Arc<Metrics>,
        sink: Arc<dyn UsageSink>,
        limiter: Limiter,
    ) -> Self {
        let ledger = Ledger::new(sink, metrics.tokens.clone());
        let ws = crate::ws::WsHub::new(runtime.clone(), &metrics, ledger.clone());
        Self {
            ws,
            runtime,
            connector: Connector::new(None),
            metrics,
            ledger,
            limiter,
        }
    }
}

#[async_trait]
impl ProxyHttp for MoltProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<pingora_core::upstreams::peer::HttpPeer>> {
        // Every request is answered in `request_filter`; reaching this is a
        // bug, reported as a 500 rather than proxied anywhere.
        Error::e_explain(
            ErrorType::InternalError,
            "no upstream peer for this request",
        )
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = headers::request_id(session.req_header());
        let rt = self.runtime.load();
        ctx.rt = Some(rt.clone());
        ctx.route = RouteLabel::from_path(session.req_header().uri.path());
        if !session.is_process_shutting_down() {
            // Pingora's default is 60 s; ours is configured (HTTP/1 only:
            // HTTP/2 has `h2_idle_timeout`, set at the listener).
            let idle = rt.config.server.keepalive_timeout.as_secs().max(1);
            session.set_keepalive(Some(idle));
        }
        if cors::is_browser_route(ctx.route) {
            ctx.cors_origin = cors::allowed_origin(session.req_header(), &rt.config.browser);
        }
        match self.serve(session, ctx, &rt).await {
            Ok(()) => Ok(true),
            Err(Failure::Refuse(err)) => {
                // Boxed, like each path in `serve`.
                Box::pin(self.reject(session, ctx, err)).await?;
                Ok(true)
            }
            Err(Failure::Broken(e)) => Err(e),
        }
    }

    fn request_header_failed(&self, e: &Error) {
        let kind = client_end_kind(e);
        self.metrics.clients.ends.with_label_values(&[kind]).inc();
        tracing::debug!(error = %e, kind, "a client ended its connection before a request");
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _e: &Error) -> bool {
        // Client disconnects and upstreams breaking mid-response are
        // counted and, for upstreams, warned about where they happen; an
        // ERROR line per occurrence would only flood the log.
        matches!(
            ctx.answer.outcome,
            Outcome::ClientDisconnected | Outcome::UpstreamAborted
        )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if session.response_written().is_some() {
            // The response had started: end the connection without a clean
            // end of body so the client sees the failure.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        tracing::error!(request_id = %ctx.request_id, error = %e, "internal error before any response");
        let _ = self.reject(session, ctx, ClientError::UpstreamFailed).await;
        FailToProxy {
            error_code: 502,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = if ctx.answer.status != 0 {
            ctx.answer.status
        } else {
            session.response_written().map_or(0, |r| r.status.as_u16())
        };
        // Failed and broken requests get their event here; successful ones
        // had it recorded before their last byte (see `relay`).
        if let Some(event) = ctx.finish_usage(&self.ledger, status) {
            self.ledger.record(event);
        }
        let route = ctx.route.name();
        let usage = &ctx.usage;
        let ws_session = ctx.ws.as_ref().and_then(|w| w.session.as_ref());
        let model = usage
            .model
            .as_deref()
            .or_else(|| ws_session.and_then(|s| s.model.as_deref()))
            .unwrap_or("unknown");
        let provider = usage
            .provider
            .as_deref()
            .or_else(|| ws_session.and_then(|s| s.provider.as_deref()))
            .unwrap_or("none");
        let elapsed = ctx.start.elapsed();
        let status_text = status.to_string();
        self.metrics
            .requests
            .with_label_values(&[route, model, provider, &status_text])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        let log_access = ctx.rt.as_ref().is_none_or(|rt| rt.config.log.access_log);
        if log_access {
            access::log(&access::AccessLine {
                ctx,
                method: &session.req_header().method,
                path: session.req_header().uri.path(),
                status,
                model,
                provider,
                elapsed,
            });
        }
    }
}

/// The kind of a client's early end, for `molt_client_ends_total`.
fn client_end_kind(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ReadTimedout => "header_timeout",
        ErrorType::ConnectionClosed => "closed",
        ErrorType::ReadError => "reset",
        _ => "other",
    }
}

impl MoltProxy {
    /// The whole request: its route's path, each in a box of its own.
    ///
    /// Why boxes: this future lives as long as the request, and a future is
    /// as large as the largest state of any path through it. Boxed, a held
    /// stream keeps only the model path's state and an idle WebSocket only
    /// the WebSocket's, for one allocation per request.
    async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Arc<Runtime>,
    ) -> Result<(), Failure> {
        if cors::is_preflight(session.req_header()) && cors::is_browser_route(ctx.route) {
            return Box::pin(self.preflight(session, ctx, rt)).await;
        }
        match ctx.route {
            RouteLabel::Http(route) => Box::pin(self.serve_model(session, ctx, rt, route)).await,
            RouteLabel::Ws(ws_route) => {
                let out = Box::pin(self.ws.handle(session, &ctx.stamp(), ws_route, rt))
                    .await
                    .map_err(Failure::Broken)?;
                ctx.ws_finished(out);
                Ok(())
            }
            RouteLabel::Unknown => {
                let path = session.req_header().uri.path();
                Err(ClientError::NotFound(path.chars().take(200).collect()).into())
            }
        }
    }

    /// A model route, stage by stage.
    async fn serve_model(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Arc<Runtime>,
        route: Route,
    ) -> Result<(), Failure> {
        let admitted = match self.admit(session, ctx, rt, route).await? {
            Admit::Proxy(admitted) => admitted,
            Admit::ListModels(caller) => {
                // Boxed: a rare request, whose state would otherwise size
                // every model request's.
                return Box::pin(self.list_models(session, ctx, rt, &caller))
                    .await
                    .map_err(Failure::Broken);
            }
        };
        session.set_abort_on_close(true);
        let mut exchanged = self.exchange(session, ctx, rt, &admitted).await?;
        let streamed = self.stream(session, ctx, &admitted, &mut exchanged).await?;
        // Boxed (~3.3 KiB, for the moments the end takes): inline, it would
        // size this future, and so every held stream's, by the end's work.
        Box::pin(self.settle(session, ctx, &admitted, exchanged, streamed)).await
    }

    /// Answer with an error in the route's format: the one refusal path.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: ClientError,
    ) -> Result<()> {
        ctx.refused(&err);
        match err {
            ClientError::BodyTimeout => self.count_client_end("body_timeout"),
            ClientError::BodyAborted => self.count_client_end("closed"),
            _ => {}
        }
        let body = err.body(ctx.route.format());
        let (retry_after, limits) = (ctx.limits.retry_after, ctx.limits.headers.as_ref());
        let written = respond::write_json(session, &ctx.stamp(), err.status(), body, |resp| {
            if let Some(secs) = retry_after {
                resp.insert_header(header::RETRY_AFTER, secs)?;
            }
            headers::insert_limit_headers(resp, limits)
        })
        .await;
        match written {
            // A client that left mid-body (or reset its HTTP/2 stream) cannot
            // be answered; that is its own doing, counted above, not an error.
            Err(e) if matches!(err, ClientError::BodyAborted) => {
                tracing::debug!(request_id = %ctx.request_id, error = %e, "no answer for a client that left mid-body");
                Ok(())
            }
            other => other,
        }
    }

    /// `GET /v1/models`: the models this caller may use, answered locally.
    async fn list_models(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
        caller: &Principal,
    ) -> Result<()> {
        let data: Vec<_> = rt
            .config
            .models
            .iter()
            .filter(|m| caller.may_use(&m.name))
            .map(|m| {
                serde_json::json!({"id": m.name, "object": "model", "created": 0,
                    "owned_by": rt.config.providers[m.provider].name})
            })
            .collect();
        let body = Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string());
        ctx.answer.status = 200;
        respond::write_json(session, &ctx.stamp(), 200, body, |_| Ok(())).await
    }

    /// A browser's CORS preflight for a route it may call: allowed origins
    /// get the answer, others a 403 with no CORS header at all.
    async fn preflight(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
    ) -> Result<(), Failure> {
        let Some(origin) = ctx.cors_origin.clone() else {
            return Err(ClientError::OriginNotAllowed.into());
        };
        let method = match ctx.route {
            RouteLabel::Http(route) => route.method(),
            _ => http::Method::POST,
        };
        let answer = cors::preflight(session.req_header(), &origin, &method, &rt.config.browser)
            .and_then(|mut resp| {
                resp.insert_header("x-request-id", &ctx.request_id)?;
                Ok(resp)
            })
            .map_err(Failure::Broken)?;
        ctx.answer.status = 204;
        respond::write_empty(session, answer)
            .await
            .map_err(Failure::Broken)
    }

    /// The client went away mid-request: say so in the outcome, count it.
    pub(super) fn client_left(&self, ctx: &mut RequestCtx) {
        ctx.client_gone();
        self.count_client_end("gone_mid_response");
    }

    /// A client ended a request early (counted, not logged as an error).
    pub(super) fn count_client_end(&self, kind: &str) {
        self.metrics.clients.ends.with_label_values(&[kind]).inc();
    }
}
