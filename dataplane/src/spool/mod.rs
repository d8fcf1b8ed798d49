//! The durable usage spool and its shipper: how usage events reach the
//! control plane without loss or duplication. One room per stage an event
//! goes through: [`writer`] (the group commit), [`segments`] (the files on
//! disk, recovery and the acknowledged offset), [`reader`] (a batch of
//! recorded lines) and [`shipper`] (the post to the control plane).
//!
//! **Recording.** [`Spool::record`] (the [`UsageSink`]) never blocks the
//! request: it hands the event to a group-commit thread over a bounded
//! queue. That thread takes whatever is queued, appends it as JSON lines to
//! the current segment file with one write, and fsyncs once per batch. An
//! event is **recorded** when the fsync of its batch has returned; from
//! then on it survives a `kill -9` of the data plane (and a power cut) and
//! will be shipped. The proxy calls [`UsageSink::record_durable`] before
//! the last bytes of a successful response and, with
//! `hold_response_until_recorded` (the default), waits for that fsync
//! before ending the response, so every response a client saw complete has
//! its event on disk: a `kill -9` can only lose events of responses that
//! had not ended. The wait is one group commit, shared by every response
//! ending at that moment (see `molt_usage_spool_commit_seconds`); it is
//! capped at [`MAX_RECORD_WAIT`], past which the response ends anyway and
//! the event is recorded a little later.
//!
//! **Bounded.** Unshipped bytes (recorded, not yet acknowledged) are capped
//! at `spool_max_bytes`. When an event would go over, it is **dropped**:
//! counted in `molt_usage_events_dropped_total`, `molt_usage_spool_full`
//! goes to 1 and one warning is logged (and one when space is back). A
//! full queue between the proxy and the writer drops the same way.
//!
//! **Layout.** `spool_dir` holds segments named by the byte offset of their
//! first line in one endless logical log (`00000000000000000000.jsonl`,
//! ...), rotated at [`SEGMENT_BYTES`], and `acked`: the offset up to which
//! the control plane has acknowledged, replaced atomically (temp, fsync,
//! rename). Offsets never restart, so a segment name plus a position is a
//! global address across restarts.
//!
//! **Shipping.** [`Shipper`] reads recorded lines after `acked` (at most
//! the contract's [`MAX_BATCH_EVENTS`](molt_config::contract::MAX_BATCH_EVENTS)
//! or [`MAX_BATCH_BYTES`](molt_config::contract::MAX_BATCH_BYTES)), posts
//! them as a [`molt_config::contract::UsageBatch`] (written by
//! [`UsageBatchWriter`](molt_config::contract::UsageBatchWriter) straight
//! from the lines) to `POST /internal/v1/usage`, and only after a 200
//! persists the new `acked` and deletes segments that are wholly before
//! it. A crash between the 200 and the persist re-sends that batch after
//! restart; the control plane ignores events whose `event_id` it already
//! stored, so nothing is stored twice.
//!
//! **Recovery.** On open, a torn last line (a write cut by a crash) is cut
//! off, segments wholly before `acked` are deleted, and shipping resumes at
//! `acked`.

mod reader;
mod segments;
mod shipper;
mod writer;

#[cfg(test)]
mod tests;

pub use shipper::Shipper;

use crate::sink::{Recorded, UsageSink};
use crate::sync::ControlPlaneClient;
use molt_config::metrics::Registrar;
use molt_config::UsageEvent;
use prometheus::{Histogram, IntCounter, IntGauge, Registry};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use writer::{Entry, Writer};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Events queued between the proxy and the group-commit thread.
const QUEUE: usize = 65_536;
/// Longest a response end is held for its event's group commit (a stalled
/// disk must not stall traffic; the event is still written when it can be).
pub const MAX_RECORD_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("usage spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("usage spool {path}: `acked` holds {text:?}, not an offset")]
    BadAck { path: PathBuf, text: String },
    #[error("cannot register spool metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone)]
struct SpoolMetrics {
    /// Recorded but not yet acknowledged bytes.
    bytes: IntGauge,
    /// `spool_max_bytes`, so `bytes` reads as a fill ratio.
    capacity: IntGauge,
    full: IntGauge,
    recorded: IntCounter,
    shipped: IntCounter,
    fsync_seconds: Histogram,
}

impl SpoolMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let r = Registrar(registry);
        Ok(Self {
            bytes: r.gauge(
                "molt_usage_spool_bytes",
                "Usage recorded in the spool and not yet acknowledged by the control plane, in bytes.",
            )?,
            capacity: r.gauge(
                "molt_usage_spool_max_bytes",
                "The spool's capacity (spool_max_bytes): molt_usage_spool_bytes beyond it are dropped.",
            )?,
            full: r.gauge(
                "molt_usage_spool_full",
                "1 while the spool is at spool_max_bytes and new usage events are dropped.",
            )?,
            recorded: r.counter(
                "molt_usage_spool_recorded_total",
                "Usage events written and fsynced to the spool.",
            )?,
            shipped: r.counter(
                "molt_usage_shipped_total",
                "Usage events acknowledged by the control plane.",
            )?,
            fsync_seconds: r.histogram(
                "molt_usage_spool_commit_seconds",
                "Time of one spool group commit (write + fsync).",
                &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0],
            )?,
        })
    }
}

