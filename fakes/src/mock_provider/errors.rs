//! Provider-format error responses (OpenAI's `{"error":{…}}` and Anthropic's
//! `{"type":"error",…}`), so a proxy's error mapping is exercised against the
//! shapes real upstreams send.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

/// Which provider's wire format an answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    OpenAi,
    Anthropic,
}

/// An error answer in `flavor`'s format. 429s carry `retry-after: 1` as the
/// real providers send one and proxies are expected to honour it.
pub(crate) fn error_response(flavor: Flavor, status: StatusCode, message: &str) -> Response {
    let body = match flavor {
        Flavor::OpenAi => openai_error_body(status, message),
        Flavor::Anthropic => anthropic_error_body(status, message),
    };
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn openai_error_body(status: StatusCode, message: &str) -> Value {
    // (type, code) pairs as OpenAI sends them for these statuses.
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", Some("unknown_url")),
        429 => ("requests", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    json!({
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": code,
        }
    })
}

fn anthropic_error_body(status: StatusCode, message: &str) -> Value {
    // Anthropic's documented error types per status.
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    json!({
        "type": "error",
        "error": {
            "type": kind,
            "message": message,
        }
    })
}
