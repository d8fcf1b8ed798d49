//! The usage object of every supported format, and its normalisation to a
//! [`TokenUsage`] whose classes are parts of its totals.
//!
//! | format | totals | classes (parts of the totals) |
//! |---|---|---|
//! | OpenAI chat, completions | `prompt_tokens`, `completion_tokens` | `prompt_tokens_details.{cached_tokens, audio_tokens}`, `completion_tokens_details.{reasoning_tokens, audio_tokens}` |
//! | Responses | `input_tokens`, `output_tokens` | `input_tokens_details.cached_tokens`, `output_tokens_details.reasoning_tokens` |
//! | Realtime `response.done` | `input_tokens`, `output_tokens` | `input_token_details.{cached_tokens, audio_tokens, cached_tokens_details.audio_tokens}`, `output_token_details.audio_tokens` |
//! | Anthropic | `input_tokens` **plus** `cache_read_input_tokens` and `cache_creation_input_tokens` (Anthropic's `input_tokens` leaves them out) | `cache_read_input_tokens`; `cache_creation.{ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}` (a write whose lifetime is not said is a 5-minute one) |
//!
//! The classes are disjoint: cached audio (Realtime) is a cache read, not
//! also audio, so `audio_input` is the uncached audio.

use super::TokenUsage;
use molt_config::TokenClasses;
use serde::Deserialize;

/// The usage object of any supported format, as reported: every field a
/// format may carry, `None` where it did not.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct UsageFields {
    // OpenAI chat and legacy completions.
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    // Anthropic, Responses, Realtime.
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    // Responses.
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
    // Realtime.
    input_token_details: Option<Details>,
    output_token_details: Option<Details>,
    // Anthropic: beside `input_tokens`, not part of it.
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation: Option<CacheCreation>,
}

/// `*_details` of the OpenAI formats.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
    audio_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    /// Realtime: what the cached tokens were.
    cached_tokens_details: Option<CachedDetails>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct CachedDetails {
    audio_tokens: Option<u64>,
}

/// Anthropic's cache writes by lifetime.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: Option<u64>,
    ephemeral_1h_input_tokens: Option<u64>,
}

impl UsageFields {
    /// Take what a later usage object of the same response reports: each
    /// field it carries replaces the earlier one (Anthropic's
    /// `message_delta` carries the final output and, on newer API versions,
    /// the final cache figures; `message_start` the input). A later zero
    /// does not erase a count already reported: no provider revises a count
    /// down to nothing, but some send `0` for "not counted here".
    pub(crate) fn merge(&mut self, later: UsageFields) {
        fn count(earlier: &mut Option<u64>, later: Option<u64>) {
            if let Some(v) = later {
                if v != 0 || earlier.is_none() {
                    *earlier = Some(v);
                }
            }
        }
        fn object<T>(earlier: &mut Option<T>, later: Option<T>) {
            if later.is_some() {
                *earlier = later;
            }
        }
        count(&mut self.prompt_tokens, later.prompt_tokens);
        count(&mut self.completion_tokens, later.completion_tokens);
        count(&mut self.input_tokens, later.input_tokens);
        count(&mut self.output_tokens, later.output_tokens);
        count(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        count(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
        object(&mut self.prompt_tokens_details, later.prompt_tokens_details);
        object(
            &mut self.completion_tokens_details,
            later.completion_tokens_details,
        );
        object(&mut self.input_tokens_details, later.input_tokens_details);
        object(&mut self.output_tokens_details, later.output_tokens_details);
        object(&mut self.input_token_details, later.input_token_details);
        object(&mut self.output_token_details, later.output_token_details);
        object(&mut self.cache_creation, later.cache_creation);
    }

    /// Totals and classes, whatever the format.
    pub(crate) fn tokens(&self) -> TokenUsage {
        let n = |v: Option<u64>| v.unwrap_or(0);
        // A usage object is of one format, so at most one of each is set.
        let input_details = self
            .prompt_tokens_details
            .or(self.input_tokens_details)
            .or(self.input_token_details)
            .unwrap_or_default();
        let output_details = self
            .completion_tokens_details
            .or(self.output_tokens_details)
            .or(self.output_token_details)
            .unwrap_or_default();
        let cache_creation = self.cache_creation.unwrap_or_default();
        let write_1h = n(cache_creation.ephemeral_1h_input_tokens);
        let write_total = n(self.cache_creation_input_tokens)
            .max(n(cache_creation.ephemeral_5m_input_tokens).saturating_add(write_1h));
        let anthropic_read = n(self.cache_read_input_tokens);
        let cached_audio = input_details
            .cached_tokens_details
            .and_then(|d| d.audio_tokens);
        let classes = TokenClasses {
            cache_read_input: anthropic_read.saturating_add(n(input_details.cached_tokens)),
            cache_write_5m_input: write_total.saturating_sub(write_1h),
            cache_write_1h_input: write_1h.min(write_total),
            audio_input: n(input_details.audio_tokens).saturating_sub(n(cached_audio)),
            reasoning_output: n(output_details.reasoning_tokens),
            audio_output: n(output_details.audio_tokens),
        };
        TokenUsage {
            input: n(self.prompt_tokens)
                .saturating_add(n(self.input_tokens))
                .saturating_add(write_total)
                .saturating_add(anthropic_read),
            output: n(self.completion_tokens).saturating_add(n(self.output_tokens)),
            classes,
        }
    }
}

/// The usage of a Realtime `response.done` event:
/// `{"type":"response.done","response":{"usage":{...}}}`. Only messages
/// that mention `response.done` are parsed; audio deltas and the rest cost
/// one substring search.
pub fn realtime_response_done(text: &str) -> Option<TokenUsage> {
    #[derive(Deserialize)]
    struct Done {
        #[serde(rename = "type")]
        kind: String,
        response: Option<Response>,
    }
    #[derive(Deserialize)]
    struct Response {
        usage: Option<UsageFields>,
    }
    memchr::memmem::find(text.as_bytes(), b"response.done")?;
    let done: Done = serde_json::from_str(text).ok()?;
    if done.kind != "response.done" {
        return None;
    }
    Some(done.response?.usage?.tokens())
}
