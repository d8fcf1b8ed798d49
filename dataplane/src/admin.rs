//! The admin listener: `/metrics`, `/healthz`, `/readyz` and `/usage`.
//!
//! Served on its own address (loopback by default), never on the client
//! listeners, so scrapes and probes can't be reached from outside or
//! starved by client traffic.

use crate::metrics::Metrics;
use crate::runtime::RuntimeHandle;
use crate::sink::UsageTotals;
use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub runtime: RuntimeHandle,
    pub totals: Arc<UsageTotals>,
    /// Cleared when the process starts shutting down, so load balancers
    /// stop sending new work during the drain.
    pub ready: Arc<AtomicBool>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let (status, content_type, body) = match path.as_str() {
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            "/healthz" => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" if self.ready.load(Ordering::Relaxed) => {
                let v = self.runtime.load().version;
                (
                    StatusCode::OK,
                    "text/plain",
                    format!("ready config_version={v}\n").into_bytes(),
                )
            }
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"shutting down\n".to_vec(),
            ),
            "/usage" => (
                StatusCode::OK,
                "application/json",
                self.totals.to_json().to_string().into_bytes(),
            ),
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
