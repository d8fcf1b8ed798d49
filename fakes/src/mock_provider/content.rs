//! Deterministic answer text, token counts and identifiers of the mock provider.
//!
//! Tests compare the usage a proxy recorded with the usage the mock reported, so
//! everything that feeds a token count here is a pure function of the request.

use std::time::{SystemTime, UNIX_EPOCH};

/// The sentence every answer is made of, one word per chunk (cycled when more
/// chunks are asked for than it has words).
pub(crate) const SENTENCE: &str = "Hello from the Molt mock provider.";

/// Splits the answer into `chunks` pieces whose concatenation is the answer.
///
/// Piece `i` is word `i % words` of [`SENTENCE`], preceded by a space unless it
/// is the first piece, so every piece is non-empty and counts as one output
/// token: completion/output tokens are always exactly `chunks`.
pub(crate) fn answer_pieces(chunks: usize) -> Vec<String> {
    let words: Vec<&str> = SENTENCE.split(' ').collect();
    (0..chunks)
        .map(|i| {
            let word = words.get(i % words.len()).copied().unwrap_or_default();
            if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

/// The full answer text for `chunks` pieces.
pub(crate) fn answer_text(chunks: usize) -> String {
    answer_pieces(chunks).concat()
}

/// Prompt/input tokens reported for a request body of `body_len` bytes:
/// `max(1, body_len / 4)` (roughly four bytes per token, as tokenizers average
/// on English text, and never zero so "no usage" is never confused with a
/// tiny prompt).
pub(crate) fn prompt_tokens(body_len: usize) -> u64 {
    u64::try_from(body_len / 4).unwrap_or(u64::MAX).max(1)
}

/// Output tokens reported for an answer of `chunks` pieces (one token each).
pub(crate) fn output_tokens(chunks: usize) -> u64 {
    u64::try_from(chunks).unwrap_or(u64::MAX)
}

/// Seconds since the Unix epoch, for the `created`/`created_at` fields.
pub(crate) fn unix_now() -> u64 {
    // A clock before 1970 only happens on a misconfigured host; 0 is harmless
    // there because no test compares timestamps.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// A provider-style object id such as `chatcmpl-3f2a…` or `msg_3f2a…`.
pub(crate) fn object_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cycle_the_sentence_and_concatenate() {
        assert_eq!(answer_text(6), SENTENCE);
        assert_eq!(answer_pieces(8).len(), 8);
        assert_eq!(answer_text(8), format!("{SENTENCE} Hello from"));
        assert_eq!(answer_text(0), "");
        assert!(answer_pieces(20).iter().all(|piece| !piece.is_empty()));
    }

    #[test]
    fn prompt_tokens_is_a_quarter_of_the_body_and_never_zero() {
        assert_eq!(prompt_tokens(0), 1);
        assert_eq!(prompt_tokens(3), 1);
        assert_eq!(prompt_tokens(400), 100);
    }
}
