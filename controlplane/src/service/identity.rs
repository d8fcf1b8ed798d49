//! Users kept in step with the identity provider (Clerk): its user
//! created or updated makes or updates a Molt user (linked by the Clerk user
//! id, `users.clerk_id`), its user deleted deactivates one (status
//! `deactivated`, keys revoked, bots stopped). Every change is audited as
//! the operator that made it (the webhook's) and refreshes the snapshot,
//! whose `auth.jwks.users` maps Clerk ids to the active users.
//!
//! Order: each change carries Clerk's time for it (`updated_at`, or the
//! event's time), and a user remembers the time of the last one applied
//! (`clerk_updated_at`); a change no newer than that does nothing, so
//! deliveries may arrive in any order. That a deleted Clerk user stays
//! deleted, even against a later-arriving create, is the webhook's
//! record ([`crate::identity`]), checked before these are called.

use super::users::{normalise_email, user_write_error};
use super::{audit_entry, Operator, Service, ServiceError};
use crate::domain::{new_id, now_ms, LimitOverrides, Millis, User, UserStatus};
use crate::store::{store_trait, StoreError};

store_trait! {
    /// Users by the identity provider's keys.
    pub trait IdentityStore: Send + Sync {
        async fn user_by_clerk_id(&self, clerk_id: &str) -> Result<Option<User>, StoreError>;
        async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    }
}

/// A user as the identity provider describes it at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityUser {
    pub clerk_id: String,
    /// The primary email address, if the user has one.
    pub email: Option<String>,
    /// Clerk's time of this state (Unix ms).
    pub at: Millis,
}

/// What an identity change came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityOutcome {
    /// A new Molt user was made.
    Created,
    /// An existing Molt user (same email, not linked) was linked.
    Linked,
    /// The linked user was updated (or already matched).
    Updated,
    /// The linked user was deactivated (or its deactivation completed).
    Deactivated,
    /// Older than what the user already reflects: nothing changed.
    Stale,
    /// Nothing to act on (no email to make a user with, no such user).
    Ignored,
}

impl IdentityOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Linked => "linked",
            Self::Updated => "updated",
            Self::Deactivated => "deactivated",
            Self::Stale => "stale",
            Self::Ignored => "ignored",
        }
    }
}

// === impl Service ===

impl Service {
    /// The user linked to a Clerk user id, if any.
    pub async fn user_by_clerk_id(
        &self,
        _op: &Operator,
        clerk_id: &str,
    ) -> Result<Option<User>, ServiceError> {
        Ok(self.store.user_by_clerk_id(clerk_id).await?)
    }

    /// A Clerk user created or updated: make, link or update the Molt user.
    /// An email another linked user has is a conflict.
    pub async fn identity_upsert(
        &self,
        op: &Operator,
        who: &IdentityUser,
    ) -> Result<IdentityOutcome, ServiceError> {
        op.require_admin()?;
        let email = who.email.as_deref().map(normalise_email).transpose()?;
        let write = self.write_lock.lock().await;
        let outcome = match self.store.user_by_clerk_id(&who.clerk_id).await? {
            Some(user) => self.identity_update(op, user, email, who.at).await?,
            None => {
                let Some(email) = email else {
                    // A user without an email address (phone sign-in):
                    // nothing to make a Molt user from yet.
                    return Ok(IdentityOutcome::Ignored);
                };
                match self.store.user_by_email(&email).await? {
                    Some(user) => self.identity_link(op, user, who).await?,
                    None => {
                        let user = new_identity_user(who, email);
                        self.store_new_user(op, &user).await?;
                        IdentityOutcome::Created
                    }
                }
            }
        };
        drop(write);
        if matches!(outcome, IdentityOutcome::Created | IdentityOutcome::Linked) {
            // The snapshot maps the new Clerk id to its user.
            self.refresh_snapshot().await;
        }
        Ok(outcome)
    }

    /// A Clerk user deleted: deactivate the linked user, revoke their keys
    /// and stop their bots. Safe to repeat: a deactivated user's remaining
    /// keys and bots are still revoked and stopped (a crash between the
    /// steps is finished by the redelivery).
    pub async fn identity_delete(
        &self,
        op: &Operator,
        clerk_id: &str,
        at: Millis,
    ) -> Result<IdentityOutcome, ServiceError> {
        op.require_admin()?;
        let write = self.write_lock.lock().await;
        let Some(before) = self.store.user_by_clerk_id(clerk_id).await? else {
            return Ok(IdentityOutcome::Ignored);
        };
        let changed = before.status != UserStatus::Deactivated;
        if changed {
            let mut after = before.clone();
            after.status = UserStatus::Deactivated;
            after.clerk_updated_at = Some(before.clerk_updated_at.unwrap_or(0).max(at));
            after.updated_at = now_ms();
            let audit = audit_entry(
                op,
                "user.deactivate",
                &before.id,
                Some(&before),
                Some(&after),
            );
            self.store
                .update_user(&after, &audit)
                .await
                .map_err(|e| user_write_error(e, &after))?;
        }
        drop(write);
        if changed {
            // Out of the snapshot's keys, users map and bots at once.
            self.refresh_snapshot().await;
        }
        self.revoke_user_keys(op, &before.id).await?;
        self.stop_user_bots(op, &before.id).await?;
        Ok(IdentityOutcome::Deactivated)
    }

    /// The linked `user`'s email as of `at`, unless it already reflects a
    /// later change.
    async fn identity_update(
        &self,
        op: &Operator,
        user: User,
        email: Option<String>,
        at: Millis,
    ) -> Result<IdentityOutcome, ServiceError> {
        if user.status == UserStatus::Deactivated || user.clerk_updated_at.is_some_and(|t| t >= at)
        {
            return Ok(IdentityOutcome::Stale);
        }
        let mut after = user.clone();
        if let Some(email) = email {
            after.email = email;
        }
        after.clerk_updated_at = Some(at);
        after.updated_at = now_ms();
        let audit = audit_entry(op, "user.update", &user.id, Some(&user), Some(&after));
        self.store
            .update_user(&after, &audit)
            .await
            .map_err(|e| user_write_error(e, &after))?;
        Ok(IdentityOutcome::Updated)
    }

    /// Link an existing user with `who`'s email to `who`'s Clerk id (a user
    /// an operator made before sign-in went through Clerk).
    async fn identity_link(
        &self,
        op: &Operator,
        user: User,
        who: &IdentityUser,
    ) -> Result<IdentityOutcome, ServiceError> {
        if let Some(other) = &user.clerk_id {
            return Err(ServiceError::Conflict(format!(
                "user {:?} with email {:?} is linked to another Clerk user ({other:?})",
                user.id, user.email
            )));
        }
        let mut after = user.clone();
        after.clerk_id = Some(who.clerk_id.clone());
        after.clerk_updated_at = Some(who.at);
        after.updated_at = now_ms();
        let audit = audit_entry(op, "user.link", &user.id, Some(&user), Some(&after));
        self.store
            .update_user(&after, &audit)
            .await
            .map_err(|e| user_write_error(e, &after))?;
        Ok(IdentityOutcome::Linked)
    }
}

/// A new active user on the deployment defaults, linked to `who`.
fn new_identity_user(who: &IdentityUser, email: String) -> User {
    let now = now_ms();
    User {
        id: new_id("usr"),
        email,
        status: UserStatus::Active,
        plan: None,
        stripe_customer_id: None,
        limits: LimitOverrides::default(),
        clerk_id: Some(who.clerk_id.clone()),
        clerk_updated_at: Some(who.at),
        created_at: now,
        updated_at: now,
    }
}
