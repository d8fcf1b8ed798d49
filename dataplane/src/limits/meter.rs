//! One limit of one scope ("user-1's tokens per minute"): its local state
//! and, when Redis is configured, its lease of the global quota.
//!
//! Local state is what decides without Redis (and while Redis is down):
//! request rates are GCRA through `governor`; token rates are token buckets
//! that may go negative when a settled request used more than it reserved
//! (so the next requests wait for the debt to refill); the monthly budget is
//! a counter per calendar month (UTC).
//!
//! Time comes from [`Clock`], built on tokio's clock so tests can pause and
//! advance it; wall-clock windows (minute, day, month) are the wall time at
//! start plus tokio's elapsed time, so all replicas agree on window edges
//! to within their clock skew.

use super::lease::Lease;
use governor::clock::Clock as GovernorClock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The limits a scope can have, in the order of `Meters::dims`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dim {
    RequestsPerSecond,
    RequestsPerMinute,
    TokensPerMinute,
    TokensPerDay,
    Monthly,
    /// The monthly dollar budget, in micro-dollars (see [`super::money`]).
    MonthlyUsd,
}

/// What a dimension counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Requests,
    Tokens,
    MicroUsd,
}

/// Process-wide time source: monotonic (tokio) plus the wall time it
/// started at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: tokio::time::Instant,
    unix_at_origin: Duration,
}

/// The `governor` view of [`Clock`]: nanoseconds since the origin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GcraClock(tokio::time::Instant);

/// `governor`'s state cell, shared with us so a limiter rebuilt for a new
/// quota can carry on from the old one's state (reloads keep counters).
#[derive(Debug, Default, Clone)]
pub(crate) struct TatCell(Arc<AtomicU64>);

type Governor = RateLimiter<NotKeyed, TatCell, GcraClock, StateInformationMiddleware>;

/// A GCRA request-rate limiter (burst = the limit, refilled evenly).
#[derive(Debug)]
pub(crate) struct Gcra {
    limiter: Governor,
    cell: TatCell,
    /// Governor keeps TAT relative to its creation time; we need it to move
    /// the state into a rebuilt limiter.
    created: Nanos,
    limit: u64,
    period: Duration,
}

/// A token bucket: `capacity` tokens refilled evenly over `period`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    level: f64,
    last: Duration,
    capacity: u64,
    period: Duration,
}

/// Tokens used in the current calendar month.
#[derive(Debug)]
pub(crate) struct MonthCounter {
    month: u64,
    used: u64,
    limit: u64,
}

#[derive(Debug)]
pub(crate) enum Local {
    Gcra(Gcra),
    Bucket(TokenBucket),
    Month(MonthCounter),
}

#[derive(Debug)]
pub(crate) struct Meter {
    pub(crate) dim: Dim,
    /// The configured (global) limit.
    pub(crate) limit: u64,
    /// Enforced when deciding locally: `limit`, or `limit / replicas` when
    /// Redis is configured (used only while Redis is unreachable).
    pub(crate) local: Local,
    pub(crate) lease: Option<Arc<Lease>>,
}

// === impl Dim ===

impl Dim {
    pub(crate) const ALL: [Dim; 6] = [
        Dim::RequestsPerSecond,
        Dim::RequestsPerMinute,
        Dim::TokensPerMinute,
        Dim::TokensPerDay,
        Dim::Monthly,
        Dim::MonthlyUsd,
    ];

    pub(crate) fn unit(self) -> Unit {
        match self {
            Dim::RequestsPerSecond | Dim::RequestsPerMinute => Unit::Requests,
            Dim::TokensPerMinute | Dim::TokensPerDay | Dim::Monthly => Unit::Tokens,
            Dim::MonthlyUsd => Unit::MicroUsd,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dim::RequestsPerSecond => "rps",
            Dim::RequestsPerMinute => "rpm",
            Dim::TokensPerMinute => "tpm",
            Dim::TokensPerDay => "tpd",
            Dim::Monthly => "month",
            Dim::MonthlyUsd => "usd_month",
        }
    }

    /// Refill period of the local limiter.
    fn period(self) -> Duration {
        match self {
            Dim::RequestsPerSecond => Duration::from_secs(1),
            Dim::RequestsPerMinute | Dim::TokensPerMinute => Duration::from_secs(60),
            // Months are calendar months; this is only their nominal length.
            Dim::TokensPerDay => Duration::from_secs(86_400),
            Dim::Monthly | Dim::MonthlyUsd => Duration::from_secs(30 * 86_400),
        }
    }

    /// The fixed window (index, end) that `unix` falls in, for Redis keys.
    pub(crate) fn window(self, unix: Duration) -> (u64, Duration) {
        let s = unix.as_secs();
        let fixed = |len: u64| {
            let idx = s / len;
            (idx, Duration::from_secs((idx + 1) * len))
        };
        match self {
            Dim::RequestsPerSecond => fixed(1),
            Dim::RequestsPerMinute | Dim::TokensPerMinute => fixed(60),
            Dim::TokensPerDay => fixed(86_400),
            Dim::Monthly | Dim::MonthlyUsd => {
                let idx = month_index(s);
                (idx, Duration::from_secs(month_start(idx + 1)))
            }
        }
    }
}

