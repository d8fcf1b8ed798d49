//! Billing: Stripe webhooks ([`webhook`]), the exactly-once meter flush
//! ([`meter`]; hourly, or on demand with `POST /api/v1/billing/flush`) and
//! reconciliation (`GET /api/v1/billing/reconciliation`). Their HTTP
//! handlers are `api::billing`'s, and `api::error` maps [`BillingError`] to
//! responses; nothing here knows HTTP.
//!
//! The control plane owns the [`MeterSink`] seam; [`stripe_sink::StripeMeterSink`]
//! implements it over async-stripe, pointed at Stripe or (by base URL) at
//! `molt_fakes::fake_stripe`. Billing state lives in the same database,
//! reached through the slice billing declares ([`store::BillingStore`];
//! tables of migration `0003_billing.sql`).
//!
//! Grace policy for failed payments: `invoice.payment_failed` marks an
//! active user `past_due` (their keys keep working) and starts a grace
//! period (`past_due_grace`, default 7 days; 0 suspends at once). A later
//! `invoice.paid` or paid checkout ends it; otherwise the periodic job
//! suspends the user and stops their bot when it runs out.

pub mod meter;
pub mod metrics;
pub mod store;
pub mod stripe_sink;
pub mod webhook;

pub use meter::{FlushOutcome, FlushSettings, Flusher, Meter, MeterEvent, MeterSink, SendError};

use crate::domain::{now_ms, Millis};
use crate::service::{Operator, Service, ServiceError};
use crate::store::StoreError;
use metrics::BillingMetrics;
use molt_config::money::{usd_text, Picodollars};
use molt_config::Secret;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use store::BillingStore;
use store::UserTokens;
use tokio::task::JoinHandle;
use utoipa::{IntoParams, ToSchema};

