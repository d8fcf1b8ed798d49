//! Secrets at rest and secrets minted: AES-256-GCM sealing of provider
//! master keys and bots' gateway tokens under a keyring, and generation of
//! client API keys and operator tokens.
//!
//! The keyring ([`Cipher`]) holds the current key and any previous ones,
//! each with a short key id (kid). New values are sealed with the current
//! key as `v2:<kid>:` + base64url(nonce || ciphertext || tag); a value
//! opens with the key its kid names, and a kid no configured key has is
//! [`CryptoError::UnknownKey`], naming the kid (never a key). Values from
//! before the keyring (`v1:` + base64url(...), no kid) open with whichever
//! configured key they were made with: AES-GCM's tag tells the right key
//! from the others. The record's id is bound in as associated data, so a
//! sealed value copied into another row fails to open instead of leaking
//! into the wrong provider.
//!
//! A key is written as 64 hex characters or base64 of 32 bytes, optionally
//! prefixed by its kid and a colon (`2026-12:9f86...`); without one, the
//! kid is the first 8 hex characters of the SHA-256 of the key, so one key
//! always has the same kid. Rotating: make the new key current and the old
//! one previous, re-encrypt (`service::secrets`), then drop the old key.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of every client API key (the data plane recognises it).
pub const API_KEY_PREFIX: &str = "molt_sk_";
/// Prefix of operator (admin API) tokens.
pub const ADMIN_TOKEN_PREFIX: &str = "molt_at_";

/// Values sealed before the keyring: no kid.
const LEGACY_VERSION: &str = "v1:";
/// Values sealed with a kid: `v2:<kid>:<base64url>`.
const KEYED_VERSION: &str = "v2:";
const NONCE_LEN: usize = 12;
const MAX_KID_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption key must be 32 bytes, given as 64 hex characters or base64 (optionally after `KID:`)")]
    BadKey,
    #[error("key id must be 1 to 32 of A-Z a-z 0-9 . _ -")]
    BadKeyId,
    #[error("key id {0:?} is given to more than one key")]
    DuplicateKeyId(String),
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed with key id {kid:?}, which is not configured (add it to the previous keys)")]
    UnknownKey { kid: String },
    #[error("sealed value does not open with its key (wrong key or tampered)")]
    Open,
    #[error("encryption failed")]
    Seal,
}

/// Which key a sealed value was made with, as its text says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SealedWith {
    /// A `v1:` value: made before the keyring, so no kid.
    Legacy,
    /// A `v2:` value's kid.
    Kid(String),
}

impl SealedWith {
    /// How reports name it: the kid, or `v1` for a legacy value.
    pub fn label(&self) -> &str {
        match self {
            Self::Legacy => "v1",
            Self::Kid(kid) => kid,
        }
    }
}

/// One key of the keyring.
#[derive(Clone)]
struct SealingKey {
    kid: String,
    aead: Aes256Gcm,
}

impl SealingKey {
    /// `KID:KEY` or `KEY` (the kid then derived from the key).
    fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let (kid, key) = match text.split_once(':') {
            Some((kid, key)) => (Some(kid), key),
            None => (None, text),
        };
        let bytes = hex::decode(key)
            .ok()
            .or_else(|| STANDARD.decode(key).ok())
            .or_else(|| URL_SAFE_NO_PAD.decode(key).ok())
            .ok_or(CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        match kid {
            Some(kid) if valid_kid(kid) => Ok(Self::new(kid.to_owned(), &key)),
            Some(_) => Err(CryptoError::BadKeyId),
            None => Ok(Self::new(derived_kid(&key), &key)),
        }
    }

