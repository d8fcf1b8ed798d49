//! The proxy: Pingora's `ProxyHttp` for every client request.
//!
//! Model routes (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses`, `/v1/messages`) are answered entirely
//! in `request_filter`:
//!
//! 1. route by path, load the runtime snapshot (held to the end), authenticate;
//! 2. read the body, validating it with the incremental JSON scanner as it
//!    arrives (413 past the limit, 400 if malformed, 408 if it stalls);
//! 3. resolve `model` (alias, allowlist, fallbacks);
//! 4. for each candidate model: take a pooled upstream session from Pingora's
//!    client [`Connector`], send the header (client credentials stripped,
//!    master key injected) and the held body chunks (spliced where needed),
//!    read the response header; on connect failure, 429 or 5xx try the next
//!    candidate; otherwise stream the response to the client chunk by chunk,
//!    reading usage as it passes.
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

use crate::auth::Principal;
use crate::error::ClientError;
use crate::json_scan::JsonScanner;
use crate::limits::{self, Admission, AdmissionRequest, LimitKind, Limiter, RateLimitHeaders};
use crate::metrics::Metrics;
use crate::runtime::{ProviderRuntime, Runtime, RuntimeHandle};
use crate::sink::UsageSink;
use crate::splice::{self, Edit};
use crate::spool::MAX_RECORD_WAIT;
use crate::tokens;
use crate::usage_reader::{JsonUsageReader, SseUsageReader, StreamKind, TokenUsage};
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method};
use molt_config::{ApiFormat, AuthStyle, Model, UsageEvent};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Top-level request fields the scanner tracks, in this order.
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
];
const F_MODEL: usize = 0;
const F_STREAM: usize = 1;
const F_STREAM_OPTIONS: usize = 2;
/// The output caps, in the order their APIs prefer them.
const F_MAX_OUTPUT: [usize; 3] = [4, 3, 5];

/// Response bytes kept for counting tokens locally when the provider
/// reports no usage: a whole JSON body up to this size (a larger one cannot
/// be parsed from a prefix and is not estimated).
const RETAIN_FOR_ESTIMATE: usize = 1 << 20;
/// The same for an SSE stream: only its first bytes, and the estimate is
/// scaled to the stream's full length ([`tokens::estimate_stream_output`]).
/// A stream holds what it retains for its whole life, and almost every
/// stream reports usage; keeping 1 MiB of a long generation per stream to
/// cover the rare one that does not would cost more than the answer is worth.
const RETAIN_SSE_FOR_ESTIMATE: usize = 16 << 10;

/// Client headers never forwarded upstream: credentials (ours, not the
/// provider's), hop-by-hop headers, framing we recompute, and headers that
/// would let a client steer the master key's account or learn about it.
const STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "accept-encoding",
    "x-request-id",
    "openai-organization",
    "openai-project",
    "anthropic-beta-admin",
];

/// Upstream response headers never forwarded to the client.
const STRIPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "set-cookie",
    "openai-organization",
    "openai-project",
    // The provider's quota for our master key is not the client's business
    // (the proxy sends the client's own x-ratelimit-* values instead).
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
];

/// The API routes the data plane serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    Models,
}

impl Route {
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/responses" => Self::Responses,
            "/v1/messages" => Self::Messages,
            "/v1/models" => Self::Models,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Messages => "messages",
            Self::Models => "models",
        }
    }

    pub fn format(self) -> ApiFormat {
        match self {
            Self::Messages => ApiFormat::Anthropic,
            _ => ApiFormat::OpenAi,
        }
    }

    /// Path after the provider's base path (`/v1` is part of the base).
    fn upstream_suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
            Self::Messages => "/messages",
            Self::Models => "/models",
        }
    }

    fn stream_kind(self) -> StreamKind {
        match self {
            Self::Responses => StreamKind::Responses,
            Self::Messages => StreamKind::Anthropic,
            _ => StreamKind::OpenAi,
        }
    }

    /// Routes whose streams only carry usage when asked for it.
    fn needs_include_usage(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions)
    }
}

/// Per-request state, from the first filter to `logging`.
pub struct RequestCtx {
    start: Instant,
    timestamp_ms: u64,
    request_id: String,
    rt: Option<Arc<Runtime>>,
    route: Option<Route>,
    principal: Option<Principal>,
    model: Option<String>,
    provider: Option<String>,
    stream: bool,
    attempts: u32,
    tokens: TokenUsage,
    estimated: bool,
    upstream_ttfb: Option<Duration>,
    /// Set once the client has been sent a response header.
    status: u16,
    outcome: &'static str,
    error_kind: Option<&'static str>,
    /// The limiter's reservation, settled with the actual usage by
    /// `finish_usage` (dropping it releases a concurrent-stream slot).
    admission: Option<Admission>,
    /// `x-ratelimit-*` values for every response after admission.
    limit_headers: Option<RateLimitHeaders>,
    /// Seconds for `retry-after` on a 429.
    retry_after: Option<u64>,
    anomaly: bool,
    /// `finish_usage` ran: the admission is settled and the usage event
    /// handed to the sink (before the response end, or in `logging`).
    usage_finished: bool,
}

