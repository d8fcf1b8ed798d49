//! The fake's machine leases: acquire, read, release.

use super::machines::{check_lease, with_machine};
use super::{fly_error, FakeFly};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
pub(super) struct CreateLease {
    ttl: Option<u64>,
    #[serde(default)]
    description: String,
}

pub(super) async fn create_lease(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<CreateLease>>,
) -> Response {
    let (ttl, description) = body.map_or((30, String::new()), |Json(b)| {
        (b.ttl.unwrap_or(30), b.description)
    });
    let r = with_machine(&fly, &app, &id, |m, _| {
        // Refreshing with the current nonce is allowed; anything else
        // while a lease is held is a conflict.
        check_lease(m, &headers)?;
        m.take_lease(ttl, &description);
        Ok((StatusCode::CREATED, Json(m.lease_json())).into_response())
    });
    r.and_then(|x| x)
        .unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn get_lease(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    let r = with_machine(&fly, &app, &id, |m, _| {
        if m.lease_live() {
            Json(m.lease_json()).into_response()
        } else {
            fly_error(StatusCode::NOT_FOUND, "no lease", "unknown")
        }
    });
    r.unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn release_lease(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = with_machine(&fly, &app, &id, |m, _| {
        let nonce = headers
            .get("fly-machine-lease-nonce")
            .and_then(|v| v.to_str().ok());
        let Some(nonce) = nonce else {
            return fly_error(
                StatusCode::BAD_REQUEST,
                "fly-machine-lease-nonce header is required",
                "unknown",
            );
        };
        if m.lease_blocks(Some(nonce)) {
            return fly_error(
                StatusCode::CONFLICT,
                "lease nonce does not match",
                "unknown",
            );
        }
        m.release_lease();
        Json(json!({"ok": true})).into_response()
    });
    r.unwrap_or_else(IntoResponse::into_response)
}
