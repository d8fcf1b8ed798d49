//! The request record: credentials, headers, body fingerprint, the
//! `/_mock/*` inspection endpoints, and h2c serving.

use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::{get, post, post_bytes, send, send_with, start, with_header, Protocol};

#[tokio::test]
async fn records_capture_credentials_headers_and_body_fingerprint() {
    let mock = start().await;
    // A 2 MiB body: the mock must read it fully and fingerprint the exact bytes.
    let padding = "x".repeat(2 * 1024 * 1024);
    let body = Bytes::from(
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": padding}]})
            .to_string(),
    );
    let request = post_bytes("/v1/chat/completions", body.clone());
    let request = with_header(request, "x-api-key", "also-a-key");
    let request = with_header(request, "api-key", "azure");
    let request = with_header(request, "X-Custom-Thing", "forwarded");
    let answer = send(&mock, request).await;
    assert_eq!(answer.status, 200);
    let id = answer.header("x-mock-request-id").unwrap().to_owned();

    let records = mock.provider.records();
    let record = records.last().unwrap();
    assert_eq!(record.id.to_string(), id);
    assert_eq!(record.method, "POST");
    assert_eq!(record.path, "/v1/chat/completions");
    assert_eq!(record.authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(record.x_api_key.as_deref(), Some("also-a-key"));
    assert_eq!(record.api_key_header.as_deref(), Some("azure"));
    assert_eq!(record.anthropic_version, None);
    assert_eq!(record.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(record.body_len, body.len());
    assert_eq!(record.body_sha256, hex::encode(Sha256::digest(&body)));
    assert!(record
        .headers
        .contains(&("x-custom-thing".to_owned(), "forwarded".to_owned())));
    let usage = record.usage.unwrap();
    assert_eq!(usage.input_tokens, (body.len() / 4) as u64);
}

#[tokio::test]
async fn inspection_endpoints_list_and_clear_records() {
    let mock = start().await;
    assert_eq!(send(&mock, get("/_mock/health")).await.status, 200);
    send(
        &mock,
        post("/v1/embeddings", &json!({"model": "m", "input": "a"})),
    )
    .await;
    send(
        &mock,
        post("/v1/embeddings", &json!({"model": "m", "input": "b"})),
    )
    .await;

    let listed = send(&mock, get("/_mock/requests")).await.json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "/_mock requests are not recorded");
    assert_eq!(listed[0]["path"], "/v1/embeddings");
    assert!(listed[0]["id"].as_u64().unwrap() < listed[1]["id"].as_u64().unwrap());
    assert_eq!(listed[0]["usage"]["output_tokens"], 0);
    assert!(listed[0]["headers"].is_array());

    let cleared = send(
        &mock,
        http::Request::delete("/_mock/requests")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert!(cleared.status.is_success());
    assert!(mock.provider.records().is_empty());
}

#[tokio::test]
async fn h2c_with_prior_knowledge_is_served() {
    let mock = start().await;
    let body = json!({"model": "gpt-4o-mini", "messages": [], "stream": true});
    let answer = send_with(&mock, Protocol::H2c, post("/v1/chat/completions", &body)).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body_error.is_none());
    assert_eq!(answer.events().last().unwrap().1, "[DONE]");
    let record = mock.provider.records().pop().unwrap();
    assert_eq!(record.authorization.as_deref(), Some("Bearer sk-test"));
}
