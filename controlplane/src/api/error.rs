//! The one place errors become HTTP responses: [`ApiError`] (from every
//! error the services and billing return), its JSON body
//! `{"error":{"code","message"}}`, and extractors whose rejections use it:
//! [`ApiJson`] for the operators' API (an unknown field anywhere in a body
//! is a 400 naming its path, also inside the contract's types, which accept
//! unknown fields themselves: see `molt_config::unknown`), [`WireJson`] for
//! the data planes' (whose types decide), [`ApiQuery`].
//!
//! `into_response` has no side effects (axum's error-handling advice): an
//! internal error's detail rides in a response extension,
//! [`InternalDetail`], and the request middleware logs it; the client only
//! sees "internal error".

use crate::billing::BillingError;
use crate::identity::IdentityError;
use crate::service::ServiceError;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Logged by the middleware, never sent.
    internal: Option<String>,
}

/// The error body every endpoint uses.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `conflict`, `invalid`,
    /// `bad_request`, `unauthorized`, `forbidden`, `payload_too_large`,
    /// `unsupported_media_type`, `internal`.
    pub code: String,
    pub message: String,
}

/// What went wrong inside, for the log line of a 500.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            internal: None,
        }
    }

    fn internal(detail: String) -> Self {
        Self {
            internal: Some(detail),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use ServiceError as E;
        let message = e.to_string();
        match e {
            E::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            E::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            E::Invalid(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message),
            E::BadRequest(_) => Self::new(StatusCode::BAD_REQUEST, "bad_request", message),
            E::Unauthorized => Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message),
            E::Forbidden => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            E::Store(_) | E::Crypto(_) | E::Internal(_) => Self::internal(message),
        }
    }
}

/// Billing: a bad signature or malformed event is 400 (Stripe shows it in
/// the endpoint's delivery log and retries); an unknown user or customer is
/// 422; nothing is changed in any of these cases.
impl From<BillingError> for ApiError {
    fn from(e: BillingError) -> Self {
        use BillingError as E;
        let message = e.to_string();
        match e {
            E::Signature(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_signature", message),
            E::Malformed(_) | E::BadRequest(_) => {
                Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
            }
            E::UnknownCustomer(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_customer",
                message,
            ),
            E::Service(e) => e.into(),
            E::Store(_) => Self::internal(message),
        }
    }
}

/// Identity webhooks: a bad signature or body is 400 (Svix retries it and
/// shows it in the endpoint's log); a change that breaks a rule (an email
/// another user has) is the service's answer; nothing is changed in any
/// of these cases.
impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        use IdentityError as E;
        let message = e.to_string();
        match e {
            E::Signature(_) => Self::new(StatusCode::BAD_REQUEST, "invalid_signature", message),
            E::Malformed(_) => Self::new(StatusCode::BAD_REQUEST, "bad_request", message),
            E::Service(e) => e.into(),
            E::Store(_) => Self::internal(message),
        }
    }
}

/// Body rejections: too large is 413, wrong content type 415, anything
/// else about the body (syntax, shape, unknown fields) is 400.
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self::body_rejected(r.status(), r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        Self::body_rejected(r.status(), r.body_text())
    }
}

impl ApiError {
    fn body_rejected(status: StatusCode, text: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is too large",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::unsupported_media_type(),
            _ => Self::new(StatusCode::BAD_REQUEST, "bad_request", text),
        }
    }

    fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(detail) = self.internal {
            resp.extensions_mut().insert(InternalDetail(detail));
        }
        resp
    }
}

/// A JSON body of the operators' API: `axum::Json`'s checks (content
/// type, size, syntax, shape) with [`ApiError`] rejections, and every field
/// the type has no place for refused with its path.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::unsupported_media_type());
        }
        let body = Bytes::from_request(req, state).await?;
        let (value, unknown) = molt_config::unknown::from_json::<T>(&body).map_err(|e| {
            let what = if e.is_data() {
                "Failed to deserialize the JSON body into the target type"
            } else {
                "Failed to parse the request body as JSON"
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{what}: {e}"),
            )
        })?;
        if !unknown.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("unknown field(s): {}", unknown.join(", ")),
            ));
        }
        Ok(Self(value))
    }
}

/// `application/json` or `application/<anything>+json`, as `axum::Json`
/// accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application") && (subtype == "json" || subtype.ends_with("+json"))
}

/// A JSON body of the contract between the planes (`molt_config::contract`):
/// `axum::Json` with [`ApiError`] rejections; the types decide what an
/// unknown field means (a usage event from a newer data plane keeps its
/// known fields).
#[derive(Debug)]
pub struct WireJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for WireJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// `axum::extract::Query` with [`ApiError`] rejections.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_those_axum_accepts() {
        let mut h = HeaderMap::new();
        assert!(!json_content_type(&h));
        for (value, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/json", false),
            ("application/jsonx", false),
            ("text/plain", false),
        ] {
            h.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(json_content_type(&h), ok, "{value}");
        }
    }
}