/// What billing can fail with. Mapped to HTTP in `api::error` only.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// Missing, unparsable, non-matching or stale `Stripe-Signature`.
    #[error("invalid Stripe signature: {0}")]
    Signature(&'static str),
    /// A verified body that is not a usable event.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// The event names a user or customer Molt does not know.
    #[error("unknown customer: {0}")]
    UnknownCustomer(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// Billing configuration, resolved from the `[billing]` config section.
#[derive(Debug, Clone)]
pub struct BillingSettings {
    /// The webhook endpoint's signing secret (`whsec_...`).
    pub webhook_secret: Secret,
    /// Largest accepted |now - t| of a signature, in seconds (Stripe: 300).
    pub webhook_tolerance_secs: i64,
    /// How long a past-due user keeps working before suspension.
    pub past_due_grace: Duration,
    /// How often the flush (and grace) job runs (default 1 h).
    pub flush_interval: Duration,
    pub flush: FlushSettings,
}

impl BillingSettings {
    pub fn new(webhook_secret: Secret) -> Self {
        Self {
            webhook_secret,
            webhook_tolerance_secs: 300,
            past_due_grace: Duration::from_secs(7 * 24 * 3600),
            flush_interval: Duration::from_secs(3600),
            flush: FlushSettings::default(),
        }
    }
}

/// The billing services.
#[derive(Debug)]
pub struct Billing {
    service: Arc<Service>,
    store: Arc<dyn BillingStore>,
    settings: BillingSettings,
    metrics: BillingMetrics,
    flusher: Flusher,
    webhook_lock: tokio::sync::Mutex<()>,
}

impl Billing {
    /// Build on the control plane's services and database. Registers the
    /// billing metrics, so once per service.
    pub fn new(
        service: Arc<Service>,
        store: Arc<dyn BillingStore>,
        settings: BillingSettings,
        sink: Arc<dyn MeterSink>,
    ) -> Result<Arc<Self>, crate::metrics::MetricsError> {
        let metrics = BillingMetrics::register(service.metrics())?;
        let flusher = Flusher::new(store.clone(), sink, settings.flush.clone(), metrics.clone());
        Ok(Arc::new(Self {
            service,
            store,
            settings,
            metrics,
            flusher,
            webhook_lock: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn flusher(&self) -> &Flusher {
        &self.flusher
    }

    /// The services (the HTTP handlers authenticate operators with them).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// One run of the periodic job: grace policy, then the flush.
    pub async fn tick(&self) {
        match self.enforce_grace(now_ms()).await {
            Ok(n) if n > 0 => tracing::info!(suspended = n, "past-due grace ran out"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "grace policy failed"),
        }
        let result = match self.flusher.flush().await {
            Ok(o) => {
                tracing::info!(?o, "meter flush");
                "ok"
            }
            Err(e) => {
                tracing::error!(error = %e, "meter flush failed");
                "error"
            }
        };
        self.service
            .metrics()
            .job_runs
            .with_label_values(&["billing_flush", result])
            .inc();
        if let Err(e) = self.publish_overdue(now_ms()).await {
            tracing::warn!(error = %e, "billing_overdue_tokens not updated");
        }
    }

    /// Set `billing_overdue_tokens`: over the last 35 days (what Stripe
    /// still takes), the tokens of users with a Stripe customer whose
    /// window has closed, settled and been through a flush, and that
    /// Stripe does not hold, by reason. One reconciliation query per
    /// periodic flush (hourly by default).
    pub async fn publish_overdue(&self, now: Millis) -> Result<(), StoreError> {
        let f = &self.settings.flush;
        let due = f.window + f.settle + self.settings.flush_interval;
        let due_ms = i64::try_from(due.as_millis()).unwrap_or(i64::MAX);
        let rows = self
            .store
            .reconcile(
                now.saturating_sub(meter::STRIPE_MAX_AGE_MS),
                now.saturating_sub(due_ms),
                &f.event_name,
            )
            .await?;
        let mut sums = [0_i64; metrics::OVERDUE_REASONS.len()];
        for u in rows.iter().filter(|u| u.stripe_customer_id.is_some()) {
            for (sum, n) in sums.iter_mut().zip([
                u.tokens.pending,
                u.tokens.failed,
                u.tokens.unbillable,
                u.tokens.unreported,
            ]) {
                *sum += n;
            }
        }
        for (reason, sum) in metrics::OVERDUE_REASONS.iter().zip(sums) {
            self.metrics
                .overdue_tokens
                .with_label_values(&[reason])
                .set(sum);
        }
        Ok(())
    }

    /// Run [`Billing::tick`] every `flush_interval` (first after one interval).
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(me.settings.flush_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                me.tick().await;
            }
        })
    }

    /// A flush on an operator's demand (admin only, audited): the same
    /// two phases as the periodic job, so the same exactly-once argument
    /// holds; it waits for a periodic flush already running.
    pub async fn flush_as(&self, op: &Operator) -> Result<FlushOutcome, BillingError> {
        op.require_admin()?;
        let result = self.flusher.flush().await;
        let detail = match &result {
            Ok(o) => serde_json::to_value(o).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        // The flush's effect is in `meter_reports` whatever happens here;
        // the entry records who asked and what it came to.
        self.service
            .audit_action(op, "billing.flush", "meter_reports", &detail)
            .await?;
        match &result {
            Ok(o) => tracing::info!(?o, actor = %op.actor, "meter flush on demand"),
            Err(e) => {
                tracing::error!(error = %e, actor = %op.actor, "meter flush on demand failed")
            }
        }
        result
    }

    /// Per user, tokens and money in usage rows and reported to Stripe.
    pub async fn reconciliation(
        &self,
        q: ReconciliationQuery,
    ) -> Result<Reconciliation, BillingError> {
        let from = q
            .from
            .as_deref()
            .map(|s| parse_time("from", s, false))
            .transpose()?;
        let to =
            q.to.as_deref()
                .map(|s| parse_time("to", s, true))
                .transpose()?;
        let (from, to) = (from.unwrap_or(0), to.unwrap_or(i64::MAX));
        if from >= to {
            return Err(BillingError::BadRequest("from must be before to".into()));
        }
        let flush = &self.settings.flush;
        let rows = self.store.reconcile(from, to, &flush.event_name).await?;
        let unit = match flush.meter {
            Meter::Tokens => None,
            Meter::Cost { unit } => Some(unit),
        };
        let mut totals = Totals::default();
        let customers = rows
            .into_iter()
            .map(|u| {
                let c = customer_reconciliation(u, unit);
                totals.add(&c);
                c
            })
            .collect();
        Ok(Reconciliation {
            from,
            to,
            meter: flush.event_name.clone(),
            meter_unit_usd: unit.map(|u| u.to_string()),
            customers,
            totals: totals.finish(),
        })
    }
}

/// Signed picodollars as dollars (`"-0.000001"`).
fn signed_usd(pico: i128) -> String {
    let text = usd_text(pico.unsigned_abs());
    if pico < 0 {
        format!("-{text}")
    } else {
        text
    }
}

/// One user's reconciliation. With a cost meter (`unit`), the money
/// figures: usage = reported + the parts by reason, exactly, where the
/// sent rows' amount beyond `reported_units × unit` is the remainder still
/// below one unit (carried into the user's next report).
fn customer_reconciliation(u: UserTokens, unit: Option<Picodollars>) -> CustomerReconciliation {
    let (t, m) = (u.tokens, u.money);
    let reported_pico = unit.map(|unit| i128::from(u.reported_units) * i128::from(unit.0));
    let mut reasons = Vec::new();
    let no_customer = u.stripe_customer_id.is_none();
    for (tokens, pico, reason) in [
        (
            t.pending,
            m.pending,
            "pending: reported, awaiting Stripe's confirmation",
        ),
        (
            t.unbillable,
            m.unbillable,
            "unbillable: older than Stripe's 35-day window",
        ),
        (
            t.failed,
            m.failed,
            "failed: refused by Stripe (see meter_reports.last_error)",
        ),
        (
            t.unreported,
            m.unreported,
            if no_customer {
                "unreported: the user has no Stripe customer"
            } else {
                "unreported: window not closed or not flushed yet, or unpriced"
            },
        ),
    ] {
        if tokens != 0 || pico != 0 {
            reasons.push(Difference {
                tokens,
                amount_usd: unit.map(|_| signed_usd(i128::from(pico))),
                reason: reason.to_owned(),
            });
        }
    }
    if let Some(reported) = reported_pico {
        let carried = i128::from(m.sent) - reported;
        if carried != 0 {
            reasons.push(Difference {
                tokens: 0,
                amount_usd: Some(signed_usd(carried)),
                reason: "remainder: below one meter unit, carried into the next report".into(),
            });
        }
    }
    CustomerReconciliation {
        user_id: u.user_id,
        stripe_customer_id: u.stripe_customer_id,
        usage_tokens: t.usage,
        reported_tokens: t.sent,
        difference: t.usage - t.sent,
        usage_cost_usd: signed_usd(i128::from(m.usage)),
        reported_units: unit.map(|_| u.reported_units),
        reported_usd: reported_pico.map(signed_usd),
        difference_usd: reported_pico.map(|r| signed_usd(i128::from(m.usage) - r)),
        unpriced_events: u.unpriced_events,
        reasons,
        usage_pico: i128::from(m.usage),
        reported_pico: reported_pico.unwrap_or(0),
    }
}

/// `YYYY-MM-DD` (UTC; `to` includes the whole day) or RFC 3339; Unix ms.
fn parse_time(field: &str, s: &str, end_of_day: bool) -> Result<i64, BillingError> {
    use time::format_description::well_known::Rfc3339;
    let day = time::macros::format_description!("[year]-[month]-[day]");
    let secs = if let Ok(d) = time::Date::parse(s, &day) {
        let start = d.midnight().assume_utc().unix_timestamp();
        if end_of_day {
            start + 86_400
        } else {
            start
        }
    } else if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        t.unix_timestamp()
    } else {
        return Err(BillingError::BadRequest(format!(
            "{field} must be a date (YYYY-MM-DD) or an RFC 3339 time"
        )));
    };
    Ok(secs.saturating_mul(1000))
}

/// Query of `GET /api/v1/billing/reconciliation`: usage rows with
/// `from <= timestamp < to`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReconciliationQuery {
    /// Start, inclusive: `YYYY-MM-DD` (UTC midnight) or an RFC 3339 time.
    /// Default: the beginning of time.
    pub from: Option<String>,
    /// End, exclusive: `YYYY-MM-DD` (that whole UTC day is included) or an
    /// RFC 3339 time. Default: no end.
    pub to: Option<String>,
}

/// Usage that Stripe does not (yet) hold, for one reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Difference {
    pub tokens: i64,
    /// The billed amount of those rows, USD (a cost meter only).
    pub amount_usd: Option<String>,
    /// `pending`, `unbillable`, `failed`, `unreported` or `remainder`,
    /// with an explanation.
    pub reason: String,
}

/// One user's usage against what Stripe confirmed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct CustomerReconciliation {
    pub user_id: String,
    pub stripe_customer_id: Option<String>,
    /// Input plus output tokens in the user's usage rows.
    pub usage_tokens: i64,
    /// Tokens in reports Stripe confirmed.
    pub reported_tokens: i64,
    /// `usage_tokens - reported_tokens`.
    pub difference: i64,
    /// The billed cost of the user's usage rows (cost fixed at ingest,
    /// plus markup), USD.
    pub usage_cost_usd: String,
    /// Meter units in the reports Stripe confirmed (a cost meter only).
    pub reported_units: Option<i64>,
    /// `reported_units × meter unit`, USD (a cost meter only).
    pub reported_usd: Option<String>,
    /// `usage_cost_usd - reported_usd`, exactly the sum of the reasons'
    /// amounts (a cost meter only).
    pub difference_usd: Option<String>,
    /// Usage rows whose model had no price (never reported by a cost meter).
    pub unpriced_events: i64,
    /// Where the difference is, by reason.
    pub reasons: Vec<Difference>,
    #[serde(skip)]
    usage_pico: i128,
    #[serde(skip)]
    reported_pico: i128,
}

