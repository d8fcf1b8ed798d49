//! Running one round of load against one target: the open-loop pacer and
//! the closed-loop workers.
//!
//! Open loop (fixed rate) is built to be free of coordinated omission:
//! a dedicated OS thread computes the due time of request *i* as
//! `start + i / rate` and hands it to the connection workers when it falls
//! due, whether or not earlier requests have finished. A worker that picks
//! a job up late (every connection was busy) still times it from its due
//! time, so a stall of the server shows up in the latency of every request
//! that should have been sent during it, not just the one that was stuck.
//! The pacer does not use tokio's timer wheel (1 ms ticks, which would add
//! up to a millisecond of schedule noise to every measurement): it sleeps on
//! the OS's high-resolution timer with its timer slack lowered to 1 ns, wakes
//! [`SPIN_WINDOW`] early and spins the rest. The remaining lateness (mostly
//! the hand-off to a worker) is recorded separately as schedule lag.
//!
//! Closed loop (fixed concurrency) runs one worker per connection, each
//! sending its next request as soon as the previous answer is complete.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::client::{exchange, Conn, RequestTemplate};
use super::scenario::Mode;
use super::stats::Stats;

/// How long before a due time the pacer stops sleeping and spins. A sleep
/// on a small VM wakes 30-100 µs late even with 1 ns of timer slack, and
/// that lateness would land in every measured latency; spinning the last
/// stretch costs at most this much CPU per request (about 2-5% of a core at
/// 1,000 req/s, identical for every target).
const SPIN_WINDOW: Duration = Duration::from_micros(50);

/// What a round did, beyond what it recorded into the target's stats.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RoundOutcome {
    /// Requests finished (successfully or not).
    pub(crate) completed: u64,
    /// From the round's start until its last request finished.
    pub(crate) elapsed: Duration,
}

/// How a round loads its target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) mode: Mode,
    /// Requests per second (open loop only).
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
}

/// Run one round with the target's connections (given back afterwards, so
/// keep-alive connections live across rounds) and record into `stats`.
pub(crate) async fn round(
    conns: Vec<Conn>,
    tpl: Arc<RequestTemplate>,
    load: Load,
    stats: Arc<Mutex<Stats>>,
) -> (Vec<Conn>, RoundOutcome) {
    let start = Instant::now();
    let (conns, completed) = match load.mode {
        Mode::Open => open_loop(conns, tpl, load, &stats).await,
        Mode::Closed => closed_loop(conns, tpl, start + load.duration, &stats).await,
    };
    let outcome = RoundOutcome {
        completed,
        elapsed: start.elapsed(),
    };
    (conns, outcome)
}

async fn open_loop(
    conns: Vec<Conn>,
    tpl: Arc<RequestTemplate>,
    load: Load,
    stats: &Arc<Mutex<Stats>>,
) -> (Vec<Conn>, u64) {
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    // Idle workers queue on this lock; the holder waits for the next due
    // job. Only one worker polls the channel at a time, which is all an
    // mpsc receiver allows.
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let rx = Arc::clone(&rx);
            let tpl = Arc::clone(&tpl);
            let stats = Arc::clone(stats);
            tokio::spawn(async move {
                let mut done = 0u64;
                loop {
                    let due = rx.lock().await.recv().await;
                    let Some(due) = due else { break };
                    let result = exchange(&mut conn, &tpl, due).await;
                    record(&stats, result);
                    done += 1;
                }
                (conn, done)
            })
        })
        .collect();
    let (rate, duration) = (load.rate, load.duration);
    let pacer = std::thread::Builder::new()
        .name("loadgen-pacer".into())
        .spawn(move || {
            reduce_timer_slack();
            pace(&tx, Instant::now(), rate, duration)
        });
    if pacer.is_err() {
        // Without a pacer no job is ever sent; the workers see a closed
        // channel and the round reports zero requests.
        tracing::error!("loadgen: could not start the pacing thread");
    }
    join(workers).await
}

/// Hand out due times `start + i / rate` for `duration`; returns how many.
fn pace(tx: &mpsc::UnboundedSender<Instant>, start: Instant, rate: f64, duration: Duration) -> u64 {
    let mut i: u64 = 0;
    loop {
        let offset = Duration::from_secs_f64(i as f64 / rate);
        if offset >= duration {
            return i;
        }
        let due = start + offset;
        let wake = due.checked_sub(SPIN_WINDOW).unwrap_or(due);
        let now = Instant::now();
        if wake > now {
            std::thread::sleep(wake - now);
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        // When the pacer itself fell behind, the overdue jobs go out at
        // once, each still carrying its own due time.
        if tx.send(due).is_err() {
            return i;
        }
        i += 1;
    }
}

/// Ask Linux for 1 ns of timer slack on the calling thread instead of the
/// default 50 µs, which every sleep would otherwise overshoot by. Best effort:
/// elsewhere, or if refused, the spin window still absorbs most of it.
fn reduce_timer_slack() {
    // `/proc/thread-self` links to `<pid>/task/<tid>`; the per-thread knob
    // is `/proc/<tid>/timerslack_ns`.
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    let Some(tid) = link.file_name() else {
        return;
    };
    if let Err(e) = std::fs::write(Path::new("/proc").join(tid).join("timerslack_ns"), "1") {
        tracing::debug!(error = %e, "loadgen: could not lower the pacer's timer slack");
    }
}

async fn closed_loop(
    conns: Vec<Conn>,
    tpl: Arc<RequestTemplate>,
    until: Instant,
    stats: &Arc<Mutex<Stats>>,
) -> (Vec<Conn>, u64) {
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let tpl = Arc::clone(&tpl);
            let stats = Arc::clone(stats);
            tokio::spawn(async move {
                let mut done = 0u64;
                loop {
                    let due = Instant::now();
                    if due >= until {
                        break;
                    }
                    let result = exchange(&mut conn, &tpl, due).await;
                    record(&stats, result);
                    done += 1;
                }
                (conn, done)
            })
        })
        .collect();
    join(workers).await
}

fn record(stats: &Mutex<Stats>, result: Result<super::stats::Sample, super::stats::ErrorKind>) {
    let mut s = lock(stats);
    match result {
        Ok(sample) => s.success(&sample),
        Err(kind) => s.error(kind),
    }
}

/// Stats stay consistent even if a worker panicked mid-update (each update
/// is a handful of counter increments), so a poisoned lock is still usable.
pub(crate) fn lock(stats: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

async fn join(workers: Vec<tokio::task::JoinHandle<(Conn, u64)>>) -> (Vec<Conn>, u64) {
    let mut conns = Vec::with_capacity(workers.len());
    let mut total = 0;
    for w in workers {
        match w.await {
            Ok((conn, done)) => {
                total += done;
                conns.push(conn);
            }
            // A worker only ends early by panicking; its connection slot is
            // lost for later rounds and the report shows fewer requests.
            Err(e) => tracing::error!(error = %e, "loadgen: worker failed"),
        }
    }
    (conns, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_sends_the_whole_schedule_with_exact_due_times() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let n = pace(&tx, start, 1000.0, Duration::from_millis(50));
        assert_eq!(n, 50);
        let mut dues = Vec::new();
        while let Ok(d) = rx.try_recv() {
            dues.push(d);
        }
        assert_eq!(dues.len(), 50);
        for (i, d) in dues.iter().enumerate() {
            assert_eq!(*d - start, Duration::from_secs_f64(i as f64 / 1000.0));
        }
        assert!(start.elapsed() >= Duration::from_millis(49));
    }
}
