//! Every error a client can see, and the one place that turns it into a
//! response body in the route's own format.
//!
//! OpenAI routes answer `{"error":{"message","type","code"}}`; the Anthropic
//! route answers `{"type":"error","error":{"type","message"}}`. Messages
//! never contain a credential: they are built from static text, model names
//! and sizes only.

use crate::auth::AuthError;
use crate::json_scan::JsonError;
use bytes::Bytes;
use molt_config::ApiFormat;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Auth(AuthError),
    #[error("this key may not use model {0:?}")]
    ModelNotAllowed(String),
    #[error("the model {0:?} does not exist")]
    UnknownModel(String),
    #[error("the request body has no \"model\" string")]
    MissingModel,
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(JsonError),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the client went away while sending its body")]
    BodyAborted,
    /// The body's framing (HTTP/1.1 chunked encoding) is broken: where the
    /// body ends, and so where a next request would start, is unknown.
    #[error("the request body's chunked encoding is invalid")]
    BodyFraming,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the upstream provider could not be reached")]
    UpstreamUnavailable,
    #[error("the upstream provider did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream provider failed")]
    UpstreamFailed,
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A browser's preflight from an origin `[browser] allowed_origins`
    /// does not list.
    #[error("this origin may not call the gateway from a browser")]
    OriginNotAllowed,
    /// A limit refused the request. `tokens` says whether it was a token
    /// limit (OpenAI's error type `tokens`) or a request limit (`requests`).
    #[error("rate limit reached: {reason}")]
    RateLimited { reason: String, tokens: bool },
    /// A monthly dollar budget is spent (the reason names it and its
    /// amount: "monthly dollar budget of $25.00 reached").
    #[error("{0}")]
    BudgetExceeded(String),
    /// A dollar budget applies, and the model has no price to count it in.
    #[error("the model {0:?} has no price, and a monthly dollar budget applies to this user")]
    ModelNotPriced(String),
}

impl ClientError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Auth(_) => 401,
            Self::ModelNotAllowed(_) | Self::OriginNotAllowed | Self::ModelNotPriced(_) => 403,
            Self::UnknownModel(_) | Self::NotFound(_) => 404,
            Self::MissingModel | Self::MalformedJson(_) | Self::BodyAborted | Self::BodyFraming => {
                400
            }
            Self::MethodNotAllowed => 405,
            Self::BodyTimeout => 408,
            Self::BodyTooLarge(_) => 413,
            Self::UpstreamUnavailable | Self::UpstreamFailed => 502,
            Self::ShuttingDown => 503,
            Self::UpstreamTimeout => 504,
            Self::RateLimited { .. } | Self::BudgetExceeded(_) => 429,
        }
    }

    /// OpenAI's `error.type` and `error.code`.
    fn openai_type_and_code(&self) -> (&'static str, &'static str) {
        match self {
            Self::Auth(AuthError::Missing) => ("invalid_request_error", "missing_api_key"),
            Self::Auth(AuthError::Expired) => ("invalid_request_error", "expired_token"),
            Self::Auth(AuthError::Invalid) => ("invalid_request_error", "invalid_api_key"),
            Self::ModelNotAllowed(_) => ("permission_error", "model_not_allowed"),
            Self::UnknownModel(_) => ("invalid_request_error", "model_not_found"),
            Self::MissingModel => ("invalid_request_error", "missing_model"),
            Self::MalformedJson(_) => ("invalid_request_error", "invalid_json"),
            Self::BodyTooLarge(_) => ("invalid_request_error", "request_too_large"),
            Self::BodyTimeout => ("invalid_request_error", "request_timeout"),
            Self::BodyAborted => ("invalid_request_error", "incomplete_body"),
            Self::BodyFraming => ("invalid_request_error", "invalid_body_framing"),
            Self::NotFound(_) => ("invalid_request_error", "unknown_url"),
            Self::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            Self::UpstreamUnavailable => ("api_error", "upstream_unavailable"),
            Self::UpstreamFailed => ("api_error", "upstream_error"),
            Self::UpstreamTimeout => ("api_error", "upstream_timeout"),
            Self::ShuttingDown => ("api_error", "shutting_down"),
            Self::OriginNotAllowed => ("permission_error", "origin_not_allowed"),
            Self::RateLimited { tokens: true, .. } => ("tokens", "rate_limit_exceeded"),
            Self::RateLimited { tokens: false, .. } => ("requests", "rate_limit_exceeded"),
            Self::BudgetExceeded(_) => ("budget_exceeded", "budget_exceeded"),
            Self::ModelNotPriced(_) => ("permission_error", "model_not_priced"),
        }
    }

    /// Anthropic's `error.type`.
    fn anthropic_type(&self) -> &'static str {
        match self {
            Self::Auth(_) => "authentication_error",
            Self::ModelNotAllowed(_) | Self::OriginNotAllowed | Self::ModelNotPriced(_) => {
                "permission_error"
            }
            Self::UnknownModel(_) | Self::NotFound(_) => "not_found_error",
            Self::BodyTooLarge(_) => "request_too_large",
            Self::MissingModel
            | Self::MalformedJson(_)
            | Self::BodyTimeout
            | Self::BodyAborted
            | Self::BodyFraming
            | Self::MethodNotAllowed => "invalid_request_error",
            Self::UpstreamTimeout => "timeout_error",
            Self::ShuttingDown => "overloaded_error",
            Self::RateLimited { .. } | Self::BudgetExceeded(_) => "rate_limit_error",
            Self::UpstreamUnavailable | Self::UpstreamFailed => "api_error",
        }
    }

    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        self.openai_type_and_code().1
    }

    /// The response body in `format`.
    pub fn body(&self, format: ApiFormat) -> Bytes {
        let message = self.to_string();
        let v = match format {
            ApiFormat::OpenAi => {
                let (kind, code) = self.openai_type_and_code();
                serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
            ApiFormat::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.anthropic_type(), "message": message},
            }),
        };
        Bytes::from(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_each_format() {
        let e = ClientError::UnknownModel("gpt-9".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body(ApiFormat::OpenAi)).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let v: serde_json::Value = serde_json::from_slice(&e.body(ApiFormat::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(e.status(), 404);
    }
}
