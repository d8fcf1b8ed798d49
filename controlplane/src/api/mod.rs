//! The HTTP surface: the operators' API under `/api/v1`, the data planes'
//! contract under `/internal/v1` (`molt_config::contract`), billing's
//! endpoints ([`billing`], merged in when billing is configured), the
//! identity provider's webhook ([`identity`], likewise),
//! `/metrics` and `/healthz`.
//!
//! Handlers are thin: extract, call one [`Service`] (or `Billing`) method,
//! serialise. Every error becomes a response in [`error`] only.
//! Authentication happens in the [`Op`] and [`DataPlane`] extractors;
//! authorisation (roles) in the services.

pub mod billing;
mod bots;
pub mod error;
pub mod identity;
mod internal;
mod money;
mod notifications;
mod openapi;
mod v1;

pub use openapi::ApiDoc;

use crate::metrics::Metrics;
use crate::service::{Operator, Service};
use axum::extract::{DefaultBodyLimit, FromRef, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::{ApiError, InternalDetail};
use molt_config::contract;
use std::sync::Arc;
use std::time::Duration;

/// Knobs of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Longest a config long-poll is held before answering 304.
    pub poll_hold: Duration,
    /// Largest request body on `/api/v1`.
    pub max_body_bytes: usize,
    /// Largest usage batch body on `/internal/v1/usage`.
    pub max_ingest_bytes: usize,
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub settings: ApiSettings,
}

impl FromRef<AppState> for Arc<Service> {
    fn from_ref(st: &AppState) -> Self {
        st.service.clone()
    }
}

/// The authenticated operator of an `/api/v1` request (on any router whose
/// state leads to the services).
#[derive(Debug)]
pub struct Op(pub Operator);

impl<S> FromRequestParts<S> for Op
where
    S: Send + Sync,
    Arc<Service>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, ApiError> {
        let service = Arc::<Service>::from_ref(st);
        let op = service.authenticate_operator(bearer(parts)).await?;
        Ok(Self(op))
    }
}

/// Proof that an `/internal/v1` request carries the data-plane token.
#[derive(Debug)]
pub struct DataPlane;

impl FromRequestParts<AppState> for DataPlane {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        st.service.authenticate_dataplane(bearer(parts))?;
        Ok(Self)
    }
}

/// The bearer token of a request (operators and data planes present
/// theirs the same way: `molt_config::contract::AUTH_HEADER`).
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(molt_config::contract::AUTH_HEADER)?
        .to_str()
        .ok()?;
    molt_config::contract::bearer_token(value)
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let api = v1::routes()
        .merge(money::routes())
        .merge(bots::routes())
        .merge(notifications::routes())
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes));
    let internal = Router::new()
        .route(contract::CONFIG_PATH, get(internal::config))
        .route(
            contract::USAGE_PATH,
            post(internal::ingest).layer(DefaultBodyLimit::max(state.settings.max_ingest_bytes)),
        );
    Router::new()
        .merge(api)
        .merge(internal)
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            state.service.metrics().clone(),
            track,
        ))
        .with_state(state)
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.service.metrics().render(),
    )
}

/// `router` with the request metrics and internal-error logging of
/// [`router`] (for routes merged in later, e.g. billing's).
pub fn tracked(router: Router, metrics: Metrics) -> Router {
    router.layer(axum::middleware::from_fn_with_state(metrics, track))
}

/// Count and time every request by route template and status, and log the
/// detail of internal errors (kept out of the response by `ApiError`).
async fn track(State(m): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let timer = m.http_duration.with_label_values(&[&route]).start_timer();
    let resp = next.run(req).await;
    timer.observe_duration();
    m.http_requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    if let Some(InternalDetail(detail)) = resp.extensions().get::<InternalDetail>() {
        tracing::error!(%method, %route, error = %detail, "internal error");
    }
    resp
}