/// The body as read from the client, with what the scanner found.
struct RequestBody {
    chunks: Vec<Bytes>,
    scanner: JsonScanner,
}

/// What one upstream attempt came to.
enum Attempt {
    /// The client got a complete response.
    Done,
    /// Nothing reached the client; try the next candidate.
    TryNext,
    /// Nothing reached the client and there is nothing left to try.
    Failed(ClientError),
    /// The response had started and then broke; the client connection
    /// must be closed without a clean end.
    Broken(Box<Error>),
}

/// The data plane's proxy application.
pub struct MoltProxy {
    runtime: RuntimeHandle,
    connector: Connector,
    metrics: Arc<Metrics>,
    sink: Arc<dyn UsageSink>,
    /// Per-process; outlives config reloads so counters are kept.
    limiter: Limiter,
    /// The WebSocket routes (`/ws/chat`, `/v1/ws/tickets`).
    ws: crate::ws::WsHub,
}

impl MoltProxy {
    pub fn new(
        runtime: RuntimeHandle,
        metrics: Arc<Metrics>,
        sink: Arc<dyn UsageSink>,
        limiter: Limiter,
    ) -> Self {
        let ws = crate::ws::WsHub::new(runtime.clone(), &metrics, sink.clone());
        Self {
            ws,
            runtime,
            connector: Connector::new(None),
            metrics,
            sink,
            limiter,
        }
    }
}

