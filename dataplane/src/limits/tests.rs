//! Unit tests of the limiter without Redis, on tokio's paused clock.

use super::*;
use crate::usage_reader::TokenUsage;
use molt_config::limits::RawLimits;
use molt_config::ConfigErrors;
use molt_config::ModelPrice;

pub(crate) fn config(toml_text: &str) -> LimitsConfig {
    let raw: RawLimits = toml::from_str(toml_text).unwrap();
    let mut errs = ConfigErrors::default();
    let cfg = LimitsConfig::from_wire(&raw, None, None, &mut errs);
    assert!(errs.is_empty(), "{errs}");
    cfg
}

fn limiter(toml_text: &str) -> Limiter {
    Limiter::new(&config(toml_text), &prometheus::Registry::new()).unwrap()
}

fn req(user: &str, input: u64, max_out: Option<u64>, stream: bool) -> AdmissionRequest<'_> {
    AdmissionRequest {
        user,
        key_id: "k",
        model: "gpt-4o",
        provider: "openai",
        estimated_input_tokens: input,
        max_output_tokens: max_out,
        stream,
        price: None,
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_stream_cap_is_released_on_drop() {
    let l = limiter("concurrent_streams = 2");
    let a = l.admit(&req("u", 10, None, true)).unwrap();
    let _b = l.admit(&req("u", 10, None, true)).unwrap();
    let r = l.admit(&req("u", 10, None, true)).unwrap_err();
    assert_eq!(r.kind, LimitKind::ConcurrentStreams);
    assert_eq!(r.reason, "concurrent streams limit of 2 reached");
    // Non-streaming requests and other users are not counted.
    l.admit(&req("u", 10, None, false)).unwrap();
    l.admit(&req("other", 10, None, true)).unwrap();
    drop(a);
    l.admit(&req("u", 10, None, true)).unwrap();
}

#[tokio::test(start_paused = true)]
async fn tokens_are_settled_from_actual_usage() {
    // 6,000 tokens/min refills 100 per second.
    let l = limiter("tokens_per_minute = 6000\ndefault_max_output_tokens = 1000");
    // Estimate 1,000 + 1,000; actual 5,000: charged the actual.
    let a = l.admit(&req("u", 1000, None, false)).unwrap();
    assert_eq!(a.headers().remaining_tokens, Some(4000));
    let out = a.settle(&TokenUsage::totals(1000, 4000));
    assert_eq!(out.charged, 5000);
    // 1,000 left: a 2,000-token estimate must wait 10 s for 1,000 more.
    let r = l.admit(&req("u", 1000, Some(1000), false)).unwrap_err();
    assert_eq!(r.kind, LimitKind::TokensPerMinute);
    assert_eq!(r.reason, "tokens per minute limit of 6000 reached");
    assert_eq!(r.retry_after, Duration::from_secs(10));
    // A refund: estimate 1,000, used 100, so 900 come back.
    let a = l.admit(&req("u", 500, Some(500), false)).unwrap();
    a.settle(&TokenUsage::totals(50, 50));
    let a = l.admit(&req("u", 900, Some(0), false)).unwrap();
    assert_eq!(a.headers().remaining_tokens, Some(0));
    // Going over: the bucket goes negative and the next request waits
    // for the debt too.
    a.settle(&TokenUsage::totals(900, 2000));
    let r = l.admit(&req("u", 100, Some(0), false)).unwrap_err();
    assert_eq!(r.retry_after, Duration::from_secs(21));
    tokio::time::advance(Duration::from_secs(21)).await;
    l.admit(&req("u", 100, Some(0), false)).unwrap();
}

#[tokio::test(start_paused = true)]
async fn update_keeps_counters() {
    let l = limiter("requests_per_minute = 10\ntokens_per_minute = 10000");
    for _ in 0..10 {
        l.admit(&req("u", 400, Some(100), false)).unwrap();
    }
    assert_eq!(
        l.admit(&req("u", 1, Some(1), false)).unwrap_err().kind,
        LimitKind::RequestsPerMinute
    );
    // Same limits with an unrelated change, then a raised token limit:
    // nobody gets a fresh allowance.
    l.update(&config(
        "requests_per_minute = 10\ntokens_per_minute = 10000\nconcurrent_streams = 5",
    ));
    assert_eq!(
        l.admit(&req("u", 1, Some(1), false)).unwrap_err().kind,
        LimitKind::RequestsPerMinute
    );
    l.update(&config(
        "requests_per_minute = 1000\ntokens_per_minute = 12000",
    ));
    let a = l.admit(&req("u", 1000, Some(0), false)).unwrap();
    // 5,000 used of 12,000 before this request's 1,000.
    assert_eq!(a.headers().remaining_tokens, Some(6000));
    assert_eq!(a.headers().limit_tokens, Some(12000));
}

#[tokio::test(start_paused = true)]
async fn headers_report_the_tightest_limits() {
    let l = limiter(
        r#"
        requests_per_minute = 60
        tokens_per_minute = 100000
        [[users]]
        user = "small"
        tokens_per_minute = 5000
        [[models]]
        model = "gpt-4o"
        requests_per_minute = 30
        "#,
    );
    let a = l.admit(&req("small", 1000, Some(1000), false)).unwrap();
    let h = a.headers();
    assert_eq!(h.limit_requests, Some(30), "the model scope is tighter");
    assert_eq!(h.remaining_requests, Some(29));
    assert_eq!(h.reset_requests, Some(Duration::from_secs(2)));
    assert_eq!(h.limit_tokens, Some(5000));
    assert_eq!(h.remaining_tokens, Some(3000));
    assert_eq!(h.reset_tokens, Some(Duration::from_secs(24)));
    let names: Vec<_> = h
        .pairs()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            "x-ratelimit-limit-requests: 30",
            "x-ratelimit-remaining-requests: 29",
            "x-ratelimit-reset-requests: 2s",
            "x-ratelimit-limit-tokens: 5000",
            "x-ratelimit-remaining-tokens: 3000",
            "x-ratelimit-reset-tokens: 24s",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn provider_ceiling_spans_users_and_model_override_is_per_user() {
    let l = limiter(
        r#"
        [[models]]
        model = "gpt-4o"
        requests_per_minute = 2
        [[providers]]
        provider = "openai"
        requests_per_minute = 3
        "#,
    );
    l.admit(&req("a", 1, None, false)).unwrap();
    l.admit(&req("a", 1, None, false)).unwrap();
    let r = l.admit(&req("a", 1, None, false)).unwrap_err();
    assert_eq!(r.kind, LimitKind::RequestsPerMinute);
    assert_eq!(
        r.reason,
        "requests per minute limit of 2 for this model reached"
    );
    l.admit(&req("b", 1, None, false)).unwrap();
    let r = l.admit(&req("c", 1, None, false)).unwrap_err();
    assert_eq!(r.kind, LimitKind::ProviderRequests);
}

#[tokio::test(start_paused = true)]
async fn anomaly_is_flagged_and_blocks_when_configured() {
    let l = limiter(
        r#"
        [anomaly]
        window = "1m"
        baseline_half_life = "1h"
        multiple = 5.0
        floor_tokens_per_minute = 10000
        block = true
        "#,
    );
    // Ten minutes at ~3,000 tokens/min.
    for _ in 0..10 {
        let out = l
            .admit(&req("u", 10, None, false))
            .unwrap()
            .settle(&TokenUsage::totals(2000, 1000));
        assert!(!out.anomalous);
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    // A leaked key burns 50,000 tokens in a minute.
    let out = l
        .admit(&req("u", 10, None, false))
        .unwrap()
        .settle(&TokenUsage::totals(40000, 10000));
    assert!(out.anomalous);
    let r = l.admit(&req("u", 10, None, false)).unwrap_err();
    assert_eq!(r.kind, LimitKind::Anomaly);
    assert_eq!(r.reason, "unusual token usage");
    // Other users are unaffected; after a quiet window the block lifts.
    l.admit(&req("v", 10, None, false)).unwrap();
    tokio::time::advance(Duration::from_secs(120)).await;
    l.admit(&req("u", 10, None, false)).unwrap();
}

#[tokio::test(start_paused = true)]
async fn metrics_count_decisions_by_kind() {
    let reg = prometheus::Registry::new();
    let l = Limiter::new(&config("requests_per_second = 1"), &reg).unwrap();
    l.admit(&req("u", 1, None, false)).unwrap();
    l.admit(&req("u", 1, None, false)).unwrap_err();
    let text = {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&reg.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    };
    assert!(
        text.contains(r#"molt_limit_decisions_total{decision="admitted",kind="none"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"molt_limit_decisions_total{decision="rejected",kind="requests_per_second"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("molt_limits_redis_fallback 0"), "{text}");
}

#[test]
fn estimate_is_a_quarter_of_the_body() {
    assert_eq!(estimate_input_tokens(0), 0);
    assert_eq!(estimate_input_tokens(4), 1);
    assert_eq!(estimate_input_tokens(5), 2);
}

fn price(input: &str, output: &str, cache_read: &str) -> ModelPrice {
    let p = |t: &str| molt_config::TokenPrice::parse_per_million(t).unwrap();
    ModelPrice {
        input: p(input),
        output: p(output),
        cache_read_input: Some(p(cache_read)),
        ..ModelPrice::default()
    }
}

fn priced<'a>(
    user: &'a str,
    price: &'a ModelPrice,
    input: u64,
    max_out: u64,
) -> AdmissionRequest<'a> {
    AdmissionRequest {
        price: Some(price),
        ..req(user, input, Some(max_out), false)
    }
}

#[tokio::test(start_paused = true)]
async fn dollar_budget_admits_estimates_and_settles_actual_cost_by_class() {
    // $0.01 = 10,000 µ$ a month; $2.50 / $10 per 1M, cached input $1.25.
    let l = limiter("monthly_budget_usd = \"0.01\"");
    let gpt = price("2.50", "10", "1.25");
    // Estimate 1,000 × 2.5 + 500 × 10 = 7,500 µ$.
    let a = l.admit(&priced("u", &gpt, 1_000, 500)).unwrap();
    let h = a.headers();
    assert_eq!(h.limit_micro_usd, Some(10_000));
    assert_eq!(h.remaining_micro_usd, Some(2_500));
    let headers: Vec<(&str, String)> = h
        .pairs()
        .map(|(k, v)| (k, v.to_str().unwrap().to_owned()))
        .filter(|(k, _)| k.ends_with("-usd"))
        .collect();
    assert_eq!(headers[0], (headers::LIMIT_USD, "0.01".to_owned()));
    assert_eq!(headers[1], (headers::REMAINING_USD, "0.0025".to_owned()));
    // Actual: 800 of 1,000 input cached, 100 output:
    // 200 × 2.5 + 800 × 1.25 + 100 × 10 = 2,500 µ$.
    let used = TokenUsage {
        classes: molt_config::TokenClasses {
            cache_read_input: 800,
            ..Default::default()
        },
        ..TokenUsage::totals(1_000, 100)
    };
    a.settle(&used);
    // 7,500 left: exactly one more estimate of 7,500 fits.
    let a = l.admit(&priced("u", &gpt, 1_000, 500)).unwrap();
    assert_eq!(a.headers().remaining_micro_usd, Some(0));
    a.settle(&TokenUsage::totals(1_000, 500));
    let r = l.admit(&priced("u", &gpt, 1, 1)).unwrap_err();
    assert_eq!(r.kind, LimitKind::MonthlyDollarBudget);
    assert_eq!(r.reason, "monthly dollar budget of $0.01 reached");
    assert_eq!(r.headers.remaining_micro_usd, Some(0));
    // Retry when the month ends.
    let (_, end) = Dim::MonthlyUsd.window(l.shared.clock.unix());
    assert_eq!(r.retry_after, end - l.shared.clock.unix());
    // Another user has their own budget.
    l.admit(&priced("v", &gpt, 1, 1)).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_refund_gives_the_unspent_estimate_back() {
    let l = limiter("monthly_budget_usd = \"0.01\"");
    let gpt = price("2.50", "10", "1.25");
    for _ in 0..100 {
        // Each estimate is 7,500 µ$; each answer costs 25 µ$ (10 in at 2.5).
        let a = l.admit(&priced("u", &gpt, 1_000, 500)).unwrap();
        a.settle(&TokenUsage::totals(10, 0));
    }
    let a = l.admit(&priced("u", &gpt, 0, 0)).unwrap();
    assert_eq!(a.headers().remaining_micro_usd, Some(10_000 - 100 * 25));
}

#[tokio::test(start_paused = true)]
async fn an_unpriced_model_is_refused_only_under_a_dollar_budget() {
    let l = limiter(
        r#"
        [[users]]
        user = "capped"
        monthly_budget_usd = "5"
        "#,
    );
    let r = l.admit(&req("capped", 10, Some(10), false)).unwrap_err();
    assert_eq!(r.kind, LimitKind::UnpricedModel);
    assert_eq!(
        r.reason,
        "the model has no price, and a monthly dollar budget of $5.00 applies"
    );
    // Without a dollar budget the price is not needed.
    l.admit(&req("free", 10, Some(10), false)).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_dollar_budget_on_a_model_applies_on_top_of_the_users() {
    let l = limiter(
        r#"
        monthly_budget_usd = "100"
        [[models]]
        model = "gpt-4o"
        monthly_budget_usd = "0.000030"
        "#,
    );
    let gpt = price("1", "1", "1");
    // 30 µ$ on this model: 30 tokens at $1 per 1M.
    l.admit(&priced("u", &gpt, 20, 10)).unwrap();
    let r = l.admit(&priced("u", &gpt, 1, 0)).unwrap_err();
    assert_eq!(r.kind, LimitKind::MonthlyDollarBudget);
    assert_eq!(
        r.reason,
        "monthly dollar budget of $0.00003 for this model reached"
    );
}
