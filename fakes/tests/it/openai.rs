//! OpenAI wire formats: chat and legacy completions (plain and streamed, with
//! and without `include_usage`), embeddings, the Responses API and models.

use serde_json::{json, Value};

use crate::support::{get, post, send, start};

const SENTENCE_8: &str = "Hello from the Molt mock provider. Hello from";

fn chat_body(stream: bool, include_usage: bool) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[tokio::test]
async fn chat_completion_has_the_full_object_and_usage() {
    let mock = start().await;
    let body = chat_body(false, false);
    let answer = send(&mock, post("/v1/chat/completions", &body)).await;
    assert_eq!(answer.status, 200);
    let json = answer.json();
    assert!(json["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(json["object"], "chat.completion");
    assert!(json["created"].is_u64());
    assert_eq!(json["model"], "gpt-4o-mini");
    let choice = &json["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], SENTENCE_8);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    let prompt_tokens = (body.to_string().len() / 4) as u64;
    assert_eq!(json["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(json["usage"]["completion_tokens"], 8);
    assert_eq!(json["usage"]["total_tokens"], prompt_tokens + 8);

    let record = mock.provider.records().pop().unwrap();
    let usage = record.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (prompt_tokens, 8)
    );
    assert!(!record.stream && !record.include_usage);
}

#[tokio::test]
async fn chat_stream_without_include_usage_has_no_usage_anywhere() {
    let mock = start().await;
    let answer = send(&mock, post("/v1/chat/completions", &chat_body(true, false))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let events = answer.events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert!(events.iter().all(|(name, _)| name.is_none()));
    let chunks = answer.event_json();
    // 8 content chunks + the finish chunk.
    assert_eq!(chunks.len(), 9);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o-mini");
        assert!(chunk.get("usage").is_none(), "no usage key: {chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[1]["choices"][0]["delta"].get("role").is_none());
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, SENTENCE_8);
    assert_eq!(chunks[8]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[8]["choices"][0]["delta"], json!({}));
    assert!(chunks[..8]
        .iter()
        .all(|chunk| chunk["choices"][0]["finish_reason"].is_null()));

    let record = mock.provider.records().pop().unwrap();
    assert!(record.stream && !record.include_usage);
    assert!(record.usage.is_none());
}

#[tokio::test]
async fn chat_stream_with_include_usage_ends_with_a_usage_chunk() {
    let mock = start().await;
    let body = chat_body(true, true);
    let answer = send(&mock, post("/v1/chat/completions", &body)).await;
    let events = answer.events();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks = answer.event_json();
    assert_eq!(chunks.len(), 10);
    let (usage_chunk, others) = chunks.split_last().unwrap();
    for chunk in others {
        assert_eq!(chunk["usage"], Value::Null, "usage:null on {chunk}");
        assert!(chunk.get("usage").is_some());
    }
    assert_eq!(usage_chunk["choices"], json!([]));
    let prompt_tokens = (body.to_string().len() / 4) as u64;
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 8);
    assert_eq!(usage_chunk["usage"]["total_tokens"], prompt_tokens + 8);

    let record = mock.provider.records().pop().unwrap();
    assert!(record.stream && record.include_usage);
    let usage = record.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (prompt_tokens, 8)
    );
}

#[tokio::test]
async fn legacy_completions_plain_and_streamed() {
    let mock = start().await;
    let answer = send(
        &mock,
        post(
            "/v1/completions",
            &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Hi"}),
        ),
    )
    .await;
    let json = answer.json();
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["choices"][0]["text"], SENTENCE_8);
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    assert_eq!(json["usage"]["completion_tokens"], 8);

    let body = json!({
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "Hi",
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let answer = send(&mock, post("/v1/completions", &body)).await;
    assert_eq!(answer.events().last().unwrap().1, "[DONE]");
    let chunks = answer.event_json();
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, SENTENCE_8);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 8);
}

#[tokio::test]
async fn embeddings_for_string_array_and_base64_input() {
    let mock = start().await;
    let one = send(
        &mock,
        post(
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-small", "input": "hi"}),
        ),
    )
    .await
    .json();
    assert_eq!(one["object"], "list");
    assert_eq!(one["model"], "text-embedding-3-small");
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["data"][0]["object"], "embedding");
    assert_eq!(one["data"][0]["index"], 0);
    assert_eq!(one["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert!(one["usage"]["prompt_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(one["usage"]["total_tokens"], one["usage"]["prompt_tokens"]);

    let many = send(
        &mock,
        post(
            "/v1/embeddings",
            &json!({"model": "m", "input": ["a", "b", "c"]}),
        ),
    )
    .await
    .json();
    let indexes: Vec<&Value> = many["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| &item["index"])
        .collect();
    assert_eq!(indexes, [&json!(0), &json!(1), &json!(2)]);

    let tokens = send(
        &mock,
        post("/v1/embeddings", &json!({"model": "m", "input": [1, 2, 3]})),
    )
    .await
    .json();
    assert_eq!(tokens["data"].as_array().unwrap().len(), 1);

    let encoded = send(
        &mock,
        post(
            "/v1/embeddings",
            &json!({"model": "m", "input": "hi", "encoding_format": "base64"}),
        ),
    )
    .await
    .json();
    let text = encoded["data"][0]["embedding"].as_str().unwrap();
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).unwrap();
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|quad| f32::from_le_bytes(quad.try_into().unwrap()))
        .collect();
    let plain: Vec<f32> = one["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, plain);

    let missing = send(&mock, post("/v1/embeddings", &json!({"model": "m"}))).await;
    assert_eq!(missing.status, 400);
}

#[tokio::test]
async fn responses_plain_has_message_output_and_usage() {
    let mock = start().await;
    let body = json!({"model": "gpt-4.1-mini", "input": "Say hello", "instructions": "Be brief"});
    let json = send(&mock, post("/v1/responses", &body)).await.json();
    assert!(json["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(json["object"], "response");
    assert_eq!(json["status"], "completed");
    assert_eq!(json["model"], "gpt-4.1-mini");
    assert_eq!(json["instructions"], "Be brief");
    let message = &json["output"][0];
    assert_eq!(message["type"], "message");
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["status"], "completed");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"][0]["type"], "output_text");
    assert_eq!(message["content"][0]["text"], SENTENCE_8);
    assert_eq!(message["content"][0]["annotations"], json!([]));
    let prompt_tokens = (body.to_string().len() / 4) as u64;
    assert_eq!(json["usage"]["input_tokens"], prompt_tokens);
    assert_eq!(json["usage"]["output_tokens"], 8);
    assert_eq!(json["usage"]["total_tokens"], prompt_tokens + 8);
    assert_eq!(json["usage"]["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        json["usage"]["output_tokens_details"]["reasoning_tokens"],
        0
    );
}

#[tokio::test]
async fn responses_stream_follows_the_real_event_sequence() {
    let mock = start().await;
    let body = json!({"model": "gpt-4.1-mini", "input": "Say hello", "stream": true});
    let answer = send(&mock, post("/v1/responses", &body)).await;
    let events = answer.events();
    let names: Vec<&str> = events
        .iter()
        .map(|(name, _)| name.as_deref().unwrap())
        .collect();
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 8]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);

    let payloads = answer.event_json();
    for (index, (payload, name)) in payloads.iter().zip(&names).enumerate() {
        assert_eq!(payload["type"], *name);
        assert_eq!(payload["sequence_number"], index);
    }
    let item_id = payloads[2]["item"]["id"].as_str().unwrap();
    let deltas: String = payloads[4..12]
        .iter()
        .map(|delta| {
            assert_eq!(delta["item_id"], item_id);
            assert_eq!(delta["output_index"], 0);
            assert_eq!(delta["content_index"], 0);
            assert_eq!(delta["logprobs"], json!([]));
            delta["delta"].as_str().unwrap()
        })
        .collect();
    assert_eq!(deltas, SENTENCE_8);
    assert_eq!(payloads[12]["text"], SENTENCE_8);
    assert_eq!(payloads[0]["response"]["status"], "in_progress");
    assert_eq!(payloads[0]["response"]["usage"], Value::Null);

    let completed = &payloads[15]["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"][0]["content"][0]["text"], SENTENCE_8);
    let prompt_tokens = (body.to_string().len() / 4) as u64;
    assert_eq!(completed["usage"]["input_tokens"], prompt_tokens);
    assert_eq!(completed["usage"]["output_tokens"], 8);

    let usage = mock.provider.records().pop().unwrap().usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (prompt_tokens, 8)
    );
}

#[tokio::test]
async fn models_list_in_openai_format() {
    let mock = start().await;
    let json = send(&mock, get("/v1/models")).await.json();
    assert_eq!(json["object"], "list");
    let ids: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| {
            assert_eq!(model["object"], "model");
            model["id"].as_str().unwrap()
        })
        .collect();
    assert!(ids.contains(&"gpt-4o-mini") && ids.contains(&"claude-sonnet-4-5"));
}

