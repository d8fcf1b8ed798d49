//! Where usage events go once a request is done, off the request path.
//!
//! [`UsageSink`] is the narrow trait the proxy calls: `record` must never
//! block or fail the request. `record_durable` hands the event over the same
//! way and gives back a [`Recorded`] future that resolves once the event is
//! durable (for the spool: fsynced), so the proxy can hold the end of a
//! response until then; sinks without durability resolve it at once. [`JsonlFileSink`] hands events to a writer
//! thread over a bounded channel and appends them as JSON lines (a full
//! channel drops the event and counts it: losing a line is better than
//! stalling traffic; durable, lossless shipping to the control plane is
//! [`crate::spool::Spool`]). [`Tee`] feeds two sinks. [`UsageTotals`] keeps in-memory sums per user and model
//! for the admin endpoint.

use molt_config::UsageEvent;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Receives one event per finished request. Implementations must return
/// quickly and never panic.
pub trait UsageSink: Send + Sync + 'static {
    fn record(&self, event: UsageEvent);

    /// Record `event`; the returned future resolves when it is durable, or
    /// when it never will be (dropped: counted by the sink). The default is
    /// for sinks that have nothing to wait for.
    fn record_durable(&self, event: UsageEvent) -> Recorded {
        self.record(event);
        Recorded::now()
    }
}

/// Resolves once an event handed to [`UsageSink::record_durable`] is
/// durable or was dropped. Awaiting it never fails.
#[derive(Debug)]
pub struct Recorded(Option<tokio::sync::oneshot::Receiver<()>>);

impl Recorded {
    /// Already resolved.
    pub fn now() -> Self {
        Self(None)
    }

    /// Resolves when the writer sends on (or drops) the paired sender.
    pub fn on(rx: tokio::sync::oneshot::Receiver<()>) -> Self {
        Self(Some(rx))
    }

    /// Wait until the event is durable (`true`) or will not be (`false`).
    pub async fn wait(self) -> bool {
        match self.0 {
            None => true,
            Some(rx) => rx.await.is_ok(),
        }
    }

    /// [`Self::wait`], giving up after `max` (`None`). A sink with nothing
    /// to wait for answers at once, without arming a timer.
    pub async fn wait_at_most(self, max: std::time::Duration) -> Option<bool> {
        match self.0 {
            None => Some(true),
            Some(rx) => tokio::time::timeout(max, rx).await.ok().map(|r| r.is_ok()),
        }
    }
}

/// Running totals per (user, model).
#[derive(Debug, Default)]
pub struct UsageTotals {
    inner: Mutex<HashMap<(String, String), Totals>>,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl UsageTotals {
    pub fn add(&self, e: &UsageEvent) {
        // A poisoned lock only means another thread panicked mid-update;
        // the counters are still usable.
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = map.entry((e.user_id.clone(), e.model.clone())).or_default();
        t.requests += 1;
        t.input_tokens += e.input_tokens;
        t.output_tokens += e.output_tokens;
    }

    /// `[{"user","model","requests","input_tokens","output_tokens"}]`.
    pub fn to_json(&self) -> serde_json::Value {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rows: Vec<_> = map
            .iter()
            .map(|((user, model), t)| {
                serde_json::json!({"user": user, "model": model, "requests": t.requests,
                    "input_tokens": t.input_tokens, "output_tokens": t.output_tokens})
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}

/// Appends events to a JSON-lines file from a dedicated thread.
pub struct JsonlFileSink {
    tx: SyncSender<UsageEvent>,
    on_drop: Box<dyn Fn() + Send + Sync>,
}

/// Events buffered between the proxy and the writer thread.
const QUEUE: usize = 65_536;

impl JsonlFileSink {
    /// Open (creating directories) `path` for appending and start the
    /// writer. `totals` is updated by the writer; `on_drop` is called for
    /// each event that had to be dropped.
    pub fn start(
        path: &Path,
        totals: Arc<UsageTotals>,
        on_drop: Box<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("molt-usage-writer".into())
            .spawn(move || write_loop(rx, file, &path, &totals))?;
        Ok(Self { tx, on_drop })
    }
}

impl UsageSink for JsonlFileSink {
    fn record(&self, event: UsageEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => (self.on_drop)(),
        }
    }
}

fn write_loop(rx: Receiver<UsageEvent>, file: std::fs::File, path: &Path, totals: &UsageTotals) {
    let mut out = std::io::BufWriter::new(file);
    // Block for one event, then take whatever else is queued, and flush
    // once per batch: one write syscall for a burst of requests.
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(4096));
        for e in &batch {
            totals.add(e);
            let line = match serde_json::to_vec(e) {
                Ok(l) => l,
                Err(err) => {
                    tracing::error!(%err, "cannot encode a usage event");
                    continue;
                }
            };
            if let Err(err) = out.write_all(&line).and_then(|()| out.write_all(b"\n")) {
                tracing::error!(%err, path = %path.display(), "cannot write usage events");
            }
        }
        if let Err(err) = out.flush() {
            tracing::error!(%err, path = %path.display(), "cannot flush usage events");
        }
    }
}

/// Keeps totals only (no file configured).
pub struct TotalsOnlySink(pub Arc<UsageTotals>);

impl UsageSink for TotalsOnlySink {
    fn record(&self, event: UsageEvent) {
        self.0.add(&event);
    }
}

/// Gives every event to both sinks: the first is the durable one (the
/// spool) whose [`Recorded`] is returned, the second the file or totals.
pub struct Tee(pub Arc<dyn UsageSink>, pub Arc<dyn UsageSink>);

impl UsageSink for Tee {
    fn record(&self, event: UsageEvent) {
        self.1.record(event.clone());
        self.0.record(event);
    }

    fn record_durable(&self, event: UsageEvent) -> Recorded {
        self.1.record(event.clone());
        self.0.record_durable(event)
    }
}
