//! The upstream exchange: for the admitted model and then each fallback,
//! take a pooled session from Pingora's client [`Connector`], send the
//! request head (client credentials out, the master key in) and the held
//! body chunks (spliced where needed), and read the response head. A
//! connect failure, an upstream 429 or 5xx moves on to the next candidate,
//! as long as nothing has reached the client; a pooled connection the
//! provider closed while idle gets one retry on a fresh connection.
//!
//! Architecture invariant: a response is never retried once a byte of it
//! has reached the client. This stage writes nothing to the client; the
//! relay writes the response head only after it returns.

use super::admission::Admitted;
use super::ctx::RequestCtx;
use super::headers::{client_credential, upstream_request, UpstreamHead};
use super::route::Route;
use super::{Failure, MoltProxy};
use crate::error::ClientError;
use crate::log_limit::upstream_warnings;
use crate::runtime::ProviderRuntime;
use crate::splice::{self, Edit};
use bytes::Bytes;
use pingora_core::protocols::http::client::HttpSession as UpstreamSession;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::time::Instant;

/// An upstream that answered with a response head worth relaying.
pub(super) struct Exchanged<'rt> {
    pub(super) up: UpstreamSession,
    pub(super) provider: &'rt ProviderRuntime,
    /// When the request was sent (the upstream's time to first byte is
    /// measured from here).
    pub(super) sent_at: Instant,
}

/// One try at one candidate.
struct Attempt<'a, 'rt> {
    route: Route,
    provider: &'rt ProviderRuntime,
    body: &'a [Bytes],
    /// No candidate after this one: its failure is the answer.
    last: bool,
}

/// What one try came to.
// Made once per attempt and moved once; see `Admit` for why it is not boxed.
#[allow(clippy::large_enum_variant)]
enum Tried<'rt> {
    Answered(Exchanged<'rt>),
    /// Nothing reached the client; try the next candidate.
    Next,
    Failed(Failure),
}

/// Where an attempt was when it failed, for the error kind.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Getting a connection (new or pooled).
    Connect,
    /// Sending the request or waiting for the response header.
    Exchange,
}

