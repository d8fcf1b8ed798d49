//! A fake Fly Machines API server, faithful enough that the control plane's
//! real Fly client runs against it unchanged (used in-process by tests and
//! as `molt fake-fly --listen ADDR`).
//!
//! What it follows from the real API (`/v1/apps/{app}/...`):
//! - volumes: create (names are *not* unique, as on Fly), list, get,
//!   delete (refused while attached to a live machine);
//! - machines: create (name unique per app: 422 `name_taken`; a mounted
//!   volume must exist and be free), list (`?metadata.KEY=VALUE`,
//!   `?include_deleted=`), get, start, stop, delete (`?force=`/`?kill=`),
//!   wait (`?state=&timeout=`, clamped to 1–60 s, 408 on timeout), leases
//!   (`POST/GET/DELETE .../lease`; a held lease makes every mutation without
//!   its `fly-machine-lease-nonce` a 409);
//! - states move with time: `created` → `starting` → `started` after
//!   `boot_delay`, `stopping` → `stopped` after `stop_delay`; an image
//!   containing `unpullable` ends `failed` (as mudflaps does);
//! - errors are `{"error","status"}`; a missing or wrong bearer token is 401;
//! - rate limits per action and machine/app: 1 req/s bursting to 3, gets
//!   5 req/s bursting to 10, over that 429.
//!
//! Test hooks (not Fly's): fault injection ([`Fault`]: fail the next N
//! matching calls with a status, act and then drop the response, or act
//! and then delay the response), `GET /_fake/state` (every machine and
//! volume, destroyed ones included), `GET /_fake/calls` (the API calls
//! received, in order, as `[["METHOD /path", status], ...]`),
//! `POST /_fake/faults`, `POST /_fake/bots_healthy`.
//!
//! It serves plain HTTP ([`FakeFly::spawn`], [`FakeFly::serve`]) or the
//! same router over TLS with a certificate the caller brings
//! ([`FakeFly::spawn_tls`], [`FakeFly::serve_tls`]). With `spawn_bots`, a
//! started machine runs a [`crate::mock_bot`] on its own loopback address
//! (`private_ip` = `127.x.y.z`, port 18789, the machine's internal port),
//! demanding the machine's `MOLT_GATEWAY_TOKEN`.

mod state;

pub use state::{FakeMachine, FakeVolume, Fault, FaultKind};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use state::{Inner, Machine};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The internal port the seed's bots listen on.
pub const BOT_PORT: u16 = 18789;

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeFlyOptions {
    /// The bearer token it demands.
    pub token: String,
    /// Time from `starting` to `started`.
    pub boot_delay: Duration,
    /// Time from `stopping` to `stopped`.
    pub stop_delay: Duration,
    /// Enforce Fly's per-action rate limits.
    pub rate_limits: bool,
    /// Run a mock bot gateway for every started machine.
    pub spawn_bots: bool,
}

impl Default for FakeFlyOptions {
    fn default() -> Self {
        Self {
            token: "fake-fly-token".to_owned(),
            boot_delay: Duration::from_millis(200),
            stop_delay: Duration::from_millis(100),
            rate_limits: true,
            spawn_bots: true,
        }
    }
}

/// The fake server; cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeFly {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeFly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeFly").finish_non_exhaustive()
    }
}

/// An error as Fly reports it: `{"error","status"}`.
struct FlyErr {
    status: StatusCode,
    message: String,
    kind: &'static str,
}

impl IntoResponse for FlyErr {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.message, "status": self.kind})),
        )
            .into_response()
    }
}

fn fly_err(status: StatusCode, message: impl Into<String>, kind: &'static str) -> FlyErr {
    FlyErr {
        status,
        message: message.into(),
        kind,
    }
}

fn fly_error(status: StatusCode, message: impl Into<String>, kind: &'static str) -> Response {
    fly_err(status, message, kind).into_response()
}

impl FakeFly {
    pub fn new(opts: FakeFlyOptions) -> Self {
        Self {
            inner: Arc::new(Inner::new(opts)),
        }
    }

