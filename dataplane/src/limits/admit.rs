//! The decision: [`Limiter::admit`] checks every limit that applies to a
//! request against its cost and reserves it, synchronously and without
//! I/O, and says what the `x-ratelimit-*` headers report.

use super::*;
use meter::Local;

impl Limiter {
    /// Check and reserve one request. Synchronous, no I/O.
    #[expect(
        clippy::result_large_err,
        reason = "the contract returns the rejection by value; `Admission` is as large, and a Box would allocate on the path that is under load"
    )]
    pub fn admit(&self, req: &AdmissionRequest<'_>) -> Result<Admission, Rejection> {
        let sh = &self.shared;
        let cfg = sh.cfg.load();
        let mode = sh.mode();
        let (mono, unix) = (sh.clock.mono(), sh.clock.unix());
        let max_out = req
            .max_output_tokens
            .unwrap_or(cfg.limits.default_max_output_tokens);
        let cost = Charge::estimate(req.price, req.estimated_input_tokens, max_out);

        let user = sh.user(req.user);
        let mut guard = user.lock();
        let u = &mut *guard;
        if u.generation != cfg.generation {
            u.main.apply(
                cfg.limits.user_limits(req.user),
                &cfg,
                sh,
                &scope_key("u", req.user, None),
            );
            for (model, meters) in &mut u.models {
                let set = cfg.limits.models.get(&**model).copied().unwrap_or_default();
                meters.apply(&set, &cfg, sh, &scope_key("um", req.user, Some(model)));
            }
            u.generation = cfg.generation;
        }
        let model_idx = match cfg.limits.models.get(req.model) {
            Some(set) => Some(match u.models.iter().position(|(m, _)| &**m == req.model) {
                Some(i) => i,
                None => {
                    let mut m = Meters::default();
                    m.apply(set, &cfg, sh, &scope_key("um", req.user, Some(req.model)));
                    u.models.push((req.model.into(), m));
                    u.models.len() - 1
                }
            }),
            None => None,
        };

        let anomaly_cfg = &cfg.limits.anomaly;
        if anomaly_cfg.block {
            if u.anomaly.roll(mono, anomaly_cfg) == Transition::Cleared {
                tracing::info!(user = req.user, "limits: token usage back to normal");
            }
            if u.anomaly.flagged() {
                return Err(sh.reject(
                    Refusal {
                        kind: LimitKind::Anomaly,
                        limit: 0,
                        retry_after: anomaly_cfg.window,
                        scope: ScopeKind::User,
                    },
                    RateLimitHeaders::default(),
                ));
            }
        }

        let provider = cfg
            .limits
            .providers
            .get(req.provider)
            .map(|set| sh.provider(req.provider, set, &cfg));
        let mut pguard = provider.as_ref().map(|p| p.lock());

        let UserState { main, models, .. } = u;
        let mut model_meters = model_idx.and_then(|i| models.get_mut(i)).map(|(_, m)| m);
        // Phase 1: everything that can be checked without consuming.
        let mut scopes: [(Option<&mut Meters>, ScopeKind); 3] = [
            (Some(main), ScopeKind::User),
            (model_meters.take(), ScopeKind::Model),
            (pguard.as_deref_mut(), ScopeKind::Provider),
        ];
        for (m, kind) in scopes.iter_mut() {
            if let Some(m) = m {
                if let Err(r) = m.check(*kind, mode, &cost, req.stream, mono, unix) {
                    let headers = header_values(&scopes, mode, unix, None);
                    return Err(sh.reject(r, headers));
                }
            }
        }
        // Phase 2: local GCRA (consumes a cell per limiter it passes).
        let mut gcra_left: Option<(u64, u64, Duration)> = None;
        if mode != Mode::Global {
            for (m, kind) in scopes.iter_mut() {
                if let Some(m) = m {
                    if let Err(r) = m.check_gcra(*kind, &sh.clock, &mut gcra_left) {
                        let headers =
                            header_values(&scopes, mode, unix, Some((r.limit, 0, r.retry_after)));
                        return Err(sh.reject(r, headers));
                    }
                }
            }
        }
        // Phase 3: commit.
        for (m, _) in scopes.iter_mut() {
            if let Some(m) = m {
                m.commit(mode, &cost, req.stream, mono, unix, &sh.tx);
            }
        }
        let headers = header_values(&scopes, mode, unix, gcra_left);
        drop(pguard);
        drop(guard);
        sh.metrics.admitted.inc();
        let windows = [
            Dim::TokensPerMinute.window(unix).0,
            Dim::TokensPerDay.window(unix).0,
            Dim::Monthly.window(unix).0,
        ];
        Ok(Admission {
            shared: Arc::clone(sh),
            user,
            model_idx,
            provider,
            reserved: cost,
            price: req.price.copied(),
            stream_slot: req.stream,
            mode,
            windows,
            headers,
        })
    }
}