impl MoltProxy {
    /// Try the candidates in order until one answers.
    pub(super) async fn exchange<'rt>(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &'rt crate::runtime::Runtime,
        admitted: &Admitted<'rt>,
    ) -> Result<Exchanged<'rt>, Failure> {
        let candidates = &admitted.candidates;
        for (i, target) in candidates.iter().enumerate() {
            let mut edits: Vec<Edit> = admitted.usage_edit.iter().cloned().collect();
            edits.extend(admitted.body.rename_model(&target.upstream_name));
            edits.sort_by_key(|e| e.at);
            // Most requests need no edit: send the held chunks as they are.
            let spliced;
            let body: &[Bytes] = if edits.is_empty() {
                &admitted.body.chunks
            } else {
                spliced = splice::apply(&admitted.body.chunks, &edits);
                &spliced
            };
            if i > 0 {
                self.metrics
                    .fallbacks
                    .with_label_values(&[&candidates[i - 1].name])
                    .inc();
            }
            let provider = &rt.providers[target.provider];
            ctx.usage.attempts += 1;
            ctx.usage.provider = Some(provider.config.name.clone());
            let attempt = Attempt {
                route: admitted.route,
                provider,
                body,
                last: i + 1 == candidates.len(),
            };
            match self.try_upstream(session, ctx, &attempt).await {
                Tried::Answered(exchanged) => return Ok(exchanged),
                Tried::Next => continue,
                Tried::Failed(failure) => return Err(failure),
            }
        }
        // Only reached if every candidate was filtered out, which can't
        // happen (the requested model passed the same check).
        Err(Failure::Refuse(ClientError::UpstreamUnavailable))
    }

    async fn try_upstream<'rt>(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        attempt: &Attempt<'_, 'rt>,
    ) -> Tried<'rt> {
        let provider = attempt.provider;
        let name = provider.config.name.as_str();
        let body_len: usize = attempt.body.iter().map(Bytes::len).sum();
        // A pooled connection may have been closed by the provider while
        // idle; that shows up as a failure before any response byte, and is
        // worth one more try on a fresh connection to the same provider.
        let mut tries_left = 2;
        let (up, sent_at) = loop {
            tries_left -= 1;
            // Boxed: Pingora's connect future (~9 KiB, TLS included) lives
            // on the heap only while connecting. Inline, it would size this
            // function's state, and so every in-flight stream, for the
            // stream's whole life; the box costs one allocation per request.
            let connect = Box::pin(self.connector.get_http_session(&provider.peer));
            let (mut up, reused) = match connect.await {
                Ok(s) => s,
                Err(e) => return self.failed_before_response(ctx, attempt, &e, Phase::Connect),
            };
            // Pingora's proxy loop applies the peer's timeouts to the
            // session; driving the session ourselves, we do it here.
            up.set_read_timeout(provider.peer.options.read_timeout);
            up.set_write_timeout(provider.peer.options.write_timeout);
            // The client gets a response header built here, never the
            // upstream's as it came: no second map for its names' case.
            up.set_keep_header_case(false);
            let req = match upstream_request(&UpstreamHead {
                client: session.req_header(),
                route: attempt.route,
                provider,
                body_len,
                request_id: &ctx.request_id,
                h2: up.as_http2().is_some(),
                credential: client_credential(session.req_header(), attempt.route.format()),
            }) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(request_id = %ctx.request_id, error = %e, "cannot build upstream request");
                    return Tried::Failed(Failure::Refuse(ClientError::UpstreamFailed));
                }
            };
            let sent = send_request(&mut up, req, attempt.body).await;
            let sent_at = Instant::now();
            let header = match sent {
                Ok(()) => tokio::select! {
                    r = up.read_response_header() => r,
                    _ = super::relay::client_gone(session) => {
                        self.client_left(ctx);
                        ctx.answer.status = 499;
                        return Tried::Failed(Failure::Broken(Error::explain(ErrorType::ConnectionClosed, "client went away while waiting for the upstream")));
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
                Err(e) => return self.failed_before_response(ctx, attempt, &e, Phase::Exchange),
            }
        };
        self.metrics
            .upstream_ttfb
            .with_label_values(&[name])
            .observe(sent_at.elapsed().as_secs_f64());
        ctx.usage.upstream_ttfb = Some(ctx.start.elapsed());
        let Some(status) = up.response_header().map(|h| h.status.as_u16()) else {
            return Tried::Failed(Failure::Refuse(ClientError::UpstreamFailed));
        };
        if status == 429 || status >= 500 {
            let kind = if status == 429 {
                "status_429"
            } else {
                "status_5xx"
            };
            if !attempt.last {
                self.count_upstream_error(name, kind);
                if let Some(left_out) = upstream_warnings().admit(&format!("{name}/{kind}")) {
                    tracing::warn!(request_id = %ctx.request_id, provider = name, status, left_out, "upstream refused, trying a fallback");
                }
                return Tried::Next;
            }
            if status >= 500 {
                self.count_upstream_error(name, kind);
            }
        }
        Tried::Answered(Exchanged {
            up,
            provider,
            sent_at,
        })
    }

    /// An attempt failed before any response byte: count it, log it, and
    /// either move on to the next candidate or answer with the right error.
    fn failed_before_response<'rt>(
        &self,
        ctx: &RequestCtx,
        attempt: &Attempt<'_, 'rt>,
        e: &Error,
        phase: Phase,
    ) -> Tried<'rt> {
        let provider = attempt.provider.config.name.as_str();
        let timed_out = matches!(
            e.etype(),
            ErrorType::ConnectTimedout
                | ErrorType::TLSHandshakeTimedout
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
        );
        let (kind, err) = match (phase, timed_out) {
            (Phase::Connect, true) => ("connect_timeout", ClientError::UpstreamTimeout),
            (Phase::Exchange, true) => ("timeout", ClientError::UpstreamTimeout),
            (Phase::Connect, false) => ("connect", ClientError::UpstreamUnavailable),
            (Phase::Exchange, false) => ("io", ClientError::UpstreamFailed),
        };
        self.count_upstream_error(provider, kind);
        if let Some(left_out) = upstream_warnings().admit(&format!("{provider}/{kind}")) {
            tracing::warn!(request_id = %ctx.request_id, provider, error = %e, kind, left_out, "upstream failed before responding");
        }
        if attempt.last {
            Tried::Failed(Failure::Refuse(err))
        } else {
            Tried::Next
        }
    }

    pub(super) fn count_upstream_error(&self, provider: &str, kind: &str) {
        self.metrics
            .upstream_errors
            .with_label_values(&[provider, kind])
            .inc();
    }
}

/// The request head and the held body: over HTTP/1 one vectored write for
/// both (third_party/PATCHES.md, patch 6), over HTTP/2 the head and one
/// DATA frame per chunk.
async fn send_request(up: &mut UpstreamSession, req: RequestHeader, body: &[Bytes]) -> Result<()> {
    up.write_request_with_body(Box::new(req), body).await
}
