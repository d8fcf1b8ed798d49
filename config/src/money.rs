//! Money as integers: amounts, token prices, and the cost of one usage.
//!
//! Every amount is a whole number of **picodollars** (10⁻¹² USD). The unit
//! is chosen so that every published per-token price is exact: prices are
//! quoted per million tokens with up to six decimals (e.g. $0.01875 per 1M
//! cached tokens), and $1 per 1M tokens is exactly 1 picodollar per token.
//! An event's cost is then `Σ tokens × price` with no rounding at all; the
//! only rounding in the product happens once, where billing converts a sum
//! into the unit a Stripe meter counts, and it carries the remainder.
//!
//! Amounts are written as decimal strings of dollars (`"2.50"`), never as
//! floats; [`Picodollars::parse_usd`] reads them exactly and refuses what it
//! cannot represent.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::usage::TokenClasses;

/// An amount of money in picodollars (10⁻¹² USD). `u64` holds up to about
/// $18.4 million, far above one event's cost or one month's budget; sums
/// over many events are kept in `u128` by whoever adds them up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Picodollars(pub u64);

/// A price per token, in picodollars; numerically the price in micro-dollars
/// per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenPrice(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error(
        "must be a decimal number of dollars such as \"2.50\" (no sign, exponent or separators)"
    )]
    Syntax,
    #[error("has more than {0} decimal places")]
    TooPrecise(u32),
    #[error("is too large")]
    Overflow,
}

const PICO_DECIMALS: u32 = 12;

impl Picodollars {
    pub const ZERO: Picodollars = Picodollars(0);
    /// Picodollars in one dollar.
    pub const PER_DOLLAR: u64 = 1_000_000_000_000;

    /// Read a decimal amount of dollars exactly: `"12"`, `"0.000125"`.
    /// At most 12 decimal places (one picodollar).
    pub fn parse_usd(text: &str) -> Result<Picodollars, MoneyError> {
        let text = text.trim();
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return Err(MoneyError::Syntax);
        }
        if text.ends_with('.') {
            return Err(MoneyError::Syntax);
        }
        let fraction = fraction.trim_end_matches('0');
        let places = fraction.len() as u32;
        if places > PICO_DECIMALS {
            return Err(MoneyError::TooPrecise(PICO_DECIMALS));
        }
        let whole: u64 = whole.parse().map_err(|_| MoneyError::Overflow)?;
        let fraction: u64 = if fraction.is_empty() {
            0
        } else {
            // At most 12 digits: fits in a u64.
            fraction.parse().map_err(|_| MoneyError::Syntax)?
        };
        whole
            .checked_mul(Self::PER_DOLLAR)
            .and_then(|w| w.checked_add(fraction * 10u64.pow(PICO_DECIMALS - places)))
            .map(Picodollars)
            .ok_or(MoneyError::Overflow)
    }

    pub fn checked_add(self, other: Picodollars) -> Option<Picodollars> {
        self.0.checked_add(other.0).map(Picodollars)
    }

    pub fn saturating_add(self, other: Picodollars) -> Picodollars {
        Picodollars(self.0.saturating_add(other.0))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// Dollars with as many decimals as needed and at least two: `"2.50"`,
/// `"0.000000375"`.
impl std::fmt::Display for Picodollars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_usd(u128::from(self.0), f)
    }
}

/// Write `pico` picodollars as dollars (shared by sums kept in `u128`).
pub fn fmt_usd(pico: u128, f: &mut impl std::fmt::Write) -> std::fmt::Result {
    let per_dollar = u128::from(Picodollars::PER_DOLLAR);
    let whole = pico / per_dollar;
    let fraction = format!("{:012}", pico % per_dollar);
    let fraction = fraction.trim_end_matches('0');
    write!(f, "{whole}.{fraction:0<2}")
}

/// `pico` picodollars as a dollar string (see [`fmt_usd`]).
pub fn usd_text(pico: u128) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = fmt_usd(pico, &mut out);
    out
}

impl Serialize for Picodollars {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Picodollars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = UsdText::deserialize(d)?.0;
        Picodollars::parse_usd(&text)
            .map_err(|e| serde::de::Error::custom(format_args!("{text:?} {e}")))
    }
}

/// A dollar amount as written: a string, or a whole number (never a float,
/// which could not say exactly what was meant).
struct UsdText(String);

