//! A replica's lease of one global limit for the current window: the local
//! half of "global limits without a Redis round trip per request".
//!
//! Redis holds one counter per (scope, limit, window): the units granted to
//! all replicas. A replica takes grants of `lease_fraction × limit` into a
//! local balance ([`Lease`]) and requests spend that balance with no I/O.
//! When the balance runs low the request path *kicks* the background task
//! (a non-blocking channel send, deduplicated by a flag) which takes the
//! next grant ahead of need. If a burst empties the balance before the
//! grant lands, requests may borrow up to one lease (the balance goes
//! negative) as long as Redis has not said the window is exhausted; the
//! debt is paid from the next grant. Settling a request's actual usage
//! moves the balance the same way. Unused balance is handed back when a key
//! goes idle or holds more than two leases, so other replicas can use it.

use super::meter::Dim;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Poll an exhausted window again at most this often (others may have
/// returned unused grants).
const EXHAUSTED_REPOLL: Duration = Duration::from_millis(500);
/// Give the whole balance back after this long without spending.
pub(crate) const IDLE_RETURN: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Lease {
    /// `<scope>:<dim>`; the background task adds the prefix and window.
    pub(crate) key: Box<str>,
    pub(crate) dim: Dim,
    state: Mutex<LeaseState>,
    /// A refill is queued or running; keeps kicks to one per lease.
    pending: AtomicBool,
}

#[derive(Debug)]
struct LeaseState {
    window: u64,
    window_end: Duration,
    /// Units granted to this replica and not yet spent; negative is debt
    /// (spent but not yet recorded in Redis).
    balance: i64,
    /// Redis said nothing is left in this window.
    exhausted: bool,
    /// The window's global count as of our last grant.
    global_used: u64,
    limit: u64,
    lease_size: u64,
    /// The largest cost that did not fit: the next grant must cover it.
    want: u64,
    last_spend: Duration,
    last_take: Duration,
}

/// What the background task asks Redis for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TakeRequest {
    pub(crate) window: u64,
    pub(crate) ttl: Duration,
    pub(crate) limit: u64,
    /// Units to take at most (a lease, or more for one large request).
    pub(crate) want: u64,
    /// Take at least this many if available, however scarce.
    pub(crate) min_grant: u64,
    /// Debt to record first, unconditionally.
    pub(crate) debt: u64,
}

/// Balance handed back to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GiveBack {
    pub(crate) window: u64,
    pub(crate) amount: u64,
}

// === impl Lease ===

impl Lease {
    pub(crate) fn new(key: String, dim: Dim, limit: u64, lease_fraction: f64) -> Arc<Lease> {
        Arc::new(Lease {
            key: key.into_boxed_str(),
            dim,
            state: Mutex::new(LeaseState {
                window: u64::MAX,
                window_end: Duration::ZERO,
                balance: 0,
                exhausted: false,
                global_used: 0,
                limit,
                lease_size: lease_size(limit, lease_fraction),
                want: 0,
                last_spend: Duration::ZERO,
                last_take: Duration::ZERO,
            }),
            pending: AtomicBool::new(false),
        })
    }

    pub(crate) fn reconfigure(&self, limit: u64, lease_fraction: f64) {
        let mut st = self.state.lock();
        st.limit = limit;
        st.lease_size = lease_size(limit, lease_fraction);
    }

    /// Whether `cost` may be spent now (request path, no I/O). `Err` is
    /// the retry-after and whether it is final for this window.
    pub(crate) fn check(&self, unix: Duration, cost: u64) -> Result<(), (Duration, bool)> {
        let mut st = self.state.lock();
        st.roll(self.dim, unix);
        let cost_i = i64::try_from(cost).unwrap_or(i64::MAX);
        if st.balance >= cost_i {
            return Ok(());
        }
        if st.exhausted {
            st.want = st.want.max(cost);
            return Err((st.window_end.saturating_sub(unix), true));
        }
        let allowance = i64::try_from(st.lease_size).unwrap_or(i64::MAX);
        if st.balance.saturating_sub(cost_i) >= -allowance {
            return Ok(());
        }
        // Borrowed to the limit: wait for the refill in flight.
        st.want = st.want.max(cost);
        Err((Duration::from_millis(100), false))
    }

