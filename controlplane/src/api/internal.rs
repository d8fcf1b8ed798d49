//! `/internal/v1`: the fixed contract with data planes
//! (`molt_config::contract`): the config long-poll and usage ingest, both
//! behind the data-plane token.

use super::error::{ApiError, ApiQuery, WireJson};
use super::{AppState, DataPlane};
use crate::metrics::ConnectedGuard;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use molt_config::contract::{ConfigPoll, IngestAnswer, UsageBatch};

/// `GET /internal/v1/config?after=<version>`: 200 with the snapshot as
/// soon as one newer than `after` is published, else 304 after the hold.
pub(super) async fn config(
    State(st): State<AppState>,
    _dp: DataPlane,
    ApiQuery(q): ApiQuery<ConfigPoll>,
) -> Response {
    let after = q.after.unwrap_or(0);
    let mut rx = st.service.publisher().subscribe();
    let _connected = ConnectedGuard::new(&st.service.metrics().connected_dataplanes);
    let newer = tokio::time::timeout(st.settings.poll_hold, rx.wait_for(|p| p.version > after))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|p| p.clone());
    match newer {
        Some(p) => ([(header::CONTENT_TYPE, "application/json")], p.body.clone()).into_response(),
        None => StatusCode::NOT_MODIFIED.into_response(),
    }
}

/// `POST /internal/v1/usage`: store a batch idempotently.
pub(super) async fn ingest(
    State(st): State<AppState>,
    _dp: DataPlane,
    WireJson(batch): WireJson<UsageBatch>,
) -> Result<Json<IngestAnswer>, ApiError> {
    Ok(Json(st.service.ingest_usage(batch).await?))
}
