//! Reading token usage out of responses as they stream past, split into the
//! token classes providers price apart.
//!
//! - [`formats`]: the usage object of every supported format (OpenAI chat
//!   and completions, Responses, Anthropic Messages, Realtime's
//!   `response.done`) normalised to one [`TokenUsage`]: totals that hold
//!   every token, and the [`TokenClasses`] that are parts of them.
//! - [`sse`]: [`SseUsageReader`] follows an SSE stream chunk by chunk
//!   (events split across chunks, several events per chunk), finds the
//!   usage (OpenAI's usage chunk, also one that still carries `choices`;
//!   Anthropic's `message_start` + `message_delta`, the later figures
//!   winning; Responses' `response.completed`) and, when the proxy itself
//!   asked for OpenAI's usage chunk, removes that chunk so the client sees
//!   exactly what it asked for.
//! - [`JsonUsageReader`] does the same for a non-streaming JSON body with
//!   the incremental scanner: only the `usage` value is copied.
//!
//! Cost on the hot path: a `memchr` for line ends and a `memmem` for
//! `"usage"` per line; JSON is parsed only for the few lines that mention
//! usage. Bytes are forwarded as the same `Bytes` they arrived in unless an
//! event has to be cut out.

mod formats;
mod sse;
#[cfg(test)]
mod tests;

pub use formats::realtime_response_done;
pub use sse::{SseUsageReader, StreamKind};

use crate::json_scan::JsonScanner;
use formats::UsageFields;
use molt_config::money::ClassTokens;
use molt_config::TokenClasses;

/// Tokens a provider reported (or the proxy counted). `input` and `output`
/// hold every token; `classes` says how many of them are cache reads and
/// writes, audio and reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub classes: TokenClasses,
}

impl TokenUsage {
    /// Plain totals with no classes (a local count, a provider that reports
    /// only totals).
    pub fn totals(input: u64, output: u64) -> TokenUsage {
        TokenUsage {
            input,
            output,
            classes: TokenClasses::default(),
        }
    }

    /// Add `other` (a Realtime session sums its responses).
    pub fn add(&mut self, other: &TokenUsage) {
        let (c, o) = (&mut self.classes, &other.classes);
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        c.cache_read_input = c.cache_read_input.saturating_add(o.cache_read_input);
        c.cache_write_5m_input = c
            .cache_write_5m_input
            .saturating_add(o.cache_write_5m_input);
        c.cache_write_1h_input = c
            .cache_write_1h_input
            .saturating_add(o.cache_write_1h_input);
        c.audio_input = c.audio_input.saturating_add(o.audio_input);
        c.reasoning_output = c.reasoning_output.saturating_add(o.reasoning_output);
        c.audio_output = c.audio_output.saturating_add(o.audio_output);
    }

    /// The tokens of every class, for pricing.
    pub fn by_class(&self) -> ClassTokens {
        ClassTokens::split(self.input, self.output, &self.classes)
    }
}

/// Finds `usage` in a non-streaming JSON response.
#[derive(Debug)]
pub struct JsonUsageReader {
    scanner: JsonScanner,
    failed: bool,
}

impl Default for JsonUsageReader {
    fn default() -> Self {
        Self {
            scanner: JsonScanner::new(&["usage"], 16 * 1024),
            failed: false,
        }
    }
}

impl JsonUsageReader {
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.failed && self.scanner.feed(chunk).is_err() {
            // Not JSON (an HTML error page, say): there is no usage to read.
            self.failed = true;
        }
    }

    /// The usage object, once the whole body was fed.
    pub fn finish(mut self) -> Option<TokenUsage> {
        if self.failed || self.scanner.finish().is_err() {
            return None;
        }
        let raw = self.scanner.field(0)?.raw.as_deref()?;
        serde_json::from_slice::<UsageFields>(raw)
            .ok()
            .map(|u| u.tokens())
    }
}
