//! The identity provider's HTTP edge: `POST /webhooks/clerk` (Clerk's
//! contract, signed by Svix; kept out of the OpenAPI document like
//! Stripe's). Merged into the application by `App::enable_identity`;
//! without `[identity]` the route does not exist (404). Errors become
//! responses in [`super::error`].

use super::error::ApiError;
use crate::identity::svix::SvixHeaders;
use crate::identity::Identity;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use std::sync::Arc;

/// `POST /webhooks/clerk`.
pub fn routes(identity: Arc<Identity>) -> Router {
    Router::new()
        .route("/webhooks/clerk", post(webhook))
        .with_state(identity)
}

/// A Clerk delivery, verified over the raw body.
async fn webhook(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let svix = SvixHeaders {
        id: header("svix-id"),
        timestamp: header("svix-timestamp"),
        signature: header("svix-signature"),
    };
    let delivery = identity.handle_webhook(&svix, &body).await?;
    Ok(Json(
        serde_json::json!({"received": true, "result": delivery.as_str()}),
    ))
}
