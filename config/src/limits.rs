//! Rate limits, token budgets and anomaly detection: the `[limits]` section.
//!
//! [`RawLimits`] is the wire form (serde; unknown fields are the reader's
//! decision, see [`crate::unknown`]), written in the data plane's file and
//! shipped in the control plane's snapshot.
//! [`LimitsConfig`] is the validated form the data plane's limiter runs on,
//! built only by [`LimitsConfig::from_wire`], which reports every problem with
//! its field path (`limits.users[2].tokens_per_minute: ...`).
//!
//! Every limit is optional: an absent field means "no limit". A zero is an
//! error rather than "blocked" or "unlimited", because either reading would
//! surprise half of the operators who write it.

use crate::error::ConfigErrors;
use crate::money::Picodollars;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

/// Output tokens assumed for a request that sets no `max_tokens`.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 1024;
/// Default Redis key prefix; distinct deployments sharing a Redis set their own.
pub const DEFAULT_KEY_PREFIX: &str = "molt:limits:";
/// Default share of a limit one Redis lease takes.
pub const DEFAULT_LEASE_FRACTION: f64 = 0.05;

// === wire ===

// The wire structs with a name field (`RawUserLimits`, `RawModelLimits`)
// carry the seven fields themselves, because the unknown fields of a
// `flatten`ed struct cannot be told apart (nor `deny_unknown_fields`
// combined with it): `limit_struct!` declares them once for every struct
// that holds them, and `limit_fields!` converts between them.

