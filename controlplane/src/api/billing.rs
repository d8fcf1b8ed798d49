//! Billing's HTTP edge: `POST /webhooks/stripe` (Stripe's contract, kept
//! out of the OpenAPI document), `GET /api/v1/billing/reconciliation` and
//! `POST /api/v1/billing/flush` (the operators', in it). Merged into the
//! application by `App::enable_billing`; without `[billing]` the routes do
//! not exist (404). Errors become responses in [`super::error`].

use super::error::{ApiError, ApiQuery, ErrorBody};
use super::Op;
use crate::billing::{Billing, FlushOutcome, Reconciliation, ReconciliationQuery};
use crate::service::Service;
use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// What billing's handlers reach.
#[derive(Debug, Clone)]
pub struct BillingState(Arc<Billing>);

impl FromRef<BillingState> for Arc<Service> {
    fn from_ref(st: &BillingState) -> Self {
        st.0.service().clone()
    }
}

/// `POST /webhooks/stripe`, `GET /api/v1/billing/reconciliation` and
/// `POST /api/v1/billing/flush`.
pub fn routes(billing: Arc<Billing>) -> Router {
    Router::new()
        .route("/webhooks/stripe", post(webhook))
        .route("/api/v1/billing/reconciliation", get(reconciliation))
        .route("/api/v1/billing/flush", post(flush))
        .with_state(BillingState(billing))
}

/// A Stripe delivery, verified over the raw body.
async fn webhook(
    State(BillingState(b)): State<BillingState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sig = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let outcome = b.handle_webhook(sig, &body).await?;
    Ok(Json(
        serde_json::json!({"received": true, "result": outcome.as_str()}),
    ))
}

/// Per user, usage tokens against tokens Stripe confirmed, with the
/// difference by reason. 404 when the control plane has no `[billing]`.
#[utoipa::path(get, path = "/api/v1/billing/reconciliation", tag = "billing",
    params(ReconciliationQuery),
    responses((status = 200, body = Reconciliation), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "billing is not configured", body = ErrorBody)))]
pub(super) async fn reconciliation(
    State(BillingState(b)): State<BillingState>,
    ApiQuery(q): ApiQuery<ReconciliationQuery>,
    _op: Op,
) -> Result<Json<Reconciliation>, ApiError> {
    Ok(Json(b.reconciliation(q).await?))
}

/// Run the meter flush now (both phases, as the hourly job does): report
/// closed windows' unreported usage and send every pending report. Admin
/// only; audited as `billing.flush`. 404 when the control plane has no
/// `[billing]`.
#[utoipa::path(post, path = "/api/v1/billing/flush", tag = "billing",
    responses((status = 200, body = FlushOutcome), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "billing is not configured", body = ErrorBody)))]
pub(super) async fn flush(
    State(BillingState(b)): State<BillingState>,
    Op(op): Op,
) -> Result<Json<FlushOutcome>, ApiError> {
    Ok(Json(b.flush_as(&op).await?))
}
