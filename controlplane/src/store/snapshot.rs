//! What a config snapshot is compiled from, read from every table it
//! needs in one transaction (each table's query is its owner's).

use super::{config, keys, models, plans, prices, providers, users, SqlStore, StoreError};
use crate::domain::{ApiKey, LimitOverrides, Millis, Model, Plan, PriceVersion, SealedProvider};
use molt_config::wire::RawLimits;

/// Everything a config snapshot is compiled from, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct SnapshotSource {
    /// Unrevoked, unexpired keys of active users, by id.
    pub keys: Vec<ApiKey>,
    pub providers: Vec<SealedProvider>,
    pub models: Vec<Model>,
    /// The price version in force now of each model that has one.
    pub prices: Vec<PriceVersion>,
    /// The deployment-wide limits document.
    pub limits: RawLimits,
    /// Every plan, by id.
    pub plans: Vec<Plan>,
    /// The users on a plan or with overrides of their own, by id.
    pub user_limits: Vec<UserLimits>,
    /// `(clerk_id, user_id)` of active users linked to the identity
    /// provider, by Clerk id.
    pub identities: Vec<(String, String)>,
}

impl SnapshotSource {
    /// Replace (or add) one user's entry: what the snapshot would hold if
    /// that user's plan and overrides were `u`.
    pub fn set_user_limits(&mut self, u: UserLimits) {
        self.user_limits.retain(|e| e.user_id != u.user_id);
        self.user_limits.push(u);
    }
}

/// What a user's limits are compiled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLimits {
    pub user_id: String,
    /// The plan's name.
    pub plan: Option<String>,
    pub overrides: LimitOverrides,
}

impl SqlStore {
    /// Everything the config snapshot needs, as of `now`.
    pub async fn snapshot_source(&self, now: Millis) -> Result<SnapshotSource, StoreError> {
        let mut tx = self.pool.begin().await?;
        let keys = keys::live(&mut tx, now).await?;
        let providers = providers::all(&mut tx).await?;
        let models = models::all(&mut tx).await?;
        let prices = prices::in_force(&mut tx, now).await?;
        let limits = config::limits(&mut tx).await?;
        let plans = plans::all(&mut tx).await?;
        let user_limits = users::limited(&mut tx).await?;
        let identities = users::identities(&mut tx).await?;
        tx.commit().await?;
        Ok(SnapshotSource {
            keys,
            providers,
            models,
            prices,
            limits,
            plans,
            user_limits,
            identities,
        })
    }
}
