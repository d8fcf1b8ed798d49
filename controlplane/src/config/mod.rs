//! `molt controlplane --config FILE`: the TOML file's shape
//! ([`RawControlplaneConfig`], `deny_unknown_fields`) and its resolution,
//! with secrets read from the environment or files, into [`Settings`].
//!
//! Secrets are never written in the file itself: the file names the
//! environment variable (or key file) that holds each one.
//!
//! ```toml
//! listen = "127.0.0.1:9700"
//! database_url = "sqlite://.molt/controlplane.db?mode=rwc"  # or postgres://...
//!
//! [secrets]
//! encryption_key_file = "/etc/molt/master.key"  # or encryption_key_env
//! # previous_encryption_keys_env = "MOLT_ENCRYPTION_KEYS_PREVIOUS"  # or _file
//! dataplane_token_env = "MOLT_DATAPLANE_TOKEN"
//! bootstrap_admin_token_env = "MOLT_ADMIN_TOKEN"
//!
//! [jwt]
//! issuer = "molt"
//! secret_env = "MOLT_JWT_SECRET"
//!
//! [billing]                       # optional: Stripe webhooks and metering
//! webhook_secret_env = "STRIPE_WEBHOOK_SECRET"
//! stripe_api_key_env = "STRIPE_API_KEY"
//! # stripe_base_url = "http://127.0.0.1:12111"  # the fake; default Stripe
//! # meter = "cost"                # or "tokens" (the meter before money)
//! # meter_unit = "0.00001"        # cost meter: USD per meter unit
//! # meter_event_name = "ai_cost"  # default: "ai_cost", or "ai_tokens" for tokens
//! # flush_interval = "1h"  window = "1h"  settle = "5m"  past_due_grace = "7d"
//!
//! [fleet]                         # optional: where bots are provisioned
//! kind = "fly"                    # or "local" (in-process mock bots)
//! api_url = "http://_api.internal:4280"  # fly only; the default (or https://api.machines.dev)
//! # ca_file = "/etc/molt/fly-ca.pem"  # fly only: extra CAs trusted for an https:// api_url
//! app = "molt-bots"               # fly only
//! token_env = "FLY_API_TOKEN"     # fly only
//! image = "registry.fly.io/molt-bot:latest"  # fly only
//! # region = "iad"
//! # gateway_url = "http://{id}.vm.{app}.internal:18789/"  # {id} {name} {app} {private_ip}
//! proxy_url = "https://gateway.example.com/v1"  # the bots' PROXY_URL
//! # default_model = "venice-uncensored"  fallback_models = []  volume_size_gb = 1
//! # health_deadline = "3m"  poll_interval = "1s"  step_timeout = "10s"  lease = "1m"
//! # max_attempts = 8  backoff = "1s"  concurrency = 4
//!
//! [identity]                      # optional: Clerk users and session tokens
//! webhook_secret_env = "MOLT_CLERK_WEBHOOK_SECRET"  # whsec_...; POST /webhooks/clerk
//! # jwks_url = "https://clerk.example.com/.well-known/jwks.json"
//! # issuer = "https://clerk.example.com"  authorized_parties = ["https://app.example.com"]
//! # audiences = []  jwks_refresh = "5m"  ca_file = "/etc/molt/idp-ca.pem"
//! [notifications]                 # optional: delivery of notifications (defaults shown)
//! # poll_interval = "1s"  max_attempts = 12  backoff = "5s"  max_backoff = "1h"
//! # lease = "1m"  concurrency = 8  webhook_timeout = "10s"
//! [notifications.email]           # optional: without it email deliveries are `skipped`
//! host = "smtp.example.com"
//! # port = 587                    # default by tls: 587, 465, 25
//! # tls = "starttls"              # or "tls" (implicit), "none" (a local sink only)
//! # username_env = "SMTP_USERNAME"  password_env = "SMTP_PASSWORD"
//! from = "Molt <notify@example.com>"
//! # ca_file = "/etc/molt/smtp-ca.pem"  timeout = "30s"
//!
//! [browser]                       # optional: shipped to every data plane
//! allowed_origins = ["https://app.example.com"]  # CORS and WebSocket Origin
//! # max_age = "10m"
//! ```

use crate::api::ApiSettings;
use crate::billing::{BillingSettings, Meter};
use crate::crypto::{sha256_hex, Cipher};
use crate::service::ServiceSettings;
use crate::snapshot::JwtSettings;
use molt_config::dataplane::Env;
use molt_config::money::Picodollars;
use molt_config::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod fleet;
mod identity;
mod notifications;

