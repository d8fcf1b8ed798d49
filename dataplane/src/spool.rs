//! The durable usage spool and its shipper: how usage events reach the
//! control plane without loss or duplication.
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
//! or [`MAX_BATCH_BYTES`]), posts them as
//! a [`molt_config::contract::UsageBatch`] (written by [`UsageBatchWriter`]
//! straight from the lines) to `POST /internal/v1/usage`, and only after a 200
//! persists the new `acked` and deletes segments that are wholly before
//! it. A crash between the 200 and the persist re-sends that batch after
//! restart; the control plane ignores events whose `event_id` it already
//! stored, so nothing is stored twice.
//!
//! **Recovery.** On open, a torn last line (a write cut by a crash) is cut
//! off, segments wholly before `acked` are deleted, and shipping resumes at
//! `acked`.

use crate::sink::{Recorded, UsageSink};
use crate::sync::{backoff, ControlPlaneClient};
use async_trait::async_trait;
use bytes::Bytes;
use molt_config::contract::{UsageBatchWriter, MAX_BATCH_BYTES};
use molt_config::files::write_atomically;
use molt_config::UsageEvent;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Events queued between the proxy and the group-commit thread.
const QUEUE: usize = 65_536;
/// Most events written by one group commit.
const MAX_COMMIT: usize = 8_192;
const ACK_FILE: &str = "acked";
const SEGMENT_EXT: &str = "jsonl";
const SHIP_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest a response end is held for its event's group commit (a stalled
/// disk must not stall traffic; the event is still written when it can be).
pub const MAX_RECORD_WAIT: Duration = Duration::from_secs(2);

/// One queued event, with whoever waits for it to be durable.
struct Entry {
    event: UsageEvent,
    durable: Option<tokio::sync::oneshot::Sender<()>>,
}

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
    fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            bytes: IntGauge::new(
                "molt_usage_spool_bytes",
                "Usage recorded in the spool and not yet acknowledged by the control plane, in bytes.",
            )?,
            capacity: IntGauge::new(
                "molt_usage_spool_max_bytes",
                "The spool's capacity (spool_max_bytes): molt_usage_spool_bytes beyond it are dropped.",
            )?,
            full: IntGauge::new(
                "molt_usage_spool_full",
                "1 while the spool is at spool_max_bytes and new usage events are dropped.",
            )?,
            recorded: IntCounter::new(
                "molt_usage_spool_recorded_total",
                "Usage events written and fsynced to the spool.",
            )?,
            shipped: IntCounter::new(
                "molt_usage_shipped_total",
                "Usage events acknowledged by the control plane.",
            )?,
            fsync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "molt_usage_spool_commit_seconds",
                    "Time of one spool group commit (write + fsync).",
                )
                .buckets(vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0]),
            )?,
        };
        r.register(Box::new(m.bytes.clone()))?;
        r.register(Box::new(m.capacity.clone()))?;
        r.register(Box::new(m.full.clone()))?;
        r.register(Box::new(m.recorded.clone()))?;
        r.register(Box::new(m.shipped.clone()))?;
        r.register(Box::new(m.fsync_seconds.clone()))?;
        Ok(m)
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

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.{SEGMENT_EXT}"))
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
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let ack_path = dir.join(ACK_FILE);
        let mut acked = match std::fs::read_to_string(&ack_path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| SpoolError::BadAck {
                path: ack_path.clone(),
                text: text.chars().take(40).collect(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&ack_path)(e)),
        };
        let mut starts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
                continue;
            }
            if let Some(start) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            {
                starts.push(start);
            }
        }
        starts.sort_unstable();
        let (last_start, file) = match starts.last() {
            Some(&start) => (start, recover_tail(&segment_path(dir, start))?),
            None => {
                starts.push(acked);
                (acked, create_segment(dir, acked)?)
            }
        };
        let len = file.metadata().map_err(io_err(dir))?.len();
        let end = last_start + len;
        if acked > end {
            tracing::warn!(acked, end, dir = %dir.display(), "spool acknowledged beyond its end (segments removed by hand?); resuming at the end");
            acked = end;
        }
        acked = acked.max(starts.first().copied().unwrap_or(0));
        let metrics = SpoolMetrics::new(registry)?;
        metrics
            .capacity
            .set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            max_bytes,
            durable: AtomicU64::new(end),
            acked: AtomicU64::new(acked),
            segments: Mutex::new(starts),
            metrics,
        });
        delete_acked_segments(&shared);
        shared.update_bytes();
        let (tx, rx) = sync_channel(QUEUE);
        let writer = Writer {
            shared: shared.clone(),
            file,
            start: last_start,
            len,
            full: false,
            on_drop: Box::new(on_drop.clone()),
        };
        std::thread::Builder::new()
            .name("molt-usage-spool".into())
            .spawn(move || writer.run(&rx))
            .map_err(io_err(dir))?;
        if end > acked {
            tracing::info!(
                bytes = end - acked,
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
        Shipper {
            shared: self.shared.clone(),
            client,
            interval,
            errors,
        }
    }

    /// Offsets `(durable, acked)`, for tests and diagnostics.
    pub fn offsets(&self) -> (u64, u64) {
        (
            self.shared.durable.load(Ordering::Acquire),
            self.shared.acked.load(Ordering::Acquire),
        )
    }
}

