//! `bots`: each user's bot and where its provisioning stands.
//!
//! Claims are the concurrency control: [`claim_bot`](SqlStore::claim_bot)
//! is a conditional UPDATE that succeeds for one worker only, and
//! [`record_step`](SqlStore::record_step) writes a step's result only while
//! the claim is still the writer's and the bot is still in the state the
//! step began in.

use super::query::{records, Columns, Record, Rows};
use super::{Range, SqlStore, StoreError};
use crate::domain::{AuditEntry, Bot, BotRecord, BotStatus, Desired, Millis, UserStatus};

/// What a finished step (or a failed one) writes.
#[derive(Debug, Clone, Default)]
pub struct StepUpdate {
    pub status: Option<BotStatus>,
    pub volume_id: Option<String>,
    pub machine_id: Option<String>,
    pub gateway_url: Option<String>,
    /// `Some(None)` clears the error.
    pub error: Option<Option<String>>,
    pub attempts: i64,
    pub next_attempt_at: Millis,
    /// A new step start time (when entering a timed step).
    pub step_started_at: Option<Millis>,
}

/// An operator's change of a bot's wish, applied only if the bot is still
/// in `from` (so concurrent changes do not overwrite each other).
#[derive(Debug, Clone)]
pub struct WishChange {
    pub from: BotStatus,
    pub status: BotStatus,
    pub desired: Desired,
    pub at: Millis,
}

/// The columns a [`BotRecord`] is read from (as `b` in a join).
macro_rules! columns {
    () => {
        "b.id, b.user_id, b.name, b.status, b.desired, b.region, b.model, b.volume_id, \
         b.machine_id, b.gateway_url, b.token_sealed, b.error, b.attempts, b.next_attempt_at, \
         b.step_started_at, b.created_at, b.updated_at"
    };
}

/// Sealed gateway tokens (`id`, `sealed`) after id `$1`, by id, at most
/// `$2` (for re-encryption, `sealed.rs`).
pub(super) const SEALED_PAGE: &str =
    "SELECT id, token_sealed AS sealed FROM bots WHERE id > $1 ORDER BY id LIMIT $2";

/// Re-sealed gateway token `$3` for bot `$1`, only while it is still `$2`.
/// No other column changes: a worker's claim and steps are untouched.
pub(super) const RESEAL: &str =
    "UPDATE bots SET token_sealed = $3 WHERE id = $1 AND token_sealed = $2";

/// Bots with a step due: `$1` now, `$2` the limit, then one bind per
/// [`BotStatus::ACTIVE`] state (a test keeps the two in step).
const DUE: &str = "SELECT id FROM bots WHERE next_attempt_at <= $1 \
     AND (lease_until IS NULL OR lease_until <= $1) \
     AND status IN ($3, $4, $5, $6, $7, $8, $9) ORDER BY next_attempt_at LIMIT $2";

impl Record for BotRecord {
    const TABLE: &'static str = "bots";

    fn read(c: &Columns<'_>) -> Result<Self, StoreError> {
        Ok(BotRecord {
            bot: Bot {
                id: c.get("id")?,
                user_id: c.get("user_id")?,
                name: c.get("name")?,
                status: c.named("status", BotStatus::parse)?,
                desired: c.named("desired", Desired::parse)?,
                region: c.get("region")?,
                // '' is "the default": the column is NOT NULL for both databases.
                model: Some(c.get::<String>("model")?).filter(|m| !m.is_empty()),
                volume_id: c.get("volume_id")?,
                machine_id: c.get("machine_id")?,
                gateway_url: c.get("gateway_url")?,
                error: c.get("error")?,
                attempts: c.get("attempts")?,
                created_at: c.get("created_at")?,
                updated_at: c.get("updated_at")?,
            },
            token_sealed: c.get("token_sealed")?,
            next_attempt_at: c.get("next_attempt_at")?,
            step_started_at: c.get("step_started_at")?,
        })
    }
}

