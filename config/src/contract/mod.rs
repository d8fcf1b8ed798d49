//! The contract between the planes: every path, header, body and limit
//! that crosses between a data plane and its control plane, used by both
//! sides (the data plane's `sync` and `spool`, the control plane's
//! `/internal/v1` handlers).
//!
//! | exchange | request | answer |
//! | --- | --- | --- |
//! | config | `GET` [`CONFIG_PATH`]`?after=<version>` ([`ConfigPoll`]) | 200 with a [`RawSnapshot`] as JSON as soon as one newer than `after` exists, else 304 after the hold |
//! | usage | `POST` [`USAGE_PATH`] with a [`UsageBatch`] | 200 with an [`IngestAnswer`] once the whole batch is stored |
//!
//! Both carry the data-plane token as `authorization: Bearer <token>`
//! ([`AUTH_HEADER`], [`bearer`], [`bearer_token`]).
//!
//! Compatibility: fields are only ever added, with defaults, and planes
//! are upgraded one at a time. A data plane reads a snapshot from a newer
//! control plane without the fields it does not know ([`parse_snapshot`]
//! names them, for a warning); a control plane stores usage events without
//! the fields it does not know ([`crate::UsageEvent`] denies none).

mod snapshot;
mod usage;

pub use crate::wire::RawSnapshot;
pub use snapshot::{parse_snapshot, ConfigPoll, ParsedSnapshot};
pub use usage::{
    IngestAnswer, UsageBatch, UsageBatchWriter, MAX_BATCH_BYTES, MAX_BATCH_EVENTS,
    MAX_EVENT_ID_BYTES,
};

/// The config long poll.
pub const CONFIG_PATH: &str = "/internal/v1/config";
/// Usage ingest.
pub const USAGE_PATH: &str = "/internal/v1/usage";
/// The header both exchanges carry the data-plane token in.
pub const AUTH_HEADER: &str = "authorization";
const BEARER: &str = "Bearer ";

/// The [`AUTH_HEADER`] value for `token`.
pub fn bearer(token: &str) -> String {
    format!("{BEARER}{token}")
}

/// The token of an [`AUTH_HEADER`] value, if it is a bearer token.
pub fn bearer_token(value: &str) -> Option<&str> {
    value.strip_prefix(BEARER).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_round_trip() {
        assert_eq!(bearer_token(&bearer("t0k")), Some("t0k"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer  spaced "), Some("spaced"));
    }
}
