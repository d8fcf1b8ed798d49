//! `[browser]`: what browser apps on other origins may do. One list of
//! allowed origins serves both CORS on the HTTP routes a browser calls (the
//! WebSocket ticket issuer, the OpenAI and Anthropic routes with a
//! short-lived token) and the `Origin` check of WebSocket upgrades.
//!
//! ```toml
//! [browser]
//! allowed_origins = ["https://app.example.com", "https://*.example.com"]
//! max_age = "10m"   # how long a browser may cache a preflight answer
//! ```
//!
//! An entry is an exact origin (`scheme://host[:port]`) or a suffix pattern
//! (`scheme://*.domain`, any subdomain of `domain`, not `domain` itself).
//! `*` alone is refused: the gateway answers credentialed requests, and a
//! wildcard would let every site on the web drive them. With the list
//! empty (the default) no CORS header is ever sent and upgrades are not
//! checked for an `Origin`.

use crate::error::ConfigErrors;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[browser]` as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawBrowser {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
}

/// Default `max_age`: browsers cap it anyway (Chromium at 2 h, Firefox 24 h).
pub const DEFAULT_PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// `[browser]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserConfig {
    pub allowed_origins: Vec<OriginPattern>,
    pub max_age: Duration,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age: DEFAULT_PREFLIGHT_MAX_AGE,
        }
    }
}

impl BrowserConfig {
    /// Whether `origin` (an `Origin` header's value) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|p| p.matches(origin))
    }

    /// Whether any origin is configured at all.
    pub fn is_enabled(&self) -> bool {
        !self.allowed_origins.is_empty()
    }

    /// Check `raw` as a data plane would, collecting its problems in
    /// `errs` (for a control plane that ships it).
    pub fn check(raw: &RawBrowser, errs: &mut ConfigErrors) {
        Self::from_wire(raw, errs);
    }

    pub(crate) fn from_wire(raw: &RawBrowser, errs: &mut ConfigErrors) -> Self {
        let mut allowed_origins = Vec::with_capacity(raw.allowed_origins.len());
        for (i, text) in raw.allowed_origins.iter().enumerate() {
            match OriginPattern::parse(text) {
                Ok(p) => allowed_origins.push(p),
                Err(why) => errs.push(format!("browser.allowed_origins[{i}]"), why),
            }
        }
        let max_age = raw.max_age.unwrap_or(DEFAULT_PREFLIGHT_MAX_AGE);
        if max_age > Duration::from_secs(86_400) {
            errs.push("browser.max_age", "must be at most 24h");
        }
        Self {
            allowed_origins,
            max_age,
        }
    }
}

/// One allowed origin, exact or a subdomain pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `https://app.example.com`, compared whole (ASCII case-insensitive).
    Exact(String),
    /// `https://*.example.com`: `scheme` `://` anything `.example.com`.
    Subdomains {
        scheme: String,
        /// `.example.com`, with its leading dot.
        suffix: String,
    },
}

impl OriginPattern {
    /// Parse a configured origin; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" || text == "null" {
            return Err(format!(
                "{text:?} is not allowed: list the origins (or `https://*.domain`) that may call the gateway"
            ));
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("expected `scheme://host[:port]`, got {text:?}"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("the scheme must be http or https, got {scheme:?}"));
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "an origin is `scheme://host[:port]` with no path, query or user, got {text:?}"
            ));
        }
        if let Some(domain) = rest.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') || !domain.contains('.') {
                return Err(format!(
                    "a pattern is `{scheme}://*.domain.tld`, got {text:?}"
                ));
            }
            return Ok(Self::Subdomains {
                scheme: scheme.to_owned(),
                suffix: format!(".{}", domain.to_ascii_lowercase()),
            });
        }
        if rest.contains('*') {
            return Err(format!(
                "`*` may only stand for subdomains, as in `{scheme}://*.example.com`, got {text:?}"
            ));
        }
        Ok(Self::Exact(text.to_ascii_lowercase()))
    }

    /// Whether `origin` matches.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Exact(o) => o.eq_ignore_ascii_case(origin),
            Self::Subdomains { scheme, suffix } => {
                let Some(host) = origin
                    .strip_prefix(scheme.as_str())
                    .and_then(|r| r.strip_prefix("://"))
                else {
                    return false;
                };
                let host = host.to_ascii_lowercase();
                // The label before the suffix must be a real one.
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && !host[..host.len() - suffix.len()].is_empty()
                    && !host.contains(['/', '@'])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origins: &[&str]) -> Result<BrowserConfig, ConfigErrors> {
        let mut errs = ConfigErrors::default();
        let raw = RawBrowser {
            allowed_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            max_age: None,
        };
        let c = BrowserConfig::from_wire(&raw, &mut errs);
        if errs.is_empty() {
            Ok(c)
        } else {
            Err(errs)
        }
    }

    #[test]
    fn exact_origins_and_subdomain_patterns_match_as_browsers_send_them() {
        let c = config(&[
            "https://app.example.com",
            "http://127.0.0.1:3000",
            "https://*.molt.dev",
        ])
        .unwrap();
        assert!(c.allows("https://app.example.com"));
        assert!(c.allows("https://APP.example.com"));
        assert!(c.allows("http://127.0.0.1:3000"));
        assert!(c.allows("https://a.molt.dev"));
        assert!(c.allows("https://a.b.molt.dev"));
        assert!(
            !c.allows("https://molt.dev"),
            "the domain itself is not a subdomain"
        );
        assert!(
            !c.allows("http://a.molt.dev"),
            "the scheme is part of the origin"
        );
        assert!(!c.allows("https://evilmolt.dev"));
        assert!(!c.allows("https://app.example.com.evil.io"));
        assert!(!c.allows("http://127.0.0.1:3001"));
        assert!(!c.allows("null"));
        assert_eq!(c.max_age, DEFAULT_PREFLIGHT_MAX_AGE);
    }

    #[test]
    fn wildcards_paths_and_bad_schemes_are_refused_with_their_path() {
        let errs = config(&[
            "*",
            "https://app.example.com/",
            "ftp://x.io",
            "https://a*.io",
            "https://*.io",
        ])
        .unwrap_err();
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "browser.allowed_origins[0]",
                "browser.allowed_origins[1]",
                "browser.allowed_origins[2]",
                "browser.allowed_origins[3]",
                "browser.allowed_origins[4]"
            ]
        );
    }
}
