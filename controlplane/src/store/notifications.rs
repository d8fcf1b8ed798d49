//! `notifications`, `notification_deliveries` (the outbox) and
//! `webhook_endpoints`.
//!
//! [`enqueue`] is how a state change notifies: it takes the transaction
//! that stores the change, so the notification and its deliveries commit
//! with it or not at all, and the unique `dedupe_key` makes an event
//! applied twice notify once. From inside `store/`, one line:
//! `notifications::enqueue(&mut tx, &NewNotification { .. }, now).await?;`.
//!
//! The delivery worker's claims are the concurrency control, as for bots:
//! [`claim_delivery`](SqlStore::claim_delivery) is a conditional UPDATE
//! that succeeds for one worker only, and
//! [`finish_delivery`](SqlStore::finish_delivery) writes a result only
//! while the claim is still the writer's.

use super::query::{from_row, one_row, record, records, Columns, Record, Rows};
use super::{Range, SqlStore, StoreError};
use crate::domain::{
    AuditEntry, Channel, Delivery, DeliveryStatus, Millis, NewNotification, NoticeKind,
    Notification, WebhookEndpoint,
};
use sqlx::AnyConnection;

record!(Delivery in "notification_deliveries" as d {
    id, notification_id, channel: named(Channel::parse), endpoint_id,
    status: named(DeliveryStatus::parse), attempts, next_attempt_at, last_error, created_at,
    delivered_at,
});

/// The columns a [`Notification`] is read from (as `n`).
macro_rules! notification_columns {
    () => {
        "n.id, n.user_id, n.kind, n.subject, n.title, n.message, n.data, n.created_at, n.read_at"
    };
}

impl Record for Notification {
    const TABLE: &'static str = "notifications";

    fn read(c: &Columns<'_>) -> Result<Self, StoreError> {
        Ok(Notification {
            id: c.get("id")?,
            user_id: c.get("user_id")?,
            kind: c.named("kind", NoticeKind::parse)?,
            subject: c.get("subject")?,
            title: c.get("title")?,
            message: c.get("message")?,
            data: c.json("data")?,
            created_at: c.get("created_at")?,
            read_at: c.get("read_at")?,
            deliveries: Vec::new(),
        })
    }
}

impl Record for WebhookEndpoint {
    const TABLE: &'static str = "webhook_endpoints";

    fn read(c: &Columns<'_>) -> Result<Self, StoreError> {
        Ok(WebhookEndpoint {
            id: c.get("id")?,
            url: c.get("url")?,
            description: c.get("description")?,
            created_at: c.get("created_at")?,
            disabled_at: c.get("disabled_at")?,
        })
    }
}

/// Everything one delivery needs to be sent: the row, its notification,
/// and where it goes.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub delivery: Delivery,
    pub notification: Notification,
    /// The user's address (email deliveries).
    pub email: Option<String>,
    /// The endpoint's URL and sealed secret (webhook deliveries to an
    /// endpoint not disabled).
    pub endpoint: Option<(String, String)>,
}

/// What a delivery attempt writes.
#[derive(Debug, Clone)]
pub struct DeliveryUpdate {
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: Millis,
    pub last_error: Option<String>,
    pub delivered_at: Option<Millis>,
}

/// Per channel: pending deliveries, and when the oldest was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxDepth {
    pub channel: String,
    pub pending: i64,
    pub oldest_created_at: Millis,
}

