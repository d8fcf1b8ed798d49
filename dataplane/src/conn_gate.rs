//! The connection gate: every client connection passes through it on its
//! way to Pingora's HTTP handling. It counts the connections this process
//! holds, refuses new ones past `server.max_connections` with a clear
//! answer instead of running out of file descriptors, and tells the
//! shutdown when nothing is left in flight.
//!
//! A refused connection on a plain or TLS HTTP/1 listener gets a complete
//! `503` with `connection: close` and an OpenAI-style error body; one that
//! negotiated HTTP/2 by ALPN is closed (an HTTP/1 answer would be garbage
//! to it). Both are counted in `molt_client_connections_refused_total`.

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Descriptors kept free of client connections by the default cap, for
/// upstream connections, the spool, logs and the admin listener.
const RESERVED_DESCRIPTORS: u64 = 1024;

/// How long a refused client gets to read its `503`.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The default cap: half of what the open-file limit leaves after the
/// reserve, because every proxied connection also holds an upstream one.
pub fn default_max_connections() -> u64 {
    let soft = rlimit_nofile().unwrap_or(1024);
    (soft.saturating_sub(RESERVED_DESCRIPTORS) / 2).max(64)
}

fn rlimit_nofile() -> Option<u64> {
    // /proc/self/limits: "Max open files  <soft>  <hard>  files".
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(1 << 20);
    }
    soft.parse().ok()
}

/// Connections held right now, shared by every listener of the process.
#[derive(Debug)]
pub struct ConnectionCount {
    open: AtomicU64,
    max: u64,
    gauge: IntGauge,
    refused: IntCounter,
}

impl ConnectionCount {
    pub fn new(max: u64, gauge: IntGauge, refused: IntCounter) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicU64::new(0),
            max,
            gauge,
            refused,
        })
    }

    /// The cap.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Take a slot, or `None` at the cap.
    fn enter(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            self.refused.inc();
            return None;
        }
        self.gauge.inc();
        Some(Slot(self.clone()))
    }
}

/// One held connection; dropping it frees the slot.
struct Slot(Arc<ConnectionCount>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// A [`ServerApp`] that admits connections through the count before
/// handing them to `inner`.
pub struct Gate<A> {
    inner: Arc<A>,
    count: Arc<ConnectionCount>,
}

impl<A> Gate<A> {
    pub fn new(inner: A, count: Arc<ConnectionCount>) -> Self {
        Self {
            inner: Arc::new(inner),
            count,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Gate<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.count.enter() else {
            refuse(&mut stream).await;
            return None;
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Tell an HTTP/1 client why it is turned away; just close an HTTP/2 one.
async fn refuse(stream: &mut Stream) {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        return;
    }
    const BODY: &str = r#"{"error":{"message":"the gateway holds as many connections as it may; retry shortly","type":"api_error","param":null,"code":"too_many_connections"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    // A client that does not read its refusal is simply dropped.
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let count = ConnectionCount::new(
            2,
            IntGauge::new("g", "g").unwrap(),
            IntCounter::new("r", "r").unwrap(),
        );
        let a = count.enter().unwrap();
        let _b = count.enter().unwrap();
        assert!(count.enter().is_none());
        assert_eq!((count.open(), count.refused.get()), (2, 1));
        drop(a);
        assert!(count.enter().is_some());
        assert_eq!(count.gauge.get(), 1);
    }

    #[test]
    fn the_default_cap_leaves_room_for_upstreams() {
        let max = default_max_connections();
        let soft = rlimit_nofile().unwrap();
        assert!(max >= 64 && max * 2 <= soft.max(128 + RESERVED_DESCRIPTORS));
    }
}
