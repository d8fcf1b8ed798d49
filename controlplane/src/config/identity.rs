//! `[identity]`: the identity provider (Clerk), as written and resolved:
//! its webhooks' signing secret, and optionally where its signing keys are
//! published and which of its tokens data planes accept.
//!
//! ```toml
//! [identity]
//! webhook_secret_env = "MOLT_CLERK_WEBHOOK_SECRET"   # whsec_... (Clerk's endpoint secret)
//! jwks_url = "https://clerk.example.com/.well-known/jwks.json"
//! issuer = "https://clerk.example.com"              # required with jwks_url
//! authorized_parties = ["https://app.example.com"]  # `azp`: the app origins
//! # audiences = []  jwks_refresh = "5m"  ca_file = "/etc/molt/idp-ca.pem"
//! ```

use crate::identity::jwks::{JwksKeys, MIN_REFETCH};
use crate::identity::svix::WebhookSecret;
use crate::snapshot::IdentityTokens;
use molt_config::Secret;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Default and bounds of `jwks_refresh`.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Environment variable holding the webhook signing secret (`whsec_...`).
    pub webhook_secret_env: String,
    /// The provider's JWKS; without it, no provider token is accepted.
    pub jwks_url: Option<String>,
    /// The `iss` of the provider's tokens (Clerk: the Frontend API URL).
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `azp` values (Clerk: the app's origins); empty: not checked.
    #[serde(default)]
    pub authorized_parties: Vec<String>,
    /// Longest time between JWKS fetches (default 5m): a new key reaches
    /// the data planes within it. A shorter `Cache-Control: max-age` wins.
    #[serde(default, with = "humantime_serde")]
    pub jwks_refresh: Option<Duration>,
    /// PEM file of CA certificates trusted for an `https://` `jwks_url`.
    pub ca_file: Option<PathBuf>,
}

/// `[identity]`, resolved.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub webhook_secret: WebhookSecret,
    /// Where the JWKS is fetched from, if tokens are accepted.
    pub jwks: Option<JwksSource>,
}

/// Where and how often the provider's JWKS is fetched, and the set the
/// fetches fill (the one the snapshot compiler reads).
#[derive(Debug, Clone)]
pub struct JwksSource {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub refresh: Duration,
    pub keys: JwksKeys,
}

/// Resolve `[identity]` (its secret read as `secret`), every problem into
/// `errs`; the config and what the snapshot compiler needs of it.
pub(super) fn resolve_identity(
    raw: &RawIdentity,
    secret: Option<String>,
    errs: &mut Vec<String>,
) -> Option<(IdentityConfig, Option<IdentityTokens>)> {
    let webhook_secret = secret.and_then(|s| {
        WebhookSecret::parse(&Secret::new(s))
            .map_err(|e| errs.push(format!("identity.webhook_secret_env: {e}")))
            .ok()
    });
    let before = errs.len();
    let refresh = raw.jwks_refresh.unwrap_or(DEFAULT_REFRESH);
    if refresh < MIN_REFETCH || refresh > MAX_REFRESH {
        errs.push("identity.jwks_refresh: must be between 10s and 24h".into());
    }
    for (field, list) in [
        ("audiences", &raw.audiences),
        ("authorized_parties", &raw.authorized_parties),
    ] {
        if list.iter().any(String::is_empty) {
            errs.push(format!("identity.{field}: entries must not be empty"));
        }
    }
    let tokens = match &raw.jwks_url {
        Some(url) => {
            let https = match url.parse::<hyper::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                    u.scheme_str() == Some("https")
                }
                _ => {
                    errs.push(format!("identity.jwks_url: not an http(s) URL: {url:?}"));
                    false
                }
            };
            if raw.ca_file.is_some() && !https {
                errs.push("identity.ca_file: only with an https:// jwks_url".into());
            }
            let issuer = raw.issuer.clone().filter(|i| !i.is_empty());
            if issuer.is_none() {
                errs.push("identity.issuer: required with jwks_url".into());
            }
            issuer.map(|issuer| {
                let keys = JwksKeys::default();
                let source = JwksSource {
                    url: url.clone(),
                    ca_file: raw.ca_file.clone(),
                    refresh,
                    keys: keys.clone(),
                };
                let tokens = IdentityTokens {
                    issuer,
                    audiences: raw.audiences.clone(),
                    authorized_parties: raw.authorized_parties.clone(),
                    keys,
                };
                (source, tokens)
            })
        }
        None => {
            let only_with_url = [
                ("issuer", raw.issuer.is_some()),
                ("audiences", !raw.audiences.is_empty()),
                ("authorized_parties", !raw.authorized_parties.is_empty()),
                ("jwks_refresh", raw.jwks_refresh.is_some()),
                ("ca_file", raw.ca_file.is_some()),
            ];
            for (field, _) in only_with_url.iter().filter(|(_, set)| *set) {
                errs.push(format!("identity.{field}: only with jwks_url"));
            }
            None
        }
    };
    if errs.len() > before {
        return None;
    }
    let (jwks, tokens) = tokens.unzip();
    Some((
        IdentityConfig {
            webhook_secret: webhook_secret?,
            jwks,
        },
        tokens,
    ))
}