impl<'de> Deserialize<'de> for UsdText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = UsdText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a dollar amount as a string, e.g. \"2.50\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UsdText, E> {
                Ok(UsdText(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<UsdText, E> {
                Ok(UsdText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<UsdText, E> {
                Ok(UsdText(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Picodollars {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^[0-9]+(\.[0-9]{1,12})?$"))
            .description(Some("US dollars as an exact decimal string"))
            .examples([serde_json::json!("25.00")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Picodollars {}

// === TokenPrice ===

impl TokenPrice {
    /// Read a price in dollars per million tokens (`"2.50"`), at most six
    /// decimal places (one picodollar per token).
    pub fn parse_per_million(text: &str) -> Result<TokenPrice, MoneyError> {
        let per_million = Picodollars::parse_usd(text)?;
        if per_million.0 % 1_000_000 != 0 {
            return Err(MoneyError::TooPrecise(6));
        }
        Ok(TokenPrice(per_million.0 / 1_000_000))
    }

    /// The price per million tokens, in dollars, as the operator wrote it.
    pub fn per_million_text(self) -> String {
        usd_text(u128::from(self.0) * 1_000_000)
    }

    /// `tokens` at this price.
    pub fn times(self, tokens: u64) -> Option<Picodollars> {
        self.0.checked_mul(tokens).map(Picodollars)
    }
}

// === Token classes and model prices ===

/// The classes a token is priced by. Input classes add up to the event's
/// `input_tokens`, output classes to its `output_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenClass {
    /// Input not read from or written to a cache, not audio.
    Input,
    CacheReadInput,
    CacheWrite5mInput,
    CacheWrite1hInput,
    AudioInput,
    /// Output that is not reasoning or audio.
    Output,
    ReasoningOutput,
    AudioOutput,
}

impl TokenClass {
    pub const ALL: [TokenClass; 8] = [
        TokenClass::Input,
        TokenClass::CacheReadInput,
        TokenClass::CacheWrite5mInput,
        TokenClass::CacheWrite1hInput,
        TokenClass::AudioInput,
        TokenClass::Output,
        TokenClass::ReasoningOutput,
        TokenClass::AudioOutput,
    ];

    /// The name used in reports, price tables and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenClass::Input => "input",
            TokenClass::CacheReadInput => "cache_read_input",
            TokenClass::CacheWrite5mInput => "cache_write_5m_input",
            TokenClass::CacheWrite1hInput => "cache_write_1h_input",
            TokenClass::AudioInput => "audio_input",
            TokenClass::Output => "output",
            TokenClass::ReasoningOutput => "reasoning_output",
            TokenClass::AudioOutput => "audio_output",
        }
    }

    pub fn parse(text: &str) -> Option<TokenClass> {
        TokenClass::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

/// Tokens of one usage split by class: the totals of an event broken down
/// by its [`TokenClasses`]. Plain input and output are what the classes
/// leave of the totals (never negative: a provider reporting more in a
/// class than in the total has the total raised to match).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassTokens([u64; 8]);

impl ClassTokens {
    pub fn split(input_tokens: u64, output_tokens: u64, classes: &TokenClasses) -> ClassTokens {
        let input_classes = classes
            .cache_read_input
            .saturating_add(classes.cache_write_5m_input)
            .saturating_add(classes.cache_write_1h_input)
            .saturating_add(classes.audio_input);
        let output_classes = classes
            .reasoning_output
            .saturating_add(classes.audio_output);
        ClassTokens([
            input_tokens.saturating_sub(input_classes),
            classes.cache_read_input,
            classes.cache_write_5m_input,
            classes.cache_write_1h_input,
            classes.audio_input,
            output_tokens.saturating_sub(output_classes),
            classes.reasoning_output,
            classes.audio_output,
        ])
    }

    pub fn get(&self, class: TokenClass) -> u64 {
        self.0[class as usize]
    }

    /// `(class, tokens)` for every class with tokens.
    pub fn iter(&self) -> impl Iterator<Item = (TokenClass, u64)> + '_ {
        TokenClass::ALL
            .into_iter()
            .map(|c| (c, self.get(c)))
            .filter(|(_, n)| *n > 0)
    }
}

/// A model's price per token of each class. `input` and `output` are
/// required; a class without its own price is charged at its base price
/// (input for the input classes, output for reasoning and audio output),
/// which is what providers that do not distinguish the class do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: TokenPrice,
    pub output: TokenPrice,
    pub cache_read_input: Option<TokenPrice>,
    pub cache_write_5m_input: Option<TokenPrice>,
    pub cache_write_1h_input: Option<TokenPrice>,
    pub audio_input: Option<TokenPrice>,
    pub reasoning_output: Option<TokenPrice>,
    pub audio_output: Option<TokenPrice>,
}

/// What one usage costs, per class; the total is their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    by_class: [u64; 8],
}

impl Cost {
    pub fn total(&self) -> Picodollars {
        // Each class cost is at most u64::MAX / 8 (checked in `ModelPrice::cost`).
        Picodollars(self.by_class.iter().sum())
    }

    pub fn of(&self, class: TokenClass) -> Picodollars {
        Picodollars(self.by_class[class as usize])
    }
}

impl ModelPrice {
    /// The price of one token of `class`.
    pub fn price_of(&self, class: TokenClass) -> TokenPrice {
        let input = self.input;
        let output = self.output;
        match class {
            TokenClass::Input => input,
            TokenClass::CacheReadInput => self.cache_read_input.unwrap_or(input),
            TokenClass::CacheWrite5mInput => self.cache_write_5m_input.unwrap_or(input),
            TokenClass::CacheWrite1hInput => self.cache_write_1h_input.unwrap_or(input),
            TokenClass::AudioInput => self.audio_input.unwrap_or(input),
            TokenClass::Output => output,
            TokenClass::ReasoningOutput => self.reasoning_output.unwrap_or(output),
            TokenClass::AudioOutput => self.audio_output.unwrap_or(output),
        }
    }

    /// The exact cost of `tokens`; `None` only if it would exceed what
    /// [`Picodollars`] holds (about $2 million per class), which no single
    /// request reaches.
    pub fn cost(&self, tokens: &ClassTokens) -> Option<Cost> {
        let mut by_class = [0u64; 8];
        for class in TokenClass::ALL {
            let c = self.price_of(class).times(tokens.get(class))?;
            if c.0 > u64::MAX / 8 {
                return None;
            }
            by_class[class as usize] = c.0;
        }
        Some(Cost { by_class })
    }
}

impl ModelPrice {
    /// Validate a price as written, reporting each bad field at
    /// `{at}.{field}`.
    pub fn from_wire(
        raw: &crate::wire::RawModelPrice,
        at: &str,
        errs: &mut crate::ConfigErrors,
    ) -> Option<ModelPrice> {
        let mut ok = true;
        let mut read = |field: &str, text: &str| match TokenPrice::parse_per_million(text) {
            Ok(p) => Some(p),
            Err(e) => {
                errs.push(format!("{at}.{field}"), format!("{text:?} {e}"));
                ok = false;
                None
            }
        };
        let input = read("input", &raw.input);
        let output = read("output", &raw.output);
        let mut optional =
            |field: &str, text: &Option<String>| text.as_deref().and_then(|t| read(field, t));
        let price = ModelPrice {
            input: input.unwrap_or_default(),
            output: output.unwrap_or_default(),
            cache_read_input: optional("cache_read_input", &raw.cache_read_input),
            cache_write_5m_input: optional("cache_write_5m_input", &raw.cache_write_5m_input),
            cache_write_1h_input: optional("cache_write_1h_input", &raw.cache_write_1h_input),
            audio_input: optional("audio_input", &raw.audio_input),
            reasoning_output: optional("reasoning_output", &raw.reasoning_output),
            audio_output: optional("audio_output", &raw.audio_output),
        };
        ok.then_some(price)
    }

    /// The wire form (prices per million tokens as decimal strings).
    pub fn to_wire(&self) -> crate::wire::RawModelPrice {
        let text = |p: Option<TokenPrice>| p.map(TokenPrice::per_million_text);
        crate::wire::RawModelPrice {
            input: self.input.per_million_text(),
            output: self.output.per_million_text(),
            cache_read_input: text(self.cache_read_input),
            cache_write_5m_input: text(self.cache_write_5m_input),
            cache_write_1h_input: text(self.cache_write_1h_input),
            audio_input: text(self.audio_input),
            reasoning_output: text(self.reasoning_output),
            audio_output: text(self.audio_output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_parse_exactly_and_print_back() {
        assert_eq!(
            Picodollars::parse_usd("2.50"),
            Ok(Picodollars(2_500_000_000_000))
        );
        assert_eq!(Picodollars::parse_usd("0.000000000001"), Ok(Picodollars(1)));
        assert_eq!(
            Picodollars::parse_usd(" 12 "),
            Ok(Picodollars(12 * Picodollars::PER_DOLLAR))
        );
        assert_eq!(
            Picodollars::parse_usd("1.5000000000000"),
            Ok(Picodollars(1_500_000_000_000))
        );
        for bad in ["", ".5", "5.", "-1", "1e3", "1,000", "+2", "0x10", "1.2.3"] {
            assert_eq!(
                Picodollars::parse_usd(bad),
                Err(MoneyError::Syntax),
                "{bad:?}"
            );
        }
        assert_eq!(
            Picodollars::parse_usd("0.0000000000001"),
            Err(MoneyError::TooPrecise(12))
        );
        assert_eq!(
            Picodollars::parse_usd("99999999999"),
            Err(MoneyError::Overflow)
        );
        assert_eq!(Picodollars(2_500_000_000_000).to_string(), "2.50");
        assert_eq!(Picodollars(375_000).to_string(), "0.000000375");
        assert_eq!(Picodollars(0).to_string(), "0.00");
        assert_eq!(usd_text(u128::from(u64::MAX) * 10), "184467440.73709551615");
    }

    #[test]
    fn amounts_read_from_strings_and_whole_numbers_not_floats() {
        let p: Picodollars = serde_json::from_str("\"0.10\"").unwrap();
        assert_eq!(p, Picodollars(100_000_000_000));
        let p: Picodollars = serde_json::from_str("25").unwrap();
        assert_eq!(p, Picodollars(25 * Picodollars::PER_DOLLAR));
        assert!(serde_json::from_str::<Picodollars>("0.1").is_err());
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"25.00\"");
    }

    #[test]
    fn prices_per_million_are_exact_picodollars_per_token() {
        assert_eq!(
            TokenPrice::parse_per_million("2.50"),
            Ok(TokenPrice(2_500_000))
        );
        assert_eq!(
            TokenPrice::parse_per_million("0.01875"),
            Ok(TokenPrice(18_750))
        );
        assert_eq!(TokenPrice::parse_per_million("0.000001"), Ok(TokenPrice(1)));
        assert_eq!(
            TokenPrice::parse_per_million("0.0000001"),
            Err(MoneyError::TooPrecise(6))
        );
        assert_eq!(TokenPrice(18_750).per_million_text(), "0.01875");
    }

    #[test]
    fn classes_split_the_totals_and_fall_back_to_base_prices() {
        // OpenAI-style: 1,000 prompt tokens of which 800 cached; 500
        // completion tokens of which 300 reasoning.
        let classes = TokenClasses {
            cache_read_input: 800,
            reasoning_output: 300,
            ..TokenClasses::default()
        };
        let tokens = ClassTokens::split(1_000, 500, &classes);
        assert_eq!(tokens.get(TokenClass::Input), 200);
        assert_eq!(tokens.get(TokenClass::CacheReadInput), 800);
        assert_eq!(tokens.get(TokenClass::Output), 200);
        assert_eq!(tokens.get(TokenClass::ReasoningOutput), 300);

        let price = ModelPrice {
            input: TokenPrice::parse_per_million("2.00").unwrap(),
            output: TokenPrice::parse_per_million("8.00").unwrap(),
            cache_read_input: Some(TokenPrice::parse_per_million("0.50").unwrap()),
            ..ModelPrice::default()
        };
        let cost = price.cost(&tokens).unwrap();
        // 200×2 + 800×0.5 + 200×8 + 300×8 (reasoning at the output price) µ$.
        assert_eq!(cost.of(TokenClass::Input), Picodollars(400_000_000));
        assert_eq!(
            cost.of(TokenClass::CacheReadInput),
            Picodollars(400_000_000)
        );
        assert_eq!(
            cost.of(TokenClass::ReasoningOutput),
            Picodollars(2_400_000_000)
        );
        assert_eq!(cost.total(), Picodollars(4_800_000_000));
        assert_eq!(cost.total().to_string(), "0.0048");
    }

    #[test]
    fn a_price_as_written_is_validated_with_its_field_path() {
        let raw = crate::wire::RawModelPrice {
            input: "3".into(),
            output: "15.00".into(),
            cache_read_input: Some("0.30".into()),
            cache_write_1h_input: Some("6".into()),
            ..Default::default()
        };
        let mut errs = crate::ConfigErrors::default();
        let price = ModelPrice::from_wire(&raw, "models[0].price", &mut errs).unwrap();
        assert!(errs.is_empty());
        assert_eq!(
            price.price_of(TokenClass::CacheWrite5mInput),
            TokenPrice(3_000_000)
        );
        assert_eq!(price.to_wire().cache_read_input.as_deref(), Some("0.30"));

        let bad = crate::wire::RawModelPrice {
            input: "-1".into(),
            output: "1.0000001".into(),
            ..Default::default()
        };
        assert!(ModelPrice::from_wire(&bad, "models[3].price", &mut errs).is_none());
        let text = errs.to_string();
        assert!(text.contains("models[3].price.input"), "{text}");
        assert!(
            text.contains("models[3].price.output: \"1.0000001\" has more than 6 decimal places"),
            "{text}"
        );
    }

    #[test]
    fn a_class_larger_than_its_total_never_goes_negative() {
        let classes = TokenClasses {
            cache_read_input: 50,
            ..TokenClasses::default()
        };
        let tokens = ClassTokens::split(10, 0, &classes);
        assert_eq!(tokens.get(TokenClass::Input), 0);
        assert_eq!(tokens.get(TokenClass::CacheReadInput), 50);
    }
}