    /// Bind `127.0.0.1:0`, serve in the background and return the base URL
    /// (`http://127.0.0.1:PORT`, without `/v1`).
    pub async fn spawn(&self) -> std::io::Result<String> {
        crate::serve::spawn(self.router(), "fake fly").await
    }

    /// Serve on `listener` until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Like [`Self::spawn`], over TLS with `tls` (which holds the
    /// certificate, valid for `127.0.0.1`); returns `https://127.0.0.1:PORT`.
    pub async fn spawn_tls(&self, tls: Arc<rustls::ServerConfig>) -> std::io::Result<String> {
        crate::serve::spawn_tls(self.router(), tls, "fake fly").await
    }

    /// Serve the same router as [`Self::serve`] over TLS until the process
    /// ends. A failed handshake or connection ends only that connection.
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) {
        crate::serve::serve_tls(self.router(), listener, tls, "fake fly").await;
    }

    pub fn router(&self) -> Router {
        let api = Router::new()
            .route(
                "/v1/apps/{app}/volumes",
                post(create_volume).get(list_volumes),
            )
            .route(
                "/v1/apps/{app}/volumes/{id}",
                get(get_volume).delete(delete_volume),
            )
            .route(
                "/v1/apps/{app}/machines",
                post(create_machine).get(list_machines),
            )
            .route(
                "/v1/apps/{app}/machines/{id}",
                get(get_machine).delete(delete_machine),
            )
            .route("/v1/apps/{app}/machines/{id}/start", post(start_machine))
            .route("/v1/apps/{app}/machines/{id}/stop", post(stop_machine))
            .route("/v1/apps/{app}/machines/{id}/wait", get(wait_machine))
            .route(
                "/v1/apps/{app}/machines/{id}/lease",
                post(create_lease).get(get_lease).delete(release_lease),
            )
            .layer(axum::middleware::from_fn_with_state(self.clone(), gate));
        Router::new()
            .merge(api)
            .route("/_fake/state", get(inspect))
            .route("/_fake/calls", get(list_calls))
            .route("/_fake/faults", post(add_fault))
            .route("/_fake/bots_healthy", post(set_healthy))
            .fallback(|| async {
                fly_error(
                    StatusCode::NOT_IMPLEMENTED,
                    "not implemented by the fake",
                    "unknown",
                )
            })
            .with_state(self.clone())
    }

    /// Queue a fault for the next matching calls.
    pub fn inject(&self, fault: Fault) {
        self.inner.lock().faults.push(fault);
    }

    /// Make every spawned bot's `GET /status` answer 200 (true) or 503.
    pub fn set_bots_healthy(&self, healthy: bool) {
        self.inner
            .bots_healthy
            .store(healthy, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every machine, destroyed ones included, oldest first.
    pub fn machines(&self) -> Vec<FakeMachine> {
        let mut st = self.inner.lock();
        st.settle(&self.inner);
        state::machine_views(&st)
    }

    /// Machines not destroyed.
    pub fn live_machines(&self) -> Vec<FakeMachine> {
        self.machines()
            .into_iter()
            .filter(|m| m.state != "destroyed")
            .collect()
    }

    /// Every volume that exists (deleted ones are gone).
    pub fn volumes(&self) -> Vec<FakeVolume> {
        self.inner.lock().volumes.values().cloned().collect()
    }

    /// API calls received (after auth), as `METHOD /path` with the status.
    pub fn calls(&self) -> Vec<(String, u16)> {
        self.inner.lock().calls.clone()
    }
}

/// Auth, call log, rate limits and fault injection, in front of `/v1`.
async fn gate(State(fly): State<FakeFly>, req: Request, next: Next) -> Response {
    let want = format!("Bearer {}", fly.inner.opts.token);
    let ok = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == want.as_bytes());
    if !ok {
        return fly_error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown");
    }
    let call = format!("{} {}", req.method(), req.uri().path());
    let fault = {
        let mut st = fly.inner.lock();
        if fly.inner.opts.rate_limits && !st.admit(req.method(), req.uri().path()) {
            st.calls.push((call, 429));
            return fly_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit exceeded",
                "unknown",
            );
        }
        st.take_fault(&call)
    };
    let resp = match fault {
        Some(FaultKind::Fail(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            fly_error(status, "injected fault", "unknown")
        }
        Some(FaultKind::Delay(ms)) => {
            // Act and log the call at once (Fly did it), then hold the
            // answer; a caller that dies meanwhile never learns of it.
            let resp = next.run(req).await;
            fly.inner.lock().calls.push((call, resp.status().as_u16()));
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return resp;
        }
        Some(FaultKind::Drop) => {
            // Act, then lose the answer: the headers go out but the body
            // fails, so hyper cuts the connection and the client never
            // learns what happened.
            let resp = next.run(req).await;
            let status = resp.status();
            fly.inner.lock().calls.push((call, status.as_u16()));
            let broken = futures::stream::once(async {
                Err::<bytes::Bytes, std::io::Error>(std::io::Error::other(
                    "fake fly dropped the response",
                ))
            });
            return (status, Body::from_stream(broken)).into_response();
        }
        None => next.run(req).await,
    };
    fly.inner.lock().calls.push((call, resp.status().as_u16()));
    resp
}