    fn new(kid: String, key: &[u8; 32]) -> Self {
        Self {
            kid,
            aead: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)),
        }
    }

    fn open(&self, raw: &[u8], context: &str) -> Result<Vec<u8>, CryptoError> {
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

fn valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The kid of a key given without one: the start of its SHA-256 (which
/// says nothing usable about a random 256-bit key).
fn derived_kid(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

/// The at-rest keyring: the current key, which seals, and the previous
/// ones, which only open.
#[derive(Clone)]
pub struct Cipher {
    current: SealingKey,
    previous: Vec<SealingKey>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cipher(AES-256-GCM, current {:?}, previous {:?}, keys redacted)",
            self.current.kid,
            self.previous_kids().collect::<Vec<_>>()
        )
    }
}

impl Cipher {
    /// One key, written as 64 hex characters or as standard/url-safe
    /// base64 of 32 bytes, optionally after `KID:` (surrounding whitespace
    /// ignored, as in key files).
    pub fn from_text(text: &str) -> Result<Self, CryptoError> {
        Ok(Self {
            current: SealingKey::parse(text)?,
            previous: Vec::new(),
        })
    }

    /// One key, its kid derived from it.
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self {
            current: SealingKey::new(derived_kid(key), key),
            previous: Vec::new(),
        }
    }

    /// The keyring with `previous` keys (as [`Cipher::from_text`] reads
    /// one, separated by commas or whitespace; empty text is none) that
    /// still open what they sealed. Every kid must be distinct.
    pub fn with_previous(mut self, previous: &str) -> Result<Self, CryptoError> {
        for text in previous.split(|c: char| c == ',' || c.is_whitespace()) {
            if text.is_empty() {
                continue;
            }
            let key = SealingKey::parse(text)?;
            if self.kids().any(|kid| kid == key.kid) {
                return Err(CryptoError::DuplicateKeyId(key.kid));
            }
            self.previous.push(key);
        }
        Ok(self)
    }

    /// The kid new values are sealed with.
    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    /// The kids that only open.
    pub fn previous_kids(&self) -> impl Iterator<Item = &str> {
        self.previous.iter().map(|k| k.kid.as_str())
    }

    fn kids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.current_kid()).chain(self.previous_kids())
    }

    /// Encrypt `plaintext` bound to `context` (the record id) with the
    /// current key.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String, CryptoError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .current
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
        Ok(format!(
            "{KEYED_VERSION}{}:{}",
            self.current.kid,
            URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// Decrypt what [`Cipher::seal`] (of this keyring or one sharing a
    /// key with it) produced for the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, CryptoError> {
        let (with, body) = parse(sealed)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CryptoError::Malformed)?;
        match with {
            SealedWith::Kid(kid) => {
                let key = std::iter::once(&self.current)
                    .chain(&self.previous)
                    .find(|k| k.kid == kid)
                    .ok_or(CryptoError::UnknownKey { kid })?;
                key.open(&raw, context)
            }
            // Made with one of the keys, unnamed: the tag finds it.
            SealedWith::Legacy => std::iter::once(&self.current)
                .chain(&self.previous)
                .find_map(|k| k.open(&raw, context).ok())
                .ok_or(CryptoError::Open),
        }
    }

    /// Whether `sealed` is under anything but the current key (so
    /// re-encryption would rewrite it).
    pub fn is_stale(&self, sealed: &str) -> bool {
        !matches!(parse(sealed), Ok((SealedWith::Kid(kid), _)) if kid == self.current.kid)
    }
}

/// Which key a sealed value names, without opening it.
pub fn sealed_with(sealed: &str) -> Result<SealedWith, CryptoError> {
    parse(sealed).map(|(with, _)| with)
}

