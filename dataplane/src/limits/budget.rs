//! Dollar budgets in the limiter: their unit, what a request is charged in
//! each unit, and a request's estimated and actual cost.
//!
//! Prices and costs are exact picodollars ([`molt_config::money`]); the
//! limiter counts dollars in **micro-dollars** (10⁻⁶ USD), locally and in
//! its Redis leases. Redis runs the lease script in Lua, whose numbers are
//! doubles, exact only up to 2⁵³: in picodollars that would cap a budget at
//! $9,007, in micro-dollars at $9 billion, above the largest budget the
//! contract can hold (`u64` picodollars, about $18.4 million = 1.8 × 10¹³
//! µ$). So no budget is clamped and no counter or lease can overflow. A
//! request's cost is rounded *up* to the next micro-dollar (a budget is
//! never under-counted), which over-counts by less than $1 per million
//! requests; the billed cost is the control plane's, exact, not this.

use super::meter::Unit;
use crate::usage_reader::TokenUsage;
use molt_config::money::usd_text;
use molt_config::{ModelPrice, Picodollars};

const PICO_PER_MICRO: u64 = 1_000_000;

/// A request's charge in every unit a limit counts. `micro_usd` is `None`
/// when the model has no price: a dollar budget then refuses the request
/// rather than count it as free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Charge {
    pub(crate) tokens: u64,
    pub(crate) micro_usd: Option<u64>,
}

/// The difference between a request's actual charge and its reservation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub(crate) tokens: i64,
    pub(crate) micro_usd: i64,
}

impl Charge {
    /// What a meter of `unit` is charged.
    pub(crate) fn units(&self, unit: Unit) -> u64 {
        match unit {
            Unit::Requests => 1,
            Unit::Tokens => self.tokens,
            Unit::MicroUsd => self.micro_usd.unwrap_or(0),
        }
    }

    /// The admission estimate: input tokens at the input price and the
    /// most output the request may produce at the output price.
    pub(crate) fn estimate(price: Option<&ModelPrice>, input: u64, max_output: u64) -> Charge {
        let micro_usd = price.map(|p| {
            let input = p.input.times(input).unwrap_or(Picodollars(u64::MAX));
            let output = p.output.times(max_output).unwrap_or(Picodollars(u64::MAX));
            micro_usd_ceil(input.saturating_add(output))
        });
        Charge {
            tokens: input.saturating_add(max_output),
            micro_usd,
        }
    }

    /// What `usage` really cost at `price`, class by class.
    pub(crate) fn actual(price: Option<&ModelPrice>, usage: &TokenUsage) -> Charge {
        let micro_usd = price.map(|p| {
            p.cost(&usage.by_class())
                .map_or(u64::MAX / PICO_PER_MICRO, |c| micro_usd_ceil(c.total()))
        });
        Charge {
            tokens: usage.input.saturating_add(usage.output),
            micro_usd,
        }
    }

    /// `self − reserved`, per unit.
    pub(crate) fn minus(&self, reserved: &Charge) -> Delta {
        let diff = |a: u64, b: u64| {
            i64::try_from(a)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(b).unwrap_or(i64::MAX))
        };
        Delta {
            tokens: diff(self.tokens, reserved.tokens),
            micro_usd: diff(self.micro_usd.unwrap_or(0), reserved.micro_usd.unwrap_or(0)),
        }
    }
}

impl Delta {
    pub(crate) fn units(&self, unit: Unit) -> i64 {
        match unit {
            Unit::Requests => 0,
            Unit::Tokens => self.tokens,
            Unit::MicroUsd => self.micro_usd,
        }
    }
}

fn micro_usd_ceil(p: Picodollars) -> u64 {
    p.0.div_ceil(PICO_PER_MICRO)
}

/// A budget in the limiter's unit (whole micro-dollars, at least one).
pub(crate) fn budget_micro_usd(budget: Picodollars) -> u64 {
    (budget.0 / PICO_PER_MICRO).max(1)
}

/// Micro-dollars as a dollar string (`"25.00"`, `"0.000125"`).
pub(crate) fn usd(micro_usd: u64) -> String {
    usd_text(u128::from(micro_usd) * u128::from(PICO_PER_MICRO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_config::{TokenClasses, TokenPrice};

    #[test]
    fn costs_are_rounded_up_to_the_micro_dollar() {
        let price = ModelPrice {
            input: TokenPrice::parse_per_million("2.50").unwrap(),
            output: TokenPrice::parse_per_million("10").unwrap(),
            cache_read_input: Some(TokenPrice::parse_per_million("1.25").unwrap()),
            ..ModelPrice::default()
        };
        // 1,000 × 2.5 + 500 × 10 = 7,500 µ$.
        let e = Charge::estimate(Some(&price), 1_000, 500);
        assert_eq!(
            e,
            Charge {
                tokens: 1_500,
                micro_usd: Some(7_500)
            }
        );
        // 800 of 1,000 cached: 200 × 2.5 + 800 × 1.25 + 3 × 10 = 1,530 µ$.
        let used = TokenUsage {
            classes: TokenClasses {
                cache_read_input: 800,
                ..TokenClasses::default()
            },
            ..TokenUsage::totals(1_000, 3)
        };
        let a = Charge::actual(Some(&price), &used);
        assert_eq!(a.micro_usd, Some(1_530));
        assert_eq!(
            a.minus(&e),
            Delta {
                tokens: -497,
                micro_usd: -5_970
            }
        );
        // One token at $0.15 per 1M is 0.15 µ$: charged 1 µ$.
        let cheap = ModelPrice {
            input: TokenPrice::parse_per_million("0.15").unwrap(),
            ..price
        };
        assert_eq!(Charge::estimate(Some(&cheap), 1, 0).micro_usd, Some(1));
        assert_eq!(Charge::estimate(None, 1, 0).micro_usd, None);
        assert_eq!(
            budget_micro_usd(Picodollars::parse_usd("25").unwrap()),
            25_000_000
        );
        assert_eq!(usd(25_000_000), "25.00");
        assert_eq!(usd(1_530), "0.00153");
    }
}
