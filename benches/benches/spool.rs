//! What holding a response's end for its usage event costs.
//!
//! The proxy ends a successful response only once its usage event is
//! fsynced in the spool (`hold_response_until_recorded`). These benches put
//! a number on that wait, on the disk the spool would live on
//! (`MOLT_BENCH_SPOOL_DIR`, default the system temp dir):
//!
//! - `spool/record_only`: one event handed to the group-commit thread, not
//!   waited for (what `hold_response_until_recorded = false` costs a
//!   request). One iteration is one `record` call.
//! - `spool/record_durable/1`: one event recorded and waited for, alone:
//!   enqueue, encode, write, fsync, wake. One iteration is one response's
//!   added wait at low load, when no other response shares its commit.
//! - `spool/record_durable/64`: 64 responses ending at once, each waiting
//!   for its own event; they share group commits. One iteration is the
//!   64 events; divide by 64 for the wait per response under load.
#![allow(
    clippy::expect_used,
    reason = "a bench that cannot set up should stop at once with the reason"
)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use molt_config::UsageEvent;
use molt_dataplane::sink::UsageSink;
use molt_dataplane::spool::Spool;
use prometheus::Registry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

fn event(n: u64) -> UsageEvent {
    UsageEvent {
        bot_id: None,
        event_id: format!("0193a5c2-7d4e-7000-8000-{n:012x}"),
        request_id: format!("0193a5c2-7d4e-7000-9000-{n:012x}"),
        timestamp_ms: 1_764_000_000_000 + n,
        key_id: "key-3f9a".into(),
        user_id: "user-1234".into(),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        route: "chat.completions".into(),
        status: 200,
        input_tokens: 412,
        output_tokens: 87,
        classes: Default::default(),
        estimated: false,
        stream: true,
        attempts: 1,
        duration_ms: 812,
        upstream_ttfb_ms: Some(230),
        anomaly: false,
        outcome: "ok".into(),
    }
}

fn spool_dir() -> PathBuf {
    let base =
        std::env::var_os("MOLT_BENCH_SPOOL_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    base.join(format!("molt-bench-spool-{}", std::process::id()))
}

fn bench(c: &mut Criterion) {
    let dir = spool_dir();
    // Far more room than the run needs: nothing is shipped, nothing dropped.
    let spool = Spool::open(&dir, 64 << 30, true, &Registry::new(), || {}).expect("open the spool");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let next = AtomicU64::new(0);
    let id = || next.fetch_add(1, Ordering::Relaxed);

    let mut g = c.benchmark_group("spool");
    g.throughput(Throughput::Elements(1));
    g.bench_function("record_only", |b| b.iter(|| spool.record(event(id()))));
    for concurrent in [1u64, 64] {
        g.throughput(Throughput::Elements(concurrent));
        g.bench_with_input(
            BenchmarkId::new("record_durable", concurrent),
            &concurrent,
            |b, &n| {
                b.iter(|| {
                    let waits: Vec<_> = (0..n).map(|_| spool.record_durable(event(id()))).collect();
                    rt.block_on(async move {
                        for w in waits {
                            assert!(w.wait().await, "event dropped");
                        }
                    });
                });
            },
        );
    }
    g.finish();
    drop(spool);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
