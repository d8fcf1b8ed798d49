//! Providers: upstreams and their master keys. Master keys go in through
//! create and update, are sealed with the at-rest cipher before they touch
//! the store, and come out only in the snapshot served to data planes;
//! every read here returns [`Provider`], which cannot hold them.

use super::{audit_entry, not_found, paginate, range, Operator, Service, ServiceError};
use crate::domain::AuditEntry;
use crate::domain::{new_id, now_ms, Page, PageRequest, Provider, ProviderKind, SealedProvider};
use crate::snapshot::seal_keys;
use crate::store::{store_trait, Range, StoreError};
use molt_config::wire::RawProvider;
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    /// Unique; models refer to the provider by this name.
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// Master keys (at least one). Write-only.
    pub keys: Vec<String>,
}

/// Fields to change; `keys`, when present, replaces every master key.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateProvider {
    pub base_url: Option<String>,
    pub keys: Option<Vec<String>>,
}

// Hand-written so a request that holds master keys never prints them.
impl std::fmt::Debug for CreateProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateProvider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .finish()
    }
}

impl std::fmt::Debug for UpdateProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateProvider")
            .field("base_url", &self.base_url)
            .field(
                "keys",
                &self
                    .keys
                    .as_ref()
                    .map(|k| format!("[{} redacted]", k.len())),
            )
            .finish()
    }
}

fn raw(p: &Provider, keys: &[String]) -> RawProvider {
    RawProvider {
        name: p.name.clone(),
        kind: p.kind.as_str().to_owned(),
        base_url: p.base_url.clone(),
        keys: keys.to_vec(),
        keys_env: Vec::new(),
        anthropic_version: None,
    }
}

fn key_count(keys: &[String]) -> i64 {
    i64::try_from(keys.len()).unwrap_or(i64::MAX)
}

/// The audit diff marks a key change without showing any key.
fn redacted_keys_change(audit: &mut crate::domain::AuditEntry) {
    if let Some(diff) = audit.diff.as_object_mut() {
        diff.insert(
            "keys".into(),
            serde_json::json!({"from": "[redacted]", "to": "[redacted]"}),
        );
    }
}

store_trait! {
    /// Providers (master keys sealed), as the provider services use them.
    pub trait ProviderStore: Send + Sync {
        async fn insert_provider(
            &self,
            provider: &SealedProvider,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
        async fn update_provider(
            &self,
            provider: &SealedProvider,
            audit: &AuditEntry,
        ) -> Result<(), StoreError>;
        /// By id or by name.
        async fn get_provider(&self, id_or_name: &str) -> Result<Option<SealedProvider>, StoreError>;
        async fn list_providers(&self, range: &Range) -> Result<Vec<SealedProvider>, StoreError>;
    }
}

// === impl Service ===

impl Service {
    pub async fn create_provider(
        &self,
        op: &Operator,
        req: CreateProvider,
    ) -> Result<Provider, ServiceError> {
        op.require_admin()?;
        let now = now_ms();
        let provider = Provider {
            id: new_id("prv"),
            name: req.name.trim().to_owned(),
            kind: req.kind,
            base_url: req.base_url.trim().to_owned(),
            key_count: key_count(&req.keys),
            created_at: now,
            updated_at: now,
        };
        let write = self.write_lock.lock().await;
        if self.store.get_provider(&provider.name).await?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "a provider named {:?} exists",
                provider.name
            )));
        }
        self.publisher
            .check(|snap| snap.providers.push(raw(&provider, &req.keys)))
            .await?;
        let sealed = SealedProvider {
            keys_sealed: seal_keys(&self.settings.cipher, &provider.id, &req.keys)?,
            provider,
        };
        let audit = audit_entry(
            op,
            "provider.create",
            &sealed.provider.id,
            None,
            Some(&sealed.provider),
        );
        self.store.insert_provider(&sealed, &audit).await?;
        drop(write);
        self.refresh_snapshot().await;
        Ok(sealed.provider)
    }

    pub async fn get_provider(&self, _op: &Operator, id: &str) -> Result<Provider, ServiceError> {
        self.store
            .get_provider(id)
            .await?
            .map(|p| p.provider)
            .ok_or_else(|| not_found("provider", id))
    }

    pub async fn list_providers(
        &self,
        _op: &Operator,
        page: &PageRequest,
    ) -> Result<Page<Provider>, ServiceError> {
        let items = self.store.list_providers(&range(page)?).await?;
        let items = items.into_iter().map(|p| p.provider).collect();
        Ok(paginate(items, page, |p: &Provider| p.id.clone()))
    }

    pub async fn update_provider(
        &self,
        op: &Operator,
        id: &str,
        req: UpdateProvider,
    ) -> Result<Provider, ServiceError> {
        op.require_admin()?;
        let write = self.write_lock.lock().await;
        let before = self
            .store
            .get_provider(id)
            .await?
            .ok_or_else(|| not_found("provider", id))?;
        let keys_replaced = req.keys.is_some();
        let keys = match req.keys {
            Some(keys) => keys,
            None => crate::snapshot::open_keys(&self.settings.cipher, &before)?,
        };
        let mut after = before.provider.clone();
        if let Some(url) = req.base_url {
            after.base_url = url.trim().to_owned();
        }
        after.key_count = key_count(&keys);
        after.updated_at = now_ms();
        self.publisher
            .check(|snap| {
                if let Some(p) = snap.providers.iter_mut().find(|p| p.name == after.name) {
                    *p = raw(&after, &keys);
                }
            })
            .await?;
        let sealed = SealedProvider {
            keys_sealed: seal_keys(&self.settings.cipher, &after.id, &keys)?,
            provider: after,
        };
        let mut audit = audit_entry(
            op,
            "provider.update",
            &before.provider.id,
            Some(&before.provider),
            Some(&sealed.provider),
        );
        if keys_replaced {
            redacted_keys_change(&mut audit);
        }
        self.store.update_provider(&sealed, &audit).await?;
        drop(write);
        self.refresh_snapshot().await;
        Ok(sealed.provider)
    }
}
