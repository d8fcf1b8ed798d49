//! The contract between Molt's planes.
//!
//! This crate owns the data plane's configuration in two forms and the usage
//! events the data plane emits:
//!
//! - [`wire`]: the serde types exactly as written in TOML and as the control
//!   plane ships them in a snapshot. Versioned, no logic; unknown fields are
//!   the reader's decision ([`unknown`]: an error with its path in a file,
//!   ignored and reported in a snapshot).
//! - [`dataplane`]: the validated internal types, built only through
//!   [`DataplaneConfig::from_wire`] / `TryFrom`, which checks every field and
//!   reports *all* problems with their field paths ([`ConfigErrors`]).
//! - [`browser`]: `[browser]`, the origins browser apps may call from.
//! - [`jwks`]: `[auth.jwks]`, an identity provider's tokens verified
//!   against its published keys and mapped to Molt users.
//! - [`usage`]: one [`UsageEvent`] per completed request, its tokens split
//!   into the classes providers price apart ([`usage::TokenClasses`]).
//! - [`money`]: amounts in integer picodollars, token prices per class, and
//!   the exact cost of a usage.
//! - [`contract`]: everything that crosses between the planes: the
//!   `/internal/v1` paths and auth header, the usage batch and its answer,
//!   the batch limits, reading a snapshot from a newer control plane.
//! - [`text_enum!`]: enums of names with one text mapping
//!   ([`ProviderKind`], and the control plane's statuses).
//! - [`secret`]: [`Secret`], a string whose `Debug`/`Display` never show it.
//! - [`outbound`]: what every outbound HTTPS client of either plane takes
//!   from config and shares: the certificates of a `ca_file`, and the cause
//!   chain of a failed connection for its error message.
//! - [`files`]: replacing a file whole (temp file, fsync, rename).
//! - [`metrics`]: [`metrics::Registrar`], making a Prometheus metric and
//!   registering it in one call, for both planes' registries.
//! - [`ready`]: the ready file every server writes once its listeners are
//!   bound (`--ready-file`), naming the address each one got.
//!
//! Architecture invariant: this crate does no network I/O and depends on no
//! runtime (no tokio, pingora, sqlx); reading and writing a file and the
//! environment is the most it does, so both planes and the benches can
//! depend on it freely.

pub mod browser;
pub mod contract;
pub mod dataplane;
pub mod error;
pub mod files;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod money;
pub mod outbound;
pub mod ready;
pub mod secret;
mod text_enum;
pub mod unknown;
pub mod usage;
pub mod wire;

pub use dataplane::{
    ApiFormat, ApiKey, AuthStyle, DataplaneConfig, JwtAlgorithm, JwtConfig, LogFormat, Model,
    Provider, ProviderKind, ServerConfig, TlsConfig, UpstreamUrl,
};
pub use error::{ConfigError, ConfigErrors};
pub use money::{ModelPrice, Picodollars, TokenClass, TokenPrice};
pub use secret::Secret;
pub use usage::{TokenClasses, UsageEvent};

/// Hex SHA-256 of a client API key: the only form in which keys are stored.
pub fn hash_api_key(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(key.as_bytes()))
}
