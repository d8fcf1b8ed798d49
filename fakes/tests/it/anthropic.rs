//! Anthropic wire formats: Messages (plain and streamed), errors and models.

use serde_json::{json, Value};

use crate::support::{get, post, send, start, with_header};

fn messages_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

fn anthropic_request(body: &Value) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut request = post("/v1/messages", body);
    request.headers_mut().remove("authorization");
    let request = with_header(request, "x-api-key", "sk-ant-test");
    with_header(request, "anthropic-version", "2023-06-01")
}

#[tokio::test]
async fn message_has_text_content_and_usage() {
    let mock = start().await;
    let body = messages_body(false);
    let json = send(&mock, anthropic_request(&body)).await.json();
    assert!(json["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(json["type"], "message");
    assert_eq!(json["role"], "assistant");
    assert_eq!(json["model"], "claude-sonnet-4-5");
    assert_eq!(
        json["content"],
        json!([{"type": "text", "text": "Hello from the Molt mock provider. Hello from"}])
    );
    assert_eq!(json["stop_reason"], "end_turn");
    assert_eq!(json["stop_sequence"], Value::Null);
    let input_tokens = (body.to_string().len() / 4) as u64;
    assert_eq!(json["usage"]["input_tokens"], input_tokens);
    assert_eq!(json["usage"]["output_tokens"], 8);

    let record = mock.provider.records().pop().unwrap();
    assert_eq!(record.x_api_key.as_deref(), Some("sk-ant-test"));
    assert_eq!(record.anthropic_version.as_deref(), Some("2023-06-01"));
    let usage = record.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (input_tokens, 8));
}

#[tokio::test]
async fn message_stream_has_the_real_event_order_and_usage() {
    let mock = start().await;
    let body = messages_body(true);
    let answer = send(
        &mock,
        with_header(anthropic_request(&body), "x-mock-chunks", "3"),
    )
    .await;
    assert_eq!(answer.status, 200);
    let events = answer.events();
    let names: Vec<&str> = events
        .iter()
        .map(|(name, _)| name.as_deref().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let payloads = answer.event_json();
    for (payload, name) in payloads.iter().zip(&names) {
        assert_eq!(
            payload["type"], *name,
            "the data type matches the event name"
        );
    }
    let input_tokens = (body.to_string().len() / 4) as u64;
    let start = &payloads[0]["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["input_tokens"], input_tokens);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        payloads[1]["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = payloads[3..6]
        .iter()
        .map(|delta| {
            assert_eq!(delta["delta"]["type"], "text_delta");
            delta["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "Hello from the");
    assert_eq!(
        payloads[7]["delta"],
        json!({"stop_reason": "end_turn", "stop_sequence": null})
    );
    assert_eq!(payloads[7]["usage"]["output_tokens"], 3);

    let usage = mock.provider.records().pop().unwrap().usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (input_tokens, 3));
}

#[tokio::test]
async fn errors_use_the_anthropic_format() {
    let mock = start().await;
    let answer = send(
        &mock,
        with_header(
            anthropic_request(&messages_body(false)),
            "x-mock-status",
            "529",
        ),
    )
    .await;
    assert_eq!(answer.status, 529);
    let json = answer.json();
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["type"], "overloaded_error");
    assert!(json["error"]["message"].is_string());

    let mut request = anthropic_request(&messages_body(false));
    request.headers_mut().remove("x-api-key");
    let answer = send(&mock, request).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"]["type"], "authentication_error");
}

#[tokio::test]
async fn models_list_in_anthropic_format_when_asked_by_an_anthropic_client() {
    let mock = start().await;
    let json = send(
        &mock,
        with_header(get("/v1/models"), "anthropic-version", "2023-06-01"),
    )
    .await
    .json();
    assert_eq!(json["has_more"], false);
    assert_eq!(json["data"][0]["type"], "model");
    assert_eq!(json["first_id"], json["data"][0]["id"]);
}

#[tokio::test]
async fn a_cache_control_block_gets_cache_reads_and_writes_in_the_real_shape() {
    let mock = start().await;
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "You are terse.",
            "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": true,
    });
    let answer = send(
        &mock,
        with_header(anthropic_request(&body), "x-mock-chunks", "3"),
    )
    .await;
    let payloads = answer.event_json();
    let total = (body.to_string().len() / 4) as u64;
    let (read, write) = (total / 2, total / 4);
    let start = &payloads[0]["message"]["usage"];
    // Anthropic's input_tokens leave the cache out.
    assert_eq!(start["input_tokens"], total - read - write);
    assert_eq!(start["cache_read_input_tokens"], read);
    assert_eq!(start["cache_creation_input_tokens"], write);
    assert_eq!(
        start["cache_creation"],
        json!({"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": write})
    );
    // message_delta repeats the final cache figures with the output.
    let delta = &payloads[7]["usage"];
    assert_eq!(delta["cache_read_input_tokens"], read);
    assert_eq!(delta["output_tokens"], 3);

    let usage = mock.provider.records().pop().unwrap().usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (total, 3));
    assert_eq!(usage.classes.cache_read_input, read);
    assert_eq!(usage.classes.cache_write_1h_input, write);
    assert_eq!(usage.classes.cache_write_5m_input, 0);
}
