//! Client authentication with no I/O: molt API keys by hash, JWTs by
//! signature.
//!
//! API keys (`molt_sk_...`) are looked up by their SHA-256 in a map built at
//! config load; the config never holds a key itself. JWTs are verified with
//! the one algorithm the config pins (a token that names another algorithm,
//! including `none`, is rejected), with `exp` required and `iss` checked.
//! An identity provider's tokens (`[auth.jwks]`, [`jwks`]) are told apart by
//! their header's `kid` naming one of the provider's keys; every other JWT
//! goes to the pinned `[auth.jwt]` key. Either way the usage key id is
//! [`JWT_KEY_ID`].

mod jwks;

use molt_config::dataplane::{ApiKey, JwtAlgorithm, JwtConfig, JwtKey};
use molt_config::jwks::JwksConfig;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Prefix of every molt API key.
pub const API_KEY_PREFIX: &str = "molt_sk_";
/// The key id of every request authenticated by a JWT (pinned or JWKS).
pub const JWT_KEY_ID: &str = "jwt";

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's id, or `jwt`.
    pub key_id: Arc<str>,
    pub user: Arc<str>,
    /// Canonical model names this caller may use; `None` means all.
    pub models: Option<Arc<HashSet<String>>>,
}

impl Principal {
    pub fn may_use(&self, canonical_model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.contains(canonical_model))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential was sent")]
    Missing,
    #[error("the credential is not valid")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    models: Option<Vec<String>>,
}

struct JwtVerifier {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

/// Everything needed to authenticate a request, built once per config.
pub struct Authenticator {
    keys: HashMap<[u8; 32], Principal>,
    jwt: Option<JwtVerifier>,
    jwks: Option<jwks::JwksVerifier>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("jwt", &self.jwt.is_some())
            .field("jwks_keys", &self.jwks.as_ref().map(|j| j.key_count()))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthBuildError(String);

impl Authenticator {
    /// `resolve` maps a model name from a JWT's `models` claim to its
    /// canonical name.
    pub fn new(keys: &[ApiKey], jwt: Option<&JwtConfig>) -> Result<Self, AuthBuildError> {
        let keys = keys
            .iter()
            .map(|k| {
                let principal = Principal {
                    key_id: Arc::from(k.id.as_str()),
                    user: Arc::from(k.user.as_str()),
                    models: k
                        .models
                        .as_ref()
                        .map(|m| Arc::new(m.iter().cloned().collect())),
                };
                (k.sha256, principal)
            })
            .collect();
        let jwt = jwt.map(build_jwt).transpose()?;
        Ok(Self {
            keys,
            jwt,
            jwks: None,
        })
    }

    /// Also accept the identity provider's tokens `[auth.jwks]` describes
    /// (each key made a decoding key here, once per config).
    pub fn with_jwks(mut self, jwks: Option<&JwksConfig>) -> Result<Self, AuthBuildError> {
        self.jwks = jwks.map(jwks::JwksVerifier::new).transpose()?;
        Ok(self)
    }

    /// Authenticate a bearer credential. `canonical` maps model names in a
    /// JWT's `models` claim to canonical names (unknown names are dropped).
    pub fn authenticate(
        &self,
        credential: Option<&str>,
        canonical: impl Fn(&str) -> Option<String>,
    ) -> Result<Principal, AuthError> {
        let token = credential
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        if token.starts_with(API_KEY_PREFIX) {
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            return self.keys.get(&hash).cloned().ok_or(AuthError::Invalid);
        }
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(AuthError::Invalid);
        }
        if let Some(jwks) = &self.jwks {
            let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
            match header.kid.as_deref() {
                Some(kid) if jwks.knows(kid) => return jwks.verify(token, kid),
                // A provider key we do not hold (rotated out, or not yet
                // fetched) is refused, not tried against the pinned key.
                Some(_) if self.jwt.is_none() => return Err(AuthError::Invalid),
                _ => {}
            }
        }
        let verifier = self.jwt.as_ref().ok_or(AuthError::Invalid)?;
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid);
        }
        Ok(Principal {
            key_id: Arc::from(JWT_KEY_ID),
            user: Arc::from(data.claims.sub.as_str()),
            models: data
                .claims
                .models
                .map(|m| Arc::new(m.iter().filter_map(|n| canonical(n)).collect())),
        })
    }
}