use fleet::resolve_fleet;
pub use fleet::{FleetConfig, FleetKind, RawFleet, RawFleetKind};
use identity::resolve_identity;
pub use identity::{IdentityConfig, JwksSource, RawIdentity};
use notifications::resolve_notifications;
pub use notifications::{NotificationsConfig, RawEmail, RawNotifications, RawSmtpTls};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControlplaneConfig {
    pub listen: String,
    pub database_url: String,
    #[serde(default)]
    pub max_connections: Option<u32>,
    pub secrets: RawSecrets,
    pub jwt: RawJwtIssuer,
    #[serde(default)]
    pub tuning: RawTuning,
    #[serde(default)]
    pub billing: Option<RawBilling>,
    #[serde(default)]
    pub fleet: Option<RawFleet>,
    /// `[identity]`: the identity provider's webhooks and tokens.
    #[serde(default)]
    pub identity: Option<RawIdentity>,
    /// `[notifications]`: delivery knobs and the SMTP server.
    #[serde(default)]
    pub notifications: Option<RawNotifications>,
    /// `[browser]`, shipped to every data plane in the snapshot (the
    /// origins browser apps may call from); without it, each data plane
    /// keeps its own file's.
    #[serde(default)]
    pub browser: Option<molt_config::browser::RawBrowser>,
}

/// `[billing]`: Stripe webhooks and the meter flush.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBilling {
    /// Environment variable holding the webhook signing secret (`whsec_...`).
    pub webhook_secret_env: String,
    /// Environment variable holding the Stripe secret key (`sk_...`).
    pub stripe_api_key_env: String,
    /// Another Stripe API base (the fake); default Stripe's.
    pub stripe_base_url: Option<String>,
    /// What the Stripe meter counts: `cost` (default: the billed cost in
    /// whole `meter_unit`s) or `tokens`.
    pub meter: Option<RawMeter>,
    /// A cost meter's unit, in USD as a decimal string (default
    /// `"0.00001"`, a thousandth of a cent).
    pub meter_unit: Option<String>,
    /// The meter's `event_name` (default `ai_cost`, or `ai_tokens` for a
    /// tokens meter).
    pub meter_event_name: Option<String>,
    /// How often usage is flushed to Stripe (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub flush_interval: Option<Duration>,
    /// Billing window width (default 1h; at least 1s). Each closed window
    /// is one meter event per customer, so short windows (seconds, for
    /// tests and `molt dev`) multiply Stripe calls.
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// Wait after a window closes for late usage (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub settle: Option<Duration>,
    /// Past-due time before suspension (default 7 days; 0 = at once).
    #[serde(default, with = "humantime_serde")]
    pub past_due_grace: Option<Duration>,
}

/// `[billing] meter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawMeter {
    Cost,
    Tokens,
}

/// The meter `b` describes; a bad unit is reported in `errs`.
fn resolve_meter(b: &RawBilling, errs: &mut Vec<String>) -> Meter {
    match b.meter.unwrap_or(RawMeter::Cost) {
        RawMeter::Tokens => {
            if b.meter_unit.is_some() {
                errs.push("billing.meter_unit: only for meter = \"cost\"".into());
            }
            Meter::Tokens
        }
        RawMeter::Cost => {
            let unit = match b.meter_unit.as_deref().map(Picodollars::parse_usd) {
                None => Meter::DEFAULT_UNIT,
                Some(Ok(u)) if !u.is_zero() => u,
                Some(Ok(_)) => {
                    errs.push("billing.meter_unit: must be above 0".into());
                    Meter::DEFAULT_UNIT
                }
                Some(Err(e)) => {
                    errs.push(format!("billing.meter_unit: {e}"));
                    Meter::DEFAULT_UNIT
                }
            };
            Meter::Cost { unit }
        }
    }
}

/// Billing, resolved.
#[derive(Debug, Clone)]
pub struct BillingConfig {
    pub settings: BillingSettings,
    pub stripe_api_key: Secret,
    pub stripe_base_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    /// File holding the 32-byte at-rest key (hex or base64).
    pub encryption_key_file: Option<PathBuf>,
    /// Environment variable holding the at-rest key (hex or base64).
    pub encryption_key_env: Option<String>,
    /// File holding previous at-rest keys, which only open what they
    /// sealed (during a rotation): each `KID:KEY` or `KEY`, separated by
    /// commas or whitespace. A missing or empty file is no previous key.
    pub previous_encryption_keys_file: Option<PathBuf>,
    /// Environment variable holding previous at-rest keys, as in the file.
    /// Unset or empty is no previous key, so a deployment can always name it.
    pub previous_encryption_keys_env: Option<String>,
    /// Environment variable holding the token data planes present.
    pub dataplane_token_env: String,
    /// Environment variable holding an admin token that always works.
    pub bootstrap_admin_token_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtIssuer {
    pub issuer: String,
    /// Environment variable holding the HS256 secret (at least 32 bytes).
    pub secret_env: String,
    /// Longest lifetime of a minted client JWT (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTuning {
    /// How long a config long-poll is held (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub poll_hold: Option<Duration>,
    /// How often the snapshot is recompiled for expiring keys (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub refresh_interval: Option<Duration>,
    /// How long audit entries are kept (default 90 days).
    #[serde(default, with = "humantime_serde")]
    pub audit_retention: Option<Duration>,
    /// Largest `/api/v1` request body (default 1 MiB).
    pub max_body_bytes: Option<usize>,
    /// Largest usage batch body (default 16 MiB).
    pub max_ingest_bytes: Option<usize>,
}

/// Everything the server needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    pub max_connections: u32,
    pub service: ServiceSettings,
    pub api: ApiSettings,
    pub refresh_interval: Duration,
    pub audit_retention: Duration,
    /// `None` without a `[billing]` section.
    pub billing: Option<BillingConfig>,
    /// `None` without a `[fleet]` section: bots can be requested but
    /// nothing provisions them.
    pub fleet: Option<FleetConfig>,
    /// `None` without an `[identity]` section.
    pub identity: Option<IdentityConfig>,
    /// How notifications are delivered (defaults without the section).
    pub notifications: NotificationsConfig,
}