#[tokio::test]
async fn azure_deployment_paths_use_the_deployment_as_model() {
    let mock = start().await;
    let request = post(
        "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    let mut request = request;
    request.headers_mut().remove("authorization");
    request
        .headers_mut()
        .insert("api-key", "azure-key".parse().unwrap());
    let answer = send(&mock, request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["model"], "my-gpt");
    let record = mock.provider.records().pop().unwrap();
    assert_eq!(record.api_key_header.as_deref(), Some("azure-key"));
    assert_eq!(
        record.path,
        "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21"
    );
}

#[tokio::test]
async fn reasoning_effort_and_a_prompt_cache_key_get_their_classes() {
    let mock = start().await;
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}],
        "reasoning_effort": "low",
        "prompt_cache_key": "greeting",
    });
    let json = send(&mock, post("/v1/chat/completions", &body))
        .await
        .json();
    let prompt = (body.to_string().len() / 4) as u64;
    let usage = &json["usage"];
    assert_eq!(usage["prompt_tokens"], prompt);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], prompt / 2);
    // Eight visible tokens and as many hidden reasoning ones.
    assert_eq!(usage["completion_tokens"], 16);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 8);
    let recorded = mock.provider.records().pop().unwrap().usage.unwrap();
    assert_eq!(
        (recorded.input_tokens, recorded.output_tokens),
        (prompt, 16)
    );
    assert_eq!(recorded.classes.cache_read_input, prompt / 2);
    assert_eq!(recorded.classes.reasoning_output, 8);

    // The Responses API, asked through the control header.
    let body = json!({"model": "gpt-4o-mini", "input": "Say hello"});
    let request =
        crate::support::with_header(post("/v1/responses", &body), "x-mock-usage-classes", "1");
    let json = send(&mock, request).await.json();
    let prompt = (body.to_string().len() / 4) as u64;
    assert_eq!(
        json["usage"]["input_tokens_details"]["cached_tokens"],
        prompt / 2
    );
    assert_eq!(
        json["usage"]["output_tokens_details"]["reasoning_tokens"],
        8
    );
    assert_eq!(json["usage"]["output_tokens"], 16);
}
