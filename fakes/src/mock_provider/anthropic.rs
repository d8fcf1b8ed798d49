//! Anthropic-compatible endpoints: the Messages API (plain and streamed with
//! Anthropic's named SSE events) and the Anthropic-format model list.

use serde_json::{json, Value};

use super::classes::FormatClasses;
use super::content::{answer_pieces, answer_text, object_id};
use super::sse::{named_event, StreamEvents};
use super::{with_field, Call, Reply, ReportedUsage};

/// Anthropic reports cache reads and writes (by lifetime); thinking tokens
/// are output tokens without a count of their own.
const ANTHROPIC_CLASSES: FormatClasses = FormatClasses {
    cache_read: true,
    cache_write: true,
    reasoning: false,
};

/// Claude models listed by `GET /v1/models` when asked in Anthropic's format.
const MODELS: &[(&str, &str)] = &[
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
];

/// `message_start` always reports this many output tokens, as Anthropic does;
/// the real count follows in `message_delta`.
const START_OUTPUT_TOKENS: u64 = 1;

/// `POST /v1/messages`.
pub(crate) fn messages(call: &Call<'_>) -> Reply {
    let id = object_id("msg_");
    let usage = call.usage_with(ANTHROPIC_CLASSES);
    let message = |content: Value, stop_reason: Option<&str>, usage: Option<ReportedUsage>| {
        let message = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
        });
        match usage {
            Some(usage) => with_field(message, "usage", usage_json(usage)),
            None => message,
        }
    };
    if !call.stream {
        let text = answer_text(call.controls.chunks);
        let body = message(
            json!([{"type": "text", "text": text}]),
            Some("end_turn"),
            usage,
        );
        return call.json_reply(&body, usage);
    }

    let start_usage = usage.map(|usage| ReportedUsage {
        output_tokens: START_OUTPUT_TOKENS,
        ..usage
    });
    let events = StreamEvents {
        preamble: vec![
            named_event(
                "message_start",
                &json!({"type": "message_start", "message": message(json!([]), None, start_usage)}),
            ),
            named_event(
                "content_block_start",
                &json!({
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }),
            ),
            named_event("ping", &json!({"type": "ping"})),
        ],
        chunks: answer_pieces(call.controls.chunks)
            .iter()
            .map(|piece| {
                named_event(
                    "content_block_delta",
                    &json!({
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    }),
                )
            })
            .collect(),
        epilogue: vec![
            named_event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 0}),
            ),
            named_event("message_delta", &{
                let delta = json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                });
                match usage {
                    Some(usage) => with_field(delta, "usage", delta_usage_json(usage)),
                    None => delta,
                }
            }),
            named_event("message_stop", &json!({"type": "message_stop"})),
        ],
    };
    // An aborted stream never sends `message_delta`, so the last usage the
    // client saw is the one in `message_start`.
    call.stream_reply(events, usage, start_usage)
}

/// Anthropic's usage: `input_tokens` is what the cache leaves (the mock's
/// total less cache reads and writes), the cache beside it.
fn usage_json(usage: ReportedUsage) -> Value {
    let c = usage.classes;
    let mut v = json!({
        "input_tokens": usage.input_tokens - c.cache_read_input - c.cache_writes(),
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": c.cache_writes(),
        "cache_read_input_tokens": c.cache_read_input,
    });
    if c.cache_writes() > 0 {
        v = with_field(
            v,
            "cache_creation",
            json!({
                "ephemeral_5m_input_tokens": c.cache_write_5m_input,
                "ephemeral_1h_input_tokens": c.cache_write_1h_input,
            }),
        );
    }
    v
}

/// `message_delta`'s usage: the final output count and, when the cache
/// was used, the final (cumulative) input and cache figures, as newer API
/// versions send them.
fn delta_usage_json(usage: ReportedUsage) -> Value {
    let c = usage.classes;
    if c.cache_read_input == 0 && c.cache_writes() == 0 {
        return json!({"output_tokens": usage.output_tokens});
    }
    json!({
        "input_tokens": usage.input_tokens - c.cache_read_input - c.cache_writes(),
        "cache_creation_input_tokens": c.cache_writes(),
        "cache_read_input_tokens": c.cache_read_input,
        "output_tokens": usage.output_tokens,
    })
}

/// `GET /v1/models` in Anthropic's paginated list format.
pub(crate) fn models() -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, display_name)| {
            json!({
                "type": "model",
                "id": id,
                "display_name": display_name,
                "created_at": "2025-09-29T00:00:00Z",
            })
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": MODELS.first().map(|(id, _)| *id),
        "last_id": MODELS.last().map(|(id, _)| *id),
    })
}
