//! OpenAI-compatible endpoints: chat completions, legacy completions,
//! embeddings, the Responses API and the model list, with the exact JSON
//! shapes and SSE framing of the real API (and so of its official SDKs).

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::classes::FormatClasses;
use super::content::{answer_pieces, answer_text, object_id, unix_now};
use super::errors::Flavor;
use super::sse::{data_event, named_event, StreamEvents, DONE};
use super::{with_field, Call, Reply, ReportedUsage};

/// Chat and Responses report cached input and reasoning output; a cache
/// write is not a class of OpenAI's.
const OPENAI_CLASSES: FormatClasses = FormatClasses {
    cache_read: true,
    cache_write: false,
    reasoning: true,
};

/// Models listed by `GET /v1/models`, with their owners.
pub(crate) const MODELS: &[(&str, &str)] = &[
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("gpt-4.1-mini", "openai"),
    ("text-embedding-3-small", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
    ("mock-model", "molt"),
];

/// Length of every mock embedding vector.
const EMBEDDING_DIMENSIONS: usize = 8;

/// `POST /v1/chat/completions`.
pub(crate) fn chat_completions(call: &Call<'_>) -> Reply {
    let id = object_id("chatcmpl-");
    let created = unix_now();
    let usage = call.usage_with(OPENAI_CLASSES);
    if !call.stream {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": call.model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": answer_text(call.controls.chunks),
                    "refusal": null,
                    "annotations": [],
                },
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "service_tier": "default",
            "system_fingerprint": null,
        });
        let body = match usage {
            Some(usage) => with_field(body, "usage", chat_usage_json(usage)),
            None => body,
        };
        return call.json_reply(&body, usage);
    }

    // OpenAI only puts usage in a stream when asked to, and then marks every
    // other chunk with `"usage": null`.
    let stream_usage = usage.filter(|_| call.include_usage);
    let chunk = |delta: Value, finish_reason: Option<&str>| -> Bytes {
        let chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": call.model,
            "service_tier": "default",
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        data_event(&match stream_usage {
            Some(_) => with_field(chunk, "usage", Value::Null),
            None => chunk,
        })
    };

    let mut events = StreamEvents::default();
    let pieces = answer_pieces(call.controls.chunks);
    if pieces.is_empty() {
        // The role still has to be announced even when there is no content.
        events
            .preamble
            .push(chunk(json!({"role": "assistant", "content": ""}), None));
    }
    events.chunks = pieces
        .iter()
        .enumerate()
        .map(|(index, piece)| {
            let delta = if index == 0 {
                json!({"role": "assistant", "content": piece})
            } else {
                json!({"content": piece})
            };
            chunk(delta, None)
        })
        .collect();
    events.epilogue.push(chunk(json!({}), Some("stop")));
    if let Some(usage) = stream_usage {
        events.epilogue.push(data_event(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": call.model,
            "service_tier": "default",
            "system_fingerprint": null,
            "choices": [],
            "usage": chat_usage_json(usage),
        })));
    }
    events.epilogue.push(Bytes::from_static(DONE.as_bytes()));
    call.stream_reply(events, stream_usage, None)
}

/// `POST /v1/completions` (legacy text completions).
pub(crate) fn completions(call: &Call<'_>) -> Reply {
    let id = object_id("cmpl-");
    let created = unix_now();
    let usage = call.usage();
    let completion = |text: &str, finish_reason: Option<&str>| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": call.model,
            "system_fingerprint": null,
            "choices": [{
                "text": text,
                "index": 0,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        })
    };
    if !call.stream {
        let body = completion(&answer_text(call.controls.chunks), Some("stop"));
        let body = match usage {
            Some(usage) => with_field(body, "usage", basic_usage_json(usage)),
            None => body,
        };
        return call.json_reply(&body, usage);
    }

    let stream_usage = usage.filter(|_| call.include_usage);
    let event = |text: &str, finish_reason: Option<&str>| {
        let chunk = completion(text, finish_reason);
        data_event(&match stream_usage {
            Some(_) => with_field(chunk, "usage", Value::Null),
            None => chunk,
        })
    };
    let mut events = StreamEvents {
        chunks: answer_pieces(call.controls.chunks)
            .iter()
            .map(|piece| event(piece, None))
            .collect(),
        ..StreamEvents::default()
    };
    events.epilogue.push(event("", Some("stop")));
    if let Some(usage) = stream_usage {
        events.epilogue.push(data_event(&json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": call.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": basic_usage_json(usage),
        })));
    }
    events.epilogue.push(Bytes::from_static(DONE.as_bytes()));
    call.stream_reply(events, stream_usage, None)
}