impl Spool {
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

/// Open the last segment for appending, cutting off a torn last line.
fn recover_tail(path: &Path) -> Result<std::fs::File, SpoolError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io_err(path))?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < data.len() {
        tracing::warn!(path = %path.display(), bytes = data.len() - keep, "cutting off a torn usage line");
        file.set_len(keep as u64).map_err(io_err(path))?;
    }
    // Whatever the previous process wrote but did not fsync is in the page
    // cache; make it durable before it can be acknowledged.
    file.sync_all().map_err(io_err(path))?;
    file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    Ok(file)
}

fn create_segment(dir: &Path, start: u64) -> Result<std::fs::File, SpoolError> {
    let path = segment_path(dir, start);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // The new name must survive a power cut too, or its lines would vanish.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(file)
}

/// Delete every segment that ends at or before `acked` (never the last).
fn delete_acked_segments(shared: &Shared) {
    let acked = shared.acked.load(Ordering::Acquire);
    let mut segs = shared.segments();
    while segs.len() > 1 && segs[1] <= acked {
        let path = segment_path(&shared.dir, segs[0]);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot delete a shipped spool segment");
                return;
            }
        }
        segs.remove(0);
    }
}

/// The group-commit thread.
struct Writer {
    shared: Arc<Shared>,
    file: std::fs::File,
    start: u64,
    len: u64,
    full: bool,
    on_drop: Box<dyn Fn() + Send + Sync>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Entry>) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut waiters = Vec::new();
        while let Ok(first) = rx.recv() {
            buf.clear();
            let mut count = 0u64;
            for entry in std::iter::once(first).chain(rx.try_iter().take(MAX_COMMIT)) {
                // A dropped event's waiter is dropped here, resolving it.
                if self.append(&mut buf, &entry.event) {
                    count += 1;
                    waiters.extend(entry.durable);
                }
            }
            if count > 0 && self.commit(&buf, count) {
                for w in waiters.drain(..) {
                    // The response may have ended already (wait capped, or
                    // client gone): nobody to tell is fine.
                    let _ = w.send(());
                }
            }
            waiters.clear();
        }
    }

    /// Encode `event` into `buf` if it fits under the bound.
    fn append(&mut self, buf: &mut Vec<u8>, event: &UsageEvent) -> bool {
        let before = buf.len();
        if let Err(e) = serde_json::to_writer(&mut *buf, event) {
            tracing::error!(error = %e, "cannot encode a usage event");
            buf.truncate(before);
            (self.on_drop)();
            return false;
        }
        buf.push(b'\n');
        let acked = self.shared.acked.load(Ordering::Acquire);
        let pending = (self.start + self.len + buf.len() as u64).saturating_sub(acked);
        if pending > self.shared.max_bytes {
            buf.truncate(before);
            (self.on_drop)();
            if !self.full {
                self.full = true;
                self.shared.metrics.full.set(1);
                tracing::warn!(
                    max_bytes = self.shared.max_bytes,
                    "usage spool full (control plane unreachable?): dropping new usage events"
                );
            }
            return false;
        }
        if self.full {
            self.full = false;
            self.shared.metrics.full.set(0);
            tracing::info!("usage spool has room again: recording usage events");
        }
        true
    }

    /// One write and one fsync for the whole batch; whether it is durable.
    fn commit(&mut self, buf: &[u8], count: u64) -> bool {
        if self.len >= SEGMENT_BYTES {
            let start = self.start + self.len;
            match create_segment(&self.shared.dir, start) {
                Ok(file) => {
                    self.file = file;
                    self.start = start;
                    self.len = 0;
                    self.shared.segments().push(start);
                }
                // Keep appending to the old segment; rotation is only tidiness.
                Err(e) => tracing::error!(error = %e, "cannot start a new spool segment"),
            }
        }
        let timer = self.shared.metrics.fsync_seconds.start_timer();
        let written = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        timer.observe_duration();
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.shared
                    .durable
                    .store(self.start + self.len, Ordering::Release);
                self.shared.metrics.recorded.inc_by(count);
                self.shared.update_bytes();
                true
            }
            Err(e) => {
                // Disk full or failing: take back any part that was written
                // so the segment stays whole lines, and count the loss.
                tracing::error!(error = %e, events = count, "cannot write usage events to the spool; dropping them");
                let _ = self.file.set_len(self.len);
                for _ in 0..count {
                    (self.on_drop)();
                }
                false
            }
        }
    }
}

