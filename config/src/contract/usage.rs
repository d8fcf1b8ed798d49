//! The usage exchange: the batch a data plane posts, the answer, and the
//! limits both sides hold a batch to.

use crate::usage::UsageEvent;
use serde::{Deserialize, Serialize};

/// Most events in one batch: the data plane's shipper cuts batches here and
/// the control plane refuses a larger one.
pub const MAX_BATCH_EVENTS: usize = 2_000;
/// Bytes of event JSON at which the shipper cuts a batch (an event longer
/// than this alone goes in a batch of its own). The control plane's body
/// limit (`max_ingest_bytes`, 16 MiB by default) leaves room above it.
pub const MAX_BATCH_BYTES: usize = 2 << 20;
/// Longest `event_id` the control plane stores.
pub const MAX_EVENT_ID_BYTES: usize = 128;

/// Body of `POST /internal/v1/usage`: stored all or nothing, each event
/// once by its `event_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    pub events: Vec<UsageEvent>,
}

/// Answer of `POST /internal/v1/usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAnswer {
    /// Events stored by this batch.
    pub accepted: u64,
    /// Events whose `event_id` was already stored (a re-sent batch).
    pub duplicates: u64,
}

/// Writes a [`UsageBatch`] body from events that are already JSON (the
/// data plane's spool keeps them as JSON lines), without parsing them
/// again: `{"events":[` + the events, comma-separated + `]}`.
#[derive(Debug)]
pub struct UsageBatchWriter {
    body: Vec<u8>,
    events: usize,
}

impl UsageBatchWriter {
    const HEAD: &'static [u8] = br#"{"events":["#;
    const TAIL: &'static [u8] = b"]}";

    /// A writer for about `event_bytes` of events.
    pub fn with_capacity(event_bytes: usize) -> Self {
        let mut body = Vec::with_capacity(event_bytes + Self::HEAD.len() + Self::TAIL.len());
        body.extend_from_slice(Self::HEAD);
        Self { body, events: 0 }
    }

    /// Whether the batch holds [`MAX_BATCH_EVENTS`] already.
    pub fn is_full(&self) -> bool {
        self.events >= MAX_BATCH_EVENTS
    }

    /// How many events are written.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Append one event, given as a complete JSON object of a
    /// [`UsageEvent`] (the caller has checked it is JSON).
    pub fn push_json(&mut self, event: &[u8]) {
        if self.events > 0 {
            self.body.push(b',');
        }
        self.body.extend_from_slice(event);
        self.events += 1;
    }

    /// The finished body.
    pub fn finish(mut self) -> Vec<u8> {
        self.body.extend_from_slice(Self::TAIL);
        self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> UsageEvent {
        serde_json::from_value(serde_json::json!({
            "event_id": id, "request_id": "r", "timestamp_ms": 1, "key_id": "k",
            "user_id": "u", "model": "m", "provider": "p", "route": "chat.completions",
            "status": 200, "input_tokens": 3, "output_tokens": 4, "estimated": false,
            "stream": true, "attempts": 1, "duration_ms": 5, "outcome": "ok"
        }))
        .unwrap()
    }

    #[test]
    fn the_writer_writes_what_the_control_plane_parses() {
        let events = [event("e1"), event("e2")];
        let mut w = UsageBatchWriter::with_capacity(256);
        for e in &events {
            w.push_json(&serde_json::to_vec(e).unwrap());
        }
        assert_eq!(w.events(), 2);
        let batch: UsageBatch = serde_json::from_slice(&w.finish()).unwrap();
        assert_eq!(batch.events, events);
        let empty: UsageBatch =
            serde_json::from_slice(&UsageBatchWriter::with_capacity(0).finish()).unwrap();
        assert!(empty.events.is_empty());
    }

    #[test]
    fn a_batch_is_full_at_the_shared_limit() {
        let line = serde_json::to_vec(&event("e")).unwrap();
        let mut w = UsageBatchWriter::with_capacity(0);
        for _ in 0..MAX_BATCH_EVENTS {
            assert!(!w.is_full());
            w.push_json(&line);
        }
        assert!(w.is_full());
    }

    #[test]
    fn events_from_a_newer_data_plane_keep_their_known_fields() {
        let mut e = serde_json::to_value(event("e1")).unwrap();
        e["carbon_grams"] = serde_json::json!(2);
        let batch: UsageBatch =
            serde_json::from_value(serde_json::json!({ "events": [e] })).unwrap();
        assert_eq!(batch.events, [event("e1")]);
    }
}
