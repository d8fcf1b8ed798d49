//! Models: the names clients ask for, the provider that serves each, its
//! aliases, fallbacks and prices. Every change is checked against the
//! compiled snapshot first, so references (provider, fallbacks, key
//! allowlists) are validated by the same code the data plane runs.

use super::{audit_entry, not_found, paginate, range, Operator, Service, ServiceError};
use crate::domain::AuditEntry;
use crate::domain::{new_id, now_ms, Model, Page, PageRequest};
use crate::store::{store_trait, Range, StoreError};
use molt_config::wire::RawModel;
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    pub name: String,
    /// Provider name.
    pub provider: String,
    pub upstream_name: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// USD per million input tokens.
    #[serde(default)]
    pub input_price_per_mtok: f64,
    /// USD per million output tokens.
    #[serde(default)]
    pub output_price_per_mtok: f64,
}

/// Fields to change; absent fields stay. The name cannot change (keys and
/// usage refer to it); create a new model and alias the old name instead.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModel {
    pub provider: Option<String>,
    pub upstream_name: Option<String>,
    pub aliases: Option<Vec<String>>,
    pub fallbacks: Option<Vec<String>>,
    pub input_price_per_mtok: Option<f64>,
    pub output_price_per_mtok: Option<f64>,
}

fn raw(m: &Model) -> RawModel {
    RawModel {
        name: m.name.clone(),
        provider: m.provider.clone(),
        upstream_name: m.upstream_name.clone(),
        aliases: m.aliases.clone(),
        fallbacks: m.fallbacks.clone(),
        price: None,
    }
}

fn check_price(field: &str, price: f64) -> Result<f64, ServiceError> {
    if price.is_finite() && price >= 0.0 {
        Ok(price)
    } else {
        Err(ServiceError::Invalid(format!(
            "{field} must be a non-negative number"
        )))
    }
}

store_trait! {
    /// Models, as the model and usage services use them.
    pub trait ModelStore: Send + Sync {
        async fn insert_model(&self, model: &Model, audit: &AuditEntry) -> Result<(), StoreError>;
        async fn update_model(&self, model: &Model, audit: &AuditEntry) -> Result<(), StoreError>;
        async fn delete_model(&self, id: &str, audit: &AuditEntry) -> Result<(), StoreError>;
        /// By id or by name.
        async fn get_model(&self, id_or_name: &str) -> Result<Option<Model>, StoreError>;
        async fn list_models(&self, range: &Range) -> Result<Vec<Model>, StoreError>;
    }
}

// === impl Service ===

impl Service {
    pub async fn create_model(
        &self,
        op: &Operator,
        req: CreateModel,
    ) -> Result<Model, ServiceError> {
        op.require_admin()?;
        let now = now_ms();
        let model = Model {
            id: new_id("mdl"),
            name: req.name.trim().to_owned(),
            provider: req.provider,
            upstream_name: req.upstream_name,
            aliases: req.aliases,
            fallbacks: req.fallbacks,
            input_price_per_mtok: check_price("input_price_per_mtok", req.input_price_per_mtok)?,
            output_price_per_mtok: check_price("output_price_per_mtok", req.output_price_per_mtok)?,
            created_at: now,
            updated_at: now,
        };
        let write = self.write_lock.lock().await;
        if self.store.get_model(&model.name).await?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "a model named {:?} exists",
                model.name
            )));
        }
        self.publisher
            .check(|snap| snap.models.push(raw(&model)))
            .await?;
        let audit = audit_entry(op, "model.create", &model.id, None, Some(&model));
        self.store.insert_model(&model, &audit).await?;
        drop(write);
        self.refresh_snapshot().await;
        Ok(model)
    }

    pub async fn get_model(&self, _op: &Operator, id: &str) -> Result<Model, ServiceError> {
        self.store
            .get_model(id)
            .await?
            .ok_or_else(|| not_found("model", id))
    }

    pub async fn list_models(
        &self,
        _op: &Operator,
        page: &PageRequest,
    ) -> Result<Page<Model>, ServiceError> {
        let items = self.store.list_models(&range(page)?).await?;
        Ok(paginate(items, page, |m| m.id.clone()))
    }

    pub async fn update_model(
        &self,
        op: &Operator,
        id: &str,
        req: UpdateModel,
    ) -> Result<Model, ServiceError> {
        op.require_admin()?;
        let write = self.write_lock.lock().await;
        let before = self.get_model(op, id).await?;
        let mut after = before.clone();
        if let Some(p) = req.provider {
            after.provider = p;
        }
        if let Some(u) = req.upstream_name {
            after.upstream_name = Some(u);
        }
        if let Some(a) = req.aliases {
            after.aliases = a;
        }
        if let Some(f) = req.fallbacks {
            after.fallbacks = f;
        }
        if let Some(p) = req.input_price_per_mtok {
            after.input_price_per_mtok = check_price("input_price_per_mtok", p)?;
        }
        if let Some(p) = req.output_price_per_mtok {
            after.output_price_per_mtok = check_price("output_price_per_mtok", p)?;
        }
        after.updated_at = now_ms();
        self.publisher
            .check(|snap| {
                if let Some(m) = snap.models.iter_mut().find(|m| m.name == after.name) {
                    *m = raw(&after);
                }
            })
            .await?;
        let audit = audit_entry(op, "model.update", &before.id, Some(&before), Some(&after));
        self.store.update_model(&after, &audit).await?;
        drop(write);
        self.refresh_snapshot().await;
        Ok(after)
    }

    /// Delete a model no key allowlist or fallback still names.
    pub async fn delete_model(&self, op: &Operator, id: &str) -> Result<(), ServiceError> {
        op.require_admin()?;
        let write = self.write_lock.lock().await;
        let before = self.get_model(op, id).await?;
        self.publisher
            .check(|snap| snap.models.retain(|m| m.name != before.name))
            .await
            .map_err(|e| match ServiceError::from(e) {
                ServiceError::Invalid(msg) => ServiceError::Conflict(format!(
                    "model {:?} is still in use: {msg}",
                    before.name
                )),
                other => other,
            })?;
        let audit = audit_entry(op, "model.delete", &before.id, Some(&before), None);
        self.store.delete_model(&before.id, &audit).await?;
        drop(write);
        self.refresh_snapshot().await;
        Ok(())
    }
}