impl SqlStore {
    pub async fn insert_bot(&self, r: &BotRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        let b = &r.bot;
        let query = sqlx::query(
            "INSERT INTO bots (id, user_id, name, status, desired, region, model, volume_id, \
             machine_id, gateway_url, token_sealed, error, attempts, next_attempt_at, \
             step_started_at, lease_owner, lease_until, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
             NULL, NULL, $16, $17)",
        )
        .bind(&b.id)
        .bind(&b.user_id)
        .bind(&b.name)
        .bind(b.status.as_str())
        .bind(b.desired.as_str())
        .bind(&b.region)
        .bind(b.model.as_deref().unwrap_or(""))
        .bind(&b.volume_id)
        .bind(&b.machine_id)
        .bind(&b.gateway_url)
        .bind(&r.token_sealed)
        .bind(&b.error)
        .bind(b.attempts)
        .bind(r.next_attempt_at)
        .bind(r.step_started_at)
        .bind(b.created_at)
        .bind(b.updated_at);
        self.audited(query, Rows::Any, audit).await
    }

    pub async fn get_bot(&self, id: &str) -> Result<Option<BotRecord>, StoreError> {
        const SQL: &str = concat!("SELECT ", columns!(), " FROM bots b WHERE b.id = $1");
        self.find(SQL, id).await
    }

    /// A page of bots, of one user's only when `user_id` is given.
    pub async fn list_bots(
        &self,
        user_id: Option<&str>,
        range: &Range,
    ) -> Result<Vec<BotRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM bots b WHERE ($1 = '' OR b.user_id = $1) AND b.id > $2 ORDER BY b.id LIMIT $3"
        );
        self.page(SQL, &[user_id.unwrap_or("")], range).await
    }

    /// `NotFound` when the bot is no longer in `change.from`.
    pub async fn change_wish(
        &self,
        id: &str,
        c: &WishChange,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        // The claim is left alone: a worker in the middle of a step will
        // find the status changed and drop its result (see `record_step`).
        let query = sqlx::query(
            "UPDATE bots SET status = $3, desired = $4, error = NULL, attempts = 0, \
             next_attempt_at = $5, step_started_at = $5, updated_at = $5 \
             WHERE id = $1 AND status = $2",
        )
        .bind(id)
        .bind(c.from.as_str())
        .bind(c.status.as_str())
        .bind(c.desired.as_str())
        .bind(c.at);
        self.audited(query, Rows::One, audit).await
    }

    /// Ids of bots with a step due at `now` and no live claim.
    pub async fn due_bots(&self, now: Millis, limit: i64) -> Result<Vec<String>, StoreError> {
        let mut query = sqlx::query_as(DUE).bind(now).bind(limit);
        for status in BotStatus::ACTIVE {
            query = query.bind(status.as_str());
        }
        let rows: Vec<(String,)> = query.fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Claim a due bot until `until`; false if another worker has it.
    pub async fn claim_bot(
        &self,
        id: &str,
        owner: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        // One statement, so the database decides the race: of two workers
        // running this at once, only one sees a free (or expired) claim.
        let done = sqlx::query(
            "UPDATE bots SET lease_owner = $2, lease_until = $4 WHERE id = $1 \
             AND (lease_until IS NULL OR lease_until <= $3)",
        )
        .bind(id)
        .bind(owner)
        .bind(now)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Write a step's result and release the claim; false (nothing
    /// written) if the claim was lost or the bot left `from` meanwhile.
    pub async fn record_step(
        &self,
        id: &str,
        owner: &str,
        from: BotStatus,
        u: &StepUpdate,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let (set_error, error) = match &u.error {
            Some(e) => (1i64, e.clone()),
            None => (0i64, None),
        };
        let done = sqlx::query(
            "UPDATE bots SET \
             status = CASE WHEN $4 = '' THEN status ELSE $4 END, \
             volume_id = COALESCE($5, volume_id), \
             machine_id = COALESCE($6, machine_id), \
             gateway_url = COALESCE($7, gateway_url), \
             error = CASE WHEN $8 = 1 THEN $9 ELSE error END, \
             attempts = $10, next_attempt_at = $11, \
             step_started_at = COALESCE($12, step_started_at), \
             lease_owner = NULL, lease_until = NULL, updated_at = $13 \
             WHERE id = $1 AND lease_owner = $2 AND status = $3",
        )
        .bind(id)
        .bind(owner)
        .bind(from.as_str())
        .bind(u.status.map_or("", BotStatus::as_str))
        .bind(&u.volume_id)
        .bind(&u.machine_id)
        .bind(&u.gateway_url)
        .bind(set_error)
        .bind(error)
        .bind(u.attempts)
        .bind(u.next_attempt_at)
        .bind(u.step_started_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Drop a claim without writing anything else.
    pub async fn release_bot(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE bots SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Running bots of active users, for the config snapshot.
    pub async fn running_bots(&self) -> Result<Vec<BotRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM bots b JOIN users u ON u.id = b.user_id \
             WHERE b.status = $1 AND u.status = $2 AND b.gateway_url IS NOT NULL ORDER BY b.id"
        );
        let rows = sqlx::query(SQL)
            .bind(BotStatus::Running.as_str())
            .bind(UserStatus::Active.as_str())
            .fetch_all(&self.pool)
            .await?;
        records(&rows)
    }

    /// Per status: how many bots, and when the oldest current step of
    /// one of them started (Unix ms).
    pub async fn count_bots(&self) -> Result<Vec<(String, i64, Millis)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT status, CAST(COUNT(*) AS BIGINT), CAST(MIN(step_started_at) AS BIGINT) \
             FROM bots GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_due_query_has_one_placeholder_per_active_state() {
        let after_limit = DUE.matches('$').count() - 3; // $1 twice, $2 once
        assert_eq!(after_limit, BotStatus::ACTIVE.len());
    }
}
