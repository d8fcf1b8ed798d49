//! The shipper: a Pingora background service that posts recorded batches
//! to the control plane's `POST /internal/v1/usage` and advances `acked`
//! only after a 200, with backoff while the control plane is unreachable.

use super::reader::read_batch;
use super::segments::commit_ack;
use super::Shared;
use crate::sync::{backoff, ControlPlaneClient};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::Duration;

const SHIP_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Ships the spool to the control plane, as a Pingora background service.
pub struct Shipper {
    shared: Arc<Shared>,
    client: ControlPlaneClient,
    interval: Duration,
    errors: IntCounter,
}

impl Shipper {
    pub(super) fn new(
        shared: Arc<Shared>,
        client: ControlPlaneClient,
        interval: Duration,
        errors: IntCounter,
    ) -> Self {
        Self {
            shared,
            client,
            interval,
            errors,
        }
    }

    /// Ship everything recorded so far. `Err` after the first failure.
    async fn drain(&self) -> Result<(), String> {
        loop {
            let shared = self.shared.clone();
            let batch = tokio::task::spawn_blocking(move || read_batch(&shared))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let Some(batch) = batch else { return Ok(()) };
            if batch.events > 0 {
                self.client
                    .post_usage(batch.body)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || commit_ack(&shared, batch.end))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            self.shared.metrics.shipped.inc_by(batch.events);
        }
    }
}

#[async_trait]
impl BackgroundService for Shipper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failures = 0u32;
        loop {
            let wait = if failures == 0 {
                self.interval
            } else {
                backoff(failures, self.interval, SHIP_BACKOFF_MAX)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            let drained = tokio::select! {
                r = self.drain() => r,
                _ = shutdown.changed() => return,
            };
            match drained {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!("usage shipping resumed");
                    }
                    failures = 0;
                }
                Err(e) => {
                    self.errors.inc();
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot ship usage; keeping it in the spool and retrying");
                    }
                }
            }
        }
    }
}
