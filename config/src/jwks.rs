//! `[auth.jwks]`: clients authenticated by an identity provider's own
//! short-lived tokens (Clerk session tokens), verified against the
//! provider's published keys (a JWKS) and mapped to Molt users by subject.
//!
//! ```toml
//! [auth.jwks]
//! issuer = "https://clerk.example.com"          # `iss`, exactly
//! authorized_parties = ["https://app.example.com"]  # `azp` (Clerk: the origin)
//! # audiences = ["molt"]                         # `aud`, when the provider sets one
//! # leeway = "5s"
//! [[auth.jwks.keys]]                              # the JWKS's keys, as published
//! kid = "ins_abc"
//! kty = "RSA"                                     # RS256; or kty = "EC", crv = "P-256" (ES256)
//! n = "0vx7agoebGcQSuuPiLJXZpt..."
//! e = "AQAB"
//! [auth.jwks.users]                               # subject (Clerk user id) -> Molt user id
//! "user_2abc" = "usr_0193..."
//! ```
//!
//! With a control plane, the whole section comes in the snapshot: the
//! control plane fetches and caches the JWKS (the data plane does no I/O
//! for it) and maps its users. A token is accepted when its header's `kid`
//! names one of `keys`, its signature verifies with the algorithm that key
//! implies (RS256 for RSA, ES256 for P-256; anything else, `none`
//! included, is refused), `iss` equals `issuer`, `exp` is in the future,
//! `aud` is one of `audiences` and `azp` one of `authorized_parties` when
//! those are set, and `sub` is in `users`. Keys are checked here (sizes,
//! base64url) so a bad one is a config error, not a request-time surprise.

use crate::error::ConfigErrors;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// A P-256 coordinate, in bytes.
const P256_COORDINATE_BYTES: usize = 32;

/// `[auth.jwks]` as written (and as a snapshot carries it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawJwks {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// Accepted `aud` values; empty: `aud` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Accepted `azp` values (Clerk puts the app's origin there); empty:
    /// `azp` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_parties: Vec<String>,
    /// The provider's signing keys, as its JWKS publishes them.
    #[serde(default)]
    pub keys: Vec<RawJwk>,
    /// Subject (`sub`, the provider's user id) to Molt user id. A token
    /// whose subject is not here is refused.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Clock skew allowed on `exp` and `nbf` (default 5s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub leeway: Option<Duration>,
}

/// One key of a JWKS (RFC 7517), with the members Molt reads; others
/// (`x5c`, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawJwk {
    #[serde(default)]
    pub kid: String,
    #[serde(default)]
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// RSA modulus and exponent (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC curve and point (base64url coordinates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

impl RawJwk {
    /// Whether this build can verify with the key (a signing key, RSA or
    /// P-256, whose `alg` if given is the one that implies): what a control
    /// plane keeps from a fetched JWKS. Sizes are checked by validation.
    pub fn is_supported(&self) -> bool {
        let sig = self.use_.as_deref().is_none_or(|u| u == "sig");
        sig && !self.kid.is_empty() && key_of(self).is_ok()
    }
}

/// `[auth.jwks]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub authorized_parties: Vec<String>,
    /// Unique by `kid`.
    pub keys: Vec<Jwk>,
    /// Subject to Molt user id.
    pub users: HashMap<String, String>,
    pub leeway: Duration,
}

/// A verification key and the one algorithm it is used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: String,
    pub key: JwkKey,
}

/// Key material, base64url as published (what `jsonwebtoken` builds a
/// decoding key from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwkKey {
    /// RS256.
    Rsa { n: String, e: String },
    /// ES256.
    EcP256 { x: String, y: String },
}

