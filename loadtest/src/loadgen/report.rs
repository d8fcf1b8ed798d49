//! The result of a load run: serialisable to JSON (`--json`, for scripts
//! such as `compare.sh`) and printable as a short table (the default).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::scenario::Mode;
use super::stats::Percentiles;

/// One load run over one or more targets.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: Option<String>,
    pub mode: Mode,
    /// Requested rate per target (open loop).
    pub rate: Option<f64>,
    /// Connections (open loop) or workers (closed loop) per target.
    pub connections: usize,
    /// Measured seconds per target, summed over rounds.
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rounds: u32,
    pub sse: bool,
    pub targets: Vec<TargetReport>,
}

/// What one target did.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub url: String,
    /// Requests sent during warm-up (not in any figure below).
    pub warmup_requests: u64,
    /// Measured requests finished, successful or not.
    pub requests: u64,
    pub ok: u64,
    /// Failures by kind: `connect`, `timeout`, `send`, `body`, `not_sse`,
    /// `http_<status>`.
    pub errors: BTreeMap<String, u64>,
    /// Time the measured rounds took (last answer included).
    pub elapsed_s: f64,
    /// `requests / elapsed_s`.
    pub achieved_rate: f64,
    /// TCP connections dialled, warm-up included (equal to `connections`
    /// when keep-alive held throughout).
    pub connections_opened: u64,
    /// Due time → end of response body (successful requests).
    pub latency: Percentiles,
    /// Actual send → end of response body. Lower than `latency` when
    /// requests waited for the generator or a free connection.
    pub service_time: Percentiles,
    /// Due time → actual send: the generator's own lateness.
    pub schedule_lag: Percentiles,
    /// SSE only: due time → first complete `data:` event.
    pub ttft: Option<Percentiles>,
    /// SSE only: time between consecutive events of a stream.
    pub chunk_gap: Option<Percentiles>,
    /// SSE only: events per body frame (1.0 = no coalescing).
    pub events_per_frame: Option<f64>,
    /// SSE: fewest and most data events in one successful stream.
    pub events_per_stream: Option<[u64; 2]>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = match (self.mode, self.rate) {
            (Mode::Open, Some(rate)) => format!(
                "open loop, {rate} req/s per target, {} connections",
                self.connections
            ),
            _ => format!("closed loop, {} workers per target", self.connections),
        };
        writeln!(
            f,
            "scenario {}: {shape}; {:.1}s measured per target in {} round(s), {:.1}s warm-up",
            self.scenario, self.duration_s, self.rounds, self.warmup_s
        )?;
        writeln!(
            f,
            "{:<12} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "target",
            "requests",
            "errors",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "lag p99"
        )?;
        for t in &self.targets {
            let l = &t.latency;
            writeln!(
                f,
                "{:<12} {:>9} {:>7} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                t.name,
                t.requests,
                t.requests - t.ok,
                t.achieved_rate,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                t.schedule_lag.p99
            )?;
        }
        if self.sse {
            writeln!(
                f,
                "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
                "SSE",
                "ttft p50",
                "ttft p99",
                "ttft max",
                "gap p50",
                "gap p99",
                "gap max",
                "events/frame"
            )?;
            for t in &self.targets {
                let ttft = t.ttft.unwrap_or_default();
                let gap = t.chunk_gap.unwrap_or_default();
                writeln!(
                    f,
                    "{:<12} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>12.2}",
                    t.name,
                    ttft.p50,
                    ttft.p99,
                    ttft.max,
                    gap.p50,
                    gap.p99,
                    gap.max,
                    t.events_per_frame.unwrap_or(0.0)
                )?;
            }
        }
        for t in self.targets.iter().filter(|t| !t.errors.is_empty()) {
            let list: Vec<String> = t.errors.iter().map(|(k, n)| format!("{k}={n}")).collect();
            writeln!(f, "errors {}: {}", t.name, list.join(", "))?;
        }
        Ok(())
    }
}