    /// Record `cost` spent (request path), or refunded when negative.
    /// Returns the window it was booked in.
    pub(crate) fn spend(&self, unix: Duration, mono: Duration, cost: i64) -> u64 {
        let mut st = self.state.lock();
        st.roll(self.dim, unix);
        st.balance = st.balance.saturating_sub(cost);
        if cost > 0 {
            st.last_spend = mono;
        }
        st.window
    }

    /// Settle a reservation made in `window` by `delta` (positive: charge
    /// more, negative: refund). A refund for a window that has ended is
    /// dropped (that window is over); a charge goes to the current one.
    pub(crate) fn settle(&self, unix: Duration, window: u64, delta: i64) {
        let mut st = self.state.lock();
        st.roll(self.dim, unix);
        if st.window == window || delta > 0 {
            st.balance = st.balance.saturating_sub(delta);
        }
    }

    /// Queue a refill if this lease runs low (non-blocking).
    pub(crate) fn kick_if_low(self: &Arc<Self>, mono: Duration, tx: &UnboundedSender<Arc<Lease>>) {
        let low = {
            let st = self.state.lock();
            let low_water = i64::try_from(st.lease_size / 2).unwrap_or(i64::MAX);
            let want = i64::try_from(st.want).unwrap_or(i64::MAX);
            if st.exhausted {
                st.balance < want.max(1) && mono.saturating_sub(st.last_take) >= EXHAUSTED_REPOLL
            } else {
                st.balance < low_water.max(1) || st.balance < want
            }
        };
        if low && !self.pending.swap(true, Ordering::AcqRel) && tx.send(Arc::clone(self)).is_err() {
            // The background task is gone (runtime shutting down).
            self.pending.store(false, Ordering::Release);
        }
    }

    /// Drop a queued kick without acting on it (Redis is down).
    pub(crate) fn clear_pending(&self) {
        self.pending.store(false, Ordering::Release);
    }

    /// What to ask Redis for, or `None` if nothing is needed any more.
    pub(crate) fn take_request(&self, unix: Duration, mono: Duration) -> Option<TakeRequest> {
        let mut st = self.state.lock();
        st.roll(self.dim, unix);
        st.last_take = mono;
        let debt = u64::try_from(-st.balance.min(0)).unwrap_or(0);
        let have = u64::try_from(st.balance.max(0)).unwrap_or(0);
        let target = st.lease_size.max(st.want);
        if debt == 0 && have >= target.div_ceil(2) && st.want <= have {
            return None;
        }
        let want = target.saturating_sub(have).max(1);
        Some(TakeRequest {
            window: st.window,
            ttl: st.window_end.saturating_sub(unix) + Duration::from_secs(60),
            limit: st.limit,
            want,
            min_grant: st.want.saturating_sub(have).clamp(1, want),
            debt,
        })
    }

    /// Apply Redis's answer to `req`: `grant` units taken, `used` the
    /// window's count afterwards.
    pub(crate) fn apply_take(&self, unix: Duration, req: &TakeRequest, grant: u64, used: u64) {
        let mut st = self.state.lock();
        st.roll(self.dim, unix);
        self.pending.store(false, Ordering::Release);
        if st.window != req.window {
            // The window ended meanwhile; its grant and debt belong to it.
            return;
        }
        let paid = i64::try_from(req.debt.saturating_add(grant)).unwrap_or(i64::MAX);
        st.balance = st.balance.saturating_add(paid);
        st.global_used = used;
        st.exhausted = used >= st.limit && grant < req.want;
        if u64::try_from(st.balance.max(0)).unwrap_or(0) >= st.want {
            st.want = 0;
        }
    }

