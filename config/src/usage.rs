//! Usage events: what the data plane records for every completed request.
//!
//! This is a wire type shared by both planes (the data plane writes it, the
//! control plane ingests it), so fields are only ever added, with defaults.

use serde::{Deserialize, Serialize};

/// One completed (or failed) request and the tokens it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Unique id of this event (UUIDv7): the idempotency key for ingest.
    pub event_id: String,
    /// The `x-request-id` the client saw.
    pub request_id: String,
    /// Unix time in milliseconds when the request arrived.
    pub timestamp_ms: u64,
    /// The client key's id (`jwt` for JWT-authenticated requests).
    pub key_id: String,
    pub user_id: String,
    /// The model the client asked for, as resolved (canonical name).
    pub model: String,
    /// The model provider that answered (after fallbacks); empty if none
    /// did, and for a chat with a bot (see `bot_id`).
    pub provider: String,
    /// The bot a WebSocket chat (`ws.chat`) went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_id: Option<String>,
    /// The API route, e.g. `chat.completions`.
    pub route: String,
    /// Status the client received.
    pub status: u16,
    /// Every input token: plain, cached, cache writes and audio (the
    /// classes below say how many of each).
    pub input_tokens: u64,
    /// Every output token, reasoning and audio included.
    pub output_tokens: u64,
    /// The tokens of `input_tokens` and `output_tokens` that are priced
    /// apart (cache reads and writes, audio, reasoning); absent when none.
    #[serde(default, skip_serializing_if = "TokenClasses::is_empty")]
    pub classes: TokenClasses,
    /// True when the provider reported no usage and the figures were counted
    /// locally with a tokenizer.
    pub estimated: bool,
    pub stream: bool,
    /// How many upstream attempts were made (1 without fallbacks).
    pub attempts: u32,
    /// Total time from request start to the last byte sent, in ms.
    pub duration_ms: u64,
    /// Time from request start to the upstream's first response byte, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ttfb_ms: Option<u64>,
    /// The user's token rate was flagged as unusual against their own
    /// baseline when this request settled.
    #[serde(default)]
    pub anomaly: bool,
    /// Why the request ended the way it did, when not `ok`
    /// (`client_disconnected`, `upstream_aborted`, `upstream_error`, ...).
    pub outcome: String,
}

/// The parts of an event's token totals that providers price apart. Each
/// is a part of `input_tokens` or `output_tokens`, never in addition to
/// them, whatever the provider's own convention (Anthropic reports cache
/// tokens beside `input_tokens`; OpenAI reports cached and reasoning tokens
/// inside its totals): the usage readers normalise to this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenClasses {
    /// Input read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_input: u64,
    /// Input written to the prompt cache with a 5-minute lifetime (also a
    /// cache write whose lifetime the provider does not say).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_5m_input: u64,
    /// Input written to the prompt cache with a 1-hour lifetime.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h_input: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audio_input: u64,
    /// Output spent on reasoning (part of `output_tokens`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning_output: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audio_output: u64,
}

impl TokenClasses {
    pub fn is_empty(&self) -> bool {
        *self == TokenClasses::default()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
