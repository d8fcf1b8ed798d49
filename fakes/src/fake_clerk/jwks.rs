//! A fake JWKS endpoint (Clerk publishes one at
//! `https://<frontend-api>/.well-known/jwks.json`): ES256 signing keys made
//! on the spot, each published as a JWK with its `kid`, a `Cache-Control:
//! max-age` as set, and, on demand, rotation (a new current key, the old
//! ones published until retired) and failure (500s). [`FakeJwks::sign`]
//! makes a token with the current key, as Clerk's session tokens are made,
//! for the real verifiers to check.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the keys are served, under the base URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
#[error("key generation failed: {0}")]
pub struct KeyError(String);

/// A signing key and its public JWK.
struct SigningKey {
    kid: String,
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate(kid: String) -> Result<Self, KeyError> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| KeyError(e.to_string()))?;
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err(KeyError(format!(
                "unexpected point of {} bytes",
                point.len()
            )));
        }
        let jwk = json!({
            "use": "sig", "kty": "EC", "kid": kid, "alg": "ES256", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        Ok(Self {
            kid,
            encoding: jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk,
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        // A well-formed P-256 key signs any claims; an error would be a bug
        // in the fake, shown as an unverifiable token.
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_default()
    }
}

struct Inner {
    /// Published keys; the last is the current one.
    keys: Vec<SigningKey>,
    /// Made but never published (tokens from a stranger).
    unpublished: SigningKey,
    next: u32,
    failing: bool,
    max_age: Option<u64>,
    fetches: u64,
}

/// The fake endpoint; clones share state.
#[derive(Clone)]
pub struct FakeJwks {
    state: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for FakeJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeJwks").finish_non_exhaustive()
    }
}

impl FakeJwks {
    /// One published key, `max-age=60`.
    pub fn new() -> Result<Self, KeyError> {
        Ok(Self {
            state: Arc::new(Mutex::new(Inner {
                keys: vec![SigningKey::generate("ins_key_1".into())?],
                unpublished: SigningKey::generate("ins_key_stranger".into())?,
                next: 2,
                failing: false,
                max_age: Some(60),
                fetches: 0,
            })),
        })
    }

    fn state(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves whole values behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serve on `127.0.0.1:0` in the background; the base URL.
    pub async fn spawn(&self) -> std::io::Result<String> {
        crate::serve::spawn(self.router(), "fake jwks").await
    }

    /// Serve on `listener` until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route(JWKS_PATH, get(serve_keys))
            .with_state(self.clone())
    }

    /// Make a new current key (published beside the old ones); its kid.
    pub fn rotate(&self) -> Result<String, KeyError> {
        let mut st = self.state();
        let kid = format!("ins_key_{}", st.next);
        st.next += 1;
        st.keys.push(SigningKey::generate(kid.clone())?);
        Ok(kid)
    }

    /// Stop publishing every key but the current one.
    pub fn retire_old_keys(&self) {
        let mut st = self.state();
        let keep = st.keys.len().saturating_sub(1);
        st.keys.drain(..keep);
    }

    /// Answer 500 (true) or the keys (false).
    pub fn set_failing(&self, failing: bool) {
        self.state().failing = failing;
    }

    /// The `Cache-Control: max-age` sent (none: no header).
    pub fn set_max_age(&self, secs: Option<u64>) {
        self.state().max_age = secs;
    }

    /// Requests served (failed ones included).
    pub fn fetches(&self) -> u64 {
        self.state().fetches
    }

    pub fn current_kid(&self) -> String {
        self.state()
            .keys
            .last()
            .map(|k| k.kid.clone())
            .unwrap_or_default()
    }

    /// The published JWKS document.
    pub fn document(&self) -> Value {
        json!({"keys": self.state().keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }

    /// A token signed by the current key, `kid` in its header.
    pub fn sign(&self, claims: &Value) -> String {
        self.state()
            .keys
            .last()
            .map(|k| k.sign(claims))
            .unwrap_or_default()
    }

    /// A token signed by the key with `kid`, if it is still published.
    pub fn sign_with(&self, kid: &str, claims: &Value) -> Option<String> {
        let st = self.state();
        st.keys
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.sign(claims))
    }

    /// A token signed by a key that was never published.
    pub fn sign_unpublished(&self, claims: &Value) -> String {
        self.state().unpublished.sign(claims)
    }
}

async fn serve_keys(State(fake): State<FakeJwks>) -> Response {
    let (failing, max_age) = {
        let mut st = fake.state();
        st.fetches += 1;
        (st.failing, st.max_age)
    };
    if failing {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream unavailable").into_response();
    }
    let body = fake.document().to_string();
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(secs) = max_age {
        if let Ok(v) = header::HeaderValue::from_str(&format!("public, max-age={secs}")) {
            resp.headers_mut().insert(header::CACHE_CONTROL, v);
        }
    }
    resp
}
