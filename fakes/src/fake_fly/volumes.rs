//! The fake's volumes: create (names not unique, as on Fly), list, get,
//! delete (refused while attached to a live machine).

use super::state::{self, FakeVolume};
use super::{fly_error, FakeFly};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
pub(super) struct CreateVolume {
    name: String,
    region: Option<String>,
    size_gb: Option<u32>,
    encrypted: Option<bool>,
}

pub(super) async fn create_volume(
    State(fly): State<FakeFly>,
    Path(app): Path<String>,
    Json(req): Json<CreateVolume>,
) -> Response {
    if req.name.is_empty()
        || req.name.len() > 30
        || !req
            .name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    {
        return fly_error(
            StatusCode::BAD_REQUEST,
            "volume name must be at most 30 lowercase letters, digits or underscores",
            "unknown",
        );
    }
    let vol = FakeVolume {
        id: format!("vol_{}", state::rand_hex(16)),
        name: req.name,
        app,
        state: "created".into(),
        size_gb: req.size_gb.unwrap_or(3),
        region: req.region.unwrap_or_else(|| "iad".into()),
        zone: "a1b2".into(),
        encrypted: req.encrypted.unwrap_or(true),
        attached_machine_id: None,
        attached_alloc_id: None,
        fstype: "ext4".into(),
        snapshot_retention: 5,
        auto_backup_enabled: true,
        created_at: state::rfc3339_now(),
    };
    fly.inner.lock().volumes.insert(vol.id.clone(), vol.clone());
    Json(vol).into_response()
}

pub(super) async fn list_volumes(State(fly): State<FakeFly>, Path(app): Path<String>) -> Response {
    let vols: Vec<FakeVolume> = fly.volumes().into_iter().filter(|v| v.app == app).collect();
    Json(vols).into_response()
}

pub(super) async fn get_volume(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    match fly.inner.lock().volumes.get(&id) {
        Some(v) if v.app == app => Json(v.clone()).into_response(),
        _ => fly_error(StatusCode::NOT_FOUND, "volume not found", "unknown"),
    }
}

pub(super) async fn delete_volume(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    let mut st = fly.inner.lock();
    st.settle(&fly.inner);
    let Some(vol) = st.volumes.get(&id).filter(|v| v.app == app).cloned() else {
        return fly_error(StatusCode::NOT_FOUND, "volume not found", "unknown");
    };
    if let Some(m) = vol.attached_machine_id.as_ref() {
        if st.machines.get(m).is_some_and(|m| m.state != "destroyed") {
            return fly_error(
                StatusCode::BAD_REQUEST,
                format!("volume {id} is attached to machine {m}; destroy it first"),
                "unknown",
            );
        }
    }
    st.volumes.remove(&id);
    let mut out = serde_json::to_value(&vol).unwrap_or_default();
    out["state"] = json!("destroyed");
    Json(out).into_response()
}
