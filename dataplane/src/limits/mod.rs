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

mod admit;
mod anomaly;
mod budget;
mod global;
pub mod headers;
mod lease;
mod meter;
mod metrics;
mod scope;
mod settle;
mod shared;

pub use headers::{format_reset, RateLimitHeaders};

use anomaly::{AnomalyState, Transition};
use arc_swap::ArcSwap;
use budget::{Charge, Delta};
use dashmap::DashMap;
use lease::Lease;
use meter::{Clock, Dim, Local, Meter, Unit};
use metrics::LimitMetrics;
use molt_config::limits::{LimitSet, LimitsConfig};
use molt_config::ModelPrice;
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
    /// The model's price in force, for dollar budgets. A model without one
    /// is refused to a user with a dollar budget ([`LimitKind::UnpricedModel`]).
    pub price: Option<&'a ModelPrice>,
}

/// An admitted request: its token reservation and, for streams, its
/// concurrent-stream slot (released on drop). Call [`Admission::settle`]
/// when the response ends; one dropped unsettled keeps its reservation
/// charged (settle with `TokenUsage::default()` if nothing was used).
#[derive(Debug)]
pub struct Admission {
    shared: Arc<Shared>,
    user: Arc<Mutex<UserState>>,
    model_idx: Option<usize>,
    provider: Option<Arc<Mutex<Meters>>>,
    reserved: Charge,
    /// The price the reservation was estimated at; the actual cost is
    /// settled at the same one.
    price: Option<ModelPrice>,
    stream_slot: bool,
    mode: Mode,
    /// Window of each token dimension when reserved (Tpm, Tpd, and the
    /// month of both monthly budgets).
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
    /// The monthly dollar budget (`monthly_budget_usd`).
    MonthlyDollarBudget,
    /// A dollar budget applies but the model has no price to count it in:
    /// refused (403), never counted as free.
    UnpricedModel,
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
    meters: [Option<Meter>; 6],
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

// === impl Rejection ===

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

// === impl LimitKind ===

impl LimitKind {
    pub const ALL: [LimitKind; 11] = [
        LimitKind::RequestsPerSecond,
        LimitKind::RequestsPerMinute,
        LimitKind::TokensPerMinute,
        LimitKind::TokensPerDay,
        LimitKind::ConcurrentStreams,
        LimitKind::MonthlyBudget,
        LimitKind::ProviderRequests,
        LimitKind::ProviderTokens,
        LimitKind::Anomaly,
        LimitKind::MonthlyDollarBudget,
        LimitKind::UnpricedModel,
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
            LimitKind::MonthlyDollarBudget => "monthly_dollar_budget",
            LimitKind::UnpricedModel => "unpriced_model",
        }
    }

    fn of(dim: Dim, scope: ScopeKind) -> LimitKind {
        match (scope, dim) {
            (ScopeKind::Provider, d) if d.unit() == Unit::Requests => LimitKind::ProviderRequests,
            (ScopeKind::Provider, _) => LimitKind::ProviderTokens,
            (_, Dim::RequestsPerSecond) => LimitKind::RequestsPerSecond,
            (_, Dim::RequestsPerMinute) => LimitKind::RequestsPerMinute,
            (_, Dim::TokensPerMinute) => LimitKind::TokensPerMinute,
            (_, Dim::TokensPerDay) => LimitKind::TokensPerDay,
            (_, Dim::Monthly) => LimitKind::MonthlyBudget,
            (_, Dim::MonthlyUsd) => LimitKind::MonthlyDollarBudget,
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
            LimitKind::MonthlyDollarBudget => "monthly dollar budget",
            LimitKind::UnpricedModel => "model price",
        }
    }
}

#[cfg(test)]
mod tests;
