//! [`WorkerStore`]: what the provisioning worker needs from storage, and
//! its implementation by the store (`store::bots` holds the SQL).
//!
//! Claims are the concurrency control: [`WorkerStore::claim_bot`] succeeds
//! for one worker only, and [`WorkerStore::record_step`] writes a step's
//! result only while the claim is still the writer's and the bot is still
//! in the state the step began in.

use crate::domain::{BotRecord, BotStatus, Millis};
pub use crate::store::StepUpdate;
use crate::store::{store_trait, StoreError};

store_trait! {
    /// The bots table as the worker uses it.
    pub trait WorkerStore: std::fmt::Debug + Send + Sync {
        async fn get_bot(&self, id: &str) -> Result<Option<BotRecord>, StoreError>;
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
        /// Per status: how many bots, and when the oldest current step of
        /// one of them started (Unix ms).
        async fn count_bots(&self) -> Result<Vec<(String, i64, Millis)>, StoreError>;
    }
}