#[async_trait]
impl ProxyHttp for MoltProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            request_id: String::new(),
            rt: None,
            route: None,
            principal: None,
            model: None,
            provider: None,
            stream: false,
            attempts: 0,
            tokens: TokenUsage::default(),
            estimated: false,
            upstream_ttfb: None,
            status: 0,
            outcome: "ok",
            error_kind: None,
            admission: None,
            limit_headers: None,
            retry_after: None,
            anomaly: false,
            usage_finished: false,
        }
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
        ctx.request_id = request_id(session.req_header());
        let rt = self.runtime.load();
        ctx.rt = Some(rt.clone());

        let path = session.req_header().uri.path();
        if let Some(ws_route) = crate::ws::WsRoute::from_path(path) {
            let out = self
                .ws
                .handle(session, &ctx.request_id, ws_route, &rt)
                .await?;
            (ctx.status, ctx.error_kind) = (out.status, out.error_kind);
            return Ok(true);
        }
        let Some(route) = Route::from_path(path) else {
            let err = ClientError::NotFound(path.chars().take(200).collect());
            self.reject(session, ctx, err, ApiFormat::OpenAi).await?;
            return Ok(true);
        };
        ctx.route = Some(route);
        let format = route.format();
        let want = if route == Route::Models {
            Method::GET
        } else {
            Method::POST
        };
        if session.req_header().method != want {
            self.reject(session, ctx, ClientError::MethodNotAllowed, format)
                .await?;
            return Ok(true);
        }

        let credential = client_credential(session.req_header(), format);
        let principal = match rt
            .auth
            .authenticate(credential, |n| rt.model(n).map(|m| m.name.clone()))
        {
            Ok(p) => p,
            Err(e) => {
                self.reject(session, ctx, ClientError::Auth(e), format)
                    .await?;
                return Ok(true);
            }
        };
        ctx.principal = Some(principal.clone());

        if route == Route::Models {
            self.list_models(session, ctx, &rt, &principal).await?;
            return Ok(true);
        }

        let body = match read_body(session, &rt).await {
            Ok(b) => b,
            Err(e) => {
                self.reject(session, ctx, e, format).await?;
                return Ok(true);
            }
        };
        let body_read_at = Instant::now();

        let requested = match body.scanner.field(F_MODEL).and_then(|f| f.as_str()) {
            Some(m) => m,
            None => {
                self.reject(session, ctx, ClientError::MissingModel, format)
                    .await?;
                return Ok(true);
            }
        };
        let Some(model) = rt.model(&requested) else {
            self.reject(session, ctx, ClientError::UnknownModel(requested), format)
                .await?;
            return Ok(true);
        };
        ctx.model = Some(model.name.clone());
        if !principal.may_use(&model.name) {
            self.reject(
                session,
                ctx,
                ClientError::ModelNotAllowed(requested),
                format,
            )
            .await?;
            return Ok(true);
        }
        ctx.stream = body.scanner.field(F_STREAM).and_then(|f| f.as_bool()) == Some(true);
        let body_len = body.scanner.len();
        let admitted = self.limiter.admit(&AdmissionRequest {
            user: &principal.user,
            key_id: &principal.key_id,
            model: &model.name,
            provider: &rt.config.providers[model.provider].name,
            estimated_input_tokens: limits::estimate_input_tokens(body_len),
            max_output_tokens: F_MAX_OUTPUT
                .iter()
                .find_map(|&f| body.scanner.field(f).and_then(|v| v.as_u64())),
            stream: ctx.stream,
        });
        match admitted {
            Ok(admission) => {
                ctx.limit_headers = Some(admission.headers().clone());
                ctx.admission = Some(admission);
            }
            Err(rejection) => {
                ctx.limit_headers = Some(rejection.headers.clone());
                // Whole seconds, rounded up, never 0: "retry now" would
                // just be refused again.
                ctx.retry_after = Some(rejection.retry_after.as_secs_f64().ceil().max(1.0) as u64);
                ctx.outcome = "rate_limited";
                ctx.anomaly = rejection.kind == LimitKind::Anomaly;
                let tokens = matches!(
                    rejection.kind,
                    LimitKind::TokensPerMinute
                        | LimitKind::TokensPerDay
                        | LimitKind::MonthlyBudget
                        | LimitKind::ProviderTokens
                );
                let err = ClientError::RateLimited {
                    reason: rejection.reason,
                    tokens,
                };
                self.reject(session, ctx, err, format).await?;
                return Ok(true);
            }
        }
        let (usage_edit, strip_usage_chunk) = if ctx.stream && route.needs_include_usage() {
            include_usage_edit(&body.scanner)
        } else {
            (None, false)
        };

        // The model and its fallbacks, in order; fallbacks the key may not
        // use are skipped.
        let candidates: Vec<&Model> = std::iter::once(model)
            .chain(model.fallbacks.iter().filter_map(|f| rt.model(f)))
            .filter(|m| principal.may_use(&m.name))
            .collect();
        session.set_abort_on_close(true);
        for (i, target) in candidates.iter().enumerate() {
            let last = i + 1 == candidates.len();
            let mut edits: Vec<Edit> = usage_edit.iter().cloned().collect();
            if let Some(span) = body.scanner.field(F_MODEL) {
                if requested != target.upstream_name {
                    let name = serde_json::to_vec(&target.upstream_name).unwrap_or_default();
                    edits.push(Edit::replace(span.start, span.end, name));
                }
            }
            edits.sort_by_key(|e| e.at);
            // Most requests need no edit: send the held chunks as they are.
            let spliced;
            let outgoing: &[Bytes] = if edits.is_empty() {
                &body.chunks
            } else {
                spliced = splice::apply(&body.chunks, &edits);
                &spliced
            };
            if i > 0 {
                self.metrics
                    .fallbacks
                    .with_label_values(&[&candidates[i - 1].name])
                    .inc();
            }
            ctx.attempts += 1;
            let provider = &rt.providers[target.provider];
            ctx.provider = Some(provider.config.name.clone());
            let attempt = self
                .attempt(
                    session,
                    ctx,
                    route,
                    provider,
                    outgoing,
                    strip_usage_chunk,
                    last,
                    body_read_at,
                    &body.chunks,
                )
                .await;
            match attempt {
                Attempt::Done => return Ok(true),
                Attempt::TryNext => continue,
                Attempt::Failed(e) => {
                    self.reject(session, ctx, e, format).await?;
                    return Ok(true);
                }
                Attempt::Broken(e) => return Err(e),
            }
        }
        // Only reached if every candidate was filtered out, which can't
        // happen (the requested model passed the same check).
        self.reject(session, ctx, ClientError::UpstreamUnavailable, format)
            .await?;
        Ok(true)
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
        let format = ctx.route.map_or(ApiFormat::OpenAi, Route::format);
        let err = ClientError::UpstreamFailed;
        let _ = self.reject(session, ctx, err, format).await;
        FailToProxy {
            error_code: 502,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = if ctx.status != 0 {
            ctx.status
        } else {
            session.response_written().map_or(0, |r| r.status.as_u16())
        };
        // Failed and broken requests get their event here; successful ones
        // had it recorded before their last byte (see `attempt`).
        if let Some(event) = self.finish_usage(ctx, status) {
            self.sink.record(event);
        }
        let route = ctx.route.map_or("unknown", Route::name);
        let model = ctx.model.as_deref().unwrap_or("unknown");
        let provider = ctx.provider.as_deref().unwrap_or("none");
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
        if ctx.tokens.input > 0 || ctx.tokens.output > 0 {
            self.metrics
                .tokens
                .with_label_values(&["input", model, provider])
                .inc_by(ctx.tokens.input);
            self.metrics
                .tokens
                .with_label_values(&["output", model, provider])
                .inc_by(ctx.tokens.output);
        }
        let key_id = ctx.principal.as_ref().map_or("", |p| &p.key_id);
        let log_access = ctx.rt.as_ref().is_none_or(|rt| rt.config.log.access_log);
        if log_access {
            tracing::info!(
                target: "access",
                request_id = %ctx.request_id,
                method = %session.req_header().method,
                path = %session.req_header().uri.path(),
                status,
                route,
                model,
                provider,
                key_id,
                attempts = ctx.attempts,
                stream = ctx.stream,
                input_tokens = ctx.tokens.input,
                output_tokens = ctx.tokens.output,
                estimated = ctx.estimated,
                outcome = ctx.outcome,
                error = ctx.error_kind.unwrap_or(""),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
            );
        }
    }
}