fn parse(sealed: &str) -> Result<(SealedWith, &str), CryptoError> {
    if let Some(body) = sealed.strip_prefix(LEGACY_VERSION) {
        return Ok((SealedWith::Legacy, body));
    }
    let rest = sealed
        .strip_prefix(KEYED_VERSION)
        .ok_or(CryptoError::Malformed)?;
    match rest.split_once(':') {
        Some((kid, body)) if valid_kid(kid) => Ok((SealedWith::Kid(kid.to_owned()), body)),
        _ => Err(CryptoError::Malformed),
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

    const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    /// What the control plane sealed before the keyring: `v1:`, no kid.
    fn seal_v1(key: &[u8; 32], plaintext: &[u8], context: &str) -> String {
        let sealed = Cipher::from_bytes(key).seal(plaintext, context).unwrap();
        let body = sealed.rsplit(':').next().unwrap();
        format!("{LEGACY_VERSION}{body}")
    }

    #[test]
    fn seal_round_trips_and_binds_context() {
        let c = Cipher::from_bytes(&[7; 32]);
        let sealed = c.seal(b"sk-secret", "prv_1").unwrap();
        assert!(!sealed.contains("sk-secret"));
        assert!(sealed.starts_with(&format!("v2:{}:", c.current_kid())));
        assert_eq!(c.open(&sealed, "prv_1").unwrap(), b"sk-secret");
        assert!(matches!(c.open(&sealed, "prv_2"), Err(CryptoError::Open)));
        // Another key under the same kid: the tag refuses it.
        let other = Cipher::from_text(&format!("{}:{}", c.current_kid(), "08".repeat(32))).unwrap();
        assert!(matches!(
            other.open(&sealed, "prv_1"),
            Err(CryptoError::Open)
        ));
        for bad in ["v1:@@", "v2:k1", "v2:bad kid:AAAA", "v3:x", "plain"] {
            assert!(
                matches!(c.open(bad, "prv_1"), Err(CryptoError::Malformed)),
                "{bad}"
            );
        }
    }

    #[test]
    fn values_open_with_the_key_their_kid_names_and_unknown_kids_are_named() {
        let old = Cipher::from_text(&format!("old:{KEY_A}")).unwrap();
        let sealed_old = old.seal(b"sk-1", "prv_1").unwrap();
        assert!(sealed_old.starts_with("v2:old:"), "{sealed_old}");

        let ring = Cipher::from_text(&format!("new:{KEY_B}"))
            .unwrap()
            .with_previous(&format!("old:{KEY_A}"))
            .unwrap();
        assert_eq!(ring.open(&sealed_old, "prv_1").unwrap(), b"sk-1");
        let sealed_new = ring.seal(b"sk-1", "prv_1").unwrap();
        assert!(sealed_new.starts_with("v2:new:"), "{sealed_new}");
        assert!(ring.is_stale(&sealed_old) && !ring.is_stale(&sealed_new));
        assert_eq!(
            sealed_with(&sealed_old).unwrap(),
            SealedWith::Kid("old".into())
        );

        // The old key dropped: a clear error naming the kid, not the key.
        let new_only = Cipher::from_text(&format!("new:{KEY_B}")).unwrap();
        let err = new_only.open(&sealed_old, "prv_1").unwrap_err();
        assert!(matches!(&err, CryptoError::UnknownKey { kid } if kid == "old"));
        let message = err.to_string();
        assert!(
            message.contains("\"old\"") && !message.contains(KEY_A),
            "{message}"
        );
        assert_eq!(new_only.open(&sealed_new, "prv_1").unwrap(), b"sk-1");
    }

    #[test]
    fn legacy_values_open_with_whichever_key_made_them() {
        let a: [u8; 32] = hex::decode(KEY_A).unwrap().try_into().unwrap();
        let v1 = seal_v1(&a, b"tok", "bot_1");
        assert_eq!(sealed_with(&v1).unwrap(), SealedWith::Legacy);
        let plain_a = Cipher::from_text(KEY_A).unwrap();
        assert_eq!(plain_a.open(&v1, "bot_1").unwrap(), b"tok");
        // A key as current, or as previous: either way it opens.
        let ring = Cipher::from_text(KEY_B)
            .unwrap()
            .with_previous(KEY_A)
            .unwrap();
        assert_eq!(ring.open(&v1, "bot_1").unwrap(), b"tok");
        assert!(ring.is_stale(&v1));
        let without = Cipher::from_text(KEY_B).unwrap();
        assert!(matches!(without.open(&v1, "bot_1"), Err(CryptoError::Open)));
    }

    #[test]
    fn keys_parse_from_hex_and_base64_with_or_without_a_kid() {
        assert!(Cipher::from_text(&"ab".repeat(32)).is_ok());
        assert!(Cipher::from_text(&STANDARD.encode([1u8; 32])).is_ok());
        assert!(matches!(
            Cipher::from_text("short"),
            Err(CryptoError::BadKey)
        ));
        let named = Cipher::from_text(&format!(" 2026-12:{KEY_A}\n")).unwrap();
        assert_eq!(named.current_kid(), "2026-12");
        // Without a kid: derived from the key, the same every time.
        let derived = Cipher::from_text(KEY_A).unwrap();
        assert_eq!(derived.current_kid().len(), 8);
        assert_eq!(
            derived.current_kid(),
            Cipher::from_text(KEY_A).unwrap().current_kid()
        );
        assert_ne!(
            derived.current_kid(),
            Cipher::from_text(KEY_B).unwrap().current_kid()
        );
        assert!(matches!(
            Cipher::from_text(&format!("bad kid:{KEY_A}")),
            Err(CryptoError::BadKeyId)
        ));
        assert!(matches!(
            Cipher::from_text(&format!(":{KEY_A}")),
            Err(CryptoError::BadKeyId)
        ));
    }

    #[test]
    fn previous_keys_are_a_list_with_distinct_kids() {
        let ring = Cipher::from_text(&format!("c:{KEY_A}"))
            .unwrap()
            .with_previous(&format!("p1:{KEY_B}, \n p2:{}\n", "cd".repeat(32)))
            .unwrap();
        assert_eq!(ring.previous_kids().collect::<Vec<_>>(), ["p1", "p2"]);
        assert!(Cipher::from_text(KEY_A).unwrap().with_previous("").is_ok());
        assert!(matches!(
            ring.clone().with_previous(&format!("c:{KEY_B}")),
            Err(CryptoError::DuplicateKeyId(kid)) if kid == "c"
        ));
        let debug = format!("{ring:?}");
        assert!(debug.contains("\"p1\"") && !debug.contains(KEY_A) && !debug.contains(KEY_B));
    }

    #[test]
    fn api_keys_have_prefix_and_32_bytes() {
        let k = new_api_key();
        let body = k.strip_prefix(API_KEY_PREFIX).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert_ne!(new_api_key(), k);
    }
}
