//! Dollar budgets: after each ingest batch, the month's stored cost of each
//! user who spent is compared with their monthly dollar budget (the
//! `monthly_budget_usd` of their effective limits: document defaults, plan,
//! document entry, own overrides, as the snapshot compiles them), and each
//! threshold (50, 80, 100%) reached is recorded once per user and month
//! (`budget_events`, `molt_cp_budget_thresholds_crossed_total`).
//!
//! Budgets count the cost at the models' prices, before a plan's markup:
//! the same figure the data planes enforce the budget with. Crossings are
//! looked for, not remembered: a check that fails (or a control plane that
//! stops between storing a batch and checking it) is made good by the
//! user's next batch, and the unique (user, month, threshold) keeps each
//! crossing to one record.

use super::{not_found, Operator, Service, ServiceError};
use crate::domain::money::BUDGET_THRESHOLDS;
use crate::domain::{new_id, now_ms, utc_day, BudgetEvent, Millis};
use crate::snapshot::apply_user_limits;
use crate::store::{store_trait, BudgetSource, StoreError};
use molt_config::money::Picodollars;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

store_trait! {
    /// What budget checks read and record.
    pub trait BudgetStore: Send + Sync {
        /// What `user_id`'s limits are compiled from; `None` for an unknown user.
        async fn budget_source(&self, user_id: &str) -> Result<Option<BudgetSource>, StoreError>;
        /// A user's stored cost over the days `from_day` to `to_day`, and
        /// how many of their events there are unpriced.
        async fn user_spend(&self, user_id: &str, from_day: &str, to_day: &str) -> Result<(i64, i64), StoreError>;
        /// Record a crossing; false if this (user, month, threshold) already was.
        async fn record_budget_event(&self, event: &BudgetEvent) -> Result<bool, StoreError>;
        /// The crossings of `user_id` in `month`, lowest first.
        async fn budget_events(&self, user_id: &str, month: &str) -> Result<Vec<BudgetEvent>, StoreError>;
    }
}

/// Query of `GET /api/v1/users/{id}/budget`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BudgetQuery {
    /// `YYYY-MM` (UTC); default: the current month.
    pub month: Option<String>,
}

/// A user's month against their dollar budget.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserBudget {
    pub user_id: String,
    /// `YYYY-MM`, UTC.
    pub month: String,
    /// The monthly dollar budget in force now; `null`: none.
    #[schema(value_type = Option<String>)]
    pub budget_usd: Option<Picodollars>,
    /// The month's stored cost (before markup), USD.
    #[schema(value_type = String)]
    pub spent_usd: Picodollars,
    /// `spent / budget` in whole percent (rounded down); `null` without a budget.
    pub percent_used: Option<u64>,
    /// The month's events whose model had no price (not in `spent_usd`).
    pub unpriced_events: i64,
    /// The thresholds crossed this month, lowest first.
    pub thresholds_crossed: Vec<BudgetEvent>,
}

/// The first and last day (`YYYY-MM-DD`) of `month`, if it is `YYYY-MM`.
fn month_days(month: &str) -> Option<(String, String)> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(&format!("{month}-01"), &format).ok()?;
    // Days compare as text, and no month has a day after 31.
    Some((format!("{month}-01"), format!("{month}-31")))
}

/// `source`'s effective monthly dollar budget: its user's entry as the
/// snapshot compiles it, over the document's default.
pub fn monthly_budget(source: &BudgetSource) -> Option<Picodollars> {
    let mut limits = source.document.clone();
    let plans: Vec<_> = source.plan.iter().cloned().collect();
    apply_user_limits(&mut limits, &plans, std::slice::from_ref(&source.user));
    limits
        .users
        .iter()
        .find(|e| e.user == source.user.user_id)
        .and_then(|e| e.monthly_budget_usd)
        .or(limits.monthly_budget_usd)
}

/// Whether `spent` has reached `pct` percent of `budget`.
fn reached(spent: Picodollars, budget: Picodollars, pct: u8) -> bool {
    u128::from(spent.0) * 100 >= u128::from(budget.0) * u128::from(pct)
}

fn pico(n: i64) -> Picodollars {
    Picodollars(u64::try_from(n).unwrap_or(0))
}

// === impl Service ===

impl Service {
    /// Record the thresholds each (user, `YYYY-MM`) has reached.
    pub(super) async fn check_budgets(
        &self,
        spenders: &[(String, String)],
        now: Millis,
    ) -> Result<(), ServiceError> {
        for (user, month) in spenders {
            let Some(source) = self.store.budget_source(user).await? else {
                continue;
            };
            let Some(budget) = monthly_budget(&source) else {
                continue;
            };
            let Some((from, to)) = month_days(month) else {
                continue;
            };
            let (spent, _) = self.store.user_spend(user, &from, &to).await?;
            let spent = pico(spent);
            for pct in BUDGET_THRESHOLDS
                .into_iter()
                .filter(|p| reached(spent, budget, *p))
            {
                let event = BudgetEvent {
                    id: new_id("bev"),
                    user_id: user.clone(),
                    month: month.clone(),
                    threshold_pct: i64::from(pct),
                    budget_usd: budget,
                    spent_usd: spent,
                    at: now,
                };
                if self.store.record_budget_event(&event).await? {
                    self.threshold_crossed(&event);
                }
            }
        }
        Ok(())
    }

    /// A newly recorded crossing, counted and logged (its notification was
    /// written with it, in the same transaction: `record_budget_event`).
    fn threshold_crossed(&self, e: &BudgetEvent) {
        self.metrics
            .budget_thresholds
            .with_label_values(&[&e.threshold_pct.to_string()])
            .inc();
        tracing::info!(
            user = %e.user_id, month = %e.month, threshold_pct = e.threshold_pct,
            spent_usd = %e.spent_usd, budget_usd = %e.budget_usd,
            "dollar budget threshold crossed"
        );
    }

    /// `GET /api/v1/users/{id}/budget`.
    pub async fn user_budget(
        &self,
        _op: &Operator,
        user_id: &str,
        q: BudgetQuery,
    ) -> Result<UserBudget, ServiceError> {
        let month = match q.month {
            Some(m) => m,
            None => utc_day(u64::try_from(now_ms()).unwrap_or(0))[..7].to_owned(),
        };
        let (from, to) = month_days(&month)
            .ok_or_else(|| ServiceError::BadRequest("month must be YYYY-MM".into()))?;
        let source = self
            .store
            .budget_source(user_id)
            .await?
            .ok_or_else(|| not_found("user", user_id))?;
        let budget = monthly_budget(&source);
        let (spent, unpriced_events) = self.store.user_spend(user_id, &from, &to).await?;
        let spent = pico(spent);
        let percent_used = budget.map(|b| {
            let pct = u128::from(spent.0) * 100 / u128::from(b.0.max(1));
            u64::try_from(pct).unwrap_or(u64::MAX)
        });
        Ok(UserBudget {
            user_id: user_id.to_owned(),
            thresholds_crossed: self.store.budget_events(user_id, &month).await?,
            month,
            budget_usd: budget,
            spent_usd: spent,
            percent_used,
            unpriced_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_reached_exactly() {
        let budget = Picodollars(1_000);
        assert!(!reached(Picodollars(499), budget, 50));
        assert!(reached(Picodollars(500), budget, 50));
        assert!(reached(Picodollars(1_000), budget, 100));
        assert_eq!(month_days("2026-02").unwrap().0, "2026-02-01");
        assert!(month_days("2026-13").is_none());
    }
}