impl MoltProxy {
    /// Settle the request's admission with what it really used (refunding
    /// or topping up the estimate admitted against; releasing any stream
    /// slot) and build its usage event. Runs once per request: the first
    /// call does the work, later ones return `None`.
    ///
    /// Every authenticated model request gets an event, including rejected
    /// ones (zero tokens), so per-user activity is complete.
    fn finish_usage(&self, ctx: &mut RequestCtx, status: u16) -> Option<UsageEvent> {
        if std::mem::replace(&mut ctx.usage_finished, true) {
            return None;
        }
        if let Some(admission) = ctx.admission.take() {
            ctx.anomaly |= admission
                .settle(ctx.tokens.input, ctx.tokens.output)
                .anomalous;
        }
        let principal = ctx.principal.as_ref()?;
        let model = ctx.model.as_deref()?;
        Some(UsageEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            request_id: ctx.request_id.clone(),
            timestamp_ms: ctx.timestamp_ms,
            key_id: principal.key_id.as_ref().to_owned(),
            user_id: principal.user.as_ref().to_owned(),
            model: model.to_owned(),
            provider: ctx.provider.as_deref().unwrap_or("none").to_owned(),
            route: ctx.route.map_or("unknown", Route::name).to_owned(),
            status,
            input_tokens: ctx.tokens.input,
            output_tokens: ctx.tokens.output,
            estimated: ctx.estimated,
            stream: ctx.stream,
            attempts: ctx.attempts,
            duration_ms: ctx.start.elapsed().as_millis() as u64,
            upstream_ttfb_ms: ctx.upstream_ttfb.map(|d| d.as_millis() as u64),
            anomaly: ctx.anomaly,
            outcome: ctx.outcome.to_owned(),
        })
    }

    /// Answer with an error in the route's format.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: ClientError,
        format: ApiFormat,
    ) -> Result<()> {
        ctx.status = err.status();
        ctx.error_kind = Some(err.kind());
        if ctx.outcome == "ok" {
            ctx.outcome = "rejected";
        }
        if !session.is_body_done() {
            // The unread rest of the body makes the connection unusable.
            session.set_keepalive(None);
        }
        let body = err.body(format);
        let mut resp = ResponseHeader::build(err.status(), Some(4))?;
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header("x-request-id", &ctx.request_id)?;
        if let Some(secs) = ctx.retry_after {
            resp.insert_header(header::RETRY_AFTER, secs)?;
        }
        insert_limit_headers(&mut resp, ctx.limit_headers.as_ref())?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }

    /// `GET /v1/models`: the models this caller may use, answered locally.
    async fn list_models(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
        p: &Principal,
    ) -> Result<()> {
        let data: Vec<_> = rt
            .config
            .models
            .iter()
            .filter(|m| p.may_use(&m.name))
            .map(|m| {
                serde_json::json!({"id": m.name, "object": "model", "created": 0,
                    "owned_by": rt.config.providers[m.provider].name})
            })
            .collect();
        let body = Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string());
        ctx.status = 200;
        let mut resp = ResponseHeader::build(200, Some(4))?;
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header("x-request-id", &ctx.request_id)?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }

    /// One try at one provider.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Route,
        provider: &ProviderRuntime,
        body: &[Bytes],
        strip_usage_chunk: bool,
        last: bool,
        body_read_at: Instant,
        original_body: &[Bytes],
    ) -> Attempt {
        let name = provider.config.name.as_str();
        let body_len: usize = body.iter().map(Bytes::len).sum();
        // A pooled connection may have been closed by the provider while
        // idle; that shows up as a failure before any response byte, and is
        // worth one more try on a fresh connection to the same provider.
        let mut tries_left = 2;
        let (mut up, sent_at) = loop {
            tries_left -= 1;
            // Boxed: Pingora's connect future (~9 KiB, TLS included) lives
            // on the heap only while connecting. Inline, it would size this
            // function's state, and so every in-flight stream, for the
            // stream's whole life; the box costs one allocation per request.
            let connect = Box::pin(self.connector.get_http_session(&provider.peer));
            let (mut up, reused) = match connect.await {
                Ok(s) => s,
                Err(e) => return self.before_response_failed(ctx, name, last, &e, Phase::Connect),
            };
            // Pingora's proxy loop applies the peer's timeouts to the
            // session; driving the session ourselves, we do it here.
            up.set_read_timeout(provider.peer.options.read_timeout);
            up.set_write_timeout(provider.peer.options.write_timeout);
            let req = match upstream_request(
                session.req_header(),
                route,
                provider,
                body_len,
                &ctx.request_id,
                up.as_http2().is_some(),
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(request_id = %ctx.request_id, error = %e, "cannot build upstream request");
                    return Attempt::Failed(ClientError::UpstreamFailed);
                }
            };
            let sent = send_request(&mut up, req, body).await;
            let sent_at = Instant::now();
            let header = match sent {
                Ok(()) => tokio::select! {
                    r = up.read_response_header() => r,
                    _ = client_gone(session) => {
                        ctx.outcome = "client_disconnected";
                        ctx.status = 499;
                        return Attempt::Broken(Error::explain(ErrorType::ConnectionClosed, "client went away while waiting for the upstream"));
                    }
                },
                Err(e) => Err(e),
            };
            match header {
                Ok(()) => break (up, sent_at),
                Err(e) if reused && tries_left > 0 => {
                    tracing::debug!(request_id = %ctx.request_id, provider = name, error = %e, "pooled connection failed, retrying on a fresh one");
                    continue;
                }
                Err(e) => return self.before_response_failed(ctx, name, last, &e, Phase::Exchange),
            }
        };
        let ttfb = sent_at.elapsed();
        ctx.upstream_ttfb = Some(ctx.start.elapsed());
        self.metrics
            .upstream_ttfb
            .with_label_values(&[name])
            .observe(ttfb.as_secs_f64());
        let Some(up_resp) = up.response_header() else {
            return Attempt::Failed(ClientError::UpstreamFailed);
        };
        let status = up_resp.status.as_u16();
        if (status == 429 || status >= 500) && !last {
            self.count_upstream_error(
                name,
                if status == 429 {
                    "status_429"
                } else {
                    "status_5xx"
                },
            );
            tracing::warn!(request_id = %ctx.request_id, provider = name, status, "upstream refused, trying a fallback");
            return Attempt::TryNext;
        }
        if status >= 500 {
            self.count_upstream_error(name, "status_5xx");
        }
        let is_sse = up_resp
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let downstream_h2 = session.as_downstream().is_http2();
        let resp = client_response(up_resp, &ctx.request_id, downstream_h2)
            .and_then(|mut r| insert_limit_headers(&mut r, ctx.limit_headers.as_ref()).map(|()| r));
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Attempt::Broken(e),
        };
        let before_header = Instant::now();
        ctx.status = status;
        if let Err(e) = session.write_response_header(Box::new(resp), false).await {
            ctx.outcome = "client_disconnected";
            return Attempt::Broken(e);
        }
        let overhead = (sent_at - body_read_at) + before_header.elapsed();
        self.metrics
            .proxy_overhead
            .with_label_values(&[route.name()])
            .observe(overhead.as_secs_f64());

        // Stream the body. The end of a response is held back until its
        // usage event is recorded (see below): for SSE everything from the
        // chunk holding the terminal event on, for other bodies the last
        // chunk (a client with a content-length is done at its last byte).
        let _active = is_sse.then(|| ActiveStream::new(&self.metrics));
        let mut sse = is_sse.then(|| SseUsageReader::new(route.stream_kind(), strip_usage_chunk));
        let mut json = (!is_sse).then(JsonUsageReader::default);
        let mut retained: Vec<Bytes> = Vec::new();
        let mut retained_len = 0usize;
        let mut body_len = 0usize;
        let retain_cap = if is_sse {
            RETAIN_SSE_FOR_ESTIMATE
        } else {
            RETAIN_FOR_ESTIMATE
        };
        let mut out: Vec<Bytes> = Vec::with_capacity(2);
        let mut last_chunk: Option<Bytes> = None;
        let result = loop {
            let chunk = tokio::select! {
                biased;
                r = up.read_response_body() => r,
                _ = client_gone(session) => {
                    ctx.outcome = "client_disconnected";
                    break Err(Error::explain(ErrorType::ConnectionClosed, "client went away mid-response"));
                }
            };
            match chunk {
                Ok(Some(c)) => {
                    body_len += c.len();
                    if retained_len < retain_cap {
                        retained_len += c.len();
                        retained.push(c.clone());
                    }
                    match &mut sse {
                        Some(reader) => {
                            reader.feed(c, &mut out);
                            if reader.terminal_seen() {
                                continue;
                            }
                        }
                        None => {
                            if let Some(j) = &mut json {
                                j.feed(&c);
                            }
                            out.extend(last_chunk.replace(c));
                        }
                    }
                    if let Err(e) = write_all(session, &mut out).await {
                        ctx.outcome = "client_disconnected";
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    ctx.outcome = "upstream_aborted";
                    self.count_upstream_error(name, "aborted");
                    tracing::warn!(request_id = %ctx.request_id, provider = name, error = %e, "upstream broke mid-response");
                    break Err(e);
                }
            }
        };
        // Usage: what the provider reported, else a local count.
        let reported = match (&sse, json) {
            (Some(r), _) => r.usage(),
            (None, Some(j)) if result.is_ok() => j.finish(),
            _ => None,
        };
        match reported {
            Some(u) => ctx.tokens = u,
            None if (200..300).contains(&status) => {
                ctx.tokens = TokenUsage {
                    input: tokens::count_request(original_body),
                    output: if is_sse {
                        tokens::estimate_stream_output(&retained, body_len)
                    } else {
                        tokens::count_response(&retained, false)
                    },
                };
                ctx.estimated = true;
            }
            None => {}
        }
        if let Err(e) = result {
            // Dropping `up` closes the upstream connection at once.
            return Attempt::Broken(e);
        }
        if let Some(r) = &mut sse {
            r.finish(&mut out);
        }
        out.extend(last_chunk);
        // Recorded before the end goes out: a response the client saw
        // complete has its usage on disk, whatever is killed next.
        if let Some(event) = self.finish_usage(ctx, status) {
            let recorded = self.sink.record_durable(event);
            if recorded.wait_at_most(MAX_RECORD_WAIT).await.is_none() {
                self.metrics.usage_record_wait_timeouts.inc();
            }
        }
        if let Err(e) = write_all(session, &mut out).await {
            ctx.outcome = "client_disconnected";
            return Attempt::Broken(e);
        }
        if let Err(e) = session.write_response_body(None, true).await {
            ctx.outcome = "client_disconnected";
            return Attempt::Broken(e);
        }
        if up.response_done() {
            // Boxed like the connect above (~3 KiB, the largest state left).
            let release = self.connector.release_http_session(
                up,
                &provider.peer,
                provider.peer.options.idle_timeout,
            );
            Box::pin(release).await;
        }
        Attempt::Done
    }

    /// An attempt failed before any response byte: count it, log it, and
    /// either move on to the next candidate or answer with the right error.
    fn before_response_failed(
        &self,
        ctx: &mut RequestCtx,
        provider: &str,
        last: bool,
        e: &Error,
        phase: Phase,
    ) -> Attempt {
        let timed_out = matches!(
            e.etype(),
            ErrorType::ConnectTimedout
                | ErrorType::TLSHandshakeTimedout
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
        );
        let (kind, err) = match (phase, timed_out) {
            (_, true) => (phase.timeout_kind(), ClientError::UpstreamTimeout),
            (Phase::Connect, false) => ("connect", ClientError::UpstreamUnavailable),
            (Phase::Exchange, false) => ("io", ClientError::UpstreamFailed),
        };
        self.count_upstream_error(provider, kind);
        tracing::warn!(request_id = %ctx.request_id, provider, error = %e, kind, "upstream failed before responding");
        self.give_up(ctx, last, err)
    }

    fn give_up(&self, ctx: &mut RequestCtx, last: bool, err: ClientError) -> Attempt {
        if last {
            ctx.outcome = "upstream_error";
            Attempt::Failed(err)
        } else {
            Attempt::TryNext
        }
    }

    fn count_upstream_error(&self, provider: &str, kind: &str) {
        self.metrics
            .upstream_errors
            .with_label_values(&[provider, kind])
            .inc();
    }
}

