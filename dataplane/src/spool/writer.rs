//! The group-commit thread: takes whatever events are queued, appends them
//! to the tail segment as JSON lines with one write and one fsync, and only
//! then tells their waiters they are recorded. It also enforces the bound
//! on unshipped bytes and rotates segments.

use super::segments::Tail;
use super::{Shared, SEGMENT_BYTES};
use molt_config::UsageEvent;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

/// Most events written by one group commit.
const MAX_COMMIT: usize = 8_192;

/// One queued event, with whoever waits for it to be durable.
pub(super) struct Entry {
    pub(super) event: UsageEvent,
    pub(super) durable: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The group-commit thread's state.
pub(super) struct Writer {
    shared: Arc<Shared>,
    tail: Tail,
    full: bool,
    on_drop: Box<dyn Fn() + Send + Sync>,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        tail: Tail,
        on_drop: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            shared,
            tail,
            full: false,
            on_drop,
        }
    }

    pub(super) fn run(mut self, rx: &Receiver<Entry>) {
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
        let pending = (self.tail.end() + buf.len() as u64).saturating_sub(acked);
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
        if self.tail.len >= SEGMENT_BYTES {
            match self.tail.next(&self.shared.dir) {
                Ok(next) => {
                    self.shared.segments().push(next.start);
                    self.tail = next;
                }
                // Keep appending to the old segment; rotation is only tidiness.
                Err(e) => tracing::error!(error = %e, "cannot start a new spool segment"),
            }
        }
        let timer = self.shared.metrics.fsync_seconds.start_timer();
        let file = &mut self.tail.file;
        let written = file.write_all(buf).and_then(|()| file.sync_data());
        timer.observe_duration();
        match written {
            Ok(()) => {
                self.tail.len += buf.len() as u64;
                self.shared
                    .durable
                    .store(self.tail.end(), Ordering::Release);
                self.shared.metrics.recorded.inc_by(count);
                self.shared.update_bytes();
                true
            }
            Err(e) => {
                // Disk full or failing: take back any part that was written
                // so the segment stays whole lines, and count the loss.
                tracing::error!(error = %e, events = count, "cannot write usage events to the spool; dropping them");
                let _ = self.tail.file.set_len(self.tail.len);
                for _ in 0..count {
                    (self.on_drop)();
                }
                false
            }
        }
    }
}
