//! The fake's machines: create, list (by metadata, with deleted ones),
//! get, start, stop, delete, wait, and the lease check every mutation
//! goes through.

use super::state::{self, FakeMachine, Inner, Machine};
use super::{fly_err, fly_error, FakeFly, FlyErr};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Deserialize)]
pub(super) struct CreateMachine {
    name: Option<String>,
    region: Option<String>,
    config: Value,
    #[serde(default)]
    skip_launch: bool,
    lease_ttl: Option<u64>,
}

pub(super) async fn create_machine(
    State(fly): State<FakeFly>,
    Path(app): Path<String>,
    Json(req): Json<CreateMachine>,
) -> Response {
    let Some(image) = req
        .config
        .get("image")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return fly_error(
            StatusCode::BAD_REQUEST,
            "config.image is required",
            "unknown",
        );
    };
    let mut st = fly.inner.lock();
    st.settle(&fly.inner);
    let id = state::rand_hex(14);
    let name = req.name.unwrap_or_else(|| format!("machine-{id}"));
    if st
        .machines
        .values()
        .any(|m| m.app == app && m.name == name && m.state != "destroyed")
    {
        return fly_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("a machine with name {name:?} already exists"),
            "name_taken",
        );
    }
    let mounts = req
        .config
        .get("mounts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if mounts.len() > 1 {
        return fly_error(
            StatusCode::BAD_REQUEST,
            "only one volume per machine",
            "unknown",
        );
    }
    let mut volume = None;
    for m in &mounts {
        let vol_id = m.get("volume").and_then(Value::as_str).unwrap_or_default();
        let Some(v) = st.volumes.get(vol_id).filter(|v| v.app == app) else {
            return fly_error(
                StatusCode::BAD_REQUEST,
                format!("volume {vol_id:?} not found"),
                "unknown",
            );
        };
        if let Some(other) = v.attached_machine_id.as_ref() {
            if st
                .machines
                .get(other)
                .is_some_and(|m| m.state != "destroyed")
            {
                return fly_error(
                    StatusCode::BAD_REQUEST,
                    format!("volume {vol_id} is already attached to machine {other}"),
                    "unknown",
                );
            }
        }
        volume = Some(vol_id.to_owned());
    }
    if let Some(vol_id) = &volume {
        if let Some(v) = st.volumes.get_mut(vol_id) {
            v.attached_machine_id = Some(id.clone());
            v.attached_alloc_id = Some(state::rand_hex(8));
        }
    }
    let mut machine = Machine::new(
        id.clone(),
        name,
        app,
        req.region.unwrap_or_else(|| "iad".into()),
        image,
        req.config,
    );
    if !req.skip_launch {
        machine.begin_start(&fly.inner);
    }
    let nonce = req.lease_ttl.map(|ttl| machine.take_lease(ttl, "create"));
    let mut view = serde_json::to_value(machine.view()).unwrap_or_default();
    if let Some(n) = nonce {
        view["nonce"] = json!(n);
    }
    st.machines.insert(id, machine);
    Json(view).into_response()
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    include_deleted: bool,
    region: Option<String>,
    #[serde(flatten)]
    rest: HashMap<String, String>,
}

pub(super) async fn list_machines(
    State(fly): State<FakeFly>,
    Path(app): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let metadata: Vec<(&str, &str)> = q
        .rest
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?, v.as_str())))
        .collect();
    let out: Vec<FakeMachine> = fly
        .machines()
        .into_iter()
        .filter(|m| m.app == app)
        .filter(|m| q.include_deleted || m.state != "destroyed")
        .filter(|m| q.region.as_ref().is_none_or(|r| &m.region == r))
        .filter(|m| {
            metadata.iter().all(|(k, v)| {
                m.config
                    .get("metadata")
                    .and_then(|md| md.get(*k))
                    .and_then(Value::as_str)
                    == Some(*v)
            })
        })
        .collect();
    Json(out).into_response()
}