/// Add the `x-ratelimit-*` headers, replacing any the provider sent (those
/// describe the master key's quota, not the client's).
fn insert_limit_headers(resp: &mut ResponseHeader, h: Option<&RateLimitHeaders>) -> Result<()> {
    let Some(h) = h else { return Ok(()) };
    for (name, value) in h.pairs() {
        resp.insert_header(name, value)?;
    }
    Ok(())
}

/// Where an upstream attempt was when it failed, for the error kind.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Getting a connection (new or pooled).
    Connect,
    /// Sending the request or waiting for the response header.
    Exchange,
}

impl Phase {
    fn timeout_kind(self) -> &'static str {
        match self {
            Self::Connect => "connect_timeout",
            Self::Exchange => "timeout",
        }
    }
}

/// Counts a response being streamed while it lives.
struct ActiveStream<'a>(&'a Metrics);

impl<'a> ActiveStream<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.active_streams.inc();
        Self(m)
    }
}

impl Drop for ActiveStream<'_> {
    fn drop(&mut self) {
        self.0.active_streams.dec();
    }
}

/// Write each pending chunk to the client as its own write (no coalescing).
async fn write_all(session: &mut Session, out: &mut Vec<Bytes>) -> Result<()> {
    for b in out.drain(..) {
        session.write_response_body(Some(b), false).await?;
    }
    Ok(())
}

