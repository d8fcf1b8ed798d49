//! Secrets at rest and secrets minted: AES-256-GCM sealing of provider
//! master keys, and generation of client API keys and operator tokens.
//!
//! Sealed values are `v1:` + base64url(nonce || ciphertext || tag). The
//! record's id is bound in as associated data, so a sealed value copied into
//! another row fails to open instead of leaking into the wrong provider.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;

/// Prefix of every client API key (the data plane recognises it).
pub const API_KEY_PREFIX: &str = "molt_sk_";
/// Prefix of operator (admin API) tokens.
pub const ADMIN_TOKEN_PREFIX: &str = "molt_at_";

const SEALED_VERSION: &str = "v1:";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption key must be 32 bytes, given as 64 hex characters or base64")]
    BadKey,
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open with this key (wrong key or tampered)")]
    Open,
    #[error("encryption failed")]
    Seal,
}

/// The at-rest cipher, built from the operator's 32-byte key.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(AES-256-GCM, key redacted)")
    }
}

impl Cipher {
    /// Parse a key written as 64 hex characters or as standard/url-safe
    /// base64 of 32 bytes (surrounding whitespace ignored, as in key files).
    pub fn from_text(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| STANDARD.decode(text).ok())
            .or_else(|| URL_SAFE_NO_PAD.decode(text).ok())
            .ok_or(CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self::from_bytes(&key))
    }

    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self {
            aead: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)),
        }
    }

    /// Encrypt `plaintext` bound to `context` (the record id).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String, CryptoError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(format!("{SEALED_VERSION}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Decrypt what [`Cipher::seal`] produced for the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, CryptoError> {
        let body = sealed
            .strip_prefix(SEALED_VERSION)
            .ok_or(CryptoError::Malformed)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CryptoError::Malformed)?;
        if raw.len() < NONCE_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
        self.aead
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)
    }
}

/// A new client API key: `molt_sk_` + base64url of 32 random bytes.
pub fn new_api_key() -> String {
    random_token(API_KEY_PREFIX)
}

/// A new operator token: `molt_at_` + base64url of 32 random bytes.
pub fn new_admin_token() -> String {
    random_token(ADMIN_TOKEN_PREFIX)
}

/// Hex SHA-256, the only form in which tokens are stored.
pub fn sha256_hex(text: &str) -> String {
    molt_config::hash_api_key(text)
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_binds_context() {
        let c = Cipher::from_bytes(&[7; 32]);
        let sealed = c.seal(b"sk-secret", "prv_1").unwrap();
        assert!(!sealed.contains("sk-secret"));
        assert_eq!(c.open(&sealed, "prv_1").unwrap(), b"sk-secret");
        assert!(matches!(c.open(&sealed, "prv_2"), Err(CryptoError::Open)));
        let other = Cipher::from_bytes(&[8; 32]);
        assert!(matches!(
            other.open(&sealed, "prv_1"),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            c.open("v1:@@", "prv_1"),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn keys_parse_from_hex_and_base64() {
        assert!(Cipher::from_text(&"ab".repeat(32)).is_ok());
        assert!(Cipher::from_text(&STANDARD.encode([1u8; 32])).is_ok());
        assert!(matches!(
            Cipher::from_text("short"),
            Err(CryptoError::BadKey)
        ));
    }

    #[test]
    fn api_keys_have_prefix_and_32_bytes() {
        let k = new_api_key();
        let body = k.strip_prefix(API_KEY_PREFIX).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert_ne!(new_api_key(), k);
    }
}
