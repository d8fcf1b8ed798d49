//! What a load run records per target: HDR histograms of the timings and
//! counters of outcomes, and their summary as percentiles.
//!
//! All timings are recorded in nanoseconds with three significant digits
//! (so a 100 µs latency is resolved to 0.1 µs) and reported in
//! milliseconds. Values beyond the trackable range are clamped to its top
//! rather than dropped, so a pathological stall still shows in `max`.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest trackable value: ten minutes, far above any request timeout.
const MAX_NANOS: u64 = 600_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Why a request did not count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ErrorKind {
    /// The TCP connection or HTTP/1.1 handshake failed.
    Connect,
    /// Not finished `timeout` after it was due (including requests that
    /// waited so long for a free connection that they were never sent).
    Timeout,
    /// The request could not be sent or the response head not read.
    Send,
    /// The response body broke off.
    Body,
    /// A non-2xx status.
    Status(u16),
    /// An SSE scenario got a response that is not `text/event-stream`.
    NotSse,
}

impl ErrorKind {
    fn label(self) -> String {
        match self {
            Self::Connect => "connect".into(),
            Self::Timeout => "timeout".into(),
            Self::Send => "send".into(),
            Self::Body => "body".into(),
            Self::Status(code) => format!("http_{code}"),
            Self::NotSse => "not_sse".into(),
        }
    }
}

/// Timings of one successful exchange.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    /// Due time → last body byte (the coordinated-omission-free latency).
    pub(crate) latency: Duration,
    /// Actual send → last body byte.
    pub(crate) service: Duration,
    /// Due time → actual send: how late the generator was (waiting for a
    /// free connection included).
    pub(crate) lag: Duration,
    /// SSE: due time → first complete event.
    pub(crate) ttft: Option<Duration>,
    /// SSE: time between consecutive events' arrival.
    pub(crate) gaps: Vec<Duration>,
    /// SSE: events received, and body reads they arrived in.
    pub(crate) events: u64,
    pub(crate) reads: u64,
}

/// Everything recorded for one target (across all its rounds).
#[derive(Debug)]
pub(crate) struct Stats {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    lag: Histogram<u64>,
    ttft: Histogram<u64>,
    gap: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<ErrorKind, u64>,
    events: u64,
    reads: u64,
    /// Fewest and most events seen in one successful SSE stream.
    events_min: u64,
    events_max: u64,
}

// The bounds are constants that satisfy `new_with_bounds`'s contract
// (1 <= low, high >= 2 * low, sigfig <= 5), so it cannot fail.
#[allow(clippy::expect_used)]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NANOS, SIGNIFICANT_DIGITS).expect("constant bounds are valid")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            latency: histogram(),
            service: histogram(),
            lag: histogram(),
            ttft: histogram(),
            gap: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            events: 0,
            reads: 0,
            events_min: u64::MAX,
            events_max: 0,
        }
    }
}

impl Stats {
    pub(crate) fn success(&mut self, s: &Sample) {
        self.ok += 1;
        self.latency.saturating_record(nanos(s.latency));
        self.service.saturating_record(nanos(s.service));
        self.lag.saturating_record(nanos(s.lag));
        if let Some(t) = s.ttft {
            self.ttft.saturating_record(nanos(t));
        }
        for g in &s.gaps {
            // Events that arrived in the same read have a gap of zero; the
            // histogram's floor is 1 ns, which reads as 0.000 ms.
            self.gap.saturating_record(nanos(*g));
        }
        self.events += s.events;
        self.reads += s.reads;
        self.events_min = self.events_min.min(s.events);
        self.events_max = self.events_max.max(s.events);
    }

    /// SSE: the fewest and most data events one successful stream carried
    /// (equal when every stream was complete and alike); `None` before any
    /// success.
    pub(crate) fn events_per_stream(&self) -> Option<[u64; 2]> {
        (self.ok > 0).then_some([self.events_min, self.events_max])
    }

    pub(crate) fn error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub(crate) fn completed(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    pub(crate) fn ok(&self) -> u64 {
        self.ok
    }

    pub(crate) fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.iter().map(|(k, n)| (k.label(), *n)).collect()
    }

    pub(crate) fn latency(&self) -> Percentiles {
        Percentiles::of(&self.latency)
    }

    pub(crate) fn service(&self) -> Percentiles {
        Percentiles::of(&self.service)
    }

    pub(crate) fn lag(&self) -> Percentiles {
        Percentiles::of(&self.lag)
    }

    pub(crate) fn ttft(&self) -> Percentiles {
        Percentiles::of(&self.ttft)
    }

    pub(crate) fn gap(&self) -> Percentiles {
        Percentiles::of(&self.gap)
    }

    /// SSE: average events per body read (1.0 means every event arrived in
    /// its own read, i.e. nothing was coalesced on the way).
    pub(crate) fn events_per_read(&self) -> Option<f64> {
        (self.reads > 0).then(|| self.events as f64 / self.reads as f64)
    }
}

/// A distribution's summary, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: h.mean() / 1e6,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds_and_errors_are_labelled() {
        let mut s = Stats::default();
        for us in 1..=1000u64 {
            s.success(&Sample {
                latency: Duration::from_micros(us),
                ..Sample::default()
            });
        }
        s.error(ErrorKind::Status(502));
        s.error(ErrorKind::Status(502));
        s.error(ErrorKind::Timeout);
        let p = s.latency();
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 0.5).abs() < 0.001, "{p:?}");
        assert!((p.p99 - 0.99).abs() < 0.001, "{p:?}");
        assert!((p.max - 1.0).abs() < 0.001, "{p:?}");
        assert_eq!(s.completed(), 1003);
        assert_eq!(s.errors()["http_502"], 2);
        assert_eq!(s.errors()["timeout"], 1);
        assert_eq!(s.ttft(), Percentiles::default());
    }
}
