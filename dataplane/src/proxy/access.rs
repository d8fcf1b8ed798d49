//! The access log: one line per request, and one per WebSocket connection
//! (written when it closes), with the route's real name, the caller's key
//! id and the outcome, for HTTP and WebSocket routes alike.

use super::ctx::RequestCtx;
use http::Method;
use std::time::Duration;

/// What one access line is made of.
pub(super) struct AccessLine<'a> {
    pub(super) ctx: &'a RequestCtx,
    pub(super) method: &'a Method,
    pub(super) path: &'a str,
    pub(super) status: u16,
    pub(super) model: &'a str,
    pub(super) provider: &'a str,
    pub(super) elapsed: Duration,
}

/// Write the line (target `access`, info level).
pub(super) fn log(line: &AccessLine<'_>) {
    let ctx = line.ctx;
    let route = ctx.route.name();
    let key_id = ctx
        .caller
        .as_ref()
        .map(|p| &*p.key_id)
        .or_else(|| ctx.ws.as_ref().and_then(|w| w.key_id.as_deref()))
        .unwrap_or("");
    let outcome = ctx.answer.outcome.as_str();
    let error = ctx.answer.error_kind.unwrap_or("");
    let duration_ms = line.elapsed.as_secs_f64() * 1000.0;
    if let Some(ws) = ctx.ws.as_ref().and_then(|w| w.session.as_ref()) {
        let s = &ws.stats;
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            method = %line.method,
            path = line.path,
            status = line.status,
            route,
            key_id,
            model = line.model,
            provider = line.provider,
            bot = ws.bot.as_deref().unwrap_or(""),
            outcome,
            close_code = ws.reason.client_code(),
            client_messages = s.client_messages,
            client_bytes = s.client_bytes,
            upstream_messages = s.bot_messages,
            upstream_bytes = s.bot_bytes,
            brain_events = s.brain_events,
            input_tokens = s.tokens.input,
            output_tokens = s.tokens.output,
            duration_ms,
        );
        return;
    }
    let usage = &ctx.usage;
    tracing::info!(
        target: "access",
        request_id = %ctx.request_id,
        method = %line.method,
        path = line.path,
        status = line.status,
        route,
        model = line.model,
        provider = line.provider,
        key_id,
        attempts = usage.attempts,
        stream = usage.stream,
        input_tokens = usage.tokens.input,
        output_tokens = usage.tokens.output,
        estimated = usage.estimated,
        outcome,
        error,
        duration_ms,
    );
}
