//! [`BotStore`]: the bots table, over the same `Any` pool and migrations as
//! the rest of [`SqlStore`] (a supertrait of [`crate::store::Store`], so the
//! services and the snapshot compiler reach it through the one store).
//!
//! Claims are the concurrency control: [`BotStore::claim_bot`] is a
//! conditional UPDATE that succeeds for one worker only, and
//! [`BotStore::record_step`] writes a step's result only while the claim is
//! still the writer's and the bot is still in the state the step began in.

use super::{Bot, BotRecord, BotStatus, Desired};
use crate::domain::{AuditEntry, Millis};
use crate::store::{write_audit, Range, SqlStore, StoreError};

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

/// Storage of bots and their provisioning state.
#[async_trait::async_trait]
pub trait BotStore: Send + Sync {
    async fn insert_bot(&self, bot: &BotRecord, audit: &AuditEntry) -> Result<(), StoreError>;
    async fn get_bot(&self, id: &str) -> Result<Option<BotRecord>, StoreError>;
    async fn list_bots(
        &self,
        user_id: Option<&str>,
        range: &Range,
    ) -> Result<Vec<BotRecord>, StoreError>;
    /// `NotFound` when the bot is no longer in `change.from`.
    async fn change_wish(
        &self,
        id: &str,
        change: &WishChange,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Ids of bots with a step due at `now` and no live claim.
    async fn due_bots(&self, now: Millis, limit: i64) -> Result<Vec<String>, StoreError>;
    /// Claim a due bot until `until`; false if another worker has it.
    async fn claim_bot(
        &self,
        id: &str,
        owner: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError>;
    /// Write a step's result and release the claim; false (nothing
    /// written) if the claim was lost or the bot left `from` meanwhile.
    async fn record_step(
        &self,
        id: &str,
        owner: &str,
        from: BotStatus,
        update: &StepUpdate,
        now: Millis,
    ) -> Result<bool, StoreError>;
    /// Drop a claim without writing anything else.
    async fn release_bot(&self, id: &str, owner: &str) -> Result<(), StoreError>;
    /// Running bots of active users, for the config snapshot.
    async fn running_bots(&self) -> Result<Vec<BotRecord>, StoreError>;
    /// How many bots are in each status.
    async fn count_bots(&self) -> Result<Vec<(String, i64)>, StoreError>;
}

#[derive(sqlx::FromRow)]
struct BotRow {
    id: String,
    user_id: String,
    name: String,
    status: String,
    desired: String,
    region: Option<String>,
    model: String,
    volume_id: Option<String>,
    machine_id: Option<String>,
    gateway_url: Option<String>,
    token_sealed: String,
    error: Option<String>,
    attempts: i64,
    next_attempt_at: i64,
    step_started_at: i64,
    created_at: i64,
    updated_at: i64,
}

const BOT_COLS: &str = "b.id, b.user_id, b.name, b.status, b.desired, b.region, b.model, \
     b.volume_id, b.machine_id, b.gateway_url, b.token_sealed, b.error, b.attempts, \
     b.next_attempt_at, b.step_started_at, b.created_at, b.updated_at";

/// Statuses a worker acts on, as an SQL list (constants, not input).
const ACTIVE: &str = "('requested', 'volume_created', 'machine_created', 'waiting_health', \
     'stopping', 'starting', 'deleting')";

impl TryFrom<BotRow> for BotRecord {
    type Error = StoreError;

    fn try_from(r: BotRow) -> Result<Self, StoreError> {
        let corrupt =
            |f: &str, v: &str| StoreError::Corrupt(format!("{f}: unexpected value {v:?}"));
        Ok(BotRecord {
            bot: Bot {
                status: BotStatus::parse(&r.status)
                    .ok_or_else(|| corrupt("bots.status", &r.status))?,
                desired: Desired::parse(&r.desired)
                    .ok_or_else(|| corrupt("bots.desired", &r.desired))?,
                id: r.id,
                user_id: r.user_id,
                name: r.name,
                region: r.region,
                // '' is "the default": the column is NOT NULL for both databases.
                model: Some(r.model).filter(|m| !m.is_empty()),
                volume_id: r.volume_id,
                machine_id: r.machine_id,
                gateway_url: r.gateway_url,
                error: r.error,
                attempts: r.attempts,
                created_at: r.created_at,
                updated_at: r.updated_at,
            },
            token_sealed: r.token_sealed,
            next_attempt_at: r.next_attempt_at,
            step_started_at: r.step_started_at,
        })
    }
}

fn records(rows: Vec<BotRow>) -> Result<Vec<BotRecord>, StoreError> {
    rows.into_iter().map(BotRecord::try_from).collect()
}

#[async_trait::async_trait]
impl BotStore for SqlStore {
    async fn insert_bot(&self, r: &BotRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        let b = &r.bot;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
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
        .bind(b.updated_at)
        .execute(&mut *tx)
        .await?;
        write_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_bot(&self, id: &str) -> Result<Option<BotRecord>, StoreError> {
        let sql = format!("SELECT {BOT_COLS} FROM bots b WHERE b.id = $1");
        let row: Option<BotRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(BotRecord::try_from).transpose()
    }

    async fn list_bots(
        &self,
        user_id: Option<&str>,
        range: &Range,
    ) -> Result<Vec<BotRecord>, StoreError> {
        let sql = format!(
            "SELECT {BOT_COLS} FROM bots b WHERE ($1 = '' OR b.user_id = $1) AND b.id > $2 \
             ORDER BY b.id LIMIT $3"
        );
        let rows: Vec<BotRow> = sqlx::query_as(&sql)
            .bind(user_id.unwrap_or(""))
            .bind(range.after.as_deref().unwrap_or(""))
            .bind(range.limit)
            .fetch_all(self.pool())
            .await?;
        records(rows)
    }

    async fn change_wish(
        &self,
        id: &str,
        c: &WishChange,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        // The claim is left alone: a worker in the middle of a step will
        // find the status changed and drop its result (see `record_step`).
        let done = sqlx::query(
            "UPDATE bots SET status = $3, desired = $4, error = NULL, attempts = 0, \
             next_attempt_at = $5, step_started_at = $5, updated_at = $5 \
             WHERE id = $1 AND status = $2",
        )
        .bind(id)
        .bind(c.from.as_str())
        .bind(c.status.as_str())
        .bind(c.desired.as_str())
        .bind(c.at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        write_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn due_bots(&self, now: Millis, limit: i64) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT id FROM bots WHERE status IN {ACTIVE} AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) ORDER BY next_attempt_at LIMIT $2"
        );
        let rows: Vec<(String,)> = sqlx::query_as(&sql)
            .bind(now)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn claim_bot(
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
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_step(
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
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_bot(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE bots SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn running_bots(&self) -> Result<Vec<BotRecord>, StoreError> {
        let sql = format!(
            "SELECT {BOT_COLS} FROM bots b JOIN users u ON u.id = b.user_id \
             WHERE b.status = 'running' AND u.status = 'active' AND b.gateway_url IS NOT NULL \
             ORDER BY b.id"
        );
        let rows: Vec<BotRow> = sqlx::query_as(&sql).fetch_all(self.pool()).await?;
        records(rows)
    }

    async fn count_bots(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, CAST(COUNT(*) AS BIGINT) FROM bots GROUP BY status ORDER BY status",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }
}
