//! Models: the names clients ask for, the provider that serves each, its
//! aliases and fallbacks, and (through [`super::prices`]) its price. Every
//! change is checked against the compiled snapshot first, so references
//! (provider, fallbacks, key allowlists) are validated by the same code the
//! data plane runs.

use super::prices::check_price;
use super::{audit_entry, paginate, range, Operator, Service, ServiceError};
use crate::domain::AuditEntry;
use crate::domain::{new_id, now_ms, Model, Page, PageRequest, PricedModel};
use crate::store::{store_trait, Range, StoreError};
use molt_config::money::ModelPrice;
use molt_config::wire::{RawModel, RawModelPrice};
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
    /// The model's first price version (USD per million tokens of each
    /// class), in force from the beginning. Without one the model is
    /// unpriced: its usage is flagged, not costed at 0.
    pub price: Option<RawModelPrice>,
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
    /// A new price version in force from now (as `PUT .../price` without
    /// `effective_from`); earlier versions and the costs they fixed stay.
    pub price: Option<RawModelPrice>,
}

fn raw(m: &Model, price: Option<&ModelPrice>) -> RawModel {
    RawModel {
        name: m.name.clone(),
        provider: m.provider.clone(),
        upstream_name: m.upstream_name.clone(),
        aliases: m.aliases.clone(),
        fallbacks: m.fallbacks.clone(),
        price: price.map(ModelPrice::to_wire),
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
    ) -> Result<PricedModel, ServiceError> {
        op.require_admin()?;
        let price = req.price.as_ref().map(check_price).transpose()?;
        let now = now_ms();
        let model = Model {
            id: new_id("mdl"),
            name: req.name.trim().to_owned(),
            provider: req.provider,
            upstream_name: req.upstream_name,
            aliases: req.aliases,
            fallbacks: req.fallbacks,
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
            .check(|snap| snap.models.push(raw(&model, price.as_ref())))
            .await?;
        let audit = audit_entry(op, "model.create", &model.id, None, Some(&model));
        self.store.insert_model(&model, &audit).await?;
        let price = match price {
            Some(p) => Some(self.add_price(op, &model, p, None).await?),
            None => None,
        };
        drop(write);
        self.refresh_snapshot().await;
        Ok(PricedModel { model, price })
    }

    pub async fn get_model(&self, _op: &Operator, id: &str) -> Result<PricedModel, ServiceError> {
        let model = self.get_model_record(id).await?;
        let mut priced = self.priced(vec![model]).await?;
        priced.pop().ok_or_else(|| super::not_found("model", id))
    }

    pub async fn list_models(
        &self,
        _op: &Operator,
        page: &PageRequest,
    ) -> Result<Page<PricedModel>, ServiceError> {
        let mut items = self.store.list_models(&range(page)?).await?;
        // One more than the page says whether there is a next page.
        let extra = (items.len() > page.limit as usize)
            .then(|| items.pop())
            .flatten();
        let mut items = self.priced(items).await?;
        if let Some(model) = extra {
            items.push(PricedModel { model, price: None });
        }
        Ok(paginate(items, page, |m| m.model.id.clone()))
    }

    pub async fn update_model(
        &self,
        op: &Operator,
        id: &str,
        req: UpdateModel,
    ) -> Result<PricedModel, ServiceError> {
        op.require_admin()?;
        let price = req.price.as_ref().map(check_price).transpose()?;
        let write = self.write_lock.lock().await;
        let before = self.get_model_record(id).await?;
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
        after.updated_at = now_ms();
        self.publisher
            .check(|snap| {
                if let Some(m) = snap.models.iter_mut().find(|m| m.name == after.name) {
                    let current = m.price.take();
                    *m = raw(&after, None);
                    m.price = price.as_ref().map(ModelPrice::to_wire).or(current);
                }
            })
            .await?;
        let audit = audit_entry(op, "model.update", &before.id, Some(&before), Some(&after));
        self.store.update_model(&after, &audit).await?;
        if let Some(p) = price {
            self.add_price(op, &after, p, None).await?;
        }
        drop(write);
        self.refresh_snapshot().await;
        let mut priced = self.priced(vec![after]).await?;
        priced.pop().ok_or_else(|| super::not_found("model", id))
    }

    /// Delete a model no key allowlist or fallback still names.
    pub async fn delete_model(&self, op: &Operator, id: &str) -> Result<(), ServiceError> {
        op.require_admin()?;
        let write = self.write_lock.lock().await;
        let before = self.get_model_record(id).await?;
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