/// The key material of `jwk`, or why it is not usable.
fn key_of(jwk: &RawJwk) -> Result<JwkKey, String> {
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("`{name}` is required for kty {:?}", jwk.kty))
    };
    let (key, alg) = match jwk.kty.as_str() {
        "RSA" => (
            JwkKey::Rsa {
                n: need(&jwk.n, "n")?,
                e: need(&jwk.e, "e")?,
            },
            "RS256",
        ),
        "EC" => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err(format!("crv must be \"P-256\", got {:?}", jwk.crv));
            }
            (
                JwkKey::EcP256 {
                    x: need(&jwk.x, "x")?,
                    y: need(&jwk.y, "y")?,
                },
                "ES256",
            )
        }
        other => return Err(format!("kty must be \"RSA\" or \"EC\", got {other:?}")),
    };
    match jwk.alg.as_deref() {
        None => Ok(key),
        Some(a) if a == alg => Ok(key),
        Some(a) => Err(format!("alg {a:?} does not match the key (expected {alg})")),
    }
}

/// The decoded length of a base64url member, or why it does not decode.
fn decoded_len(text: &str) -> Result<usize, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map(|b| b.len())
        .map_err(|e| format!("not base64url: {e}"))
}

fn check_sizes(key: &JwkKey) -> Result<(), String> {
    match key {
        JwkKey::Rsa { n, e } => {
            if decoded_len(n)? < MIN_RSA_MODULUS_BYTES {
                return Err("RSA modulus must be at least 2048 bits".into());
            }
            if decoded_len(e)? == 0 {
                return Err("RSA exponent is empty".into());
            }
        }
        JwkKey::EcP256 { x, y } => {
            if decoded_len(x)? != P256_COORDINATE_BYTES || decoded_len(y)? != P256_COORDINATE_BYTES
            {
                return Err("P-256 coordinates must be 32 bytes each".into());
            }
        }
    }
    Ok(())
}