/// Sums over every user.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Totals {
    pub usage_tokens: i64,
    pub reported_tokens: i64,
    pub difference: i64,
    pub usage_cost_usd: String,
    /// A cost meter only.
    pub reported_usd: Option<String>,
    /// A cost meter only.
    pub difference_usd: Option<String>,
    pub unpriced_events: i64,
    #[serde(skip)]
    usage_pico: i128,
    #[serde(skip)]
    reported_pico: Option<i128>,
}

impl Totals {
    fn add(&mut self, c: &CustomerReconciliation) {
        self.usage_tokens += c.usage_tokens;
        self.reported_tokens += c.reported_tokens;
        self.unpriced_events += c.unpriced_events;
        self.usage_pico += c.usage_pico;
        if c.reported_usd.is_some() {
            *self.reported_pico.get_or_insert(0) += c.reported_pico;
        }
    }

    fn finish(mut self) -> Totals {
        self.difference = self.usage_tokens - self.reported_tokens;
        self.usage_cost_usd = signed_usd(self.usage_pico);
        self.reported_usd = self.reported_pico.map(signed_usd);
        self.difference_usd = self.reported_pico.map(|r| signed_usd(self.usage_pico - r));
        self
    }
}

/// `GET /api/v1/billing/reconciliation`: per user, usage rows against the
/// meter events Stripe confirmed, in tokens and (with a cost meter) money.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Reconciliation {
    /// Unix ms, inclusive.
    pub from: i64,
    /// Unix ms, exclusive.
    pub to: i64,
    /// The meter's event name.
    pub meter: String,
    /// The cost meter's unit, USD; `null` for a tokens meter.
    pub meter_unit_usd: Option<String>,
    pub customers: Vec<CustomerReconciliation>,
    pub totals: Totals,
}