/// The OpenAI-style headers: the request, token and dollar limit closest
/// to binding among the user's own scopes (user, user on model).
fn header_values(
    scopes: &[(Option<&mut Meters>, ScopeKind); 3],
    mode: Mode,
    unix: Duration,
    gcra: Option<(u64, u64, Duration)>,
) -> RateLimitHeaders {
    let mut h = RateLimitHeaders::default();
    let mut best_req: Option<(u64, u64, Duration)> = None;
    let mut best_tok: Option<(u64, u64, Duration)> = None;
    let mut best_usd: Option<(u64, u64, Duration)> = None;
    let pick = |best: &mut Option<(u64, u64, Duration)>, v: (u64, u64, Duration)| {
        if best.is_none_or(|b| v.1 < b.1) {
            *best = Some(v);
        }
    };
    for (m, kind) in scopes {
        let Some(m) = m else { continue };
        if *kind == ScopeKind::Provider {
            continue;
        }
        let req = m
            .meter(Dim::RequestsPerMinute)
            .or_else(|| m.meter(Dim::RequestsPerSecond));
        if let Some(meter) = req {
            match (&meter.lease, mode) {
                (Some(l), Mode::Global) => {
                    let (left, reset) = l.remaining(unix);
                    pick(&mut best_req, (meter.limit, left, reset));
                }
                _ => {
                    if let Some(g) = gcra {
                        pick(&mut best_req, g);
                    }
                }
            }
        }
        let tok = m
            .meter(Dim::TokensPerMinute)
            .or_else(|| m.meter(Dim::TokensPerDay));
        if let Some(meter) = tok {
            match (&meter.lease, mode, &meter.local) {
                (Some(l), Mode::Global, _) => {
                    let (left, reset) = l.remaining(unix);
                    pick(&mut best_tok, (meter.limit, left, reset));
                }
                (_, _, Local::Bucket(b)) => {
                    pick(&mut best_tok, (meter.limit, b.remaining(), b.reset()))
                }
                _ => {}
            }
        }
        if let Some(meter) = m.meter(Dim::MonthlyUsd) {
            match (&meter.lease, mode, &meter.local) {
                (Some(l), Mode::Global, _) => {
                    let (left, reset) = l.remaining(unix);
                    pick(&mut best_usd, (meter.limit, left, reset));
                }
                (_, _, Local::Month(c)) => {
                    let (left, reset) = c.remaining(unix);
                    pick(&mut best_usd, (meter.limit, left, reset));
                }
                _ => {}
            }
        }
    }
    if let Some((limit, left, reset)) = best_usd {
        h.limit_micro_usd = Some(limit);
        h.remaining_micro_usd = Some(left);
        h.reset_usd = Some(reset);
    }
    if let Some((limit, left, reset)) = best_req {
        h.limit_requests = Some(limit);
        h.remaining_requests = Some(left);
        h.reset_requests = Some(reset);
    }
    if let Some((limit, left, reset)) = best_tok {
        h.limit_tokens = Some(limit);
        h.remaining_tokens = Some(left);
        h.reset_tokens = Some(reset);
    }
    h
}