// === impl Clock ===

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            origin: tokio::time::Instant::now(),
            // A clock before 1970 is a broken host; counting from 0 then
            // only misplaces window edges, it cannot fail a request.
            unix_at_origin: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// Monotonic time since the limiter started.
    pub(crate) fn mono(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Wall time (since the Unix epoch), advancing with tokio's clock.
    pub(crate) fn unix(&self) -> Duration {
        self.unix_at_origin + self.origin.elapsed()
    }

    pub(crate) fn gcra(&self) -> GcraClock {
        GcraClock(self.origin)
    }
}

impl GovernorClock for GcraClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.elapsed())
    }
}

// === impl TatCell ===

impl StateStore for TatCell {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The same compare-and-swap loop as governor's `InMemoryState`;
        // 0 means "never used".
        let cell = &self.0;
        let mut prev = cell.load(Ordering::Acquire);
        loop {
            let (result, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
            match cell.compare_exchange_weak(
                prev,
                next.as_u64(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(result),
                Err(actual) => prev = actual,
            }
        }
    }
}

// === impl Gcra ===

impl Gcra {
    fn new(
        limit: u64,
        period: Duration,
        clock: &Clock,
        carry: Option<(&TatCell, Nanos, u64)>,
    ) -> Gcra {
        let burst =
            NonZeroU32::new(u32::try_from(limit).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        // `Quota::new` only fails for a zero period; ours are constants.
        let quota = Quota::with_period(period / burst.get())
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        let cell = TatCell::default();
        let gclock = clock.gcra();
        let created = gclock.now();
        if let Some((old, old_created, old_limit)) = carry {
            // Carry the backlog over as a *count* of requests: 8 of 10
            // used becomes 8 of 12 used, not "48 s of a minute used".
            let tat = old.0.load(Ordering::Acquire);
            if tat != 0 {
                let backlog = (tat + old_created.as_u64()).saturating_sub(created.as_u64());
                let scaled = u128::from(backlog) * u128::from(old_limit) / u128::from(limit.max(1));
                let rel = u64::try_from(scaled).unwrap_or(u64::MAX);
                cell.0.store(rel.max(1), Ordering::Release);
            }
        }
        Gcra {
            limiter: RateLimiter::new(quota, cell.clone(), gclock),
            cell,
            created,
            limit,
            period,
        }
    }

    /// Take one request. Ok(remaining) or Err(wait).
    pub(crate) fn check(&self, clock: &Clock) -> Result<u64, Duration> {
        match self.limiter.check() {
            Ok(snapshot) => Ok(u64::from(snapshot.remaining_burst_capacity())),
            Err(not_until) => Err(not_until.wait_time_from(clock.gcra().now())),
        }
    }

    /// Time until the limiter is full again after leaving `remaining`.
    pub(crate) fn reset(&self, remaining: u64) -> Duration {
        let per = self.period.as_nanos() / u128::from(self.limit.max(1));
        let n = u128::from(self.limit.saturating_sub(remaining)) * per;
        Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

// === impl TokenBucket ===

impl TokenBucket {
    fn new(capacity: u64, period: Duration, now: Duration) -> Self {
        TokenBucket {
            level: capacity as f64,
            last: now,
            capacity,
            period,
        }
    }

    fn rate(&self) -> f64 {
        self.capacity as f64 / self.period.as_secs_f64()
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.level = (self.level + dt * self.rate()).min(self.capacity as f64);
    }

    /// Whether `cost` fits now; else how long until it does. A request
    /// larger than the whole bucket needs a full bucket (and then drives it
    /// negative) rather than being impossible forever.
    pub(crate) fn check(&mut self, now: Duration, cost: u64) -> Result<(), Duration> {
        self.refill(now);
        let need = cost.min(self.capacity) as f64;
        if self.level >= need {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - self.level) / self.rate()))
        }
    }

    /// Charge `delta` tokens (negative: refund), capped at a full bucket.
    pub(crate) fn charge(&mut self, now: Duration, delta: i64) {
        self.refill(now);
        self.level = (self.level - delta as f64).min(self.capacity as f64);
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.level.max(0.0) as u64
    }

    pub(crate) fn reset(&self) -> Duration {
        Duration::from_secs_f64(((self.capacity as f64 - self.level) / self.rate()).max(0.0))
    }
}

// === impl MonthCounter ===

impl MonthCounter {
    fn roll(&mut self, unix: Duration) {
        let m = month_index(unix.as_secs());
        if m != self.month {
            self.month = m;
            self.used = 0;
        }
    }

    pub(crate) fn check(&mut self, unix: Duration, cost: u64) -> Result<(), Duration> {
        self.roll(unix);
        if self.used.saturating_add(cost) <= self.limit {
            Ok(())
        } else {
            Err(Dim::Monthly.window(unix).1.saturating_sub(unix))
        }
    }

