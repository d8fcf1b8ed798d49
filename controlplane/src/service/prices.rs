//! Prices: each model's price per token class as versioned data, and the
//! rule that fixes an event's cost at ingest.
//!
//! An operator's change (`PUT /api/v1/models/{id}/price`, or `price` on a
//! model's create or update) adds a version in force from now, or from a
//! given future time; a version is never changed or removed, so no change
//! alters a cost already stored (events keep the id of the version that
//! priced them). A model's first version is in force from the beginning:
//! there was no earlier price it could rewrite, and usage that arrives late
//! for a model priced just after it was created is then not left unpriced.

use super::{audit_entry, not_found, Operator, Service, ServiceError};
use crate::domain::money::in_force;
use crate::domain::{new_id, now_ms, AuditEntry, Millis, Model, PriceVersion, PricedModel};
use crate::store::{store_trait, EventCost, StoreError};
use molt_config::money::{ClassTokens, ModelPrice, Picodollars};
use molt_config::wire::RawModelPrice;
use molt_config::{ConfigErrors, UsageEvent};
use serde::Deserialize;
use std::collections::HashMap;
use utoipa::ToSchema;

/// Body of `PUT /api/v1/models/{id}/price`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPrice {
    /// USD per million tokens of each class, as decimal strings (at most
    /// six decimals); classes left out are charged at the input (or
    /// output) price.
    pub price: RawModelPrice,
    /// Unix ms from which the version prices events; now, or later
    /// (never earlier: the past is not repriced). Default: now.
    pub effective_from: Option<Millis>,
}

/// Largest markup, in basis points (1000%).
pub const MAX_MARKUP_BP: i64 = 100_000;

store_trait! {
    /// Price versions, as the model and usage services use them.
    pub trait PriceStore: Send + Sync {
        /// Add a version, with its audit entry.
        async fn insert_price(&self, version: &PriceVersion, audit: &AuditEntry) -> Result<(), StoreError>;
        /// Every version of `model`'s price, oldest first.
        async fn price_history(&self, model: &str) -> Result<Vec<PriceVersion>, StoreError>;
        /// For each model with one, the version in force at `at`.
        async fn prices_in_force(&self, at: Millis) -> Result<Vec<PriceVersion>, StoreError>;
    }
}

/// A price as written, validated (errors at `price.<class>`).
pub fn check_price(raw: &RawModelPrice) -> Result<ModelPrice, ServiceError> {
    let mut errs = ConfigErrors::default();
    ModelPrice::from_wire(raw, "price", &mut errs)
        .filter(|_| errs.is_empty())
        .ok_or_else(|| ServiceError::Invalid(errs.to_string()))
}

/// A plan's markup, checked.
pub fn check_markup(markup_bp: i64) -> Result<i64, ServiceError> {
    if (0..=MAX_MARKUP_BP).contains(&markup_bp) {
        Ok(markup_bp)
    } else {
        Err(ServiceError::Invalid(format!(
            "markup_bp: must be 0 to {MAX_MARKUP_BP} basis points"
        )))
    }
}

/// `cost` with a markup of `markup_bp` basis points, rounded half up to
/// the picodollar (the only rounding before billing's meter unit).
pub fn with_markup(cost: Picodollars, markup_bp: i64) -> Option<Picodollars> {
    let bp = u128::try_from(markup_bp).ok()?;
    let cost = u128::from(cost.0);
    let billed = cost + (cost * bp + 5_000) / 10_000;
    u64::try_from(billed).ok().map(Picodollars)
}

/// The ingest rule: the event's cost at the version of its model's price
/// in force at its timestamp, per class, and billed with its user's plan
/// markup. `None` (unpriced) when no version was in force, or the cost
/// would not fit (no real request comes near).
pub fn price_event(e: &UsageEvent, versions: &[PriceVersion], markup_bp: i64) -> Option<EventCost> {
    let at = i64::try_from(e.timestamp_ms).unwrap_or(i64::MAX);
    let version = in_force(versions, at)?;
    let tokens = ClassTokens::split(e.input_tokens, e.output_tokens, &e.classes);
    let cost = version.price.cost(&tokens)?;
    Some(EventCost {
        price_version: version.id.clone(),
        markup_bp,
        billed: with_markup(cost.total(), markup_bp)?,
        cost,
    })
}

// === impl Service ===

impl Service {
    /// Add a version of `id`'s price (admin, audited).
    pub async fn set_price(
        &self,
        op: &Operator,
        id: &str,
        req: SetPrice,
    ) -> Result<PriceVersion, ServiceError> {
        op.require_admin()?;
        let price = check_price(&req.price)?;
        let _write = self.write_lock.lock().await;
        let model = self.get_model_record(id).await?;
        let version = self
            .add_price(op, &model, price, req.effective_from)
            .await?;
        drop(_write);
        self.refresh_snapshot().await;
        Ok(version)
    }

    /// Store a new version of `model`'s price; the caller holds the write
    /// lock and refreshes the snapshot.
    pub(super) async fn add_price(
        &self,
        op: &Operator,
        model: &Model,
        price: ModelPrice,
        effective_from: Option<Millis>,
    ) -> Result<PriceVersion, ServiceError> {
        let now = now_ms();
        let effective_from = match effective_from {
            Some(t) if t < now => {
                return Err(ServiceError::Invalid(format!(
                    "effective_from: {t} is in the past (now {now}); a price change never \
                     reprices stored usage"
                )))
            }
            Some(t) => t,
            None if self.store.price_history(&model.name).await?.is_empty() => 0,
            None => now,
        };
        let version = PriceVersion {
            id: new_id("prc"),
            model: model.name.clone(),
            effective_from,
            price,
            created_at: now,
            created_by: op.actor.clone(),
        };
        let audit = audit_entry(op, "model.price", &model.id, None, Some(&version));
        self.store.insert_price(&version, &audit).await?;
        Ok(version)
    }

    /// Every version of `id`'s price, oldest first.
    pub async fn price_history(
        &self,
        _op: &Operator,
        id: &str,
    ) -> Result<Vec<PriceVersion>, ServiceError> {
        let model = self.get_model_record(id).await?;
        Ok(self.store.price_history(&model.name).await?)
    }

    pub(super) async fn get_model_record(&self, id: &str) -> Result<Model, ServiceError> {
        self.store
            .get_model(id)
            .await?
            .ok_or_else(|| not_found("model", id))
    }

    /// `models` with the price version in force now of each.
    pub(super) async fn priced(
        &self,
        models: Vec<Model>,
    ) -> Result<Vec<PricedModel>, ServiceError> {
        let mut prices: HashMap<String, PriceVersion> = self
            .store
            .prices_in_force(now_ms())
            .await?
            .into_iter()
            .map(|v| (v.model.clone(), v))
            .collect();
        Ok(models
            .into_iter()
            .map(|model| PricedModel {
                price: prices.remove(&model.name),
                model,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_rounds_half_up_to_the_picodollar() {
        assert_eq!(with_markup(Picodollars(1000), 0), Some(Picodollars(1000)));
        assert_eq!(
            with_markup(Picodollars(1000), 1250),
            Some(Picodollars(1125))
        );
        // 3 × 5% = 0.15 → 0; 10 × 5% = 0.5 → 1.
        assert_eq!(with_markup(Picodollars(3), 500), Some(Picodollars(3)));
        assert_eq!(with_markup(Picodollars(10), 500), Some(Picodollars(11)));
        assert!(check_markup(-1).is_err());
        assert!(check_markup(MAX_MARKUP_BP + 1).is_err());
    }
}
