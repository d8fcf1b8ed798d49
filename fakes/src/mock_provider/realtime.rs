//! The mock of OpenAI's Realtime API: `GET /v1/realtime?model=<model>`, a
//! WebSocket speaking the text subset of the protocol.
//!
//! - The handshake is recorded like any request (credential, headers,
//!   `model` from the query); no credential is a 401 before the upgrade,
//!   and a `mock-error-<code>` model answers that status, so tests can
//!   check that the proxy injected a key and maps refusals.
//! - Then: `session.created`; `session.update` → `session.updated`;
//!   `conversation.item.create` → `conversation.item.created`;
//!   `response.create` → `response.created`, one text delta per word of
//!   [`content::SENTENCE`] (as many as the mock's `chunks`), the text's
//!   `done` event, and `response.done` with
//!   `usage {input_tokens, output_tokens, total_tokens}`. Anything else is
//!   an `error` event, as the real API does.
//! - Event names follow the protocol version the client asked for:
//!   `OpenAI-Beta: realtime=v1` gets the beta names
//!   (`response.text.delta`), otherwise the GA ones
//!   (`response.output_text.delta`).
//! - Usage is deterministic: output tokens = the delta count, input tokens
//!   = `max(1, bytes of conversation text / 4)` counted since the previous
//!   response. The session's record carries the sum over its responses,
//!   updated after each `response.done`.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts as _, Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use super::content;
use super::errors::{error_response, Flavor};
use super::{MockProvider, ReportedUsage, DEFAULT_MODEL};

/// `GET /v1/realtime`: record the handshake, then upgrade.
pub(super) async fn upgrade(State(provider): State<MockProvider>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let model = Query::<RealtimeQuery>::try_from_uri(&parts.uri)
        .ok()
        .and_then(|Query(q)| q.model);
    let beta = parts
        .headers
        .get("openai-beta")
        .is_some_and(|v| v.as_bytes().starts_with(b"realtime"));
    let record = provider.new_record(&parts, &Bytes::new(), model.clone(), None);
    let id = record.id;
    let has_credential = record.authorization.is_some();
    provider.push_record(record);
    if !has_credential {
        return error_response(
            Flavor::OpenAi,
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        );
    }
    if let Some(status) = model
        .as_deref()
        .and_then(|m| m.strip_prefix("mock-error-"))
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        return error_response(
            Flavor::OpenAi,
            status,
            &format!("Mock provider injected HTTP {}", status.as_u16()),
        );
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let model = model.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let chunks = provider.inner.options.chunks;
    ws.on_upgrade(move |socket| async move {
        let mut session = RealtimeSession {
            socket,
            provider,
            record_id: id,
            model,
            beta,
            chunks,
            pending_input_bytes: 0,
            total: ReportedUsage::default(),
            next_event: 0,
        };
        // The client going away is how a session normally ends.
        let _ = session.run().await;
    })
}

/// The handshake's query string.
#[derive(serde::Deserialize)]
struct RealtimeQuery {
    model: Option<String>,
}

/// One open Realtime session.
struct RealtimeSession {
    socket: WebSocket,
    provider: MockProvider,
    record_id: u64,
    model: String,
    beta: bool,
    chunks: usize,
    /// Conversation text received since the last response.
    pending_input_bytes: usize,
    /// Usage reported so far, summed over responses.
    total: ReportedUsage,
    next_event: u64,
}

impl RealtimeSession {
    async fn send(&mut self, mut event: Value) -> Result<(), axum::Error> {
        self.next_event += 1;
        if let Value::Object(o) = &mut event {
            o.insert(
                "event_id".to_owned(),
                Value::from(format!("event_mock_{}", self.next_event)),
            );
        }
        self.socket
            .send(Message::Text(event.to_string().into()))
            .await
    }

