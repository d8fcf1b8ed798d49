//! The data plane's config as written in TOML: serde types and nothing else.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently
//! ignored setting. Validation and defaults that need logic live in
//! [`crate::dataplane`]; this module only says what may be written.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The only config format version this build understands.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    pub tls: Option<RawTls>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: String,
    pub cert_file: String,
    pub key_file: String,
    #[serde(default)]
    pub self_signed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// Write one access-log line per request (default true).
    pub access_log: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    /// JSON-lines file that receives one usage event per request.
    pub file: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub jwt: Option<RawJwt>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub user: String,
    /// Hex SHA-256 of the full key string (`molt_sk_...`).
    pub sha256: String,
    /// Models (names or aliases) this key may use; absent means all.
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    pub provider: String,
    /// Name the provider knows the model by (default: `name`).
    pub upstream_name: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
}