    /// Balance to hand back: all of it when idle, the excess over two
    /// leases otherwise. The balance is reduced at once; if the return
    /// fails the units are lost for this window (never over-admitted).
    pub(crate) fn give_back(&self, unix: Duration, mono: Duration) -> Option<GiveBack> {
        let mut st = self.state.lock();
        st.roll(self.dim, unix);
        if st.balance <= 0 || self.pending.load(Ordering::Acquire) {
            return None;
        }
        let balance = u64::try_from(st.balance).unwrap_or(0);
        let amount = if mono.saturating_sub(st.last_spend) >= IDLE_RETURN {
            balance
        } else {
            balance.saturating_sub(2 * st.lease_size)
        };
        if amount == 0 {
            return None;
        }
        st.balance -= i64::try_from(amount).unwrap_or(0);
        st.global_used = st.global_used.saturating_sub(amount);
        Some(GiveBack {
            window: st.window,
            amount,
        })
    }

    /// Units left in the window as far as this replica knows, and the
    /// time until the window resets.
    pub(crate) fn remaining(&self, unix: Duration) -> (u64, Duration) {
        let mut st = self.state.lock();
        st.roll(self.dim, unix);
        let global_left = st.limit.saturating_sub(st.global_used);
        let own = u64::try_from(st.balance.max(0)).unwrap_or(0);
        let left = if st.exhausted {
            own
        } else {
            global_left.saturating_add(own).min(st.limit)
        };
        (left, st.window_end.saturating_sub(unix))
    }

    /// Whether this lease has debt to record in the current window (used
    /// after reconnecting to report spending done while Redis was down).
    pub(crate) fn in_debt(&self, unix: Duration) -> bool {
        let mut st = self.state.lock();
        st.roll(self.dim, unix);
        st.balance < 0
    }
}

// === impl LeaseState ===

impl LeaseState {
    /// Move to the window `unix` falls in. The old window's balance and
    /// debt stay with it: Redis counted the grants, and a debt not yet
    /// recorded is the bounded overshoot the module doc describes.
    fn roll(&mut self, dim: Dim, unix: Duration) {
        let (window, end) = dim.window(unix);
        if window != self.window {
            self.window = window;
            self.window_end = end;
            self.balance = 0;
            self.exhausted = false;
            self.global_used = 0;
            self.want = 0;
        }
    }
}

fn lease_size(limit: u64, fraction: f64) -> u64 {
    ((limit as f64 * fraction).ceil() as u64).clamp(1, limit.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1_700_000_010);

    #[test]
    fn borrows_one_lease_then_waits_for_the_grant() {
        let l = Lease::new("u:a:rpm".into(), Dim::RequestsPerMinute, 100, 0.05);
        // Lease size 5: five requests on credit, the sixth waits.
        for _ in 0..5 {
            l.check(T, 1).unwrap();
            l.spend(T, Duration::ZERO, 1);
        }
        let (_, last) = l.check(T, 1).unwrap_err();
        assert!(!last);
        let req = l.take_request(T, Duration::ZERO).unwrap();
        assert_eq!((req.debt, req.want, req.limit), (5, 5, 100));
        l.apply_take(T, &req, 5, 10);
        l.check(T, 1).unwrap();
        assert_eq!(l.remaining(T).0, 95);
    }

    #[test]
    fn exhausted_window_refuses_until_it_ends() {
        let l = Lease::new("u:a:rpm".into(), Dim::RequestsPerMinute, 100, 0.05);
        let req = l.take_request(T, Duration::ZERO).unwrap();
        l.apply_take(T, &req, 2, 100);
        l.spend(T, Duration::ZERO, 2);
        let (retry, last) = l.check(T, 1).unwrap_err();
        assert!(last);
        assert_eq!(retry, Duration::from_secs(30));
        // A new window starts clean.
        l.check(T + Duration::from_secs(30), 1).unwrap();
    }
}