    pub(crate) fn charge(&mut self, unix: Duration, delta: i64) {
        self.roll(unix);
        self.used = self.used.saturating_add_signed(delta);
    }

    /// Units left this month, and the time until the month ends.
    pub(crate) fn remaining(&self, unix: Duration) -> (u64, Duration) {
        let (month, end) = Dim::Monthly.window(unix);
        let used = if month == self.month { self.used } else { 0 };
        (self.limit.saturating_sub(used), end.saturating_sub(unix))
    }
}

// === impl Meter ===

impl Meter {
    pub(crate) fn new(
        dim: Dim,
        limit: u64,
        share: u64,
        clock: &Clock,
        lease: Option<Arc<Lease>>,
    ) -> Meter {
        let local_limit = local_limit(limit, share);
        let local = match dim {
            Dim::RequestsPerSecond | Dim::RequestsPerMinute => {
                Local::Gcra(Gcra::new(local_limit, dim.period(), clock, None))
            }
            Dim::TokensPerMinute | Dim::TokensPerDay => {
                Local::Bucket(TokenBucket::new(local_limit, dim.period(), clock.mono()))
            }
            Dim::Monthly | Dim::MonthlyUsd => Local::Month(MonthCounter {
                month: month_index(clock.unix().as_secs()),
                used: 0,
                limit: local_limit,
            }),
        };
        Meter {
            dim,
            limit,
            local,
            lease,
        }
    }

    /// Apply a new limit (or replica share) keeping the state: a reload
    /// must not hand anyone a fresh allowance.
    pub(crate) fn reconfigure(&mut self, limit: u64, share: u64, clock: &Clock) {
        let local_limit = local_limit(limit, share);
        self.limit = limit;
        match &mut self.local {
            Local::Gcra(g) if g.limit != local_limit => {
                *g = Gcra::new(
                    local_limit,
                    g.period,
                    clock,
                    Some((&g.cell, g.created, g.limit)),
                );
            }
            Local::Gcra(_) => {}
            Local::Bucket(b) => {
                b.refill(clock.mono());
                // Keep what was used, not what was left.
                let used = b.capacity as f64 - b.level;
                b.capacity = local_limit;
                b.level = local_limit as f64 - used;
            }
            Local::Month(m) => m.limit = local_limit,
        }
    }
}

fn local_limit(limit: u64, share: u64) -> u64 {
    limit.div_ceil(share.max(1)).max(1)
}

/// Months since January 1970 for a Unix time in seconds (UTC).
fn month_index(unix_s: u64) -> u64 {
    let (y, m, _) = civil_from_days(unix_s / 86_400);
    (y - 1970) * 12 + (m - 1)
}

/// Unix seconds at the start of month `idx` (see [`month_index`]).
fn month_start(idx: u64) -> u64 {
    let (y, m) = (1970 + idx / 12, idx % 12 + 1);
    days_from_civil(y, m) * 86_400
}

/// Howard Hinnant's `civil_from_days`, for days since 1970-01-01 (>= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of the first day of month `m` of year `y`.
fn days_from_civil(y: u64, m: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_months() {
        // 2024-02-29T12:00:00Z is in month (2024-1970)*12 + 1.
        assert_eq!(month_index(1_709_208_000), 54 * 12 + 1);
        // The month after it starts 2024-03-01T00:00:00Z.
        assert_eq!(month_start(54 * 12 + 2), 1_709_251_200);
        assert_eq!(month_start(0), 0);
        let (idx, end) = Dim::Monthly.window(Duration::from_secs(1_709_208_000));
        assert_eq!(idx, 54 * 12 + 1);
        assert_eq!(end, Duration::from_secs(1_709_251_200));
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_goes_negative_and_refills() {
        let mut b = TokenBucket::new(600, Duration::from_secs(60), Duration::ZERO);
        assert!(b.check(Duration::ZERO, 600).is_ok());
        b.charge(Duration::ZERO, 700);
        assert_eq!(b.remaining(), 0);
        // 100 tokens of debt at 10 tokens/s, then 10 more for a 10-token request.
        let wait = b.check(Duration::ZERO, 10).unwrap_err();
        assert_eq!(wait, Duration::from_secs(11));
        assert!(b.check(Duration::from_secs(11), 10).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn gcra_state_survives_a_new_quota() {
        let clock = Clock::new();
        let mut m = Meter::new(Dim::RequestsPerMinute, 10, 1, &clock, None);
        let Local::Gcra(g) = &m.local else {
            unreachable!()
        };
        for _ in 0..8 {
            g.check(&clock).unwrap();
        }
        m.reconfigure(12, 1, &clock);
        let Local::Gcra(g) = &m.local else {
            unreachable!()
        };
        // 8 of the new 12 are still used: 4 left, then a wait.
        for _ in 0..4 {
            g.check(&clock).unwrap();
        }
        assert!(g.check(&clock).is_err());
    }
}