/// A batch read from the spool, ready to post.
#[derive(Debug)]
struct Batch {
    body: Bytes,
    events: u64,
    /// Offset just past the batch's last line.
    end: u64,
}

/// Read the recorded lines after `acked`, up to the batch limits. Lines
/// that are not JSON (only a corrupted disk makes them) are skipped with a
/// log line rather than blocking the spool forever.
fn read_batch(shared: &Shared) -> Result<Option<Batch>, SpoolError> {
    let acked = shared.acked.load(Ordering::Acquire);
    let durable = shared.durable.load(Ordering::Acquire);
    if acked >= durable {
        return Ok(None);
    }
    let (start, next) = {
        let segs = shared.segments();
        let i = segs.partition_point(|&s| s <= acked).saturating_sub(1);
        (
            segs.get(i).copied().unwrap_or(0),
            segs.get(i + 1).copied().unwrap_or(u64::MAX),
        )
    };
    let until = durable.min(next);
    let path = segment_path(&shared.dir, start);
    let mut file = std::fs::File::open(&path).map_err(io_err(&path))?;
    file.seek(SeekFrom::Start(acked - start))
        .map_err(io_err(&path))?;
    let available = usize::try_from(until - acked).unwrap_or(usize::MAX);
    let mut data = vec![0u8; available.min(MAX_BATCH_BYTES)];
    file.read_exact(&mut data).map_err(io_err(&path))?;
    // Grow past the byte limit only for a single line longer than it.
    if !data.contains(&b'\n') && available > data.len() {
        data.resize(available, 0);
        file.seek(SeekFrom::Start(acked - start))
            .map_err(io_err(&path))?;
        file.read_exact(&mut data).map_err(io_err(&path))?;
    }
    let mut batch = UsageBatchWriter::with_capacity(data.len());
    let mut consumed = 0usize;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.last() != Some(&b'\n') || batch.is_full() {
            break;
        }
        consumed += line.len();
        let json = &line[..line.len() - 1];
        if serde_json::from_slice::<serde::de::IgnoredAny>(json).is_err() {
            tracing::error!(
                offset = acked + (consumed - line.len()) as u64,
                "skipping a corrupt line in the usage spool"
            );
            continue;
        }
        batch.push_json(json);
    }
    let events = batch.events() as u64;
    Ok(Some(Batch {
        body: Bytes::from(batch.finish()),
        events,
        end: acked + consumed as u64,
    }))
}

/// Persist `end` as acknowledged, then drop what it covers.
fn commit_ack(shared: &Shared, end: u64) -> Result<(), SpoolError> {
    let path = shared.dir.join(ACK_FILE);
    write_atomically(&path, end.to_string().as_bytes()).map_err(io_err(&path))?;
    shared.acked.store(end, Ordering::Release);
    shared.update_bytes();
    delete_acked_segments(shared);
    Ok(())
}

/// Ships the spool to the control plane, as a Pingora background service.
pub struct Shipper {
    shared: Arc<Shared>,
    client: ControlPlaneClient,
    interval: Duration,
    errors: IntCounter,
}

