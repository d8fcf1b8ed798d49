//! Tokens of an identity provider (`[auth.jwks]`, Clerk's session tokens):
//! verified against the provider's keys that arrived with the config, and
//! mapped to the Molt user by subject. No I/O: the control plane fetched
//! the keys; here each is turned into a decoding key once, at reload, and
//! looked up by the token's `kid`.

use super::{AuthBuildError, AuthError, Principal};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use molt_config::jwks::{JwkKey, JwksConfig};
use std::collections::HashMap;
use std::sync::Arc;

/// A key ready to verify with, and the checks that go with it (the one
/// algorithm the key implies, issuer, audience, expiry).
struct PreparedKey {
    key: DecodingKey,
    validation: Validation,
}

/// The claims read from a provider token; `iss`, `exp`, `nbf` and `aud`
/// are checked by `jsonwebtoken` through the key's `Validation`.
#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    azp: Option<String>,
}

/// `[auth.jwks]`, prepared.
pub(super) struct JwksVerifier {
    keys: HashMap<String, PreparedKey>,
    /// Subject to the Molt user it is.
    users: HashMap<String, Arc<str>>,
    authorized_parties: Vec<String>,
    /// [`super::JWT_KEY_ID`], shared by every principal made here.
    key_id: Arc<str>,
}

impl JwksVerifier {
    pub(super) fn new(cfg: &JwksConfig) -> Result<Self, AuthBuildError> {
        let mut keys = HashMap::with_capacity(cfg.keys.len());
        for jwk in &cfg.keys {
            let bad = |e: jsonwebtoken::errors::Error| {
                AuthBuildError(format!("auth.jwks key {:?}: {e}", jwk.kid))
            };
            let (alg, key) = match &jwk.key {
                JwkKey::Rsa { n, e } => (
                    Algorithm::RS256,
                    DecodingKey::from_rsa_components(n, e).map_err(bad)?,
                ),
                JwkKey::EcP256 { x, y } => (
                    Algorithm::ES256,
                    DecodingKey::from_ec_components(x, y).map_err(bad)?,
                ),
            };
            // `Validation::new` pins the algorithm list to exactly this one.
            let mut validation = Validation::new(alg);
            validation.set_issuer(&[&cfg.issuer]);
            validation.validate_nbf = true;
            validation.leeway = cfg.leeway.as_secs();
            if cfg.audiences.is_empty() {
                validation.set_required_spec_claims(&["exp", "iss", "sub"]);
                validation.validate_aud = false;
            } else {
                // `aud` is only checked when present unless it is required.
                validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
                validation.set_audience(&cfg.audiences);
            }
            keys.insert(jwk.kid.clone(), PreparedKey { key, validation });
        }
        Ok(Self {
            keys,
            users: cfg
                .users
                .iter()
                .map(|(sub, user)| (sub.clone(), Arc::from(user.as_str())))
                .collect(),
            authorized_parties: cfg.authorized_parties.clone(),
            key_id: Arc::from(super::JWT_KEY_ID),
        })
    }