/// `POST /v1/embeddings`: one deterministic 8-dimensional vector per input.
pub(crate) fn embeddings(call: &Call<'_>) -> Reply {
    let inputs: Vec<&Value> = match call.body.get("input") {
        // An array of token ids is a single input; any other array is a batch.
        Some(input @ Value::Array(items)) if items.first().is_some_and(Value::is_number) => {
            vec![input]
        }
        Some(Value::Array(items)) => items.iter().collect(),
        Some(input) => vec![input],
        None => {
            return Reply::error(
                Flavor::OpenAi,
                StatusCode::BAD_REQUEST,
                "'input' is a required property",
            )
        }
    };
    let base64 = call.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(input);
            let embedding = if base64 {
                // The SDKs request base64 by default: little-endian f32s.
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    bytes
                ))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    // Embeddings produce no output tokens.
    let usage = call.usage().map(|usage| ReportedUsage {
        output_tokens: 0,
        ..usage
    });
    let mut body = json!({"object": "list", "data": data, "model": call.model});
    if let Some(usage) = usage {
        body = with_field(
            body,
            "usage",
            json!({"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens}),
        );
    }
    call.json_reply(&body, usage)
}

/// A vector in [-1, 1] derived from the SHA-256 of the input's JSON text, so
/// equal inputs always embed equally.
fn embedding_vector(input: &Value) -> Vec<f32> {
    Sha256::digest(input.to_string().as_bytes())
        .iter()
        .take(EMBEDDING_DIMENSIONS)
        .map(|byte| f32::from(*byte) / 127.5 - 1.0)
        .collect()
}

/// `POST /v1/responses` (the Responses API).
pub(crate) fn responses(call: &Call<'_>) -> Reply {
    let response_id = object_id("resp_");
    let item_id = object_id("msg_");
    let created_at = unix_now();
    let usage = call.usage_with(OPENAI_CLASSES);
    let text = answer_text(call.controls.chunks);
    let output_text = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let message = |status: &str, content: Vec<Value>| {
        json!({
            "type": "message",
            "id": item_id,
            "status": status,
            "role": "assistant",
            "content": content,
        })
    };
    let response = |status: &str, output: Vec<Value>, usage: Option<ReportedUsage>| {
        response_object(call, &response_id, created_at, status, output, usage)
    };
    let completed = response(
        "completed",
        vec![message("completed", vec![output_text(&text)])],
        usage,
    );
    if !call.stream {
        return call.json_reply(&completed, usage);
    }

    // Every event carries its position in the stream, starting at 0.
    let mut sequence_number = 0_u64;
    let mut event = |kind: &str, fields: Value| -> Bytes {
        let mut event = json!({"type": kind, "sequence_number": sequence_number});
        if let (Value::Object(event), Value::Object(fields)) = (&mut event, fields) {
            event.extend(fields);
        }
        sequence_number += 1;
        named_event(kind, &event)
    };
    let in_progress = response("in_progress", Vec::new(), None);
    let part_position = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
    let at_part = |fields: Value| {
        let mut merged = part_position.clone();
        if let (Value::Object(merged), Value::Object(fields)) = (&mut merged, fields) {
            merged.extend(fields);
        }
        merged
    };

    // Built in stream order, one `let` at a time, so the sequence numbers
    // handed out by `event` follow the order the events are sent in.
    let preamble = vec![
        event("response.created", json!({"response": in_progress})),
        event("response.in_progress", json!({"response": in_progress})),
        event(
            "response.output_item.added",
            json!({"output_index": 0, "item": message("in_progress", Vec::new())}),
        ),
        event(
            "response.content_part.added",
            at_part(json!({"part": output_text("")})),
        ),
    ];
    let chunks = answer_pieces(call.controls.chunks)
        .iter()
        .map(|piece| {
            event(
                "response.output_text.delta",
                at_part(json!({"delta": piece, "logprobs": []})),
            )
        })
        .collect();
    let epilogue = vec![
        event(
            "response.output_text.done",
            at_part(json!({"text": text, "logprobs": []})),
        ),
        event(
            "response.content_part.done",
            at_part(json!({"part": output_text(&text)})),
        ),
        event(
            "response.output_item.done",
            json!({"output_index": 0, "item": message("completed", vec![output_text(&text)])}),
        ),
        event("response.completed", json!({"response": completed})),
    ];
    let events = StreamEvents {
        preamble,
        chunks,
        epilogue,
    };
    call.stream_reply(events, usage, None)
}

/// A full Responses API `response` object, echoing the request's settings.
fn response_object(
    call: &Call<'_>,
    id: &str,
    created_at: u64,
    status: &str,
    output: Vec<Value>,
    usage: Option<ReportedUsage>,
) -> Value {
    let echo = |key: &str, default: Value| call.body.get(key).cloned().unwrap_or(default);
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": echo("instructions", Value::Null),
        "max_output_tokens": echo("max_output_tokens", Value::Null),
        "max_tool_calls": null,
        "model": call.model,
        "output": output,
        "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
        "previous_response_id": echo("previous_response_id", Value::Null),
        "reasoning": {"effort": null, "summary": null},
        "service_tier": "default",
        "store": echo("store", json!(true)),
        "temperature": echo("temperature", json!(1.0)),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": echo("tool_choice", json!("auto")),
        "tools": echo("tools", json!([])),
        "top_logprobs": 0,
        "top_p": echo("top_p", json!(1.0)),
        "truncation": echo("truncation", json!("disabled")),
        "usage": usage.map(|usage| json!({
            "input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": usage.classes.cache_read_input},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.classes.reasoning_output},
            "total_tokens": usage.input_tokens + usage.output_tokens,
        })),
        "user": echo("user", Value::Null),
        "metadata": echo("metadata", json!({})),
    })
}

/// `GET /v1/models` in OpenAI's list format.
pub(crate) fn models() -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": owner}))
        .collect();
    json!({"object": "list", "data": data})
}

/// Chat usage with the detail objects OpenAI always includes.
fn chat_usage_json(usage: ReportedUsage) -> Value {
    with_field(
        with_field(
            basic_usage_json(usage),
            "prompt_tokens_details",
            json!({"cached_tokens": usage.classes.cache_read_input, "audio_tokens": 0}),
        ),
        "completion_tokens_details",
        json!({
            "reasoning_tokens": usage.classes.reasoning_output,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }),
    )
}

fn basic_usage_json(usage: ReportedUsage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_deterministic_and_bounded() {
        let a = embedding_vector(&json!("hello"));
        assert_eq!(a, embedding_vector(&json!("hello")));
        assert_ne!(a, embedding_vector(&json!("world")));
        assert_eq!(a.len(), EMBEDDING_DIMENSIONS);
        assert!(a.iter().all(|x| (-1.0..=1.0).contains(x)));
    }
}