async fn inspect(State(fly): State<FakeFly>) -> Json<Value> {
    Json(json!({"machines": fly.machines(), "volumes": fly.volumes()}))
}

async fn list_calls(State(fly): State<FakeFly>) -> Json<Vec<(String, u16)>> {
    Json(fly.calls())
}

async fn add_fault(State(fly): State<FakeFly>, Json(fault): Json<Fault>) -> StatusCode {
    fly.inject(fault);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Healthy {
    healthy: bool,
}

async fn set_healthy(State(fly): State<FakeFly>, Json(h): Json<Healthy>) -> StatusCode {
    fly.set_bots_healthy(h.healthy);
    StatusCode::NO_CONTENT
}

// === volumes ===

#[derive(Deserialize)]
struct CreateVolume {
    name: String,
    region: Option<String>,
    size_gb: Option<u32>,
    encrypted: Option<bool>,
}

async fn create_volume(
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

async fn list_volumes(State(fly): State<FakeFly>, Path(app): Path<String>) -> Response {
    let vols: Vec<FakeVolume> = fly.volumes().into_iter().filter(|v| v.app == app).collect();
    Json(vols).into_response()
}

async fn get_volume(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    match fly.inner.lock().volumes.get(&id) {
        Some(v) if v.app == app => Json(v.clone()).into_response(),
        _ => fly_error(StatusCode::NOT_FOUND, "volume not found", "unknown"),
    }
}

async fn delete_volume(
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

// === machines ===

#[derive(Deserialize)]
struct CreateMachine {
    name: Option<String>,
    region: Option<String>,
    config: Value,
    #[serde(default)]
    skip_launch: bool,
    lease_ttl: Option<u64>,
}

async fn create_machine(
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
struct ListQuery {
    #[serde(default)]
    include_deleted: bool,
    region: Option<String>,
    #[serde(flatten)]
    rest: HashMap<String, String>,
}

async fn list_machines(
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
fn with_machine<T>(
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
fn check_lease(m: &Machine, headers: &HeaderMap) -> Result<(), FlyErr> {
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

async fn get_machine(
    State(fly): State<FakeFly>,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    match with_machine(&fly, &app, &id, |m, _| m.view()) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn start_machine(
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

async fn stop_machine(
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
struct DeleteQuery {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    kill: bool,
}

async fn delete_machine(
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
struct WaitQuery {
    state: Option<String>,
    timeout: Option<u64>,
}

async fn wait_machine(
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

// === leases ===

#[derive(Deserialize)]
struct CreateLease {
    ttl: Option<u64>,
    #[serde(default)]
    description: String,
}

async fn create_lease(
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

async fn get_lease(
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

async fn release_lease(
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
