//! Behaviour controls: injected statuses (header and model name), aborted
//! streams, suppressed usage, delays, chunk counts, and intake errors.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{post, send, send_with, since, start, with_header, Protocol};

fn chat(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

#[tokio::test]
async fn x_mock_status_answers_an_openai_error() {
    let mock = start().await;
    let answer = send(
        &mock,
        with_header(
            post("/v1/chat/completions", &chat(false)),
            "x-mock-status",
            "500",
        ),
    )
    .await;
    assert_eq!(answer.status, 500);
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "server_error");
    assert!(error["message"].is_string());
    assert_eq!(error["param"], Value::Null);
    assert!(error.get("code").is_some());
    assert!(answer.header("retry-after").is_none());
    assert!(mock.provider.records().pop().unwrap().usage.is_none());
}

#[tokio::test]
async fn rate_limits_carry_retry_after() {
    let mock = start().await;
    let answer = send(
        &mock,
        with_header(
            post("/v1/chat/completions", &chat(true)),
            "x-mock-status",
            "429",
        ),
    )
    .await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.json()["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn mock_error_models_answer_their_status() {
    let mock = start().await;
    for (model, status) in [
        ("mock-error-500", 500),
        ("mock-error-429", 429),
        ("mock-error-503", 503),
    ] {
        let body = json!({"model": model, "messages": []});
        let answer = send(&mock, post("/v1/chat/completions", &body)).await;
        assert_eq!(answer.status, status, "{model}");
        assert!(answer.json()["error"]["message"].is_string());
    }
    let body = json!({"model": "mock-error-429", "max_tokens": 1, "messages": []});
    let answer = send(&mock, post("/v1/messages", &body)).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn abort_after_cuts_an_http1_stream_without_terminator() {
    let mock = start().await;
    let answer = send(
        &mock,
        with_header(
            post("/v1/chat/completions", &chat(true)),
            "x-mock-abort-after",
            "3",
        ),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body_error.is_some(),
        "the client must see an incomplete body"
    );
    let text = answer.text();
    assert_eq!(text.matches("data: ").count(), 3, "{text}");
    assert!(!text.contains("[DONE]"));
    assert!(!text.contains("\"finish_reason\":\"stop\""));
    assert!(mock.provider.records().pop().unwrap().usage.is_none());
}

#[tokio::test]
async fn abort_after_resets_an_h2c_stream() {
    let mock = start().await;
    let request = with_header(
        post(
            "/v1/messages",
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [], "stream": true}),
        ),
        "x-mock-abort-after",
        "2",
    );
    let answer = send_with(&mock, Protocol::H2c, request).await;
    assert!(answer.body_error.is_some());
    let text = answer.text();
    assert_eq!(text.matches("event: content_block_delta").count(), 2);
    assert!(!text.contains("message_stop") && !text.contains("message_delta"));
    // Only message_start's usage reached the client.
    let usage = mock.provider.records().pop().unwrap().usage.unwrap();
    assert_eq!(usage.output_tokens, 1);
}

#[tokio::test]
async fn abort_after_truncates_a_non_streaming_body() {
    let mock = start().await;
    let answer = send(
        &mock,
        with_header(
            post("/v1/chat/completions", &chat(false)),
            "x-mock-abort-after",
            "0",
        ),
    )
    .await;
    assert!(answer.body_error.is_some());
    assert!(serde_json::from_slice::<Value>(&answer.body()).is_err());
}

#[tokio::test]
async fn no_usage_suppresses_usage_everywhere() {
    let mock = start().await;
    let answer = send(
        &mock,
        with_header(
            post("/v1/chat/completions", &chat(true)),
            "x-mock-no-usage",
            "1",
        ),
    )
    .await;
    assert_eq!(answer.events().last().unwrap().1, "[DONE]");
    assert!(!answer.text().contains("usage"));
    assert!(mock.provider.records().pop().unwrap().usage.is_none());

    let answer = send(
        &mock,
        with_header(
            post("/v1/responses", &json!({"model": "m", "input": "x"})),
            "x-mock-no-usage",
            "true",
        ),
    )
    .await;
    assert_eq!(answer.json()["usage"], Value::Null);
}

#[tokio::test]
async fn streams_really_stream_with_ttft_and_chunk_delays() {
    let mock = start().await;
    let request = post("/v1/chat/completions", &chat(true));
    let request = with_header(request, "x-mock-chunks", "4");
    let request = with_header(request, "x-mock-ttft-ms", "150");
    let request = with_header(request, "x-mock-chunk-delay-ms", "100");
    let answer = send(&mock, request).await;
    let chunks = answer.event_json();
    assert_eq!(chunks.len(), 4 + 2, "4 content chunks, finish, usage");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 4);

    // Headers come first; the first chunk after the TTFT; the rest spread out.
    let first = answer.frames.first().unwrap().at;
    let last = answer.frames.last().unwrap().at;
    assert!(since(answer.headers_at, first) >= Duration::from_millis(130));
    assert!(
        since(first, last) >= Duration::from_millis(270),
        "3 gaps of 100ms"
    );
    assert!(answer.frames.len() >= 4, "chunks arrive as separate frames");
}

#[tokio::test]
async fn header_delay_holds_back_the_response_headers() {
    let mock = start().await;
    let started = std::time::Instant::now();
    let answer = send(
        &mock,
        with_header(
            post("/v1/chat/completions", &chat(false)),
            "x-mock-header-delay-ms",
            "200",
        ),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(since(started, answer.headers_at) >= Duration::from_millis(190));
}

#[tokio::test]
async fn chunk_count_option_and_header() {
    let mock = crate::support::start_with(molt_fakes::mock_provider::MockOptions {
        chunks: 2,
        ..Default::default()
    })
    .await;
    let json = send(&mock, post("/v1/chat/completions", &chat(false)))
        .await
        .json();
    assert_eq!(json["choices"][0]["message"]["content"], "Hello from");
    assert_eq!(json["usage"]["completion_tokens"], 2);

    let answer = send(
        &mock,
        with_header(
            post("/v1/chat/completions", &chat(false)),
            "x-mock-chunks",
            "0",
        ),
    )
    .await;
    assert_eq!(answer.json()["usage"]["completion_tokens"], 0);
}

#[tokio::test]
async fn invalid_controls_are_rejected() {
    let mock = start().await;
    let answer = send(
        &mock,
        with_header(
            post("/v1/chat/completions", &chat(false)),
            "x-mock-chunks",
            "lots",
        ),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-mock-chunks"));
}

#[tokio::test]
async fn malformed_json_missing_credentials_and_unknown_paths() {
    let mock = start().await;
    let answer = send(
        &mock,
        crate::support::post_bytes(
            "/v1/chat/completions",
            bytes::Bytes::from_static(b"{not json"),
        ),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["type"], "invalid_request_error");

    let mut request = post("/v1/chat/completions", &chat(false));
    request.headers_mut().remove("authorization");
    let answer = send(&mock, request).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"]["code"], "invalid_api_key");

    let answer = send(&mock, post("/v1/nope", &json!({}))).await;
    assert_eq!(answer.status, 404);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nope"));

    let answer = send(&mock, crate::support::get("/v1/chat/completions")).await;
    assert_eq!(answer.status, 405);
    assert!(answer.json()["error"]["message"].is_string());
}
