//! The deployment-wide `[limits]` document the data planes enforce
//! (defaults, per-user, per-model and per-provider limits, anomaly
//! detection). Plans (`service::plans`) and users' own overrides are
//! layered over it when the snapshot is compiled.
//!
//! A new document is validated by the data plane's own code through a
//! compiled snapshot before it is stored; `redis` is refused, as each data
//! plane keeps its own.

use super::{audit_entry, Operator, Service, ServiceError};
use crate::domain::now_ms;
use crate::domain::{AuditEntry, Millis};
use crate::store::{store_trait, StoreError};
use molt_config::wire::RawLimits;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The `[limits]` section of the data plane's config
/// (`molt_config::limits::RawLimits`) as JSON, without `redis` (refused
/// here: each data plane sets its own): top-level limits are every user's
/// defaults; `users`, `models` and `providers` refine them; `anomaly` tunes
/// anomaly detection. Durations are written as `"30s"`, `"1h"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct LimitsDocument(pub RawLimits);

store_trait! {
    /// The limits document, as the limits service uses it.
    pub trait LimitsStore: Send + Sync {
        async fn get_limits(&self) -> Result<RawLimits, StoreError>;
        /// Replace the document.
        async fn set_limits(
            &self,
            limits: &RawLimits,
            at: Millis,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
    }
}

// === impl Service ===

impl Service {
    pub async fn get_limits(&self, _op: &Operator) -> Result<LimitsDocument, ServiceError> {
        Ok(LimitsDocument(self.store.get_limits().await?))
    }

    /// Replace the limits document, if the data plane would accept it.
    pub async fn set_limits(
        &self,
        op: &Operator,
        doc: LimitsDocument,
    ) -> Result<LimitsDocument, ServiceError> {
        op.require_admin()?;
        let after = doc.0;
        if after.redis.is_some() {
            return Err(ServiceError::Invalid(
                "limits.redis: is set in each data plane's own config file, not here".into(),
            ));
        }
        let write = self.write_lock.lock().await;
        let before = self.store.get_limits().await?;
        let checked = after.clone();
        self.publisher
            .check_source(|src| src.limits = checked)
            .await?;
        let audit = audit_entry(op, "limits.update", "limits", Some(&before), Some(&after));
        self.store.set_limits(&after, now_ms(), &audit).await?;
        drop(write);
        self.refresh_snapshot().await;
        Ok(LimitsDocument(after))
    }
}
