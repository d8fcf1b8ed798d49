//! The loop every claiming background worker runs (the provisioning
//! worker, the notification notifier): a scan, then a pause unless the scan
//! found work, forever; a failed scan is logged and the loop goes on.

use crate::store::StoreError;
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Run `scan` (which answers how many items it handled) in the background,
/// pausing `pause` after a scan that handled none or failed. `what` names
/// the worker in the log.
pub fn spawn_scans<F, Fut>(what: &'static str, pause: Duration, mut scan: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<usize, StoreError>> + Send,
{
    tokio::spawn(async move {
        loop {
            match scan().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, worker = what, "scan failed"),
            }
            tokio::time::sleep(pause).await;
        }
    })
}