    async fn run(&mut self) -> Result<(), axum::Error> {
        let session_id = content::object_id("sess");
        let model = self.model.clone();
        self.send(json!({
            "type": "session.created",
            "session": {"id": session_id, "object": "realtime.session", "model": model,
                "modalities": ["text"], "instructions": ""},
        }))
        .await?;
        while let Some(msg) = self.socket.recv().await {
            let text = match msg? {
                Message::Text(t) => t,
                Message::Close(_) => return Ok(()),
                // Binary is not part of the protocol; pings are answered by axum.
                _ => continue,
            };
            let event: Value = match serde_json::from_str(text.as_str()) {
                Ok(v) => v,
                Err(e) => {
                    self.error("invalid_json", &format!("Invalid JSON: {e}"))
                        .await?;
                    continue;
                }
            };
            match event.get("type").and_then(Value::as_str).unwrap_or("") {
                "session.update" => {
                    let session = event.get("session").cloned().unwrap_or(json!({}));
                    self.send(json!({"type": "session.updated", "session": session}))
                        .await?;
                }
                "conversation.item.create" => {
                    let item = event.get("item").cloned().unwrap_or(json!({}));
                    self.pending_input_bytes += item_text_len(&item);
                    let mut item = item;
                    if let Value::Object(o) = &mut item {
                        o.entry("id")
                            .or_insert_with(|| Value::from(content::object_id("item")));
                    }
                    self.send(json!({"type": "conversation.item.created", "item": item}))
                        .await?;
                }
                "response.create" => self.respond(&event).await?,
                other => {
                    let message = format!("Invalid value: '{other}'. Unsupported event type.");
                    self.error("invalid_value", &message).await?;
                }
            }
        }
        Ok(())
    }

    async fn error(&mut self, code: &str, message: &str) -> Result<(), axum::Error> {
        self.send(
            json!({"type": "error", "error": {"type": "invalid_request_error",
            "code": code, "message": message, "param": null}}),
        )
        .await
    }

    /// One response: created, deltas, done with usage.
    async fn respond(&mut self, event: &Value) -> Result<(), axum::Error> {
        let instructions = event
            .pointer("/response/instructions")
            .and_then(Value::as_str)
            .map_or(0, str::len);
        let input_bytes = std::mem::take(&mut self.pending_input_bytes) + instructions;
        let usage = ReportedUsage {
            input_tokens: content::prompt_tokens(input_bytes),
            output_tokens: content::output_tokens(self.chunks),
            ..ReportedUsage::default()
        };
        let response_id = content::object_id("resp");
        let item_id = content::object_id("item");
        self.send(json!({"type": "response.created", "response": {
            "id": response_id, "object": "realtime.response", "status": "in_progress",
            "output": [], "usage": null}}))
            .await?;
        let (delta_type, done_type) = if self.beta {
            ("response.text.delta", "response.text.done")
        } else {
            ("response.output_text.delta", "response.output_text.done")
        };
        for piece in content::answer_pieces(self.chunks) {
            self.send(json!({"type": delta_type, "response_id": response_id,
                "item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece}))
                .await?;
        }
        let text = content::answer_text(self.chunks);
        self.send(json!({"type": done_type, "response_id": response_id,
            "item_id": item_id, "output_index": 0, "content_index": 0, "text": text}))
            .await?;
        // Recorded before it is sent: once a client has seen `response.done`
        // the record already includes it.
        self.total.input_tokens += usage.input_tokens;
        self.total.output_tokens += usage.output_tokens;
        self.provider.set_usage(self.record_id, self.total);
        self.send(json!({"type": "response.done", "response": {
            "id": response_id, "object": "realtime.response", "status": "completed",
            "output": [{"id": item_id, "object": "realtime.item", "type": "message",
                "role": "assistant", "status": "completed",
                "content": [{"type": "text", "text": text}]}],
            "usage": {"total_tokens": usage.input_tokens + usage.output_tokens,
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                "input_token_details": {"cached_tokens": 0, "text_tokens": usage.input_tokens,
                    "audio_tokens": 0, "image_tokens": 0,
                    "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
                "output_token_details": {"text_tokens": usage.output_tokens, "audio_tokens": 0}}}}))
            .await
    }
}

/// Bytes of text in a conversation item's `content` parts.
fn item_text_len(item: &Value) -> usize {
    item.get("content")
        .and_then(Value::as_array)
        .map_or(0, |parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(str::len)
                .sum()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_text() {
        assert_eq!(
            item_text_len(&json!({"content": [{"type": "input_text", "text": "abcd"}]})),
            4
        );
    }
}
