//! Per-user rate limits, token budgets and anomaly detection, exact across
//! replicas: the limiter the request path consults once per request.
//!
//! [`Limiter::admit`] is synchronous and does no I/O: it checks every limit
//! that applies (the user's; the user's on this model if the model has
//! overrides; the provider's ceiling across all users) against the request
//! cost (one request, and an *estimate* of its tokens: input estimate plus
//! `max_tokens` or the configured default), reserves it, and returns an
//! [`Admission`] that holds the concurrent-stream slot. When the response
//! ends, [`Admission::settle`] charges the actual usage: the difference to
//! the estimate is refunded or charged extra (possibly driving a bucket
//! negative so the next requests wait). A stream that would blow a budget is
//! refused up front, never discovered afterwards.
//!
//! State lives in sharded maps (`dashmap`) of per-user and per-provider
//! scopes, each behind its own small mutex held only for the check itself;
//! there is no global lock. The [`Limiter`] outlives config reloads:
//! [`Limiter::update`] swaps the limits and each scope adopts them on its
//! next request *keeping its counters*.
//!
//! # Limits across replicas
//!
//! With `[limits.redis]`, every limit is global. Redis holds a counter per
//! (scope, limit, fixed window); replicas take grants of
//! `lease_fraction × limit` from it with a Lua script and spend them locally
//! ([`lease`]). A background task refills ahead of need and returns unused
//! grants. Accuracy bound: grants never exceed the limit, and a replica can
//! only overspend by borrowing against a grant still in flight, at most one
//! lease, so a window admits at most `limit + replicas × lease` (e.g. 3
//! replicas at 5%: +15% worst case, typically well under 1%), plus the usual
//! fixed-window edge effect. While Redis is unreachable each replica
//! enforces `limit / replicas` locally (never failing closed); spending in
//! that time is recorded in Redis as debt when it returns.
//!
//! Request rates in local mode are GCRA (`governor`): a request refused by a
//! later limit has still used its cell in an earlier GCRA limiter, which
//! errs on the strict side.

mod anomaly;
mod global;
pub mod headers;
mod lease;
mod meter;
mod metrics;

pub use headers::{format_reset, RateLimitHeaders};

use anomaly::{AnomalyState, Transition};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use lease::Lease;
use meter::{Clock, Dim, Local, Meter};
use metrics::LimitMetrics;
use molt_config::limits::{LimitSet, LimitsConfig};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// The documented prompt-size heuristic: about four bytes of JSON body per
/// token for English text and code. It over-counts a little (JSON syntax,
/// field names), which is the safe direction for an admission estimate;
/// settle charges the real count.
pub fn estimate_input_tokens(body_len: u64) -> u64 {
    body_len.div_ceil(4)
}

/// The per-process limiter. Create one, keep it across reloads.
#[derive(Debug, Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

