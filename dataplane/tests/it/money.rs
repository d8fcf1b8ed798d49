//! Token classes and dollar budgets through the whole proxy, in-process
//! against the mock provider: the recorded event carries exactly the
//! classes the provider reported, for every format, streaming and not; a
//! monthly dollar budget is admitted against the model's price, settled at
//! the actual cost by class, and refused with a 429 that names it once
//! spent; an unpriced model is refused (403) to a user with one.

use crate::support::{client, config_with, mock_provider, post, request_id, text, Dataplane};
use molt_config::money::ClassTokens;
use molt_config::{ModelPrice, TokenClasses, TokenPrice, UsageEvent};
use molt_fakes::mock_provider::{MockOptions, ReportedClasses};
use serde_json::json;

fn same_classes(event: &TokenClasses, reported: &ReportedClasses) -> bool {
    *event
        == TokenClasses {
            cache_read_input: reported.cache_read_input,
            cache_write_5m_input: reported.cache_write_5m_input,
            cache_write_1h_input: reported.cache_write_1h_input,
            reasoning_output: reported.reasoning_output,
            ..TokenClasses::default()
        }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_records_the_classes_the_provider_reported() {
    let (mock, addr) = mock_provider(MockOptions::default()).await;
    let dp = Dataplane::start(&config_with(addr, "", "")).await;
    let chat = |stream: bool| {
        json!({"model": "gpt", "stream": stream, "reasoning_effort": "low",
            "prompt_cache_key": "k", "messages": [{"role": "user", "content": "hi"}]})
    };
    let responses = |stream: bool| {
        json!({"model": "gpt", "stream": stream, "input": "hi",
            "reasoning": {"effort": "low"}, "prompt_cache_key": "k"})
    };
    let messages = |stream: bool| {
        json!({"model": "claude", "stream": stream, "max_tokens": 64,
            "system": [{"type": "text", "text": "Be terse.",
                "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                "cache_control": {"type": "ephemeral"}}]}]})
    };
    for stream in [false, true] {
        for (path, body) in [
            ("/v1/chat/completions", chat(stream)),
            ("/v1/responses", responses(stream)),
            ("/v1/messages", messages(stream)),
        ] {
            let resp = client().request(post(&dp.url(path), body)).await.unwrap();
            assert_eq!(resp.status(), 200, "{path} stream={stream}");
            let id = request_id(&resp);
            let _ = text(resp).await;
            let event = dp.events.of(&id).await;
            let reported = mock.records().last().unwrap().usage.unwrap();
            let what = format!("{path} stream={stream}: {event:?} vs {reported:?}");
            assert!(!event.classes.is_empty(), "{what}");
            assert!(!event.estimated, "{what}");
            assert_eq!(
                (event.input_tokens, event.output_tokens),
                (reported.input_tokens, reported.output_tokens),
                "{what}"
            );
            assert!(same_classes(&event.classes, &reported.classes), "{what}");
        }
    }
}

fn per_million(text: &str) -> TokenPrice {
    TokenPrice::parse_per_million(text).unwrap()
}

/// What the limiter counts for an event: its exact cost at `price`,
/// rounded up to the micro-dollar.
fn micro_usd(event: &UsageEvent, price: &ModelPrice) -> u64 {
    let tokens = ClassTokens::split(event.input_tokens, event.output_tokens, &event.classes);
    price.cost(&tokens).unwrap().total().0.div_ceil(1_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dollar_budget_is_settled_at_the_actual_cost_and_then_refused() {
    let (_mock, addr) = mock_provider(MockOptions::default()).await;
    // $1 per 1M tokens is 1 µ$ a token; cached input half that.
    let tail = r#"
[[models]]
name = "priced"
provider = "mock-openai"
upstream_name = "gpt"
[models.price]
input = "1"
output = "1"
cache_read_input = "0.50"

[limits]
[[limits.users]]
user = "u1"
monthly_budget_usd = "0.0002"
"#;
    let dp = Dataplane::start(&config_with(addr, "", tail)).await;
    let price = ModelPrice {
        input: per_million("1"),
        output: per_million("1"),
        cache_read_input: Some(per_million("0.50")),
        ..ModelPrice::default()
    };
    let body = json!({"model": "priced", "max_tokens": 8, "prompt_cache_key": "k",
        "messages": [{"role": "user", "content": "hi"}]});
    let mut spent = 0u64;
    let mut admitted = 0;
    let refusal = loop {
        let resp = client()
            .request(post(&dp.url("/v1/chat/completions"), body.clone()))
            .await
            .unwrap();
        if resp.status() == 429 {
            break resp;
        }
        assert_eq!(resp.status(), 200);
        let header = |name: &str| resp.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("x-ratelimit-limit-usd"), "0.0002");
        let id = request_id(&resp);
        let _ = text(resp).await;
        let event = dp.events.of(&id).await;
        assert!(event.classes.cache_read_input > 0, "{event:?}");
        spent += micro_usd(&event, &price);
        admitted += 1;
        assert!(admitted < 50, "the budget never ran out");
    };
    assert!(admitted >= 2, "admitted {admitted}");
    let header = |name: &str| refusal.headers()[name].to_str().unwrap().to_owned();
    // The refusal reports what is left after the settled costs, exactly.
    let left = 200 - spent;
    assert_eq!(
        header("x-ratelimit-remaining-usd"),
        molt_config::money::usd_text(u128::from(left) * 1_000_000)
    );
    assert!(refusal.headers().contains_key("retry-after"));
    let v: serde_json::Value = serde_json::from_str(&text(refusal).await).unwrap();
    assert_eq!(v["error"]["type"], "budget_exceeded");
    assert_eq!(
        v["error"]["message"],
        "monthly dollar budget of $0.0002 reached"
    );

    // The same user on a model without a price: refused, not free.
    let resp = client()
        .request(post(
            &dp.url("/v1/chat/completions"),
            json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(v["error"]["code"], "model_not_priced");
}