/// Resolves when the client closes its connection (or stream); never
/// otherwise.
async fn client_gone(session: &mut Session) {
    if session
        .as_downstream_mut()
        .read_body_or_idle(true)
        .await
        .is_err()
    {
        return;
    }
    // Data or end-of-stream without an error: nothing to act on; keep
    // waiting (the select loop re-polls us after every chunk anyway).
    std::future::pending::<()>().await
}

async fn send_request(up: &mut UpstreamSession, req: RequestHeader, body: &[Bytes]) -> Result<()> {
    up.write_request_header(Box::new(req)).await?;
    for chunk in body {
        // A clone of `Bytes` is a reference count, not a copy.
        up.write_request_body(chunk.clone(), false).await?;
    }
    up.finish_request_body().await
}

/// The client's `x-request-id` if it is sane, else a new UUIDv7.
fn request_id(req: &RequestHeader) -> String {
    req.headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The credential a client sent: `Authorization: Bearer` on every route,
/// and `x-api-key` on the Anthropic route (as its SDK sends it).
fn client_credential(req: &RequestHeader, format: ApiFormat) -> Option<&str> {
    if format == ApiFormat::Anthropic {
        if let Some(v) = req.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            return Some(v);
        }
    }
    let v = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Read and validate the whole body, within the size and time limits.
async fn read_body(
    session: &mut Session,
    rt: &Runtime,
) -> std::result::Result<RequestBody, ClientError> {
    let max = rt.config.server.max_body_bytes;
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ClientError::BodyTooLarge(max));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // Without this, curl waits a second before sending the body.
        let _ = session.as_downstream_mut().write_continue_response().await;
    }
    let deadline = tokio::time::Instant::now() + rt.config.server.client_body_timeout;
    let mut scanner = JsonScanner::new(REQUEST_FIELDS, 4096);
    let mut chunks = Vec::new();
    let mut len = 0usize;
    loop {
        let next = tokio::time::timeout_at(deadline, session.read_request_body()).await;
        match next {
            Err(_) => return Err(ClientError::BodyTimeout),
            Ok(Err(_)) => return Err(ClientError::BodyAborted),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                len += chunk.len();
                if len > max {
                    return Err(ClientError::BodyTooLarge(max));
                }
                scanner.feed(&chunk).map_err(ClientError::MalformedJson)?;
                chunks.push(chunk);
            }
        }
    }
    scanner.finish().map_err(ClientError::MalformedJson)?;
    Ok(RequestBody { chunks, scanner })
}