    /// Whether `kid` names one of the provider's keys.
    pub(super) fn knows(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub(super) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verify `token`, whose header names `kid`, and map its subject.
    pub(super) fn verify(&self, token: &str, kid: &str) -> Result<Principal, AuthError> {
        let prepared = self.keys.get(kid).ok_or(AuthError::Invalid)?;
        let data = jsonwebtoken::decode::<Claims>(token, &prepared.key, &prepared.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        let azp_ok = self.authorized_parties.is_empty()
            || data
                .claims
                .azp
                .as_deref()
                .is_some_and(|azp| self.authorized_parties.iter().any(|p| p == azp));
        if !azp_ok {
            return Err(AuthError::Invalid);
        }
        // A subject with no Molt user (not yet created by the webhook, or
        // deactivated) is refused like a bad signature.
        let user = self.users.get(&data.claims.sub).ok_or(AuthError::Invalid)?;
        Ok(Principal {
            key_id: self.key_id.clone(),
            user: user.clone(),
            models: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Authenticator;
    use super::*;
    use molt_config::jwks::Jwk;
    use molt_fakes::fake_clerk::jwks::FakeJwks;
    use serde_json::{json, Value};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const ISS: &str = "https://clerk.molt.test";
    const APP: &str = "https://app.molt.test";
    /// A 2048-bit RSA key made for these tests only (`openssl genpkey`),
    /// and its public modulus and exponent as a JWKS publishes them.
    const RSA_PEM: &str = include_str!("testdata/rsa_test_key.pem");
    const RSA_N: &str = "mV3V0EH55iXcennlxL301GzJP4ORd9jxJd-DmF8eoPRnXGosLLgDbRmEPoeFESAt4Pm7gBYBPtL0xE1itU5fhr8OJaPHrc0sKT6MDBwkUpbqCXfKSoCYHEuLGXYDoOAC1Oh5rwXaOzv7trB8CSyDrhSsGS73JHKBGt4rpHEkI13IH4Um2m1jmwLpRQexeyCMXPHA7yDunpTyq5A86McoAzDSKwaJCfeQJD2LcOomclpZECm6ahN6Eq4oXtQe9RlXY43M2PzHXZdCOEPzTMWm5JvOwsXvdYQKd4hVip8RijtznAAcYz_JFGbsQPtP_bEdEbbjKkv0Fn-dqCQwmtv82w";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(sub: &str) -> Value {
        json!({"sub": sub, "iss": ISS, "azp": APP, "iat": now(), "nbf": now() - 5, "exp": now() + 60})
    }

    /// A config of the fake's published keys (and the RSA key as `rsa1`),
    /// mapping `user_clerk` to `usr_molt`.
    fn config(fake: &FakeJwks) -> JwksConfig {
        let mut keys: Vec<Jwk> = fake.document()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| Jwk {
                kid: k["kid"].as_str().unwrap().into(),
                key: JwkKey::EcP256 {
                    x: k["x"].as_str().unwrap().into(),
                    y: k["y"].as_str().unwrap().into(),
                },
            })
            .collect();
        keys.push(Jwk {
            kid: "rsa1".into(),
            key: JwkKey::Rsa {
                n: RSA_N.into(),
                e: "AQAB".into(),
            },
        });
        JwksConfig {
            issuer: ISS.into(),
            audiences: Vec::new(),
            authorized_parties: vec![APP.into()],
            keys,
            users: HashMap::from([("user_clerk".into(), "usr_molt".into())]),
            leeway: Duration::ZERO,
        }
    }

    fn auth(cfg: &JwksConfig) -> Authenticator {
        Authenticator::new(&[], None)
            .unwrap()
            .with_jwks(Some(cfg))
            .unwrap()
    }

    fn rs256(claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("rsa1".into());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    #[test]
    fn current_keys_are_accepted_and_mapped_to_the_molt_user() {
        let fake = FakeJwks::new().unwrap();
        let a = auth(&config(&fake));
        for token in [
            fake.sign(&claims("user_clerk")),
            rs256(&claims("user_clerk")),
        ] {
            let p = a.authenticate(Some(&token), |_| None).unwrap();
            assert_eq!((&*p.key_id, &*p.user), ("jwt", "usr_molt"));
            assert!(p.models.is_none());
        }
    }

    #[test]
    fn unknown_keys_subjects_parties_and_expired_tokens_are_refused() {
        let fake = FakeJwks::new().unwrap();
        let a = auth(&config(&fake));
        let refused = |token: String, why: AuthError| {
            assert_eq!(a.authenticate(Some(&token), |_| None).unwrap_err(), why);
        };
        refused(
            fake.sign_unpublished(&claims("user_clerk")),
            AuthError::Invalid,
        );
        refused(fake.sign(&claims("user_stranger")), AuthError::Invalid);
        let mut c = claims("user_clerk");
        c["azp"] = json!("https://evil.example");
        refused(fake.sign(&c), AuthError::Invalid);
        let mut c = claims("user_clerk");
        c["iss"] = json!("https://other.clerk.test");
        refused(fake.sign(&c), AuthError::Invalid);
        let mut c = claims("user_clerk");
        c["exp"] = json!(now() - 10);
        refused(fake.sign(&c), AuthError::Expired);
        let mut c = claims("user_clerk");
        c["nbf"] = json!(now() + 600);
        refused(fake.sign(&c), AuthError::Invalid);
        // An RSA key's kid on an ES256 token: the key pins RS256.
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("rsa1".into());
        let hs = jsonwebtoken::encode(
            &header,
            &claims("user_clerk"),
            &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        refused(hs, AuthError::Invalid);
    }

    #[test]
    fn audiences_are_checked_when_configured() {
        let fake = FakeJwks::new().unwrap();
        let mut cfg = config(&fake);
        cfg.audiences = vec!["molt".into()];
        let a = auth(&cfg);
        let mut c = claims("user_clerk");
        assert!(a.authenticate(Some(&fake.sign(&c)), |_| None).is_err());
        c["aud"] = json!("other");
        assert!(a.authenticate(Some(&fake.sign(&c)), |_| None).is_err());
        c["aud"] = json!(["other", "molt"]);
        assert!(a.authenticate(Some(&fake.sign(&c)), |_| None).is_ok());
        c["aud"] = json!("molt");
        assert!(a.authenticate(Some(&fake.sign(&c)), |_| None).is_ok());
    }

    #[test]
    fn a_rotated_key_works_once_the_config_has_it() {
        let fake = FakeJwks::new().unwrap();
        let before = auth(&config(&fake));
        let old = fake.current_kid();
        let new = fake.rotate().unwrap();
        let token = fake.sign(&claims("user_clerk"));
        assert!(before.authenticate(Some(&token), |_| None).is_err());
        let after = auth(&config(&fake));
        assert!(after.authenticate(Some(&token), |_| None).is_ok());
        let old_token = fake.sign_with(&old, &claims("user_clerk")).unwrap();
        assert!(after.authenticate(Some(&old_token), |_| None).is_ok());
        fake.retire_old_keys();
        let retired = auth(&config(&fake));
        assert!(retired.authenticate(Some(&old_token), |_| None).is_err());
        assert_eq!(fake.current_kid(), new);
    }
}