/// Declares a struct holding the seven limit fields of one scope (each an
/// `Option<u64>`, carrying the attributes written after `limits`) where
/// `[limits ...]` stands among its other fields. The one place the seven
/// fields are declared.
macro_rules! limit_struct {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $($(#[$head_attr:meta])* pub $head:ident: $head_ty:ty,)*
            [limits $(#[$limit_attr:meta])*]
            $($(#[$tail_attr:meta])* pub $tail:ident: $tail_ty:ty,)*
        }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $($(#[$head_attr])* pub $head: $head_ty,)*
            $(#[$limit_attr])*
            pub requests_per_second: Option<u64>,
            $(#[$limit_attr])*
            pub requests_per_minute: Option<u64>,
            /// Input plus output tokens.
            $(#[$limit_attr])*
            pub tokens_per_minute: Option<u64>,
            $(#[$limit_attr])*
            pub tokens_per_day: Option<u64>,
            $(#[$limit_attr])*
            pub concurrent_streams: Option<u64>,
            /// Tokens per calendar month (UTC).
            $(#[$limit_attr])*
            pub monthly_token_budget: Option<u64>,
            /// Dollars per calendar month (UTC), at the models' prices.
            $(#[$limit_attr])*
            pub monthly_budget_usd: Option<Picodollars>,
            $($(#[$tail_attr])* pub $tail: $tail_ty,)*
        }
    };
}

limit_struct! {
    /// `[limits]` as written. The top-level limit fields are the defaults every
    /// user gets; `users`, `models` and `providers` refine them.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    pub struct RawLimits {
        [limits
            #[serde(default, skip_serializing_if = "Option::is_none")]
        ]
        pub default_max_output_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub users: Vec<RawUserLimits>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub models: Vec<RawModelLimits>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub providers: Vec<RawProviderLimits>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub redis: Option<RawRedisLimits>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub anomaly: Option<RawAnomaly>,
    }
}

limit_struct! {
    /// The six limit fields of one scope: what a control-plane plan and a
    /// user's own overrides hold. An absent field sets no limit of this scope
    /// (the scope below it applies: the deployment default for a plan); zero
    /// is an error. Never part of a file or a snapshot (only of the control
    /// plane's API), so it denies unknown fields itself.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = LimitSet))]
    #[serde(deny_unknown_fields)]
    pub struct RawLimitSet {
        [limits
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[cfg_attr(feature = "openapi", schema(minimum = 1))]
        ]
    }
}

/// Build a struct with the seven limit fields, each computed by the macro
/// `$per_field!(field $(, $arg)*)`, plus any other fields given in braces.
/// The one place the seven field names are listed for conversions.
macro_rules! limit_fields {
    ($ty:ident { $($k:ident: $v:expr),* $(,)? }, $per_field:ident $(, $arg:expr)*) => {
        $ty {
            $($k: $v,)*
            requests_per_second: $per_field!(requests_per_second $(, $arg)*),
            requests_per_minute: $per_field!(requests_per_minute $(, $arg)*),
            tokens_per_minute: $per_field!(tokens_per_minute $(, $arg)*),
            tokens_per_day: $per_field!(tokens_per_day $(, $arg)*),
            concurrent_streams: $per_field!(concurrent_streams $(, $arg)*),
            monthly_token_budget: $per_field!(monthly_token_budget $(, $arg)*),
            monthly_budget_usd: $per_field!(monthly_budget_usd $(, $arg)*),
        }
    };
}

/// `$from.field`: copy a field between limit structs.
macro_rules! copied {
    ($f:ident, $from:expr) => {
        $from.$f
    };
}

/// `$over.field`, or `$base.field` where `$over` sets none.
macro_rules! overlaid {
    ($f:ident, $base:expr, $over:expr) => {
        $over.$f.or($base.$f)
    };
}

macro_rules! raw_limit_set {
    ($r:expr) => {
        limit_fields!(RawLimitSet {}, copied, $r)
    };
}

limit_struct! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    pub struct RawUserLimits {
        pub user: String,
        [limits
            #[serde(default, skip_serializing_if = "Option::is_none")]
        ]
    }
}

limit_struct! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    pub struct RawModelLimits {
        /// Canonical model name or alias.
        pub model: String,
        [limits
            #[serde(default, skip_serializing_if = "Option::is_none")]
        ]
    }
}

/// Ceilings on one provider across all users. Only rates: concurrency and
/// budgets are per user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RawProviderLimits {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RawRedisLimits {
    /// `redis://` or `rediss://`; may carry a password, so it is a secret
    /// once validated.
    pub url: String,
    pub key_prefix: Option<String>,
    /// Replicas sharing this Redis; each takes `limit / replicas` while
    /// Redis is unreachable.
    pub replicas: Option<u32>,
    /// Share of a limit one lease takes (0 < f <= 0.5).
    pub lease_fraction: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RawAnomaly {
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "30s"))]
    pub window: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "30s"))]
    pub baseline_half_life: Option<Duration>,
    pub multiple: Option<f64>,
    pub floor_tokens_per_minute: Option<u64>,
    pub block: Option<bool>,
}

// === validated ===

limit_struct! {
    /// The limits one scope (a user, or a user on one model) has. `None` is
    /// unlimited.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct LimitSet {
        [limits]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// What every user gets unless `users` says otherwise.
    pub defaults: LimitSet,
    /// Per-user limits, already merged over `defaults`.
    pub users: HashMap<String, LimitSet>,
    /// Per-user-per-model limits by canonical model name (only the fields
    /// written; they apply on top of the user's own limits).
    pub models: HashMap<String, LimitSet>,
    /// Ceilings per provider name across all users (only rate fields).
    pub providers: HashMap<String, LimitSet>,
    pub default_max_output_tokens: u64,
    pub redis: Option<RedisLimitsConfig>,
    pub anomaly: AnomalyConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisLimitsConfig {
    pub url: Secret,
    pub key_prefix: String,
    pub replicas: NonZeroU32,
    pub lease_fraction: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyConfig {
    pub window: Duration,
    pub baseline_half_life: Duration,
    pub multiple: f64,
    pub floor_tokens_per_minute: u64,
    pub block: bool,
}

// === impl LimitSet ===

impl LimitSet {
    /// `self` with every field `over` sets replaced.
    pub fn merged(self, over: &LimitSet) -> LimitSet {
        limit_fields!(LimitSet {}, overlaid, self, over)
    }

    pub fn is_unlimited(&self) -> bool {
        *self == LimitSet::default()
    }

    fn from_raw(raw: &RawLimitSet, at: &str, errs: &mut ConfigErrors) -> LimitSet {
        macro_rules! checked {
            ($f:ident) => {
                positive(raw.$f, &format!("{at}.{}", stringify!($f)), errs)
            };
        }
        limit_fields!(LimitSet {}, checked)
    }
}

// === impl RawLimitSet ===

impl RawLimitSet {
    /// `self` with every field `over` sets replaced.
    pub fn merged(self, over: &RawLimitSet) -> RawLimitSet {
        limit_fields!(RawLimitSet {}, overlaid, self, over)
    }

    /// Sets no limit at all.
    pub fn is_empty(&self) -> bool {
        *self == RawLimitSet::default()
    }

    /// Check the fields as `[limits]` validation does (a zero is an
    /// error), reporting each problem at `{at}.{field}`.
    pub fn validate(&self, at: &str) -> Result<(), ConfigErrors> {
        let mut errs = ConfigErrors::default();
        LimitSet::from_raw(self, at, &mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

// === impl RawUserLimits ===

impl RawUserLimits {
    /// `user`'s entry with the limits of `set`.
    pub fn new(user: impl Into<String>, set: &RawLimitSet) -> RawUserLimits {
        limit_fields!(RawUserLimits { user: user.into() }, copied, set)
    }

    /// The entry's limits without the user.
    pub fn limit_set(&self) -> RawLimitSet {
        raw_limit_set!(self)
    }
}

// === impl AnomalyConfig ===

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            window: Duration::from_secs(60),
            baseline_half_life: Duration::from_secs(3600),
            multiple: 5.0,
            floor_tokens_per_minute: 10_000,
            block: false,
        }
    }
}

// === impl LimitsConfig ===

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            defaults: LimitSet::default(),
            users: HashMap::new(),
            models: HashMap::new(),
            providers: HashMap::new(),
            default_max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            redis: None,
            anomaly: AnomalyConfig::default(),
        }
    }
}

impl LimitsConfig {
    /// The limits of `user` (defaults with the user's overrides).
    pub fn user_limits(&self, user: &str) -> &LimitSet {
        self.users.get(user).unwrap_or(&self.defaults)
    }

    /// Validate `[limits]`. `models` maps every model name a client may
    /// write (canonical or alias) to its canonical name, and `providers`
    /// lists the provider names, so overrides naming neither are caught;
    /// pass `None` to skip those checks.
    pub fn from_wire(
        raw: &RawLimits,
        models: Option<&HashMap<&str, &str>>,
        providers: Option<&[&str]>,
        errs: &mut ConfigErrors,
    ) -> LimitsConfig {
        let defaults = LimitSet::from_raw(&raw_limit_set!(raw), "limits", errs);
        let default_max_output_tokens = match raw.default_max_output_tokens {
            None => DEFAULT_MAX_OUTPUT_TOKENS,
            Some(0) => {
                errs.push("limits.default_max_output_tokens", "must be greater than 0");
                DEFAULT_MAX_OUTPUT_TOKENS
            }
            Some(n) => n,
        };

        let mut users = HashMap::with_capacity(raw.users.len());
        for (i, u) in raw.users.iter().enumerate() {
            let at = format!("limits.users[{i}]");
            let set = LimitSet::from_raw(&raw_limit_set!(u), &at, errs);
            if u.user.is_empty() {
                errs.push(format!("{at}.user"), "must not be empty");
            } else if users
                .insert(u.user.clone(), defaults.merged(&set))
                .is_some()
            {
                errs.push(format!("{at}.user"), format!("duplicate user {:?}", u.user));
            }
        }

        let mut model_limits = HashMap::with_capacity(raw.models.len());
        for (i, m) in raw.models.iter().enumerate() {
            let at = format!("limits.models[{i}]");
            let set = LimitSet::from_raw(&raw_limit_set!(m), &at, errs);
            let canonical = match models {
                Some(names) => match names.get(m.model.as_str()) {
                    Some(c) => (*c).to_owned(),
                    None => {
                        errs.push(
                            format!("{at}.model"),
                            format!("unknown model {:?}", m.model),
                        );
                        continue;
                    }
                },
                None => m.model.clone(),
            };
            if set.is_unlimited() {
                errs.push(at.clone(), "sets no limit");
            }
            if model_limits.insert(canonical.clone(), set).is_some() {
                errs.push(
                    format!("{at}.model"),
                    format!("model {canonical:?} has limits twice"),
                );
            }
        }

        let mut provider_limits = HashMap::with_capacity(raw.providers.len());
        for (i, p) in raw.providers.iter().enumerate() {
            let at = format!("limits.providers[{i}]");
            let set = LimitSet::from_raw(
                &RawLimitSet {
                    requests_per_second: p.requests_per_second,
                    requests_per_minute: p.requests_per_minute,
                    tokens_per_minute: p.tokens_per_minute,
                    tokens_per_day: p.tokens_per_day,
                    concurrent_streams: None,
                    monthly_token_budget: None,
                    monthly_budget_usd: None,
                },
                &at,
                errs,
            );
            if providers.is_some_and(|names| !names.contains(&p.provider.as_str())) {
                errs.push(
                    format!("{at}.provider"),
                    format!("unknown provider {:?}", p.provider),
                );
                continue;
            }
            if set.is_unlimited() {
                errs.push(at.clone(), "sets no limit");
            }
            if provider_limits.insert(p.provider.clone(), set).is_some() {
                errs.push(
                    format!("{at}.provider"),
                    format!("provider {:?} has limits twice", p.provider),
                );
            }
        }

        LimitsConfig {
            defaults,
            users,
            models: model_limits,
            providers: provider_limits,
            default_max_output_tokens,
            redis: raw.redis.as_ref().and_then(|r| validate_redis(r, errs)),
            anomaly: raw
                .anomaly
                .as_ref()
                .map(|a| validate_anomaly(a, errs))
                .unwrap_or_default(),
        }
    }
}

fn positive<T: Default + PartialEq>(
    v: Option<T>,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<T> {
    match v {
        Some(zero) if zero == T::default() => {
            errs.push(path, "must be greater than 0 (omit it for no limit)");
            None
        }
        v => v,
    }
}

fn validate_redis(raw: &RawRedisLimits, errs: &mut ConfigErrors) -> Option<RedisLimitsConfig> {
    // The URL may hold a password: error messages never quote it.
    match url::Url::parse(&raw.url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
        Ok(_) => errs.push(
            "limits.redis.url",
            "must be a redis:// or rediss:// URL with a host",
        ),
        Err(e) => errs.push("limits.redis.url", format!("not a URL ({e})")),
    }
    let key_prefix = raw
        .key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
    if key_prefix.is_empty() {
        errs.push("limits.redis.key_prefix", "must not be empty");
    }
    let replicas = match raw.replicas.map(NonZeroU32::new) {
        None => NonZeroU32::MIN,
        Some(Some(n)) => n,
        Some(None) => {
            errs.push("limits.redis.replicas", "must be at least 1");
            NonZeroU32::MIN
        }
    };
    let lease_fraction = raw.lease_fraction.unwrap_or(DEFAULT_LEASE_FRACTION);
    if !(lease_fraction > 0.0 && lease_fraction <= 0.5) {
        errs.push(
            "limits.redis.lease_fraction",
            format!("must be in (0, 0.5], got {lease_fraction}"),
        );
    }
    Some(RedisLimitsConfig {
        url: Secret::new(raw.url.clone()),
        key_prefix,
        replicas,
        lease_fraction,
    })
}

fn validate_anomaly(raw: &RawAnomaly, errs: &mut ConfigErrors) -> AnomalyConfig {
    let d = AnomalyConfig::default();
    let window = raw.window.unwrap_or(d.window);
    if window < Duration::from_secs(1) {
        errs.push("limits.anomaly.window", "must be at least 1s");
    }
    let baseline_half_life = raw.baseline_half_life.unwrap_or(d.baseline_half_life);
    if baseline_half_life < window {
        errs.push(
            "limits.anomaly.baseline_half_life",
            "must be at least the window",
        );
    }
    let multiple = raw.multiple.unwrap_or(d.multiple);
    if !(multiple.is_finite() && multiple > 1.0) {
        errs.push(
            "limits.anomaly.multiple",
            format!("must be a number greater than 1, got {multiple}"),
        );
    }
    AnomalyConfig {
        window,
        baseline_half_life,
        multiple,
        floor_tokens_per_minute: raw
            .floor_tokens_per_minute
            .unwrap_or(d.floor_tokens_per_minute),
        block: raw.block.unwrap_or(d.block),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> Result<LimitsConfig, Vec<String>> {
        #[derive(Deserialize)]
        struct Doc {
            limits: RawLimits,
        }
        let (doc, unknown) =
            crate::unknown::from_toml::<Doc>(toml_text).map_err(|e| vec![e.to_string()])?;
        if !unknown.is_empty() {
            return Err(unknown);
        }
        let models = HashMap::from([("gpt-4o", "gpt-4o"), ("4o", "gpt-4o")]);
        let mut errs = ConfigErrors::default();
        let cfg = LimitsConfig::from_wire(&doc.limits, Some(&models), Some(&["openai"]), &mut errs);
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(errs.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn full_example_validates_and_merges_user_overrides() {
        let cfg = check(
            r#"
            [limits]
            requests_per_second = 10
            tokens_per_minute = 100000
            default_max_output_tokens = 512
            [[limits.users]]
            user = "user-1"
            tokens_per_minute = 5000
            [[limits.models]]
            model = "4o"
            tokens_per_minute = 20000
            [[limits.providers]]
            provider = "openai"
            requests_per_minute = 5000
            [limits.redis]
            url = "redis://:hunter2@127.0.0.1:6379"
            replicas = 3
            [limits.anomaly]
            window = "30s"
            block = true
            "#,
        )
        .unwrap();
        let u = cfg.user_limits("user-1");
        assert_eq!(u.tokens_per_minute, Some(5000));
        assert_eq!(u.requests_per_second, Some(10), "defaults carry over");
        assert_eq!(cfg.user_limits("other").tokens_per_minute, Some(100_000));
        assert_eq!(cfg.models["gpt-4o"].tokens_per_minute, Some(20000));
        assert_eq!(cfg.providers["openai"].requests_per_minute, Some(5000));
        let redis = cfg.redis.unwrap();
        assert_eq!(redis.replicas.get(), 3);
        assert_eq!(redis.key_prefix, DEFAULT_KEY_PREFIX);
        assert!(!format!("{redis:?}").contains("hunter2"));
        assert_eq!(cfg.anomaly.window, Duration::from_secs(30));
        assert!(cfg.anomaly.block);
        assert_eq!(cfg.default_max_output_tokens, 512);
    }

    #[test]
    fn errors_name_their_field() {
        let errs = check(
            r#"
            [limits]
            tokens_per_day = 0
            [[limits.users]]
            user = "a"
            [[limits.users]]
            user = "a"
            requests_per_minute = 0
            [[limits.models]]
            model = "nope"
            tokens_per_minute = 1
            [[limits.providers]]
            provider = "openai"
            [limits.redis]
            url = "http://x"
            lease_fraction = 0.9
            [limits.anomaly]
            multiple = 0.5
            "#,
        )
        .unwrap_err();
        let want = [
            "limits.tokens_per_day:",
            "limits.users[1].requests_per_minute:",
            "limits.users[1].user: duplicate",
            "limits.models[0].model: unknown model",
            "limits.providers[0]: sets no limit",
            "limits.redis.url:",
            "limits.redis.lease_fraction:",
            "limits.anomaly.multiple:",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "{w} missing in {errs:?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:?}");
    }

    #[test]
    fn limit_sets_merge_field_by_field_and_validate_with_paths() {
        let base = RawLimitSet {
            requests_per_minute: Some(2),
            tokens_per_day: Some(10),
            ..RawLimitSet::default()
        };
        let over = RawLimitSet {
            tokens_per_day: Some(20),
            concurrent_streams: Some(1),
            ..RawLimitSet::default()
        };
        let merged = base.merged(&over);
        assert_eq!(
            merged,
            RawLimitSet {
                requests_per_minute: Some(2),
                tokens_per_day: Some(20),
                concurrent_streams: Some(1),
                ..RawLimitSet::default()
            }
        );
        let entry = RawUserLimits::new("u", &merged);
        assert_eq!((entry.user.as_str(), entry.limit_set()), ("u", merged));
        assert!(RawLimitSet::default().is_empty() && !merged.is_empty());
        assert!(merged.validate("plan.limits").is_ok());

        let zero = RawLimitSet {
            monthly_token_budget: Some(0),
            ..merged
        };
        let errs: Vec<String> = zero
            .validate("plan.limits")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("plan.limits.monthly_token_budget: must be greater than 0"),
            "{errs:?}"
        );
        let e = serde_json::from_str::<RawLimitSet>(r#"{"tokens_per_hour": 1}"#).unwrap_err();
        assert!(e.to_string().contains("tokens_per_hour"), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = check("[limits]\ntokens_per_hour = 5\n").unwrap_err();
        assert!(e[0].contains("tokens_per_hour"), "{e:?}");
        let e = check("[[limits.providers]]\nprovider = \"openai\"\nconcurrent_streams = 5\n")
            .unwrap_err();
        assert!(e[0].contains("concurrent_streams"), "{e:?}");
    }
}
