//! The limiter check on the request path, local and Redis-backed.
//!
//! One iteration is one request's full cost to the limiter: `admit` (request
//! rates by GCRA, token buckets against the estimate, concurrent-stream slot,
//! monthly budget, provider ceiling, anomaly state) followed by `settle` with
//! the actual usage. Users rotate over 1,000 ids so the maps are warm but the
//! lines are not all in cache. Limits are set high so every request is
//! admitted: the rejection path is cheaper.
//!
//! The Redis-backed variant runs only when `REDIS_URL` is set; it shows that
//! the request path does not wait on Redis (it spends a locally leased
//! grant; refills happen on a background task).
#![allow(
    clippy::expect_used,
    reason = "a bench that cannot set up should stop at once with the reason"
)]

use criterion::{criterion_group, criterion_main, Criterion};
use molt_config::dataplane::DataplaneConfig;
use molt_dataplane::limits::{AdmissionRequest, Limiter};
use molt_dataplane::usage_reader::TokenUsage;
use std::collections::HashMap;
use std::hint::black_box;

fn config(redis: Option<&str>) -> DataplaneConfig {
    let redis = redis.map_or_else(String::new, |url| {
        format!(
            "[limits.redis]\nurl = \"{url}\"\nkey_prefix = \"molt:bench:{}:\"\nreplicas = 1\n",
            std::process::id()
        )
    });
    let toml = format!(
        r#"
version = 1
[server]
listen = "127.0.0.1:1"
[limits]
requests_per_second = 1000000000
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
tokens_per_day = 1000000000000
concurrent_streams = 1000000
monthly_token_budget = 1000000000000000
{redis}
[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
keys = ["k"]
[[models]]
name = "m"
provider = "p"
"#
    );
    DataplaneConfig::from_toml(&toml, &HashMap::<&str, &str>::new()).expect("bench config is valid")
}

fn run(c: &mut Criterion, name: &str, limiter: &Limiter) {
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let mut i = 0usize;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            let admission = limiter
                .admit(&AdmissionRequest {
                    user: &users[i],
                    key_id: "k",
                    model: "m",
                    provider: "p",
                    estimated_input_tokens: 300,
                    max_output_tokens: Some(256),
                    stream: true,
                    price: None,
                })
                .expect("limits are high enough to admit");
            black_box(admission.settle(&TokenUsage::totals(280, 120)))
        })
    });
}

fn limiter_check(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let local = Limiter::new(&config(None).limits, &registry).expect("local limiter");
    run(c, "limiter/admit+settle/local", &local);

    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            let _entered = rt.enter();
            let registry = prometheus::Registry::new();
            let global =
                Limiter::new(&config(Some(&url)).limits, &registry).expect("redis limiter");
            // Let the first leases arrive before measuring.
            std::thread::sleep(std::time::Duration::from_millis(300));
            run(c, "limiter/admit+settle/redis-leased", &global);
        }
        _ => eprintln!("REDIS_URL not set: skipping the Redis-backed limiter bench"),
    }
}

criterion_group!(benches, limiter_check);
criterion_main!(benches);
