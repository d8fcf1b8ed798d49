//! Money records: a model's price versions and the dollar-budget
//! thresholds users cross. Amounts are integer picodollars
//! ([`molt_config::money`]); the API writes them as decimal dollar strings.

use super::Millis;
use molt_config::money::{ModelPrice, Picodollars};
use molt_config::wire::RawModelPrice;
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;

/// One version of a model's price: in force from `effective_from` until
/// the next version's. Versions are only ever added, so the version an
/// event was priced with never changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PriceVersion {
    /// `prc_...`; usage events name the version that priced them.
    pub id: String,
    /// The model's canonical name.
    pub model: String,
    /// Unix ms from which this version prices events (by their timestamp).
    pub effective_from: Millis,
    /// USD per million tokens of each class, as exact decimal strings.
    #[serde(serialize_with = "price_as_wire")]
    #[schema(value_type = RawModelPrice)]
    pub price: ModelPrice,
    pub created_at: Millis,
    /// The operator who set it (`admin_token:<id>`, `bootstrap`).
    pub created_by: String,
}

fn price_as_wire<S: Serializer>(price: &ModelPrice, s: S) -> Result<S::Ok, S::Error> {
    price.to_wire().serialize(s)
}

/// The version of `versions` (one model's, any order) in force at `at`:
/// the greatest `effective_from <= at`, the later id on a tie.
pub fn in_force(versions: &[PriceVersion], at: Millis) -> Option<&PriceVersion> {
    versions
        .iter()
        .filter(|v| v.effective_from <= at)
        .max_by(|a, b| (a.effective_from, &a.id).cmp(&(b.effective_from, &b.id)))
}

/// Percentages of a monthly dollar budget at which a crossing is recorded.
pub const BUDGET_THRESHOLDS: [u8; 3] = [50, 80, 100];

/// A user's spend reached a threshold of their monthly dollar budget:
/// recorded once per user, UTC month and threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BudgetEvent {
    pub id: String,
    pub user_id: String,
    /// `YYYY-MM`, UTC.
    pub month: String,
    /// 50, 80 or 100.
    pub threshold_pct: i64,
    /// The budget in force when it was crossed.
    #[schema(value_type = String)]
    pub budget_usd: Picodollars,
    /// The month's cost when it was noticed (at or above the threshold).
    #[schema(value_type = String)]
    pub spent_usd: Picodollars,
    pub at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: &str, from: Millis) -> PriceVersion {
        PriceVersion {
            id: id.into(),
            model: "m".into(),
            effective_from: from,
            price: ModelPrice::default(),
            created_at: 0,
            created_by: "t".into(),
        }
    }

    #[test]
    fn the_version_in_force_is_the_latest_started_one() {
        let v = [
            version("prc_a", 0),
            version("prc_c", 100),
            version("prc_b", 100),
        ];
        assert_eq!(in_force(&v, 99).map(|v| v.id.as_str()), Some("prc_a"));
        assert_eq!(in_force(&v, 100).map(|v| v.id.as_str()), Some("prc_c"));
        assert_eq!(in_force(&v[1..], 99), None);
    }
}
