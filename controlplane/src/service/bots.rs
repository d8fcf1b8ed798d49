//! Bots: the operator's wishes (create, stop, start, retry, delete) as
//! audited changes of a bot's desired state. The provisioning worker
//! ([`crate::provision::Worker`]) does the work; nothing here calls a fleet.
//!
//! The gateway token is made here (32 random bytes, hex, as the seed does),
//! sealed bound to the bot's id, and never returned: data planes get it in
//! the snapshot, the bot in its machine's environment.

use super::{audit_entry, not_found, paginate, range, Operator, Service, ServiceError};
use crate::domain::AuditEntry;
use crate::domain::{new_id, now_ms, Page, PageRequest};
use crate::provision::{bot_name, Bot, BotRecord, BotStatus, Desired};
use crate::store::{store_trait, Range, StoreError, WishChange};
use rand::RngCore;
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBot {
    pub user_id: String,
    /// Fly region; absent means the fleet's default.
    pub region: Option<String>,
    /// Primary model; absent means the provisioner's default.
    pub model: Option<String>,
}

/// An operator action on an existing bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotAction {
    Stop,
    Start,
    Retry,
    Delete,
}

impl BotAction {
    fn audit_name(self) -> &'static str {
        match self {
            Self::Stop => "bot.stop",
            Self::Start => "bot.start",
            Self::Retry => "bot.retry",
            Self::Delete => "bot.delete",
        }
    }

    /// The change this action makes to a bot in `status` wanting
    /// `desired`: `Ok(None)` when there is nothing to do (already so).
    fn plan(
        self,
        status: BotStatus,
        desired: Desired,
    ) -> Result<Option<(BotStatus, Desired)>, ServiceError> {
        use BotStatus as S;
        let gone = matches!(status, S::Deleting | S::Deleted);
        match self {
            Self::Delete if gone => Ok(None),
            Self::Delete => Ok(Some((S::Deleting, Desired::Deleted))),
            _ if gone => Err(ServiceError::Conflict(format!(
                "the bot is {}",
                status.as_str()
            ))),
            Self::Stop if matches!(status, S::Stopping | S::Stopped) => Ok(None),
            Self::Stop => Ok(Some((S::Stopping, Desired::Stopped))),
            Self::Start if desired == Desired::Running && status != S::Failed => Ok(None),
            Self::Start => Ok(Some((S::Starting, Desired::Running))),
            Self::Retry if status == S::Failed => Ok(Some((desired.first_step(), desired))),
            Self::Retry => Err(ServiceError::Conflict(format!(
                "only a failed bot can be retried; this one is {}",
                status.as_str()
            ))),
        }
    }
}

/// 64 hex characters of 32 random bytes.
fn new_gateway_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

store_trait! {
    /// Bots, as the bot services use them (the worker's slice is
    /// [`crate::provision::WorkerStore`]).
    pub trait BotWishStore: Send + Sync {
        async fn insert_bot(&self, bot: &BotRecord, audit: &AuditEntry) -> Result<(), StoreError>;
        async fn get_bot(&self, id: &str) -> Result<Option<BotRecord>, StoreError>;
        /// A page of bots, of one user's only when `user_id` is given.
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
    }
}

// === impl Service ===