impl JwksConfig {
    /// Validate `raw`, every problem into `errs` under `auth.jwks...`.
    pub(crate) fn from_wire(raw: &RawJwks, errs: &mut ConfigErrors) -> Option<Self> {
        let before = errs.0.len();
        if raw.issuer.is_empty() {
            errs.push("auth.jwks.issuer", "must not be empty");
        }
        for (field, list) in [
            ("audiences", &raw.audiences),
            ("authorized_parties", &raw.authorized_parties),
        ] {
            if let Some(i) = list.iter().position(String::is_empty) {
                errs.push(format!("auth.jwks.{field}[{i}]"), "must not be empty");
            }
        }
        let mut kids = HashSet::new();
        let mut keys = Vec::with_capacity(raw.keys.len());
        for (i, jwk) in raw.keys.iter().enumerate() {
            let path = format!("auth.jwks.keys[{i}]");
            if jwk.kid.is_empty() {
                errs.push(format!("{path}.kid"), "must not be empty");
            } else if !kids.insert(jwk.kid.as_str()) {
                errs.push(format!("{path}.kid"), format!("{:?} is repeated", jwk.kid));
            }
            if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
                errs.push(format!("{path}.use"), "must be \"sig\" when given");
            }
            match key_of(jwk).and_then(|k| check_sizes(&k).map(|()| k)) {
                Ok(key) => keys.push(Jwk {
                    kid: jwk.kid.clone(),
                    key,
                }),
                Err(why) => errs.push(path, why),
            }
        }
        for (sub, user) in &raw.users {
            if sub.is_empty() || user.is_empty() {
                errs.push(
                    "auth.jwks.users",
                    format!("subject and user must not be empty ({sub:?} = {user:?})"),
                );
            }
        }
        let leeway = raw.leeway.unwrap_or(Duration::from_secs(5));
        if leeway > Duration::from_secs(300) {
            errs.push("auth.jwks.leeway", "must be at most 5m");
        }
        (errs.0.len() == before).then(|| Self {
            issuer: raw.issuer.clone(),
            audiences: raw.audiences.clone(),
            authorized_parties: raw.authorized_parties.clone(),
            keys,
            users: raw
                .users
                .iter()
                .map(|(s, u)| (s.clone(), u.clone()))
                .collect(),
            leeway,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(n: usize) -> String {
        URL_SAFE_NO_PAD.encode(vec![7u8; n])
    }

    fn ec(kid: &str) -> RawJwk {
        RawJwk {
            kid: kid.into(),
            kty: "EC".into(),
            crv: Some("P-256".into()),
            x: Some(b64(32)),
            y: Some(b64(32)),
            alg: Some("ES256".into()),
            use_: Some("sig".into()),
            ..RawJwk::default()
        }
    }

    fn rsa(kid: &str) -> RawJwk {
        RawJwk {
            kid: kid.into(),
            kty: "RSA".into(),
            n: Some(b64(256)),
            e: Some("AQAB".into()),
            ..RawJwk::default()
        }
    }

    fn raw(keys: Vec<RawJwk>) -> RawJwks {
        RawJwks {
            issuer: "https://clerk.example.com".into(),
            keys,
            users: BTreeMap::from([("user_1".into(), "usr_1".into())]),
            ..RawJwks::default()
        }
    }

    #[test]
    fn rsa_and_p256_keys_validate() {
        let mut errs = ConfigErrors::default();
        let c = JwksConfig::from_wire(&raw(vec![ec("a"), rsa("b")]), &mut errs).unwrap();
        assert!(errs.is_empty(), "{errs}");
        assert!(matches!(c.keys[0].key, JwkKey::EcP256 { .. }));
        assert!(matches!(c.keys[1].key, JwkKey::Rsa { .. }));
        assert_eq!(c.users["user_1"], "usr_1");
        assert_eq!(c.leeway, Duration::from_secs(5));
    }

    #[test]
    fn bad_keys_are_errors_with_their_path() {
        let mut short = rsa("short");
        short.n = Some(b64(128));
        let mut wrong_alg = ec("alg");
        wrong_alg.alg = Some("RS256".into());
        let mut curve = ec("curve");
        curve.crv = Some("P-384".into());
        let mut enc = ec("enc");
        enc.use_ = Some("enc".into());
        let okp = RawJwk {
            kid: "okp".into(),
            kty: "OKP".into(),
            ..RawJwk::default()
        };
        let keys = vec![
            short,
            wrong_alg,
            curve,
            enc,
            okp,
            ec("dup"),
            ec("dup"),
            ec(""),
        ];
        let mut errs = ConfigErrors::default();
        let mut r = raw(keys);
        r.issuer.clear();
        r.authorized_parties = vec![String::new()];
        assert!(JwksConfig::from_wire(&r, &mut errs).is_none());
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "auth.jwks.issuer",
            "auth.jwks.authorized_parties[0]",
            "auth.jwks.keys[0]",
            "auth.jwks.keys[1]",
            "auth.jwks.keys[2]",
            "auth.jwks.keys[3].use",
            "auth.jwks.keys[4]",
            "auth.jwks.keys[6].kid",
            "auth.jwks.keys[7].kid",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }

    #[test]
    fn only_usable_signing_keys_are_supported() {
        assert!(ec("a").is_supported() && rsa("b").is_supported());
        let mut enc = ec("a");
        enc.use_ = Some("enc".into());
        assert!(!enc.is_supported());
        assert!(!ec("").is_supported());
        let mut hs = rsa("c");
        hs.alg = Some("RS384".into());
        assert!(!hs.is_supported());
    }

    #[test]
    fn a_published_jwks_parses_with_unknown_members_ignored() {
        let text = r#"{"use":"sig","kty":"RSA","kid":"ins_1","alg":"RS256","n":"abc","e":"AQAB","x5c":["..."]}"#;
        let jwk: RawJwk = serde_json::from_str(text).unwrap();
        assert_eq!(jwk.kid, "ins_1");
        assert_eq!(jwk.use_.as_deref(), Some("sig"));
    }
}