impl Shipper {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> UsageEvent {
        UsageEvent {
            bot_id: None,
            event_id: format!("ev-{n}"),
            request_id: format!("req-{n}"),
            timestamp_ms: 1_700_000_000_000 + n,
            key_id: "k".into(),
            user_id: "u".into(),
            model: "m".into(),
            provider: "p".into(),
            route: "chat.completions".into(),
            status: 200,
            input_tokens: n,
            output_tokens: 1,
            estimated: false,
            stream: false,
            attempts: 1,
            duration_ms: 1,
            upstream_ttfb_ms: None,
            anomaly: false,
            outcome: "ok".into(),
        }
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("molt-spool-{}", uuid::Uuid::new_v4()))
    }

    fn wait_durable(spool: &Spool, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while spool.shared.metrics.recorded.get() < n {
            assert!(std::time::Instant::now() < deadline, "events not recorded");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn batch_ids(batch: &Batch) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&batch.body).unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn records_ships_acks_and_resumes_after_restart() {
        let dir = temp_dir();
        let spool = Spool::open(&dir, 1 << 20, true, &Registry::new(), || {}).unwrap();
        for n in 0..5 {
            spool.record(event(n));
        }
        wait_durable(&spool, 5);
        let batch = read_batch(&spool.shared).unwrap().unwrap();
        assert_eq!(batch_ids(&batch), ["ev-0", "ev-1", "ev-2", "ev-3", "ev-4"]);
        // Acknowledge the first two lines only.
        let two: u64 = serde_json::to_vec(&event(0)).unwrap().len() as u64
            + serde_json::to_vec(&event(1)).unwrap().len() as u64
            + 2;
        commit_ack(&spool.shared, two).unwrap();
        drop(spool);

        // A "restart": a torn line at the end (a write cut by kill -9).
        let seg = segment_path(&dir, 0);
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(br#"{"event_id":"torn"#).unwrap();
        drop(f);
        let spool = Spool::open(&dir, 1 << 20, true, &Registry::new(), || {}).unwrap();
        let batch = read_batch(&spool.shared).unwrap().unwrap();
        assert_eq!(batch_ids(&batch), ["ev-2", "ev-3", "ev-4"]);
        commit_ack(&spool.shared, batch.end).unwrap();
        assert!(read_batch(&spool.shared).unwrap().is_none());
        let (durable, acked) = spool.offsets();
        assert_eq!(durable, acked);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn record_durable_resolves_after_the_fsync_or_the_drop() {
        let dir = temp_dir();
        let line = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
        let spool = Spool::open(&dir, line * 2, true, &Registry::new(), || {}).unwrap();
        // Resolving true means the line is already in the file on disk.
        assert!(spool.record_durable(event(0)).wait().await);
        let on_disk = std::fs::read(segment_path(&dir, 0)).unwrap();
        assert!(on_disk.ends_with(b"\n") && on_disk.len() as u64 == line);
        assert_eq!(spool.shared.metrics.recorded.get(), 1);
        assert!(spool.record_durable(event(1)).wait().await);
        // Full: the event is dropped, and its waiter is told so at once.
        assert!(!spool.record_durable(event(2)).wait().await);
        std::fs::remove_dir_all(&dir).unwrap();

        // Not holding: resolves at once, before the commit.
        let dir = temp_dir();
        let spool = Spool::open(&dir, 1 << 20, false, &Registry::new(), || {}).unwrap();
        assert!(spool.record_durable(event(0)).wait().await);
        wait_durable(&spool, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn full_spool_drops_and_counts() {
        let dir = temp_dir();
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let line = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
        let spool = Spool::open(&dir, line * 3, true, &Registry::new(), move || {
            d.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        for n in 0..5 {
            spool.record(event(n));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while spool.shared.metrics.recorded.get() + dropped.load(Ordering::Relaxed) < 5 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(spool.shared.metrics.recorded.get(), 3);
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        assert_eq!(spool.shared.metrics.full.get(), 1);
        // Exported as bytes over capacity, for the "spool filling" alert.
        assert_eq!(
            spool.shared.metrics.bytes.get(),
            i64::try_from(line * 3).unwrap()
        );
        assert_eq!(
            spool.shared.metrics.capacity.get(),
            i64::try_from(line * 3).unwrap()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn segments_rotate_and_acked_ones_are_deleted() {
        let dir = temp_dir();
        let spool = Spool::open(&dir, 1 << 30, true, &Registry::new(), || {}).unwrap();
        spool.record(event(0));
        wait_durable(&spool, 1);
        // Pretend the first segment is full so the next commit rotates.
        let end = spool.offsets().0;
        {
            let mut segs = spool.shared.segments();
            segs.push(end);
        }
        std::fs::write(segment_path(&dir, end), b"").unwrap();
        let batch = read_batch(&spool.shared).unwrap().unwrap();
        assert_eq!(batch.end, end);
        commit_ack(&spool.shared, batch.end).unwrap();
        assert!(!segment_path(&dir, 0).exists());
        assert!(segment_path(&dir, end).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