/// What the request path knows when it asks.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest<'a> {
    pub user: &'a str,
    /// Not a limit scope (a user's keys share the user's limits); kept for
    /// logs and future per-key limits.
    pub key_id: &'a str,
    /// Canonical model name.
    pub model: &'a str,
    pub provider: &'a str,
    /// From [`estimate_input_tokens`] or a tokenizer.
    pub estimated_input_tokens: u64,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`, if the
    /// request set one.
    pub max_output_tokens: Option<u64>,
    pub stream: bool,
}

/// An admitted request: its token reservation and, for streams, its
/// concurrent-stream slot (released on drop). Call [`Admission::settle`]
/// when the response ends; one dropped unsettled keeps its reservation
/// charged (call `settle(0, 0)` if nothing was used).
#[derive(Debug)]
pub struct Admission {
    shared: Arc<Shared>,
    user: Arc<Mutex<UserState>>,
    model_idx: Option<usize>,
    provider: Option<Arc<Mutex<Meters>>>,
    reserved: u64,
    stream_slot: bool,
    mode: Mode,
    /// Window of each token dimension when reserved (Tpm, Tpd, Monthly).
    windows: [u64; 3],
    headers: RateLimitHeaders,
}

/// Result of settling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleOutcome {
    /// The user is (now) flagged for unusual token usage: set the usage
    /// event's flag.
    pub anomalous: bool,
    /// Tokens charged in total (the actual usage).
    pub charged: u64,
}

/// A refused request: answer 429 with `retry-after` and these headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: LimitKind,
    pub retry_after: Duration,
    /// For the client, e.g. "tokens per minute limit of 5000 reached".
    pub reason: String,
    pub headers: RateLimitHeaders,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    RequestsPerSecond,
    RequestsPerMinute,
    TokensPerMinute,
    TokensPerDay,
    ConcurrentStreams,
    MonthlyBudget,
    ProviderRequests,
    ProviderTokens,
    Anomaly,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("cannot register limiter metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("Redis is configured for limits but there is no tokio runtime to run its background task on")]
    NoRuntime,
}

/// How decisions are made right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No Redis configured: local limits at their full value.
    LocalOnly = 0,
    /// Redis reachable: leases of the global limits.
    Global = 1,
    /// Redis configured but unreachable: local limits at `limit / replicas`.
    Fallback = 2,
}

struct Shared {
    cfg: ArcSwap<Prepared>,
    clock: Clock,
    users: DashMap<Box<str>, Arc<Mutex<UserState>>>,
    providers: DashMap<Box<str>, Arc<Mutex<Meters>>>,
    mode: AtomicU8,
    tx: UnboundedSender<Arc<Lease>>,
    rx: Mutex<Option<UnboundedReceiver<Arc<Lease>>>>,
    task_started: AtomicBool,
    /// Every lease, for the background sweep (not used on the request path).
    lease_registry: Mutex<Vec<Arc<Lease>>>,
    metrics: LimitMetrics,
}

/// One config version, prepared.
#[derive(Debug)]
struct Prepared {
    generation: u64,
    limits: LimitsConfig,
    /// Divisor of local limits: the replica count when Redis is configured.
    share: u64,
}

#[derive(Debug)]
struct UserState {
    name: Box<str>,
    generation: u64,
    main: Meters,
    /// Per-model scopes of this user (models with overrides only). Entries
    /// are never removed, so an `Admission`'s index stays valid.
    models: Vec<(Box<str>, Meters)>,
    anomaly: AnomalyState,
}

/// The meters of one scope, in `Dim::ALL` order.
#[derive(Debug, Default)]
struct Meters {
    generation: u64,
    meters: [Option<Meter>; 5],
    max_streams: Option<u64>,
    streams: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScopeKind {
    User,
    Model,
    Provider,
}

/// A refusal before it becomes a [`Rejection`].
#[derive(Debug, Clone, Copy)]
struct Refusal {
    kind: LimitKind,
    limit: u64,
    retry_after: Duration,
    scope: ScopeKind,
}

// === impl Limiter ===

impl Limiter {
    /// Build the limiter and register its metrics. With Redis configured
    /// this starts the lease task on the current tokio runtime.
    pub fn new(cfg: &LimitsConfig, registry: &prometheus::Registry) -> Result<Self, LimitsError> {
        let metrics = LimitMetrics::new(registry)?;
        let (tx, rx) = unbounded_channel();
        let shared = Arc::new(Shared {
            cfg: ArcSwap::from_pointee(Prepared::new(cfg, 1)),
            clock: Clock::new(),
            users: DashMap::new(),
            providers: DashMap::new(),
            mode: AtomicU8::new(Mode::LocalOnly as u8),
            tx,
            rx: Mutex::new(Some(rx)),
            task_started: AtomicBool::new(false),
            lease_registry: Mutex::new(Vec::new()),
            metrics,
        });
        if cfg.redis.is_some() {
            // Decide locally until the first connection succeeds.
            shared.set_mode(Mode::Fallback);
            start_task(&shared)?;
        }
        Ok(Limiter { shared })
    }

    /// Adopt new limits; every counter is kept. Enabling Redis here starts
    /// its task if a tokio runtime is current.
    pub fn update(&self, cfg: &LimitsConfig) {
        let sh = &self.shared;
        let generation = sh.cfg.load().generation + 1;
        sh.cfg.store(Arc::new(Prepared::new(cfg, generation)));
        if cfg.redis.is_some() {
            if sh.mode() == Mode::LocalOnly {
                sh.set_mode(Mode::Fallback);
            }
            if let Err(e) = start_task(sh) {
                tracing::error!(error = %e, "limits: Redis stays unused");
            }
        } else {
            sh.set_mode(Mode::LocalOnly);
        }
    }

    /// Whether limits are currently global (Redis reachable).
    pub fn is_global(&self) -> bool {
        self.shared.mode() == Mode::Global
    }

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
        let cost = req.estimated_input_tokens.saturating_add(max_out);

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
                if let Err(r) = m.check(*kind, mode, cost, req.stream, mono, unix) {
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
                m.commit(mode, cost, req.stream, mono, unix, &sh.tx);
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
            stream_slot: req.stream,
            mode,
            windows,
            headers,
        })
    }
}

fn start_task(sh: &Arc<Shared>) -> Result<(), LimitsError> {
    if sh.task_started.load(Ordering::Acquire) {
        return Ok(());
    }
    let handle = tokio::runtime::Handle::try_current().map_err(|_| LimitsError::NoRuntime)?;
    let Some(rx) = sh.rx.lock().take() else {
        return Ok(());
    };
    sh.task_started.store(true, Ordering::Release);
    // The task holds only a weak reference and ends when the limiter is
    // dropped; it owns no state that needs a graceful shutdown.
    handle.spawn(global::run(Arc::downgrade(sh), rx));
    Ok(())
}

fn scope_key(kind: &str, a: &str, b: Option<&str>) -> String {
    // Length-prefixed so no user or model name can forge another's key.
    match b {
        Some(b) => format!("{kind}:{}:{a}:{b}", a.len()),
        None => format!("{kind}:{a}"),
    }
}

/// The OpenAI-style headers: the request and token limit closest to
/// binding among the user's own scopes (user, user on model).
fn header_values(
    scopes: &[(Option<&mut Meters>, ScopeKind); 3],
    mode: Mode,
    unix: Duration,
    gcra: Option<(u64, u64, Duration)>,
) -> RateLimitHeaders {
    let mut h = RateLimitHeaders::default();
    let mut best_req: Option<(u64, u64, Duration)> = None;
    let mut best_tok: Option<(u64, u64, Duration)> = None;
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

// === impl Admission ===

impl Admission {
    /// For every response, success or not.
    pub fn headers(&self) -> &RateLimitHeaders {
        &self.headers
    }

    /// Charge the actual usage against the reservation.
    pub fn settle(self, actual_input: u64, actual_output: u64) -> SettleOutcome {
        let sh = &self.shared;
        let actual = actual_input.saturating_add(actual_output);
        let delta = i64::try_from(actual)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(self.reserved).unwrap_or(i64::MAX));
        let (mono, unix) = (sh.clock.mono(), sh.clock.unix());
        let cfg = sh.cfg.load();
        let anomalous = {
            let mut u = self.user.lock();
            let UserState {
                name,
                main,
                models,
                anomaly,
                ..
            } = &mut *u;
            main.settle(self.mode, delta, &self.windows, &sh.clock, unix);
            if let Some((_, m)) = self.model_idx.and_then(|i| models.get_mut(i)) {
                m.settle(self.mode, delta, &self.windows, &sh.clock, unix);
            }
            match anomaly.observe(mono, actual, &cfg.limits.anomaly) {
                Transition::Raised { rate, baseline } => {
                    sh.metrics.anomalies.inc();
                    tracing::warn!(
                        user = &**name,
                        rate_tokens_per_minute = rate,
                        baseline_tokens_per_minute = baseline,
                        blocking = cfg.limits.anomaly.block,
                        "limits: unusual token usage"
                    );
                }
                Transition::Cleared => tracing::info!("limits: token usage back to normal"),
                Transition::None => {}
            }
            anomaly.flagged()
        };
        if let Some(p) = &self.provider {
            p.lock()
                .settle(self.mode, delta, &self.windows, &sh.clock, unix);
        }
        SettleOutcome {
            anomalous,
            charged: actual,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.stream_slot {
            return;
        }
        let mut u = self.user.lock();
        u.main.streams = u.main.streams.saturating_sub(1);
        if let Some((_, m)) = self.model_idx.and_then(|i| u.models.get_mut(i)) {
            m.streams = m.streams.saturating_sub(1);
        }
    }
}

// === impl Rejection ===

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

// === impl LimitKind ===

impl LimitKind {
    pub const ALL: [LimitKind; 9] = [
        LimitKind::RequestsPerSecond,
        LimitKind::RequestsPerMinute,
        LimitKind::TokensPerMinute,
        LimitKind::TokensPerDay,
        LimitKind::ConcurrentStreams,
        LimitKind::MonthlyBudget,
        LimitKind::ProviderRequests,
        LimitKind::ProviderTokens,
        LimitKind::Anomaly,
    ];

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::RequestsPerSecond => "requests_per_second",
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::TokensPerDay => "tokens_per_day",
            LimitKind::ConcurrentStreams => "concurrent_streams",
            LimitKind::MonthlyBudget => "monthly_token_budget",
            LimitKind::ProviderRequests => "provider_requests",
            LimitKind::ProviderTokens => "provider_tokens",
            LimitKind::Anomaly => "anomaly",
        }
    }

    fn of(dim: Dim, scope: ScopeKind) -> LimitKind {
        match (scope, dim) {
            (ScopeKind::Provider, d) if d.is_tokens() => LimitKind::ProviderTokens,
            (ScopeKind::Provider, _) => LimitKind::ProviderRequests,
            (_, Dim::RequestsPerSecond) => LimitKind::RequestsPerSecond,
            (_, Dim::RequestsPerMinute) => LimitKind::RequestsPerMinute,
            (_, Dim::TokensPerMinute) => LimitKind::TokensPerMinute,
            (_, Dim::TokensPerDay) => LimitKind::TokensPerDay,
            (_, Dim::Monthly) => LimitKind::MonthlyBudget,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            LimitKind::RequestsPerSecond => "requests per second",
            LimitKind::RequestsPerMinute => "requests per minute",
            LimitKind::TokensPerMinute => "tokens per minute",
            LimitKind::TokensPerDay => "tokens per day",
            LimitKind::ConcurrentStreams => "concurrent streams",
            LimitKind::MonthlyBudget => "monthly token budget",
            LimitKind::ProviderRequests => "provider requests",
            LimitKind::ProviderTokens => "provider tokens",
            LimitKind::Anomaly => "unusual token usage",
        }
    }
}

// === impl Shared ===

impl Shared {
    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Global,
            2 => Mode::Fallback,
            _ => Mode::LocalOnly,
        }
    }

    fn set_mode(&self, mode: Mode) {
        let prev = self.mode.swap(mode as u8, Ordering::AcqRel);
        self.metrics
            .redis_fallback
            .set(i64::from(mode == Mode::Fallback));
        if prev == Mode::Fallback as u8 && mode == Mode::Global {
            tracing::info!("limits: Redis reachable again; limits are global");
        }
    }

    /// Switch to local decisions after a Redis failure; logs once per
    /// transition, not once per failed attempt.
    fn set_mode_fallback(&self, error: &str) {
        let prev = self.mode.swap(Mode::Fallback as u8, Ordering::AcqRel);
        self.metrics.redis_fallback.set(1);
        if prev != Mode::Fallback as u8 {
            tracing::warn!(
                error,
                "limits: Redis unreachable; enforcing limit / replicas locally until it returns"
            );
        }
    }

    fn redis_url(&self) -> Option<String> {
        self.cfg
            .load()
            .limits
            .redis
            .as_ref()
            .map(|r| r.url.expose().to_owned())
    }

    fn redis_prefix_and_replicas(&self) -> (String, u64) {
        let cfg = self.cfg.load();
        match &cfg.limits.redis {
            Some(r) => (r.key_prefix.clone(), u64::from(r.replicas.get())),
            None => (String::new(), 1),
        }
    }

    fn leases(&self) -> Vec<Arc<Lease>> {
        let mut reg = self.lease_registry.lock();
        // Leases no meter holds any more (limit removed) are dropped here.
        reg.retain(|l| Arc::strong_count(l) > 1);
        reg.clone()
    }

    fn clear_all_pending(&self) {
        for l in self.lease_registry.lock().iter() {
            l.clear_pending();
        }
    }

    fn user(&self, user: &str) -> Arc<Mutex<UserState>> {
        if let Some(u) = self.users.get(user) {
            return Arc::clone(u.value());
        }
        // First request of this user: the only allocation on this path.
        Arc::clone(
            self.users
                .entry(user.into())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(UserState {
                        name: user.into(),
                        // Forces `apply` on first use.
                        generation: u64::MAX,
                        main: Meters::default(),
                        models: Vec::new(),
                        anomaly: AnomalyState::default(),
                    }))
                })
                .value(),
        )
    }

    fn provider(&self, name: &str, set: &LimitSet, cfg: &Prepared) -> Arc<Mutex<Meters>> {
        let p = match self.providers.get(name) {
            Some(p) => Arc::clone(p.value()),
            None => Arc::clone(
                self.providers
                    .entry(name.into())
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(Meters {
                            generation: u64::MAX,
                            ..Meters::default()
                        }))
                    })
                    .value(),
            ),
        };
        {
            let mut m = p.lock();
            if m.generation != cfg.generation {
                m.apply(set, cfg, self, &scope_key("p", name, None));
            }
        }
        p
    }

    fn reject(&self, r: Refusal, headers: RateLimitHeaders) -> Rejection {
        self.metrics.rejected(r.kind);
        let what = r.kind.describe();
        let reason = match (r.kind, r.scope) {
            (LimitKind::Anomaly, _) => "unusual token usage".to_owned(),
            (_, ScopeKind::Model) => format!("{what} limit of {} for this model reached", r.limit),
            (_, ScopeKind::Provider) => {
                format!(
                    "the provider's {what} ceiling of {} is reached; try again shortly",
                    r.limit
                )
            }
            _ => format!("{what} limit of {} reached", r.limit),
        };
        Rejection {
            kind: r.kind,
            // HTTP `retry-after` is whole seconds; never tell a client 0.
            retry_after: r.retry_after.max(Duration::from_millis(1)),
            reason,
            headers,
        }
    }

    fn register(&self, lease: &Arc<Lease>) {
        self.lease_registry.lock().push(Arc::clone(lease));
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("mode", &self.mode())
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

// === impl Prepared ===

impl Prepared {
    fn new(cfg: &LimitsConfig, generation: u64) -> Prepared {
        Prepared {
            generation,
            limits: cfg.clone(),
            share: cfg
                .redis
                .as_ref()
                .map_or(1, |r| u64::from(r.replicas.get())),
        }
    }
}

// === impl Meters ===

impl Meters {
    fn meter(&self, dim: Dim) -> Option<&Meter> {
        self.meters[dim as usize].as_ref()
    }

    /// Adopt `set` keeping every counter (see [`Meter::reconfigure`]).
    fn apply(&mut self, set: &LimitSet, cfg: &Prepared, sh: &Shared, scope: &str) {
        let fraction = cfg.limits.redis.as_ref().map(|r| r.lease_fraction);
        for dim in Dim::ALL {
            let limit = match dim {
                Dim::RequestsPerSecond => set.requests_per_second,
                Dim::RequestsPerMinute => set.requests_per_minute,
                Dim::TokensPerMinute => set.tokens_per_minute,
                Dim::TokensPerDay => set.tokens_per_day,
                Dim::Monthly => set.monthly_token_budget,
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

    fn check(
        &mut self,
        scope: ScopeKind,
        mode: Mode,
        cost: u64,
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
            let units = if m.dim.is_tokens() { cost } else { 1 };
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
    fn check_gcra(
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

    fn commit(
        &mut self,
        mode: Mode,
        cost: u64,
        stream: bool,
        mono: Duration,
        unix: Duration,
        tx: &UnboundedSender<Arc<Lease>>,
    ) {
        if stream && self.max_streams.is_some() {
            self.streams += 1;
        }
        let cost_i = i64::try_from(cost).unwrap_or(i64::MAX);
        for m in self.meters.iter_mut().flatten() {
            let units = if m.dim.is_tokens() { cost_i } else { 1 };
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

    fn settle(
        &mut self,
        mode: Mode,
        delta: i64,
        windows: &[u64; 3],
        clock: &Clock,
        unix: Duration,
    ) {
        if delta == 0 {
            return;
        }
        let mono = clock.mono();
        for m in self.meters.iter_mut().flatten() {
            let window = match m.dim {
                Dim::TokensPerMinute => windows[0],
                Dim::TokensPerDay => windows[1],
                Dim::Monthly => windows[2],
                _ => continue,
            };
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

fn new_lease(sh: &Shared, scope: &str, dim: Dim, limit: u64, fraction: f64) -> Arc<Lease> {
    let lease = Lease::new(format!("{scope}:{}", dim.as_str()), dim, limit, fraction);
    sh.register(&lease);
    lease
}

#[cfg(test)]
mod tests;
