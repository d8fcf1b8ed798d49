//! The proxy in-process: fallbacks, the `include_usage` splice and the
//! stripping of the usage chunk the client did not ask for, a client that
//! goes away mid-stream, and the end of a response held until its usage is
//! recorded.

use crate::support::{client, config, mock_provider, post, request_id, text, Dataplane};
use http_body_util::BodyExt;
use molt_fakes::mock_provider::{MockOptions, MockProvider};
use serde_json::json;
use std::time::Duration;

async fn setup() -> (MockProvider, Dataplane) {
    let (mock, addr) = mock_provider(MockOptions::default()).await;
    let dp = Dataplane::start(&config(addr)).await;
    (mock, dp)
}

fn chat(model: &str, stream: bool) -> serde_json::Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// The SSE `data:` payloads of a stream, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

async fn metric(dp: &Dataplane, line_prefix: &str) -> Option<f64> {
    let url = format!("http://{}/metrics", dp.listeners.admin);
    let resp = client()
        .request(http::Request::get(url).body(Default::default()).unwrap())
        .await
        .unwrap();
    text(resp).await.lines().find_map(|l| {
        l.strip_prefix(line_prefix)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_falls_back_before_the_client_sees_a_byte() {
    let (mock, dp) = setup().await;
    for (model, first_try) in [("flaky", Some("mock-error-503")), ("unreachable", None)] {
        let before = mock.records().len();
        let resp = client()
            .request(post(&dp.url("/v1/chat/completions"), chat(model, false)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model} falls back to gpt");
        let id = request_id(&resp);
        let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
        assert_eq!(body["object"], "chat.completion");
        let event = dp.events.of(&id).await;
        assert_eq!(
            (
                event.model.as_str(),
                event.provider.as_str(),
                event.attempts
            ),
            (model, "mock-openai", 2)
        );
        assert_eq!((event.status, event.outcome.as_str()), (200, "ok"));
        let seen: Vec<_> = mock.records()[before..]
            .iter()
            .map(|r| r.model.clone().unwrap_or_default())
            .collect();
        let mut want: Vec<String> = first_try.into_iter().map(str::to_owned).collect();
        want.push("gpt".into());
        assert_eq!(seen, want, "what reached the mock for {model}");
        let usage = mock.records().last().unwrap().usage.unwrap();
        assert_eq!(
            (event.input_tokens, event.output_tokens),
            (usage.input_tokens, usage.output_tokens)
        );
    }
    let labels = r#"molt_fallbacks_total{model="flaky"}"#;
    assert_eq!(metric(&dp, labels).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_asked_for_and_its_chunk_cut_out_unless_the_client_wanted_it() {
    let (mock, dp) = setup().await;

    // The client did not ask: the proxy splices include_usage in and
    // removes the usage-only chunk and every `"usage":null` on the way.
    let resp = client()
        .request(post(&dp.url("/v1/chat/completions"), chat("mini", true)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let body = text(resp).await;
    let record = mock.records().last().unwrap().clone();
    assert!(
        record.include_usage,
        "the upstream was asked for usage: {record:?}"
    );
    assert_eq!(record.model.as_deref(), Some("gpt"), "the alias is renamed");
    assert!(
        !body.contains("usage"),
        "no usage reaches the client:\n{body}"
    );
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    for chunk in &data[..data.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(chunk).unwrap();
        assert!(!v["choices"].as_array().unwrap().is_empty(), "{chunk}");
    }
    let usage = record.usage.unwrap();
    let event = dp.events.of(&id).await;
    assert_eq!(
        (event.input_tokens, event.output_tokens, event.estimated),
        (usage.input_tokens, usage.output_tokens, false)
    );

    // The client asked: its usage chunk reaches it untouched.
    let mut asked = chat("gpt", true);
    asked["stream_options"] = json!({"include_usage": true});
    let resp = client()
        .request(post(&dp.url("/v1/chat/completions"), asked))
        .await
        .unwrap();
    let id = request_id(&resp);
    let body = text(resp).await;
    let usage_chunks: Vec<serde_json::Value> = sse_data(&body)
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["usage"].is_object())
        .collect();
    assert_eq!(usage_chunks.len(), 1, "{body}");
    let event = dp.events.of(&id).await;
    assert_eq!(
        usage_chunks[0]["usage"]["completion_tokens"],
        event.output_tokens
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_is_noticed_at_once() {
    let (_mock, dp) = setup().await;
    let mut req = post(&dp.url("/v1/chat/completions"), chat("gpt", true));
    // 50 chunks 200 ms apart: 10 s if nobody left.
    req.headers_mut()
        .insert("x-mock-chunks", http::HeaderValue::from_static("50"));
    req.headers_mut().insert(
        "x-mock-chunk-delay-ms",
        http::HeaderValue::from_static("200"),
    );
    let started = std::time::Instant::now();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    assert_eq!(metric(&dp, "molt_active_streams").await, Some(1.0));
    drop(body);
    let event = dp.events.of(&id).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "noticed long before the stream would have ended"
    );
    assert_eq!(
        (event.outcome.as_str(), event.status),
        ("client_disconnected", 200)
    );
    assert_eq!(metric(&dp, "molt_active_streams").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_response_waits_until_its_usage_is_recorded() {
    let (_mock, dp) = setup().await;
    for stream in [false, true] {
        dp.events.hold();
        // The client reads in a task of its own and reports every piece,
        // then `None` at the end.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<bytes::Bytes>>();
        let req = post(&dp.url("/v1/chat/completions"), chat("gpt", stream));
        tokio::spawn(async move {
            let resp = client().request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    let _ = tx.send(Some(data));
                }
            }
            let _ = tx.send(None);
        });
        // Everything before the held end arrives; the end does not (a
        // content-length body is all end: Pingora sends it whole).
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(piece)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            match piece {
                Some(data) => seen.push_str(std::str::from_utf8(&data).unwrap()),
                None => panic!(
                    "the response ended before its usage was recorded (stream: {stream}): {seen}"
                ),
            }
        }
        assert_eq!(
            dp.events.waiting(),
            1,
            "one record is waiting (stream: {stream})"
        );
        if stream {
            assert!(seen.contains("data: "), "the stream itself flowed: {seen}");
            assert!(
                !seen.contains("[DONE]"),
                "the terminal event is held: {seen}"
            );
        } else {
            assert!(
                seen.is_empty(),
                "nothing of a JSON body before its end: {seen}"
            );
        }
        dp.events.release();
        let released = std::time::Instant::now();
        while let Some(Some(data)) = rx.recv().await {
            seen.push_str(std::str::from_utf8(&data).unwrap());
        }
        // Well inside the proxy's own 2 s cap on the wait: the release did it.
        assert!(released.elapsed() < Duration::from_secs(1));
        if stream {
            assert!(seen.trim_end().ends_with("data: [DONE]"), "{seen}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&seen).unwrap();
            assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        }
    }
}