fn build_jwt(cfg: &JwtConfig) -> Result<JwtVerifier, AuthBuildError> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let (alg, key) = match (&cfg.algorithm, &cfg.key) {
        (JwtAlgorithm::Hs256, JwtKey::Hmac(s)) => (
            Algorithm::HS256,
            DecodingKey::from_secret(s.expose().as_bytes()),
        ),
        (JwtAlgorithm::Rs256, JwtKey::PublicKeyPem(pem)) => (
            Algorithm::RS256,
            DecodingKey::from_rsa_pem(pem).map_err(|e| AuthBuildError(format!("auth.jwt: {e}")))?,
        ),
        (JwtAlgorithm::EdDsa, JwtKey::PublicKeyPem(pem)) => (
            Algorithm::EdDSA,
            DecodingKey::from_ed_pem(pem).map_err(|e| AuthBuildError(format!("auth.jwt: {e}")))?,
        ),
        _ => {
            return Err(AuthBuildError(
                "auth.jwt: algorithm and key type do not match".into(),
            ))
        }
    };
    // `Validation::new` pins the algorithm list to exactly this one.
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[&cfg.issuer]);
    validation.leeway = cfg.leeway.as_secs();
    match &cfg.audience {
        Some(aud) => {
            // `aud` is only checked when present unless it is required.
            validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
            validation.set_audience(&[aud]);
        }
        None => {
            validation.set_required_spec_claims(&["exp", "iss", "sub"]);
            validation.validate_aud = false;
        }
    }
    Ok(JwtVerifier { key, validation })
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_config::Secret;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        let key = ApiKey {
            id: "k1".into(),
            user: "u1".into(),
            sha256: Sha256::digest(b"molt_sk_good").into(),
            models: Some(vec!["gpt-4o-mini".into()]),
        };
        Authenticator::new(&[key], Some(&jwt_config())).unwrap()
    }

    fn jwt_config() -> JwtConfig {
        JwtConfig {
            issuer: "molt".into(),
            algorithm: JwtAlgorithm::Hs256,
            key: JwtKey::Hmac(Secret::new(SECRET)),
            audience: None,
            leeway: Duration::ZERO,
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(header: jsonwebtoken::Header, claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn api_keys_by_hash() {
        let a = auth();
        let p = a.authenticate(Some("molt_sk_good"), |_| None).unwrap();
        assert_eq!(&*p.user, "u1");
        assert!(p.may_use("gpt-4o-mini") && !p.may_use("other"));
        assert_eq!(
            a.authenticate(Some("molt_sk_bad"), |_| None).unwrap_err(),
            AuthError::Invalid
        );
        assert_eq!(
            a.authenticate(None, |_| None).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            a.authenticate(Some("  "), |_| None).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            a.authenticate(Some("sk-openai"), |_| None).unwrap_err(),
            AuthError::Invalid
        );
    }

    #[test]
    fn jwts_are_pinned_and_expire() {
        let a = auth();
        let good = serde_json::json!({"sub":"u9","iss":"molt","exp":now()+60,"models":["mini"]});
        let t = token(jsonwebtoken::Header::default(), good.clone(), SECRET);
        let p = a
            .authenticate(Some(&t), |n| {
                (n == "mini").then(|| "gpt-4o-mini".to_owned())
            })
            .unwrap();
        assert_eq!(&*p.user, "u9");
        assert!(p.may_use("gpt-4o-mini"));

        let expired = serde_json::json!({"sub":"u9","iss":"molt","exp":now()-60});
        let t = token(jsonwebtoken::Header::default(), expired, SECRET);
        assert_eq!(
            a.authenticate(Some(&t), |_| None).unwrap_err(),
            AuthError::Expired
        );

        let wrong_iss = serde_json::json!({"sub":"u9","iss":"evil","exp":now()+60});
        let t = token(jsonwebtoken::Header::default(), wrong_iss, SECRET);
        assert_eq!(
            a.authenticate(Some(&t), |_| None).unwrap_err(),
            AuthError::Invalid
        );

        let t = token(
            jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
            good.clone(),
            SECRET,
        );
        assert_eq!(
            a.authenticate(Some(&t), |_| None).unwrap_err(),
            AuthError::Invalid
        );

        let t = token(
            jsonwebtoken::Header::default(),
            good,
            "another-secret-another-secret-xx",
        );
        assert_eq!(
            a.authenticate(Some(&t), |_| None).unwrap_err(),
            AuthError::Invalid
        );

        // A configured audience is required, not only checked when sent.
        let with_aud = Authenticator::new(
            &[],
            Some(&JwtConfig {
                audience: Some("molt".into()),
                ..jwt_config()
            }),
        )
        .unwrap();
        let no_aud = serde_json::json!({"sub":"u9","iss":"molt","exp":now()+60});
        let t = token(jsonwebtoken::Header::default(), no_aud, SECRET);
        assert_eq!(
            with_aud.authenticate(Some(&t), |_| None).unwrap_err(),
            AuthError::Invalid
        );
        let aud = serde_json::json!({"sub":"u9","iss":"molt","exp":now()+60,"aud":"molt"});
        let t = token(jsonwebtoken::Header::default(), aud, SECRET);
        assert!(with_aud.authenticate(Some(&t), |_| None).is_ok());

        // alg=none: header {"alg":"none"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1OSIsImlzcyI6Im1vbHQiLCJleHAiOjk5OTk5OTk5OTl9.";
        assert_eq!(
            a.authenticate(Some(none), |_| None).unwrap_err(),
            AuthError::Invalid
        );
    }
}