/// State shared by the writer thread and the shipper.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    /// End offset of what is written and fsynced.
    durable: AtomicU64,
    /// Offset up to which the control plane acknowledged (persisted).
    acked: AtomicU64,
    /// Start offsets of the segment files, ascending; the last is written.
    segments: Mutex<Vec<u64>>,
    metrics: SpoolMetrics,
}

impl Shared {
    fn segments(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        // A poisoned lock means a thread panicked between two statements
        // that each leave the list valid; keep using it.
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update_bytes(&self) {
        let pending = self
            .durable
            .load(Ordering::Acquire)
            .saturating_sub(self.acked.load(Ordering::Acquire));
        self.metrics
            .bytes
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
}

/// The durable spool; see the module docs.
pub struct Spool {
    tx: SyncSender<Entry>,
    shared: Arc<Shared>,
    on_drop: Box<dyn Fn() + Send + Sync>,
    /// Whether `record_durable` waits for the fsync (else resolves at once).
    hold_until_recorded: bool,
}

impl Spool {
    /// Open (or create) the spool in `dir`, recover it, and start the
    /// group-commit thread. `on_drop` is called for every dropped event.
    /// With `hold_until_recorded`, [`UsageSink::record_durable`] resolves
    /// only once the event is fsynced.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        hold_until_recorded: bool,
        registry: &Registry,
        on_drop: impl Fn() + Send + Sync + Clone + 'static,
    ) -> Result<Self, SpoolError> {
        let found = segments::recover(dir)?;
        let end = found.tail.end();
        let metrics = SpoolMetrics::new(registry)?;
        metrics
            .capacity
            .set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            max_bytes,
            durable: AtomicU64::new(end),
            acked: AtomicU64::new(found.acked),
            segments: Mutex::new(found.starts),
            metrics,
        });
        segments::delete_acked(&shared);
        shared.update_bytes();
        let (tx, rx) = sync_channel(QUEUE);
        let writer = Writer::new(shared.clone(), found.tail, Box::new(on_drop.clone()));
        std::thread::Builder::new()
            .name("molt-usage-spool".into())
            .spawn(move || writer.run(&rx))
            .map_err(io_err(dir))?;
        if end > found.acked {
            tracing::info!(
                bytes = end - found.acked,
                "usage spool holds unshipped events from before the restart"
            );
        }
        Ok(Self {
            tx,
            shared,
            on_drop: Box::new(on_drop),
            hold_until_recorded,
        })
    }

    /// The shipper for this spool.
    pub fn shipper(
        &self,
        client: ControlPlaneClient,
        interval: Duration,
        errors: IntCounter,
    ) -> Shipper {
        Shipper::new(self.shared.clone(), client, interval, errors)
    }

    /// Offsets `(durable, acked)`, for tests and diagnostics.
    pub fn offsets(&self) -> (u64, u64) {
        (
            self.shared.durable.load(Ordering::Acquire),
            self.shared.acked.load(Ordering::Acquire),
        )
    }

    fn enqueue(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            // Dropping the entry drops its sender: a waiter resolves at once.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => (self.on_drop)(),
        }
    }
}

impl UsageSink for Spool {
    fn record(&self, event: UsageEvent) {
        self.enqueue(Entry {
            event,
            durable: None,
        });
    }

    fn record_durable(&self, event: UsageEvent) -> Recorded {
        if !self.hold_until_recorded {
            self.record(event);
            return Recorded::now();
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(Entry {
            event,
            durable: Some(tx),
        });
        Recorded::on(rx)
    }
}
