//! `budget_events`: the dollar-budget thresholds users crossed, each
//! (user, month, threshold) once (a unique index), and what a user's
//! effective budget is compiled from.

use super::query::{i64_of, Columns, Record};
use super::snapshot::UserLimits;
use super::{config, notifications, SqlStore, StoreError};
use crate::domain::{BudgetEvent, NewNotification, Plan};
use molt_config::money::Picodollars;
use molt_config::wire::RawLimits;

/// What one user's limits are compiled from (see
/// `snapshot::apply_user_limits`): the limits document, the user's plan
/// and their own overrides.
#[derive(Debug, Clone)]
pub struct BudgetSource {
    pub document: RawLimits,
    pub plan: Option<Plan>,
    pub user: UserLimits,
}

fn pico(c: &Columns<'_>, column: &str) -> Result<Picodollars, StoreError> {
    let n: i64 = c.get(column)?;
    u64::try_from(n)
        .map(Picodollars)
        .map_err(|_| super::query::corrupt(&format!("budget_events.{column}"), &n.to_string()))
}

impl Record for BudgetEvent {
    const TABLE: &'static str = "budget_events";

    fn read(c: &Columns<'_>) -> Result<Self, StoreError> {
        Ok(BudgetEvent {
            id: c.get("id")?,
            user_id: c.get("user_id")?,
            month: c.get("month")?,
            threshold_pct: c.get("threshold_pct")?,
            budget_usd: pico(c, "budget_pico")?,
            spent_usd: pico(c, "spent_pico")?,
            at: c.get("at")?,
        })
    }
}

impl SqlStore {
    /// What `user_id`'s limits are compiled from; `None` for an unknown user.
    pub async fn budget_source(&self, user_id: &str) -> Result<Option<BudgetSource>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let user: Option<UserLimits> = {
            let row = sqlx::query("SELECT id, plan, limits FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
            row.as_ref().map(super::query::from_row).transpose()?
        };
        let Some(user) = user else {
            return Ok(None);
        };
        let plan = match &user.plan {
            Some(name) => super::plans::by_name(&mut tx, name).await?,
            None => None,
        };
        let document = config::limits(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(BudgetSource {
            document,
            plan,
            user,
        }))
    }

    /// Record a crossing, and in the same transaction the user's
    /// notification of it; false if this (user, month, threshold) already
    /// was.
    pub async fn record_budget_event(&self, e: &BudgetEvent) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO budget_events (id, user_id, month, threshold_pct, budget_pico, \
             spent_pico, at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (user_id, month, threshold_pct) DO NOTHING",
        )
        .bind(&e.id)
        .bind(&e.user_id)
        .bind(&e.month)
        .bind(e.threshold_pct)
        .bind(i64_of(e.budget_usd.0))
        .bind(i64_of(e.spent_usd.0))
        .bind(e.at)
        .execute(&mut *tx)
        .await?;
        let recorded = done.rows_affected() == 1;
        if recorded {
            let notice = NewNotification::budget_threshold(
                &e.user_id,
                &e.month,
                e.threshold_pct,
                &e.spent_usd.to_string(),
                &e.budget_usd.to_string(),
            );
            notifications::enqueue(&mut tx, &notice, e.at).await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// The crossings of `user_id` in `month` (`YYYY-MM`), lowest first.
    pub async fn budget_events(
        &self,
        user_id: &str,
        month: &str,
    ) -> Result<Vec<BudgetEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, month, threshold_pct, budget_pico, spent_pico, at \
             FROM budget_events WHERE user_id = $1 AND month = $2 ORDER BY threshold_pct",
        )
        .bind(user_id)
        .bind(month)
        .fetch_all(&self.pool)
        .await?;
        super::query::records(&rows)
    }
}
