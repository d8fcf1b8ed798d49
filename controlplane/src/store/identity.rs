//! `clerk_events`: the identity provider's webhook deliveries handled, each
//! Svix message id once, and which Clerk users were deleted.

use super::{SqlStore, StoreError};
use crate::domain::Millis;

/// A handled Clerk webhook delivery, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct IdentityEvent<'a> {
    /// The `svix-id` header: one per message, the same on every retry.
    pub svix_id: &'a str,
    /// `user.created`, `user.updated`, `user.deleted`, ...
    pub kind: &'a str,
    /// The Clerk user the event is about, if any.
    pub clerk_id: Option<&'a str>,
    /// The Molt user it changed, if any.
    pub user_id: Option<&'a str>,
    /// Clerk's time of the change (Unix ms).
    pub event_at: Millis,
    pub received_at: Millis,
}

impl SqlStore {
    /// Whether a delivery with this Svix message id has been handled.
    pub async fn identity_event_seen(&self, svix_id: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT svix_id FROM clerk_events WHERE svix_id = $1")
                .bind(svix_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    /// Record a handled delivery; false if it was already recorded.
    pub async fn record_identity_event(&self, e: &IdentityEvent<'_>) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO clerk_events (svix_id, type, clerk_id, user_id, event_at, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (svix_id) DO NOTHING",
        )
        .bind(e.svix_id)
        .bind(e.kind)
        .bind(e.clerk_id)
        .bind(e.user_id)
        .bind(e.event_at)
        .bind(e.received_at)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Whether a `user.deleted` for this Clerk user has been handled.
    pub async fn identity_deleted(&self, clerk_id: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT svix_id FROM clerk_events WHERE clerk_id = $1 AND type = 'user.deleted' \
             LIMIT 1",
        )
        .bind(clerk_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }
}
