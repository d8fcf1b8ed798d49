//! The spool's own tests: recording, the bound, rotation, shipping's reads
//! and acknowledgements, and recovery after a torn write.

use super::reader::{read_batch, Batch};
use super::segments::{commit_ack, segment_path};
use super::Spool;
use crate::sink::UsageSink;
use molt_config::UsageEvent;
use prometheus::Registry;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        classes: Default::default(),
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
