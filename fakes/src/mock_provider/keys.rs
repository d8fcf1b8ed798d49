//! Which master keys the mock accepts: any (the default, so tests can check
//! what the proxy injected), or only a set, as a real provider does, which
//! a test changes while traffic flows (`PUT /_mock/keys`) to play a key
//! rotation at the provider: the new key added beside the old, then the old
//! one revoked. A refused key gets the provider's own 401 (OpenAI's
//! `invalid_api_key`, Anthropic's `authentication_error`), naming the key
//! only masked, as OpenAI does.

use super::errors::Flavor;
use super::{RecordedRequest, Reply};
use http::StatusCode;
use std::sync::{Mutex, MutexGuard};

/// The accepted keys; empty accepts any.
#[derive(Debug, Default)]
pub(super) struct AcceptedKeys(Mutex<Vec<String>>);

/// `PUT /_mock/keys` and `GET /_mock/keys`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct KeySet {
    /// Empty: any key is accepted.
    pub accepted: Vec<String>,
}

impl AcceptedKeys {
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        // A plain replace or read under the lock cannot be left half done.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn set(&self, keys: KeySet) {
        *self.lock() = keys.accepted;
    }

    pub(super) fn get(&self) -> KeySet {
        KeySet {
            accepted: self.lock().clone(),
        }
    }

    /// The 401 for a request whose credential is not accepted, if it is not.
    /// A request with no credential is left to the caller's own check.
    pub(super) fn refuse(&self, flavor: Flavor, record: &RecordedRequest) -> Option<Reply> {
        let presented = presented_key(record)?;
        let accepted = self.lock();
        if accepted.is_empty() || accepted.iter().any(|k| k == presented) {
            return None;
        }
        let message = match flavor {
            Flavor::OpenAi => format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                masked(presented)
            ),
            Flavor::Anthropic => "invalid x-api-key".to_owned(),
        };
        Some(Reply::error(flavor, StatusCode::UNAUTHORIZED, &message))
    }
}

/// The credential a request presents: a bearer token, `x-api-key` or
/// Azure's `api-key`.
pub(super) fn presented_key(record: &RecordedRequest) -> Option<&str> {
    record
        .authorization
        .as_deref()
        .map(|a| a.strip_prefix("Bearer ").unwrap_or(a))
        .or(record.x_api_key.as_deref())
        .or(record.api_key_header.as_deref())
}

/// OpenAI's way of naming a wrong key: its first and last four characters.
fn masked(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_keys_are_named_only_masked() {
        assert_eq!(masked("sk-abcdefghijkl"), "sk-a*******ijkl");
        assert_eq!(masked("short"), "*****");
    }
}
