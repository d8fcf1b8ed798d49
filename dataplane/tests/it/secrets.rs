//! The master key never comes back out, and a client credential never goes
//! upstream: an upstream echoing its key in an error is masked (body and
//! headers), and the client's key is dropped under every header name the
//! major SDKs and gateways use, and from the query string.

use crate::support::{
    client, config, mock_provider, post, request_id, text, Dataplane, CLIENT_KEY, MASTER_KEY,
};
use molt_fakes::mock_provider::MockOptions;
use serde_json::json;

async fn metric(dp: &Dataplane, line: &str) -> f64 {
    let url = format!("http://{}/metrics", dp.listeners.admin);
    let resp = client()
        .request(http::Request::get(url).body(Default::default()).unwrap())
        .await
        .unwrap();
    text(resp)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(line).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_echoing_its_key_in_an_error_is_masked() {
    let (_mock, addr) = mock_provider(MockOptions::default()).await;
    let dp = Dataplane::start(&config(addr)).await;
    let mut req = post(
        &dp.url("/v1/chat/completions"),
        json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
    );
    req.headers_mut()
        .insert("x-mock-echo-key", http::HeaderValue::from_static("1"));
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 401, "the provider's answer is relayed");
    let echoed = resp.headers()["x-echo-credential"]
        .to_str()
        .unwrap()
        .to_owned();
    let id = request_id(&resp);
    let body = text(resp).await;
    assert!(
        !body.contains(MASTER_KEY) && !echoed.contains(MASTER_KEY),
        "{body} / {echoed}"
    );
    let mask = "*".repeat(MASTER_KEY.len());
    assert!(
        body.contains(&format!("Incorrect API key provided: {mask}.")),
        "{body}"
    );
    assert_eq!(echoed, mask);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["error"]["code"], "invalid_api_key",
        "still the provider's own error"
    );
    assert_eq!(dp.events.of(&id).await.status, 401);
    assert_eq!(
        metric(&dp, r#"molt_secrets_masked_total{where="body"}"#).await,
        1.0
    );
    assert_eq!(
        metric(&dp, r#"molt_secrets_masked_total{where="header"}"#).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_credential_reaches_the_upstream_under_any_name() {
    let (mock, addr) = mock_provider(MockOptions::default()).await;
    let dp = Dataplane::start(&config(addr)).await;
    let url = dp.url(&format!(
        "/v1/chat/completions?api-version=2024-10-21&key={CLIENT_KEY}"
    ));
    let mut req = post(
        &url,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
    );
    let bearer = format!("Bearer {CLIENT_KEY}");
    let names = [
        // OpenAI, Mistral, Groq, Together, OpenRouter, Cohere: authorization;
        // Anthropic; Azure OpenAI; Gemini; Azure API Management; gateways.
        ("x-api-key", CLIENT_KEY.to_owned()),
        ("api-key", CLIENT_KEY.to_owned()),
        ("x-goog-api-key", CLIENT_KEY.to_owned()),
        ("ocp-apim-subscription-key", CLIENT_KEY.to_owned()),
        ("x-litellm-api-key", bearer.clone()),
        ("x-portkey-api-key", CLIENT_KEY.to_owned()),
        ("helicone-auth", bearer.clone()),
        ("cf-aig-authorization", bearer.clone()),
        ("proxy-authorization", bearer.clone()),
        ("cookie", format!("session={CLIENT_KEY}")),
        // A name nobody lists: caught by its value.
        ("x-my-own-token", CLIENT_KEY.to_owned()),
        ("x-forwarded-credential", format!("k={CLIENT_KEY};")),
    ];
    for (name, value) in &names {
        req.headers_mut().insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let record = mock.records().last().unwrap().clone();
    let seen = serde_json::to_string(&record).unwrap();
    assert!(
        !seen.contains(CLIENT_KEY),
        "the client's key reached the upstream: {seen}"
    );
    assert!(!seen.contains("molt_sk_"), "{seen}");
    assert_eq!(
        record.authorization.as_deref(),
        Some(&*format!("Bearer {MASTER_KEY}"))
    );
    assert!(
        record.path.ends_with("?api-version=2024-10-21"),
        "{}",
        record.path
    );
    for (name, _) in &names {
        assert!(
            !record.headers.iter().any(|(n, _)| n == name),
            "{name} was forwarded"
        );
    }
}
