//! Client API keys: minted here, shown once, stored as their SHA-256;
//! revocation and expiry take them out of the next snapshot.

use super::{audit_entry, not_found, paginate, range, Operator, Service, ServiceError};
use crate::crypto::{new_api_key, sha256_hex};
use crate::domain::AuditEntry;
use crate::domain::{new_id, now_ms, ApiKey, Millis, Page, PageRequest};
use crate::store::{store_trait, Range, StoreError};
use molt_config::wire::RawKey;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How many characters of a key are kept for display (`molt_sk_` + 4).
const DISPLAY_PREFIX_LEN: usize = 12;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub user_id: String,
    pub name: Option<String>,
    /// Unix milliseconds after which the key stops working.
    pub expires_at: Option<Millis>,
    /// Models (names or aliases) the key may use; absent means all.
    pub models: Option<Vec<String>>,
}

/// A new key: `secret` is shown this once and never again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

store_trait! {
    /// Client keys, as the key services use them.
    pub trait KeyStore: Send + Sync {
        async fn insert_api_key(&self, key: &ApiKey, audit: &AuditEntry) -> Result<(), StoreError>;
        /// Set `revoked_at` on an unrevoked key; `NotFound` if there is none.
        async fn revoke_api_key(
            &self,
            id: &str,
            at: Millis,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
        async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
        /// A page of keys, of one user's only when `user_id` is given.
        async fn list_api_keys(
            &self,
            user_id: Option<&str>,
            range: &Range,
        ) -> Result<Vec<ApiKey>, StoreError>;
    }
}

// === impl Service ===

impl Service {
    pub async fn create_key(
        &self,
        op: &Operator,
        req: CreateKey,
    ) -> Result<CreatedKey, ServiceError> {
        op.require_admin()?;
        let now = now_ms();
        if req.expires_at.is_some_and(|at| at <= now) {
            return Err(ServiceError::Invalid(
                "expires_at must be in the future".into(),
            ));
        }
        let name = req.name.unwrap_or_default();
        if name.len() > 200 {
            return Err(ServiceError::Invalid(
                "name must be at most 200 characters".into(),
            ));
        }
        let secret = new_api_key();
        let key = ApiKey {
            id: new_id("key"),
            user_id: req.user_id,
            name,
            prefix: secret.chars().take(DISPLAY_PREFIX_LEN).collect(),
            models: req.models,
            expires_at: req.expires_at,
            revoked_at: None,
            created_at: now,
            sha256: sha256_hex(&secret),
        };
        let write = self.write_lock.lock().await;
        if self.store.get_user(&key.user_id).await?.is_none() {
            return Err(not_found("user", &key.user_id));
        }
        // An allowlist naming an unknown model would make the data plane
        // reject the whole snapshot, so check it as the data plane would.
        self.publisher
            .check(|snap| {
                snap.keys.push(RawKey {
                    id: key.id.clone(),
                    user: key.user_id.clone(),
                    sha256: key.sha256.clone(),
                    models: key.models.clone(),
                })
            })
            .await?;
        let audit = audit_entry(op, "key.create", &key.id, None, Some(&key));
        self.store.insert_api_key(&key, &audit).await?;
        drop(write);
        self.refresh_snapshot().await;
        Ok(CreatedKey { key, secret })
    }

    pub async fn get_key(&self, _op: &Operator, id: &str) -> Result<ApiKey, ServiceError> {
        self.store
            .get_api_key(id)
            .await?
            .ok_or_else(|| not_found("key", id))
    }

    pub async fn list_keys(
        &self,
        _op: &Operator,
        user_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<ApiKey>, ServiceError> {
        let items = self.store.list_api_keys(user_id, &range(page)?).await?;
        Ok(paginate(items, page, |k| k.id.clone()))
    }

    /// Revoke a key; revoking a revoked key is a conflict, not a no-op, so
    /// the audit log never records a revocation that changed nothing.
    pub async fn revoke_key(&self, op: &Operator, id: &str) -> Result<ApiKey, ServiceError> {
        op.require_admin()?;
        let write = self.write_lock.lock().await;
        let before = self.get_key(op, id).await?;
        if before.revoked_at.is_some() {
            return Err(ServiceError::Conflict(format!(
                "key {id:?} is already revoked"
            )));
        }
        let at = now_ms();
        let mut after = before.clone();
        after.revoked_at = Some(at);
        let audit = audit_entry(op, "key.revoke", id, Some(&before), Some(&after));
        self.store.revoke_api_key(id, at, &audit).await?;
        drop(write);
        self.refresh_snapshot().await;
        Ok(after)
    }

    /// Revoke every unrevoked key of `user_id` (each audited as
    /// `key.revoke`); returns how many. One revoked meanwhile is skipped.
    pub async fn revoke_user_keys(
        &self,
        op: &Operator,
        user_id: &str,
    ) -> Result<u32, ServiceError> {
        let mut page = PageRequest {
            cursor: None,
            limit: super::MAX_PAGE,
        };
        let mut revoked = 0;
        loop {
            let keys = self.list_keys(op, Some(user_id), &page).await?;
            for key in keys.items.iter().filter(|k| k.revoked_at.is_none()) {
                match self.revoke_key(op, &key.id).await {
                    Ok(_) => revoked += 1,
                    Err(ServiceError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            match keys.next_cursor {
                Some(cursor) => page.cursor = Some(cursor),
                None => return Ok(revoked),
            }
        }
    }
}
