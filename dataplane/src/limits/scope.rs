//! The meters of one scope (a user, a user on a model, a provider): adopt
//! new limits keeping counters, check a cost against every meter, commit
//! it, and settle it with the actual usage.

use super::*;

impl Meters {
    pub(super) fn meter(&self, dim: Dim) -> Option<&Meter> {
        self.meters[dim as usize].as_ref()
    }

    /// Adopt `set` keeping every counter (see [`Meter::reconfigure`]).
    pub(super) fn apply(&mut self, set: &LimitSet, cfg: &Prepared, sh: &Shared, scope: &str) {
        let fraction = cfg.limits.redis.as_ref().map(|r| r.lease_fraction);
        for dim in Dim::ALL {
            let limit = match dim {
                Dim::RequestsPerSecond => set.requests_per_second,
                Dim::RequestsPerMinute => set.requests_per_minute,
                Dim::TokensPerMinute => set.tokens_per_minute,
                Dim::TokensPerDay => set.tokens_per_day,
                Dim::Monthly => set.monthly_token_budget,
                Dim::MonthlyUsd => set.monthly_budget_usd.map(budget::budget_micro_usd),
            };
            let slot = &mut self.meters[dim as usize];
            match (limit, slot.as_mut()) {
                (None, _) => *slot = None,
                (Some(limit), Some(m)) => {
                    m.reconfigure(limit, cfg.share, &sh.clock);
                    match (fraction, &m.lease) {
                        (Some(f), Some(l)) => l.reconfigure(limit, f),
                        (Some(f), None) => m.lease = Some(new_lease(sh, scope, dim, limit, f)),
                        (None, _) => m.lease = None,
                    }
                }
                (Some(limit), None) => {
                    let lease = fraction.map(|f| new_lease(sh, scope, dim, limit, f));
                    *slot = Some(Meter::new(dim, limit, cfg.share, &sh.clock, lease));
                }
            }
        }
        self.max_streams = set.concurrent_streams;
        self.generation = cfg.generation;
    }

    pub(super) fn check(
        &mut self,
        scope: ScopeKind,
        mode: Mode,
        cost: &Charge,
        stream: bool,
        mono: Duration,
        unix: Duration,
    ) -> Result<(), Refusal> {
        if let (true, Some(max)) = (stream, self.max_streams) {
            if self.streams >= max {
                return Err(Refusal {
                    kind: LimitKind::ConcurrentStreams,
                    limit: max,
                    retry_after: Duration::from_secs(1),
                    scope,
                });
            }
        }
        for m in self.meters.iter_mut().flatten() {
            if m.dim.unit() == Unit::MicroUsd && cost.micro_usd.is_none() {
                return Err(Refusal {
                    kind: LimitKind::UnpricedModel,
                    limit: m.limit,
                    retry_after: Duration::ZERO,
                    scope,
                });
            }
            let units = cost.units(m.dim.unit());
            let res = match (&m.lease, mode) {
                (Some(l), Mode::Global) => l.check(unix, units).map_err(|(d, _)| d),
                _ => match &mut m.local {
                    Local::Bucket(b) => b.check(mono, units),
                    Local::Month(c) => c.check(unix, units),
                    // Consumes; checked in phase 2.
                    Local::Gcra(_) => Ok(()),
                },
            };
            if let Err(retry_after) = res {
                return Err(Refusal {
                    kind: LimitKind::of(m.dim, scope),
                    limit: m.limit,
                    retry_after,
                    scope,
                });
            }
        }
        Ok(())
    }

    /// Local request-rate limiters; records the tightest (limit, left,
    /// reset) of user scopes for the headers.
    pub(super) fn check_gcra(
        &mut self,
        scope: ScopeKind,
        clock: &Clock,
        left: &mut Option<(u64, u64, Duration)>,
    ) -> Result<(), Refusal> {
        for m in self.meters.iter().flatten() {
            if let Local::Gcra(g) = &m.local {
                match g.check(clock) {
                    Ok(remaining) => {
                        let prefer = m.dim == Dim::RequestsPerMinute
                            || self.meter(Dim::RequestsPerMinute).is_none();
                        if scope != ScopeKind::Provider
                            && prefer
                            && left.is_none_or(|l| remaining < l.1)
                        {
                            *left = Some((m.limit, remaining, g.reset(remaining)));
                        }
                    }
                    Err(retry_after) => {
                        return Err(Refusal {
                            kind: LimitKind::of(m.dim, scope),
                            limit: m.limit,
                            retry_after,
                            scope,
                        })
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn commit(
        &mut self,
        mode: Mode,
        cost: &Charge,
        stream: bool,
        mono: Duration,
        unix: Duration,
        tx: &UnboundedSender<Arc<Lease>>,
    ) {
        if stream && self.max_streams.is_some() {
            self.streams += 1;
        }
        for m in self.meters.iter_mut().flatten() {
            let units = i64::try_from(cost.units(m.dim.unit())).unwrap_or(i64::MAX);
            if mode != Mode::Global {
                match &mut m.local {
                    Local::Bucket(b) => b.charge(mono, units),
                    Local::Month(c) => c.charge(unix, units),
                    Local::Gcra(_) => {}
                }
            }
            if let Some(l) = &m.lease {
                // In fallback this books the spending as debt, recorded in
                // Redis once it is back.
                l.spend(unix, mono, units);
                if mode == Mode::Global {
                    l.kick_if_low(mono, tx);
                }
            }
        }
    }

    pub(super) fn settle(
        &mut self,
        mode: Mode,
        delta: &Delta,
        windows: &[u64; 3],
        clock: &Clock,
        unix: Duration,
    ) {
        if *delta == Delta::default() {
            return;
        }
        let mono = clock.mono();
        for m in self.meters.iter_mut().flatten() {
            let window = match m.dim {
                Dim::TokensPerMinute => windows[0],
                Dim::TokensPerDay => windows[1],
                Dim::Monthly | Dim::MonthlyUsd => windows[2],
                Dim::RequestsPerSecond | Dim::RequestsPerMinute => continue,
            };
            let delta = delta.units(m.dim.unit());
            if delta == 0 {
                continue;
            }
            if mode != Mode::Global {
                match &mut m.local {
                    Local::Bucket(b) => b.charge(mono, delta),
                    Local::Month(c) => c.charge(unix, delta),
                    Local::Gcra(_) => {}
                }
            }
            if let Some(l) = &m.lease {
                l.settle(unix, window, delta);
            }
        }
    }
}

pub(super) fn new_lease(
    sh: &Shared,
    scope: &str,
    dim: Dim,
    limit: u64,
    fraction: f64,
) -> Arc<Lease> {
    let lease = Lease::new(format!("{scope}:{}", dim.as_str()), dim, limit, fraction);
    sh.register(&lease);
    lease
}
