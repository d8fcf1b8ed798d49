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
    pub input_tokens: u64,
    pub output_tokens: u64,
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
