//! The data plane's config as written in TOML: serde types and nothing else.
//!
//! No struct denies unknown fields itself: the reader decides
//! ([`crate::unknown`]). A file is read strictly, so a typo is an error with
//! its path, not a silently ignored setting; a snapshot from a newer control
//! plane is read without the fields this build does not know. Validation
//! and defaults that need logic live in [`crate::dataplane`]; this module
//! only says what may be written.

pub use crate::limits::RawLimits;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The only config format version this build understands.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawDataplaneConfig {
    pub version: u32,
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub usage: RawUsage,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// `[limits]`: rate limits, token budgets, anomaly detection.
    #[serde(default)]
    pub limits: RawLimits,
    /// Users' bots: where `GET /ws/chat?bot=<id>` connects.
    #[serde(default)]
    pub bots: Vec<RawBot>,
    /// WebSocket relay limits and ticket settings.
    #[serde(default)]
    pub websocket: RawWebSocket,
    #[serde(default, skip_serializing_if = "is_default")]
    pub browser: crate::browser::RawBrowser,
    /// `[control_plane]`: take keys, providers, models and limits from a
    /// control plane and ship usage to it. Absent: the file is the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<RawControlPlane>,
}

/// `[control_plane]`: where this data plane's operator-managed config comes
/// from and where its usage goes. Stays in each data plane's own file; a
/// snapshot never changes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawControlPlane {
    /// Base URL of the control plane, `http://host:port` or
    /// `https://host:port`.
    pub url: String,
    /// PEM file of CA certificates trusted for an `https://` `url`, on top
    /// of the platform's roots (a private CA, or a self-signed control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Environment variable holding the data-plane token.
    pub token_env: String,
    /// Where the last accepted snapshot is kept, so a restart without the
    /// control plane still serves it. Holds master keys: written mode 0600.
    pub cache_file: String,
    /// Directory of the durable usage spool.
    pub spool_dir: String,
    /// Most unshipped usage the spool holds before it drops (default 1 GiB).
    pub spool_max_bytes: Option<u64>,
    /// How often the spool ships what it holds (default 1s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ship_interval: Option<Duration>,
    /// Hold the end of each response until its usage event is fsynced in
    /// the spool (default true), so a response the client saw complete is
    /// never lost to a `kill -9`. Costs one group commit at the end of every
    /// response; `false` ends responses at once and can lose the usage of
    /// those that ended in the last group commit before a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_response_until_recorded: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawServer {
    pub listen: String,
    pub threads: Option<usize>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub grace_period: Option<Duration>,
    pub max_body_bytes: Option<u64>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_body_timeout: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_connect_timeout: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_read_timeout: Option<Duration>,
    /// The whole request header must arrive within this (slow clients).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub header_timeout: Option<Duration>,
    /// An idle keep-alive connection is closed after this.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub keepalive_timeout: Option<Duration>,
    /// Client connections this process holds at most.
    pub max_connections: Option<u64>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawTls {
    pub listen: String,
    pub cert_file: String,
    pub key_file: String,
    #[serde(default)]
    pub self_signed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// Write one access-log line per request (default true).
    pub access_log: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawUsage {
    /// JSON-lines file that receives one usage event per request.
    pub file: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawAuth {
    pub jwt: Option<RawJwt>,
    /// `[auth.jwks]`: an identity provider's own tokens, verified against
    /// its published keys (in a snapshot: fetched by the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<crate::jwks::RawJwks>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawJwt {
    pub issuer: String,
    /// `HS256`, `RS256` or `EdDSA`; tokens signed otherwise are rejected.
    pub algorithm: String,
    /// HMAC secret (HS256).
    pub secret: Option<String>,
    /// Environment variable holding the HMAC secret (HS256).
    pub secret_env: Option<String>,
    /// PEM public key file (RS256, EdDSA).
    pub public_key_file: Option<String>,
    pub audience: Option<String>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub leeway: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawKey {
    pub id: String,
    pub user: String,
    /// Hex SHA-256 of the full key string (`molt_sk_...`).
    pub sha256: String,
    /// Models (names or aliases) this key may use; absent means all.
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawProvider {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    /// Master keys written inline.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Environment variables holding master keys.
    #[serde(default)]
    pub keys_env: Vec<String>,
    /// `anthropic-version` sent when the client sent none (Anthropic kinds).
    pub anthropic_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawModel {
    pub name: String,
    pub provider: String,
    /// Name the provider knows the model by (default: `name`).
    pub upstream_name: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// What the model costs, for dollar budgets. The control plane ships
    /// the price in force; the cost it bills is its own, fixed at ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<RawModelPrice>,
}

/// A model's prices in dollars per million tokens, as decimal strings
/// (`"2.50"`, at most six decimals). `input` and `output` are required; a
/// class left out is charged at its base price (input, or output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RawModelPrice {
    pub input: String,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m_input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h_input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_output: Option<String>,
}

/// A user's bot gateway, reached by the WebSocket chat router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawBot {
    pub id: String,
    /// The user who owns the bot; only their keys may chat with it.
    pub user: String,
    /// The bot's WebSocket endpoint: `ws://host:port/path`, or
    /// `http://host:port[/path]` (same thing, path defaults to `/`).
    pub gateway_url: String,
    /// Sent to the bot as `Authorization: Bearer <token>`.
    pub gateway_token: String,
}

/// `[websocket]`: limits of the WebSocket relay. Every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawWebSocket {
    /// Close a connection with no traffic either way for this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Ping the client after this long without hearing from it.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ping_interval: Option<Duration>,
    pub max_message_bytes: Option<u64>,
    pub max_frame_bytes: Option<u64>,
    pub max_connections_per_user: Option<u32>,
    /// Lifetime of a ticket from `POST /v1/ws/tickets`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ticket_ttl: Option<Duration>,
    /// HMAC key for tickets; random per process when absent (tickets then
    /// only work on the data plane that issued them).
    pub ticket_secret: Option<String>,
    /// Environment variable holding `ticket_secret`.
    pub ticket_secret_env: Option<String>,
}

/// What the control plane pushes to every data plane: the parts of the
/// config that operators manage. Listener, log and usage settings stay in
/// each data plane's own file; a snapshot replaces `auth`, `keys`,
/// `providers`, `models` and `bots` wholesale.
///
/// Served by `GET /internal/v1/config?after=<version>` as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawSnapshot {
    /// Monotonic version; a data plane only moves forward.
    pub version: u64,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// `[limits]`: rate limits, token budgets, anomaly detection.
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub bots: Vec<RawBot>,
    /// `[browser]` for every data plane; absent, each keeps its file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<crate::browser::RawBrowser>,
}

impl RawDataplaneConfig {
    /// This file's config with the operator-managed parts replaced by `snap`.
    pub fn with_snapshot(mut self, snap: RawSnapshot) -> Self {
        self.auth = snap.auth;
        self.keys = snap.keys;
        self.providers = snap.providers;
        self.models = snap.models;
        // `[limits.redis]` stays this file's: each data plane's Redis is local.
        self.limits = RawLimits {
            redis: self.limits.redis.take(),
            ..snap.limits
        };
        self.bots = snap.bots;
        if let Some(browser) = snap.browser {
            self.browser = browser;
        }
        self
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
