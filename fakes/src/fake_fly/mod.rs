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

mod leases;
mod machines;
mod state;
mod volumes;

use leases::{create_lease, get_lease, release_lease};
use machines::{
    create_machine, delete_machine, get_machine, list_machines, start_machine, stop_machine,
    wait_machine,
};
use volumes::{create_volume, delete_volume, get_volume, list_volumes};

pub use state::{FakeMachine, FakeVolume, Fault, FaultKind};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use state::Inner;
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
