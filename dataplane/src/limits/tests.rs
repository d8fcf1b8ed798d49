//! Unit tests of the limiter without Redis, on tokio's paused clock.

use super::*;
use molt_config::limits::RawLimits;
use molt_config::ConfigErrors;

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
    let out = a.settle(1000, 4000);
    assert_eq!(out.charged, 5000);
    // 1,000 left: a 2,000-token estimate must wait 10 s for 1,000 more.
    let r = l.admit(&req("u", 1000, Some(1000), false)).unwrap_err();
    assert_eq!(r.kind, LimitKind::TokensPerMinute);
    assert_eq!(r.reason, "tokens per minute limit of 6000 reached");
    assert_eq!(r.retry_after, Duration::from_secs(10));
    // A refund: estimate 1,000, used 100, so 900 come back.
    let a = l.admit(&req("u", 500, Some(500), false)).unwrap();
    a.settle(50, 50);
    let a = l.admit(&req("u", 900, Some(0), false)).unwrap();
    assert_eq!(a.headers().remaining_tokens, Some(0));
    // Going over: the bucket goes negative and the next request waits
    // for the debt too.
    a.settle(900, 2000);
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
            .settle(2000, 1000);
        assert!(!out.anomalous);
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    // A leaked key burns 50,000 tokens in a minute.
    let out = l
        .admit(&req("u", 10, None, false))
        .unwrap()
        .settle(40000, 10000);
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