/// Every problem found in a config file, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid control plane config:\n{}", .0.join("\n"))]
pub struct SettingsError(pub Vec<String>);

impl Settings {
    /// Read, parse and resolve a config file.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SettingsError(vec![format!("cannot read {}: {e}", path.display())]))?;
        let raw: RawControlplaneConfig =
            toml::from_str(&text).map_err(|e| SettingsError(vec![e.to_string()]))?;
        Self::resolve(raw, env)
    }

    /// Resolve a parsed config, collecting every error.
    pub fn resolve(raw: RawControlplaneConfig, env: &dyn Env) -> Result<Self, SettingsError> {
        let mut errs = Vec::new();
        let listen = raw
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| errs.push(format!("listen: {e}")))
            .ok();
        if raw.database_url.is_empty() {
            errs.push("database_url: must not be empty".to_owned());
        }
        let mut var = |field: &str, name: &str| match env.var(name) {
            Some(v) => Some(v),
            None => {
                errs.push(format!("{field}: environment variable {name} is not set"));
                None
            }
        };
        let key_text = match (
            &raw.secrets.encryption_key_file,
            &raw.secrets.encryption_key_env,
        ) {
            (Some(file), None) => std::fs::read_to_string(file)
                .map_err(|e| {
                    format!(
                        "secrets.encryption_key_file: cannot read {}: {e}",
                        file.display()
                    )
                })
                .map(Some),
            (None, Some(name)) => Ok(var("secrets.encryption_key_env", name)),
            _ => Err(
                "secrets: set exactly one of encryption_key_file or encryption_key_env".to_owned(),
            ),
        };
        let dataplane = var(
            "secrets.dataplane_token_env",
            &raw.secrets.dataplane_token_env,
        );
        let bootstrap = raw
            .secrets
            .bootstrap_admin_token_env
            .as_deref()
            .and_then(|name| var("secrets.bootstrap_admin_token_env", name));
        let jwt_secret = var("jwt.secret_env", &raw.jwt.secret_env);
        let fly_token = raw.fleet.as_ref().and_then(|f| {
            let name = f.token_env.as_deref()?;
            (f.kind == RawFleetKind::Fly).then(|| var("fleet.token_env", name))?
        });
        let billing_secrets = raw.billing.as_ref().map(|b| {
            (
                var("billing.webhook_secret_env", &b.webhook_secret_env),
                var("billing.stripe_api_key_env", &b.stripe_api_key_env),
            )
        });
        let identity_secret = raw
            .identity
            .as_ref()
            .and_then(|i| var("identity.webhook_secret_env", &i.webhook_secret_env));
        let cipher = match (key_text, previous_keys(&raw.secrets, env)) {
            (Ok(Some(text)), Ok(previous)) => Cipher::from_text(&text)
                .map_err(|e| format!("secrets: encryption key: {e}"))
                .and_then(|c| {
                    c.with_previous(&previous)
                        .map_err(|e| format!("secrets: previous encryption keys: {e}"))
                })
                .map_err(|e| errs.push(e))
                .ok(),
            (Ok(None), Ok(_)) => None,
            (key, previous) => {
                errs.extend(key.err());
                errs.extend(previous.err());
                None
            }
        };
        if dataplane.as_deref().is_some_and(|t| t.len() < 16) {
            errs.push("secrets.dataplane_token_env: token must be at least 16 characters".into());
        }
        if bootstrap.as_deref().is_some_and(|t| t.len() < 16) {
            errs.push(
                "secrets.bootstrap_admin_token_env: token must be at least 16 characters".into(),
            );
        }
        if jwt_secret.as_deref().is_some_and(|s| s.len() < 32) {
            errs.push("jwt.secret_env: HS256 secret must be at least 32 bytes".into());
        }
        if raw.jwt.issuer.is_empty() {
            errs.push("jwt.issuer: must not be empty".into());
        }
        let meter = raw.billing.as_ref().map(|b| resolve_meter(b, &mut errs));
        let billing = raw
            .billing
            .as_ref()
            .zip(billing_secrets)
            .and_then(|(b, (secret, key))| {
                let mut settings = BillingSettings::new(Secret::new(secret?));
                let f = &mut settings.flush;
                f.meter = meter?;
                f.event_name = b
                    .meter_event_name
                    .clone()
                    .unwrap_or_else(|| f.meter.default_event_name().to_owned());
                f.window = b.window.unwrap_or(f.window);
                f.settle = b.settle.unwrap_or(f.settle);
                settings.flush_interval = b.flush_interval.unwrap_or(settings.flush_interval);
                settings.past_due_grace = b.past_due_grace.unwrap_or(settings.past_due_grace);
                Some(BillingConfig {
                    settings,
                    stripe_api_key: Secret::new(key?),
                    stripe_base_url: b.stripe_base_url.clone(),
                })
            });
        if let Some(b) = &billing {
            let f = &b.settings.flush;
            if f.event_name.is_empty() || f.event_name.len() > 100 {
                errs.push("billing.meter_event_name: must be 1 to 100 characters".into());
            }
            // The flush works in whole milliseconds and Stripe's timestamps
            // in whole seconds: a window under a second would give several
            // windows the same meter event timestamp.
            if f.window < Duration::from_secs(1) || b.settings.flush_interval.is_zero() {
                errs.push("billing: window must be at least 1s and flush_interval above 0".into());
            }
        }
        let fleet = raw
            .fleet
            .as_ref()
            .and_then(|f| resolve_fleet(f, fly_token, &mut errs));
        let (identity, identity_tokens) = raw
            .identity
            .as_ref()
            .and_then(|i| resolve_identity(i, identity_secret, &mut errs))
            .unzip();
        let notifications = resolve_notifications(raw.notifications.as_ref(), env, &mut errs);
        if let Some(browser) = &raw.browser {
            let mut problems = molt_config::ConfigErrors::default();
            molt_config::browser::BrowserConfig::check(browser, &mut problems);
            errs.extend(
                problems
                    .0
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message)),
            );
        }
        let t = raw.tuning;
        let poll_hold = t.poll_hold.unwrap_or(Duration::from_secs(30));
        if poll_hold.is_zero() || poll_hold > Duration::from_secs(300) {
            errs.push("tuning.poll_hold: must be between 1ms and 5m".into());
        }
        match (listen, cipher, dataplane, jwt_secret) {
            (Some(listen), Some(cipher), Some(dataplane), Some(jwt_secret)) if errs.is_empty() => {
                Ok(Self {
                    listen,
                    database_url: raw.database_url,
                    max_connections: raw.max_connections.unwrap_or(8).max(1),
                    service: ServiceSettings {
                        cipher,
                        jwt: JwtSettings {
                            issuer: raw.jwt.issuer,
                            secret: Secret::new(jwt_secret),
                        },
                        bootstrap_admin_sha256: bootstrap.as_deref().map(sha256_hex),
                        dataplane_token_sha256: sha256_hex(&dataplane),
                        max_jwt_ttl: raw.jwt.max_ttl.unwrap_or(Duration::from_secs(3600)),
                        browser: raw.browser,
                        identity_tokens: identity_tokens.flatten(),
                    },
                    api: ApiSettings {
                        poll_hold,
                        max_body_bytes: t.max_body_bytes.unwrap_or(1 << 20),
                        max_ingest_bytes: t.max_ingest_bytes.unwrap_or(16 << 20),
                    },
                    refresh_interval: t.refresh_interval.unwrap_or(Duration::from_secs(5)),
                    audit_retention: t
                        .audit_retention
                        .unwrap_or(Duration::from_secs(90 * 24 * 3600)),
                    billing,
                    fleet,
                    identity,
                    notifications,
                })
            }
            _ => Err(SettingsError(errs)),
        }
    }
}

/// The previous at-rest keys' text (empty for none): from the file or the
/// variable `secrets` names, at most one of them.
fn previous_keys(secrets: &RawSecrets, env: &dyn Env) -> Result<String, String> {
    match (
        &secrets.previous_encryption_keys_file,
        &secrets.previous_encryption_keys_env,
    ) {
        (Some(_), Some(_)) => Err("secrets: set at most one of previous_encryption_keys_file or previous_encryption_keys_env".to_owned()),
        (Some(file), None) => match std::fs::read_to_string(file) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(format!(
                "secrets.previous_encryption_keys_file: cannot read {}: {e}",
                file.display()
            )),
        },
        (None, Some(name)) => Ok(env.var(name).unwrap_or_default()),
        (None, None) => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests;