impl Service {
    pub async fn create_bot(&self, op: &Operator, req: CreateBot) -> Result<Bot, ServiceError> {
        op.require_admin()?;
        for (field, v) in [("region", &req.region), ("model", &req.model)] {
            if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 200) {
                return Err(ServiceError::Invalid(format!(
                    "{field} must be 1 to 200 characters"
                )));
            }
        }
        let now = now_ms();
        let id = new_id("bot");
        let token_sealed = self
            .settings
            .cipher
            .seal(new_gateway_token().as_bytes(), &id)?;
        let rec = BotRecord {
            bot: Bot {
                name: bot_name(&id),
                id,
                user_id: req.user_id,
                status: BotStatus::Requested,
                desired: Desired::Running,
                region: req.region,
                model: req.model,
                volume_id: None,
                machine_id: None,
                gateway_url: None,
                error: None,
                attempts: 0,
                created_at: now,
                updated_at: now,
            },
            token_sealed,
            next_attempt_at: now,
            step_started_at: now,
        };
        let _write = self.write_lock.lock().await;
        if self.store.get_user(&rec.bot.user_id).await?.is_none() {
            return Err(not_found("user", &rec.bot.user_id));
        }
        let audit = audit_entry(op, "bot.create", &rec.bot.id, None, Some(&rec.bot));
        match self.store.insert_bot(&rec, &audit).await {
            Err(StoreError::Duplicate) => Err(ServiceError::Conflict(format!(
                "user {:?} already has a bot; delete it first",
                rec.bot.user_id
            ))),
            other => other.map_err(ServiceError::from),
        }?;
        Ok(rec.bot)
    }

    pub async fn get_bot(&self, _op: &Operator, id: &str) -> Result<Bot, ServiceError> {
        self.store
            .get_bot(id)
            .await?
            .map(|r| r.bot)
            .ok_or_else(|| not_found("bot", id))
    }

    pub async fn list_bots(
        &self,
        _op: &Operator,
        user_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<Bot>, ServiceError> {
        let range = range(page)?;
        let items = self
            .store
            .list_bots(user_id, &range)
            .await?
            .into_iter()
            .map(|r| r.bot)
            .collect();
        Ok(paginate(items, page, |b: &Bot| b.id.clone()))
    }

    /// A user's bots that are not deleted (or being deleted).
    pub async fn live_bots(&self, op: &Operator, user_id: &str) -> Result<Vec<Bot>, ServiceError> {
        let page = PageRequest {
            cursor: None,
            limit: super::MAX_PAGE,
        };
        Ok(self
            .list_bots(op, Some(user_id), &page)
            .await?
            .items
            .into_iter()
            .filter(|b| !matches!(b.status, BotStatus::Deleting | BotStatus::Deleted))
            .collect())
    }

    /// Stop every live bot of `user_id` (each audited as `bot.stop`; one
    /// that changed meanwhile is skipped).
    pub async fn stop_user_bots(&self, op: &Operator, user_id: &str) -> Result<(), ServiceError> {
        for b in self.live_bots(op, user_id).await? {
            match self.bot_action(op, &b.id, BotAction::Stop).await {
                Ok(_) | Err(ServiceError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Stop, start, retry or delete: record the wish; the worker acts.
    pub async fn bot_action(
        &self,
        op: &Operator,
        id: &str,
        action: BotAction,
    ) -> Result<Bot, ServiceError> {
        op.require_admin()?;
        let before = {
            let _write = self.write_lock.lock().await;
            let before = self
                .store
                .get_bot(id)
                .await?
                .ok_or_else(|| not_found("bot", id))?
                .bot;
            let Some((status, desired)) = action.plan(before.status, before.desired)? else {
                return Ok(before);
            };
            let now = now_ms();
            let after = Bot {
                status,
                desired,
                error: None,
                attempts: 0,
                updated_at: now,
                ..before.clone()
            };
            let change = WishChange {
                from: before.status,
                status,
                desired,
                at: now,
            };
            let audit = audit_entry(op, action.audit_name(), id, Some(&before), Some(&after));
            match self.store.change_wish(id, &change, &audit).await {
                // The worker moved it between our read and write.
                Err(StoreError::NotFound) => {
                    return Err(ServiceError::Conflict(
                        "the bot changed meanwhile; try again".into(),
                    ))
                }
                other => other?,
            }
            before
        };
        // Leaving `running` takes the bot out of the data planes' config.
        if before.status == BotStatus::Running {
            self.refresh_snapshot().await;
        }
        self.get_bot(op, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_plan_the_expected_moves() {
        use BotStatus as S;
        let plan = |a: BotAction, s, d| a.plan(s, d).ok().flatten();
        assert_eq!(
            plan(BotAction::Stop, S::Running, Desired::Running),
            Some((S::Stopping, Desired::Stopped))
        );
        assert_eq!(plan(BotAction::Stop, S::Stopped, Desired::Stopped), None);
        assert_eq!(
            plan(BotAction::Start, S::Stopped, Desired::Stopped),
            Some((S::Starting, Desired::Running))
        );
        assert_eq!(
            plan(BotAction::Retry, S::Failed, Desired::Running),
            Some((S::Requested, Desired::Running))
        );
        assert!(BotAction::Retry.plan(S::Running, Desired::Running).is_err());
        assert!(BotAction::Start.plan(S::Deleted, Desired::Deleted).is_err());
        assert_eq!(
            plan(BotAction::Delete, S::Failed, Desired::Running),
            Some((S::Deleting, Desired::Deleted))
        );
    }

    #[test]
    fn gateway_tokens_are_32_random_bytes_in_hex() {
        let t = new_gateway_token();
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(new_gateway_token(), t);
    }
}