/// The edit that makes an OpenAI stream report usage, and whether the
/// client did not ask for it (so the proxy must cut the usage chunk out).
fn include_usage_edit(scanner: &JsonScanner) -> (Option<Edit>, bool) {
    const ADD: &[u8] = br#","stream_options":{"include_usage":true}"#;
    let Some(so) = scanner.field(F_STREAM_OPTIONS) else {
        return match scanner.object_end() {
            Some(end) => (Some(Edit::insert(end, Bytes::from_static(ADD))), true),
            None => (None, false),
        };
    };
    if so.is_null() {
        return (
            Some(Edit::replace(
                so.start,
                so.end,
                Bytes::from_static(br#"{"include_usage":true}"#),
            )),
            true,
        );
    }
    let Some(raw) = so.raw.as_deref() else {
        return (None, false);
    };
    let mut inner = JsonScanner::new(&["include_usage"], 16);
    if inner.feed(raw).is_err() || inner.finish().is_err() {
        // Not an object: leave it for the provider to reject.
        return (None, false);
    }
    match inner.field(0) {
        Some(f) if f.as_bool() == Some(true) => (None, false),
        Some(f) => (
            Some(Edit::replace(
                so.start + f.start,
                so.start + f.end,
                Bytes::from_static(b"true"),
            )),
            true,
        ),
        None => {
            let empty = raw[1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
            let insert: &'static [u8] = if empty {
                br#""include_usage":true"#
            } else {
                br#""include_usage":true,"#
            };
            (
                Some(Edit::insert(so.start + 1, Bytes::from_static(insert))),
                true,
            )
        }
    }
}

/// The request header sent upstream: the client's headers minus
/// credentials and hop-by-hop headers, plus the provider's credential.
fn upstream_request(
    client: &RequestHeader,
    route: Route,
    provider: &ProviderRuntime,
    body_len: usize,
    request_id: &str,
    h2: bool,
) -> Result<RequestHeader> {
    let base = &provider.config.base_url;
    let mut path = String::with_capacity(base.path_prefix.len() + 24);
    path.push_str(&base.path_prefix);
    path.push_str(route.upstream_suffix());
    if let Some(q) = client.uri.query() {
        path.push('?');
        path.push_str(q);
    }
    let mut req = RequestHeader::build(
        Method::POST,
        path.as_bytes(),
        Some(client.headers.len() + 4),
    )?;
    for (name, value) in &client.headers {
        if !STRIPPED_REQUEST_HEADERS.contains(&name.as_str()) {
            req.append_header(name.clone(), value.clone())?;
        }
    }
    req.insert_header(header::HOST, provider.host.clone())?;
    req.insert_header(header::CONTENT_LENGTH, body_len)?;
    // Identity, so usage can be read from the body as it passes.
    req.insert_header(header::ACCEPT_ENCODING, "identity")?;
    req.insert_header("x-request-id", request_id)?;
    let cred = provider.next_credential().clone();
    match provider.config.kind.auth_style() {
        AuthStyle::Bearer => req.insert_header(header::AUTHORIZATION, cred)?,
        AuthStyle::ApiKeyHeader => req.insert_header(HeaderName::from_static("api-key"), cred)?,
        AuthStyle::XApiKey => {
            req.insert_header(HeaderName::from_static("x-api-key"), cred)?;
            if !req.headers.contains_key("anthropic-version") {
                req.insert_header(
                    HeaderName::from_static("anthropic-version"),
                    provider.anthropic_version.clone(),
                )?;
            }
        }
    }
    if h2 {
        let scheme = if base.tls { "https" } else { "http" };
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(base.authority())
            .path_and_query(path)
            .build()
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream URI", e))?;
        req.set_uri(uri);
        req.remove_header(&header::HOST);
    }
    Ok(req)
}

/// The response header for the client: the upstream's status and headers,
/// minus hop-by-hop ones, plus `x-request-id`.
fn client_response(
    up: &ResponseHeader,
    request_id: &str,
    downstream_h2: bool,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(up.status, Some(up.headers.len() + 2))?;
    for (name, value) in &up.headers {
        if !STRIPPED_RESPONSE_HEADERS.contains(&name.as_str()) {
            resp.append_header(name.clone(), value.clone())?;
        }
    }
    resp.insert_header("x-request-id", request_id)?;
    let has_length = resp.headers.contains_key(header::CONTENT_LENGTH);
    if !has_length && !downstream_h2 {
        // HTTP/1.1 without a length: chunked, so every write goes out at
        // once and the end is explicit (a broken stream then shows as an
        // incomplete body, never as a clean end).
        resp.insert_header(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        )?;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(doc: &str) -> JsonScanner {
        let mut s = JsonScanner::new(REQUEST_FIELDS, 4096);
        s.feed(doc.as_bytes()).unwrap();
        s.finish().unwrap();
        s
    }

    fn spliced(doc: &str) -> (String, bool) {
        let s = scan(doc);
        let (edit, strip) = include_usage_edit(&s);
        let chunks = [Bytes::copy_from_slice(doc.as_bytes())];
        let out = splice::apply(&chunks, edit.as_slice());
        (String::from_utf8(out.concat()).unwrap(), strip)
    }

    #[test]
    fn include_usage_is_spliced_without_reserialising() {
        let cases = [
            (
                r#"{"model":"m","stream":true}"#,
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
                true,
            ),
            (
                r#"{"model":"m", "stream_options" : null }"#,
                r#"{"model":"m", "stream_options" : {"include_usage":true} }"#,
                true,
            ),
            (
                r#"{"stream_options":{},"model":"m"}"#,
                r#"{"stream_options":{"include_usage":true},"model":"m"}"#,
                true,
            ),
            (
                r#"{"stream_options":{ "x":1},"model":"m"}"#,
                r#"{"stream_options":{"include_usage":true, "x":1},"model":"m"}"#,
                true,
            ),
            (
                r#"{"stream_options":{"include_usage": false},"model":"m"}"#,
                r#"{"stream_options":{"include_usage": true},"model":"m"}"#,
                true,
            ),
            (
                r#"{"stream_options":{"include_usage":true},"model":"m"}"#,
                r#"{"stream_options":{"include_usage":true},"model":"m"}"#,
                false,
            ),
        ];
        for (input, want, strip) in cases {
            let (got, s) = spliced(input);
            assert_eq!(got, want);
            assert_eq!(s, strip, "{input}");
            serde_json::from_str::<serde_json::Value>(&got).unwrap();
        }
    }

    #[test]
    fn routes_and_credentials() {
        assert_eq!(Route::from_path("/v1/messages"), Some(Route::Messages));
        assert_eq!(Route::from_path("/v1/chat/completions/"), None);
        let mut req = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        req.insert_header("x-api-key", "molt_sk_a").unwrap();
        req.insert_header("authorization", "Bearer molt_sk_b")
            .unwrap();
        assert_eq!(
            client_credential(&req, ApiFormat::Anthropic),
            Some("molt_sk_a")
        );
        assert_eq!(
            client_credential(&req, ApiFormat::OpenAi),
            Some("molt_sk_b")
        );
    }
}
