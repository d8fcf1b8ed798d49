//! [`NotifyStore`]: what the delivery worker needs from storage (the SQL
//! is `store::notifications`).

use crate::domain::Millis;
use crate::store::{store_trait, StoreError};
pub use crate::store::{DeliveryJob, DeliveryUpdate, OutboxDepth};

store_trait! {
    /// The outbox as the delivery worker uses it.
    pub trait NotifyStore: std::fmt::Debug + Send + Sync {
        /// Ids of pending deliveries due at `now` with no live claim.
        async fn due_deliveries(&self, now: Millis, limit: i64) -> Result<Vec<String>, StoreError>;
        /// Claim a pending delivery until `until`; false if another worker
        /// has it or it is no longer pending.
        async fn claim_delivery(
            &self,
            id: &str,
            owner: &str,
            now: Millis,
            until: Millis,
        ) -> Result<bool, StoreError>;
        /// A delivery with its notification and where it goes.
        async fn delivery_job(&self, id: &str) -> Result<Option<DeliveryJob>, StoreError>;
        /// Write an attempt's result and release the claim; false if the
        /// claim was lost meanwhile.
        async fn finish_delivery(
            &self,
            id: &str,
            owner: &str,
            update: &DeliveryUpdate,
        ) -> Result<bool, StoreError>;
        /// Per channel with pending deliveries: how many, and the oldest's
        /// creation time.
        async fn outbox_depth(&self) -> Result<Vec<OutboxDepth>, StoreError>;
    }
}