/// Look up a live-or-destroyed machine of `app`, settled to now.
pub(super) fn with_machine<T>(
    fly: &FakeFly,
    app: &str,
    id: &str,
    f: impl FnOnce(&mut Machine, &Inner) -> T,
) -> Result<T, FlyErr> {
    let mut st = fly.inner.lock();
    st.settle(&fly.inner);
    match st.machines.get_mut(id).filter(|m| m.app == app) {
        Some(m) => Ok(f(m, &fly.inner)),
        None => Err(fly_err(
            StatusCode::NOT_FOUND,
            "machine not found",
            "unknown",
        )),
    }
}

/// 409 unless the request carries the nonce of the lease held (if any).
pub(super) fn check_lease(m: &Machine, headers: &HeaderMap) -> Result<(), FlyErr> {
    let nonce = headers
        .get("fly-machine-lease-nonce")
        .and_then(|v| v.to_str().ok());
    if m.lease_blocks(nonce) {
        return Err(fly_err(
            StatusCode::CONFLICT,
            format!("machine {} has a lease held by someone else", m.id),
            "unknown",
        ));
    }
    Ok(())
}

pub(super) async fn get_machine(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    match with_machine(&fly, &app, &id, |m, _| m.view()) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn start_machine(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = with_machine(&fly, &app, &id, |m, inner| {
        check_lease(m, &headers)?;
        let previous = m.state.clone();
        match previous.as_str() {
            "stopped" | "created" | "suspended" | "failed" => {
                m.begin_start(inner);
                Ok(
                    Json(json!({"previous_state": previous, "migrated": false, "new_host": ""}))
                        .into_response(),
                )
            }
            "destroyed" | "destroying" => Err(fly_err(
                StatusCode::PRECONDITION_FAILED,
                format!("machine {id} is destroyed"),
                "unknown",
            )),
            // Starting a started machine is a no-op on Fly too.
            _ => Ok(
                Json(json!({"previous_state": previous, "migrated": false, "new_host": ""}))
                    .into_response(),
            ),
        }
    });
    r.and_then(|x| x)
        .unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn stop_machine(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = with_machine(&fly, &app, &id, |m, inner| {
        check_lease(m, &headers)?;
        match m.state.as_str() {
            "destroyed" | "destroying" => Err(fly_err(
                StatusCode::PRECONDITION_FAILED,
                format!("machine {id} is destroyed"),
                "unknown",
            )),
            "stopped" | "stopping" | "created" => Ok(Json(json!({"ok": true})).into_response()),
            _ => {
                m.begin_stop(inner);
                Ok(Json(json!({"ok": true})).into_response())
            }
        }
    });
    r.and_then(|x| x)
        .unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    kill: bool,
}

pub(super) async fn delete_machine(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Response {
    let r = with_machine(&fly, &app, &id, |m, _| {
        check_lease(m, &headers)?;
        match m.state.as_str() {
            "destroyed" => Err(fly_err(
                StatusCode::NOT_FOUND,
                "machine not found",
                "unknown",
            )),
            "started" | "starting" | "stopping" if !(q.force || q.kill) => Err(fly_err(
                StatusCode::PRECONDITION_FAILED,
                format!("machine {id} is {}; stop it or pass force=true", m.state),
                "unknown",
            )),
            _ => {
                m.destroy();
                Ok(Json(json!({"ok": true})).into_response())
            }
        }
    });
    r.and_then(|x| x)
        .unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
pub(super) struct WaitQuery {
    state: Option<String>,
    timeout: Option<u64>,
}

pub(super) async fn wait_machine(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> Response {
    let want = q.state.unwrap_or_else(|| "started".into());
    if !matches!(
        want.as_str(),
        "started" | "stopped" | "suspended" | "destroyed"
    ) {
        return fly_error(
            StatusCode::BAD_REQUEST,
            format!("invalid state {want:?}"),
            "unknown",
        );
    }
    // Clamped as Fly's proxy does.
    let timeout = Duration::from_secs(q.timeout.unwrap_or(60).clamp(1, 60));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match with_machine(&fly, &app, &id, |m, _| m.state.clone()) {
            Ok(s) if s == want => return Json(json!({"ok": true})).into_response(),
            Ok(_) => {}
            Err(e) => return e.into_response(),
        }
        if tokio::time::Instant::now() >= deadline {
            return fly_error(
                StatusCode::REQUEST_TIMEOUT,
                format!("deadline_exceeded: machine {id} did not reach {want} in time"),
                "unknown",
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