/// Write `n` and its deliveries (one email, one per live webhook
/// endpoint) on `conn`, the transaction of the state change that causes
/// it. False when its dedupe key is already stored or the user is unknown
/// (nothing written).
pub(super) async fn enqueue(
    conn: &mut AnyConnection,
    n: &NewNotification,
    now: Millis,
) -> Result<bool, StoreError> {
    let id = crate::domain::new_id("ntf");
    let done = sqlx::query(
        // From `users`, so an event of a user this database does not know
        // (a data plane's file-configured key) notifies no one and fails
        // nothing. (SQLite reads `ON CONFLICT` after a SELECT only with a
        // WHERE, which this has.)
        "INSERT INTO notifications (id, user_id, kind, subject, dedupe_key, title, message, \
         data, created_at, read_at) SELECT $1, u.id, $3, $4, $5, $6, $7, $8, $9, NULL \
         FROM users u WHERE u.id = $2 ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(&id)
    .bind(&n.user_id)
    .bind(n.kind.as_str())
    .bind(&n.subject)
    .bind(n.dedupe_key())
    .bind(&n.title)
    .bind(&n.message)
    .bind(super::query::to_json(&n.data))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO notification_deliveries (id, notification_id, channel, endpoint_id, \
         status, attempts, next_attempt_at, created_at) \
         VALUES ($1 || '.email', $1, $2, NULL, $3, 0, $4, $4)",
    )
    .bind(&id)
    .bind(Channel::Email.as_str())
    .bind(DeliveryStatus::Pending.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO notification_deliveries (id, notification_id, channel, endpoint_id, \
         status, attempts, next_attempt_at, created_at) \
         SELECT $1 || '.' || e.id, $1, $2, e.id, $3, 0, $4, $4 \
         FROM webhook_endpoints e WHERE e.disabled_at IS NULL",
    )
    .bind(&id)
    .bind(Channel::Webhook.as_str())
    .bind(DeliveryStatus::Pending.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

impl SqlStore {
    /// [`enqueue`] in a transaction of its own (a notification no other
    /// write causes; tests).
    pub async fn insert_notification(
        &self,
        n: &NewNotification,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = enqueue(&mut tx, n, now).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// A page of a user's notifications, newest first (`range.after` is
    /// the last id of the previous page), unread ones only if asked, each
    /// with its deliveries.
    pub async fn list_notifications(
        &self,
        user_id: &str,
        unread_only: bool,
        range: &Range,
    ) -> Result<Vec<Notification>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            notification_columns!(),
            " FROM notifications n WHERE n.user_id = $1 ",
            "AND ($2 = 0 OR n.read_at IS NULL) AND ($3 = '' OR n.id < $3) ",
            "ORDER BY n.id DESC LIMIT $4"
        );
        let rows = sqlx::query(SQL)
            .bind(user_id)
            .bind(i64::from(unread_only))
            .bind(range.after.as_deref().unwrap_or(""))
            .bind(range.limit)
            .fetch_all(&self.pool)
            .await?;
        let mut items: Vec<Notification> = records(&rows)?;
        let (Some(newest), Some(oldest)) = (items.first(), items.last()) else {
            return Ok(items);
        };
        // The page's deliveries in one query: its notifications are the
        // user's with ids between the page's first and last.
        let deliveries: Vec<Delivery> = records(
            &sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM notification_deliveries d JOIN notifications n ",
                "ON n.id = d.notification_id WHERE n.user_id = $1 AND n.id <= $2 AND n.id >= $3 ",
                "ORDER BY d.id"
            ))
            .bind(user_id)
            .bind(&newest.id)
            .bind(&oldest.id)
            .fetch_all(&self.pool)
            .await?,
        )?;
        for d in deliveries {
            if let Some(n) = items.iter_mut().find(|n| n.id == d.notification_id) {
                n.deliveries.push(d);
            }
        }
        Ok(items)
    }

    /// One notification with its deliveries.
    pub async fn get_notification(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            notification_columns!(),
            " FROM notifications n WHERE n.id = $1"
        );
        let Some(mut n) = self.find::<Notification>(SQL, id).await? else {
            return Ok(None);
        };
        const DELIVERIES: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM notification_deliveries d WHERE d.notification_id = $1 ORDER BY d.id"
        );
        let rows = sqlx::query(DELIVERIES)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        n.deliveries = records(&rows)?;
        Ok(Some(n))
    }

    /// Mark a user's notification read (kept as first read if already).
    pub async fn mark_notification_read(
        &self,
        user_id: &str,
        id: &str,
        at: Millis,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE notifications SET read_at = COALESCE(read_at, $3) \
             WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user_id)
        .bind(at);
        self.audited(query, Rows::One, audit).await
    }

    /// Send a notification's deliveries of `channel` again, whatever
    /// their status: pending from `now`, attempts from zero.
    pub async fn replay_deliveries(
        &self,
        notification_id: &str,
        channel: Channel,
        now: Millis,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE notification_deliveries SET status = $3, attempts = 0, next_attempt_at = $4, \
             last_error = NULL, delivered_at = NULL WHERE notification_id = $1 AND channel = $2",
        )
        .bind(notification_id)
        .bind(channel.as_str())
        .bind(DeliveryStatus::Pending.as_str())
        .bind(now);
        self.audited(query, Rows::Any, audit).await
    }

    pub async fn insert_webhook_endpoint(
        &self,
        e: &WebhookEndpoint,
        secret_sealed: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO webhook_endpoints (id, url, description, secret_sealed, created_at, \
             disabled_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&e.id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(secret_sealed)
        .bind(e.created_at)
        .bind(e.disabled_at);
        self.audited(query, Rows::Any, audit).await
    }

    pub async fn get_webhook_endpoint(
        &self,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        self.find(
            "SELECT id, url, description, created_at, disabled_at FROM webhook_endpoints \
             WHERE id = $1",
            id,
        )
        .await
    }

    pub async fn list_webhook_endpoints(
        &self,
        range: &Range,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        self.page(
            "SELECT id, url, description, created_at, disabled_at FROM webhook_endpoints \
             WHERE id > $1 ORDER BY id LIMIT $2",
            &[],
            range,
        )
        .await
    }

    /// Stop sending to an endpoint (its pending deliveries are skipped).
    pub async fn disable_webhook_endpoint(
        &self,
        id: &str,
        at: Millis,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        one_row(
            sqlx::query(
                "UPDATE webhook_endpoints SET disabled_at = COALESCE(disabled_at, $2) \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await?,
        )?;
        sqlx::query(
            "UPDATE notification_deliveries SET status = $2, last_error = $3 \
             WHERE endpoint_id = $1 AND status = $4",
        )
        .bind(id)
        .bind(DeliveryStatus::Skipped.as_str())
        .bind("endpoint disabled")
        .bind(DeliveryStatus::Pending.as_str())
        .execute(&mut *tx)
        .await?;
        super::audit::write(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ids of pending deliveries due at `now` with no live claim, oldest
    /// due first.
    pub async fn due_deliveries(&self, now: Millis, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM notification_deliveries WHERE status = $3 AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) ORDER BY next_attempt_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .bind(DeliveryStatus::Pending.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Claim a pending delivery until `until`; false if another worker
    /// has it or it is no longer pending.
    pub async fn claim_delivery(
        &self,
        id: &str,
        owner: &str,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        // One statement: of two workers running it at once, only one sees
        // a free (or expired) claim.
        let done = sqlx::query(
            "UPDATE notification_deliveries SET lease_owner = $2, lease_until = $4 \
             WHERE id = $1 AND status = $5 AND (lease_until IS NULL OR lease_until <= $3)",
        )
        .bind(id)
        .bind(owner)
        .bind(now)
        .bind(until)
        .bind(DeliveryStatus::Pending.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A delivery with its notification and where it goes.
    pub async fn delivery_job(&self, id: &str) -> Result<Option<DeliveryJob>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            ", u.email AS user_email, e.url AS endpoint_url, e.secret_sealed AS endpoint_secret \
             FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id \
             JOIN users u ON u.id = n.user_id \
             LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.disabled_at IS NULL \
             WHERE d.id = $1"
        );
        let Some(row) = sqlx::query(SQL).bind(id).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let delivery: Delivery = from_row(&row)?;
        let Some(notification) = self.get_notification(&delivery.notification_id).await? else {
            return Ok(None);
        };
        use sqlx::Row;
        let url: Option<String> = row.try_get("endpoint_url")?;
        let secret: Option<String> = row.try_get("endpoint_secret")?;
        Ok(Some(DeliveryJob {
            delivery,
            notification,
            email: row.try_get("user_email")?,
            endpoint: url.zip(secret),
        }))
    }

    /// Write an attempt's result and release the claim; false (nothing
    /// written) if the claim was lost meanwhile.
    pub async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        u: &DeliveryUpdate,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE notification_deliveries SET status = $3, attempts = $4, \
             next_attempt_at = $5, last_error = $6, delivered_at = $7, \
             lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(u.status.as_str())
        .bind(u.attempts)
        .bind(u.next_attempt_at)
        .bind(&u.last_error)
        .bind(u.delivered_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Per channel with pending deliveries: how many, and when the oldest
    /// was made.
    pub async fn outbox_depth(&self) -> Result<Vec<OutboxDepth>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT channel, CAST(COUNT(*) AS BIGINT), CAST(MIN(created_at) AS BIGINT) \
             FROM notification_deliveries WHERE status = $1 GROUP BY channel ORDER BY channel",
        )
        .bind(DeliveryStatus::Pending.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(channel, pending, oldest_created_at)| OutboxDepth {
                channel,
                pending,
                oldest_created_at,
            })
            .collect())
    }
}
