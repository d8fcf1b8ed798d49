//! The limiter against a real Redis: three limiters sharing one Redis stay
//! within 5% of a global limit, and a Redis outage falls back to local
//! shares and recovers. Needs `REDIS_URL`; outside CI a missing or
//! unreachable Redis skips these tests loudly, under `CI=true` it fails them.

use crate::support::redis_addr;
use molt_config::limits::{LimitsConfig, RawLimits};
use molt_config::{ConfigErrors, ModelPrice, TokenClasses, TokenPrice};
use molt_dataplane::limits::{AdmissionRequest, Limiter};
use molt_dataplane::usage_reader::TokenUsage;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

fn config(text: &str) -> LimitsConfig {
    let raw: RawLimits = toml::from_str(text).unwrap();
    let mut errs = ConfigErrors::default();
    let cfg = LimitsConfig::from_wire(&raw, None, None, &mut errs);
    assert!(errs.is_empty(), "{errs}");
    cfg
}

/// A key prefix no other test run shares.
fn prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("molt-test:{test}:{}:{nanos}:", std::process::id())
}

/// Redis windows are wall-clock minutes: start a test early in one.
async fn not_near_minute_end(needed: u64) {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if s + needed > 58 {
        tokio::time::sleep(Duration::from_secs(61 - s)).await;
    }
}

fn req(user: &str, input: u64, max_out: u64) -> AdmissionRequest<'_> {
    AdmissionRequest {
        user,
        key_id: "k",
        model: "m",
        provider: "p",
        estimated_input_tokens: input,
        max_output_tokens: Some(max_out),
        stream: false,
        price: None,
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn fallback_gauge(reg: &prometheus::Registry) -> i64 {
    reg.gather()
        .iter()
        .find(|f| f.name() == "molt_limits_redis_fallback")
        .map(|f| f.get_metric()[0].get_gauge().get_value() as i64)
        .unwrap()
}

fn three(cfg: &LimitsConfig) -> Vec<Limiter> {
    (0..3)
        .map(|_| Limiter::new(cfg, &prometheus::Registry::new()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_a_global_request_limit() {
    let Some(addr) = redis_addr().await else {
        return;
    };
    let cfg = config(&format!(
        "requests_per_minute = 600\n[redis]\nurl = \"redis://{addr}\"\nkey_prefix = \"{}\"\nreplicas = 3\n",
        prefix("rpm")
    ));
    not_near_minute_end(10).await;
    let ls = three(&cfg);
    for l in &ls {
        wait_until("Redis", || l.is_global()).await;
    }
    let mut admitted = 0u64;
    for i in 0..1800 {
        if ls[i % 3].admit(&req("user-1", 1, 1)).is_ok() {
            admitted += 1;
        }
        if i % 3 == 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    eprintln!("admitted {admitted} of a global 600/min across 3 replicas");
    assert!(
        (570..=630).contains(&admitted),
        "admitted {admitted}, limit 600"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_a_global_token_limit() {
    let Some(addr) = redis_addr().await else {
        return;
    };
    let cfg = config(&format!(
        "tokens_per_minute = 60000\n[redis]\nurl = \"redis://{addr}\"\nkey_prefix = \"{}\"\nreplicas = 3\n",
        prefix("tpm")
    ));
    not_near_minute_end(10).await;
    let ls = three(&cfg);
    for l in &ls {
        wait_until("Redis", || l.is_global()).await;
    }
    let mut tokens = 0u64;
    for i in 0..900 {
        // Estimated 300, used 200: settle refunds 100 each time.
        if let Ok(a) = ls[i % 3].admit(&req("user-1", 150, 150)) {
            a.settle(&TokenUsage::totals(120, 80));
            tokens += 200;
        }
        if i % 3 == 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    eprintln!("admitted {tokens} tokens of a global 60000/min across 3 replicas");
    assert!(
        (57_000..=63_000).contains(&tokens),
        "admitted {tokens} tokens, limit 60000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_hold_a_global_dollar_budget() {
    let Some(addr) = redis_addr().await else {
        return;
    };
    // $1.00 a month, 1,000,000 µ$; leases of 5%.
    let cfg = config(&format!(
        "monthly_budget_usd = \"1.00\"\n[redis]\nurl = \"redis://{addr}\"\nkey_prefix = \"{}\"\nreplicas = 2\n",
        prefix("usd")
    ));
    let ls: Vec<Limiter> = (0..2)
        .map(|_| Limiter::new(&cfg, &prometheus::Registry::new()).unwrap())
        .collect();
    for l in &ls {
        wait_until("Redis", || l.is_global()).await;
    }
    let per_million = |t: &str| TokenPrice::parse_per_million(t).unwrap();
    let price = ModelPrice {
        input: per_million("1"),
        output: per_million("1"),
        cache_read_input: Some(per_million("0.10")),
        ..ModelPrice::default()
    };
    // Estimated 500 + 500 tokens = 1,000 µ$; each answer really costs
    // 100 + 200 × 0.1 + 200 = 320 µ$ (200 of its 300 input tokens cached).
    let used = TokenUsage {
        classes: TokenClasses {
            cache_read_input: 200,
            ..TokenClasses::default()
        },
        ..TokenUsage::totals(300, 200)
    };
    let mut spent = 0u64;
    let mut last_refusal = None;
    for i in 0..8000 {
        let req = AdmissionRequest {
            price: Some(&price),
            ..req("user-1", 500, 500)
        };
        match ls[i % 2].admit(&req) {
            Ok(a) => {
                a.settle(&used);
                spent += 320;
            }
            Err(r) => last_refusal = Some(r),
        }
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    eprintln!("spent {spent} µ$ of a global $1.00 budget across 2 replicas");
    assert!(
        (950_000..=1_050_000).contains(&spent),
        "spent {spent} µ$, budget 1,000,000"
    );
    let r = last_refusal.expect("the budget ran out");
    assert_eq!(r.reason, "monthly dollar budget of $1.00 reached");
}

/// A TCP relay to Redis that the test can kill and restart.
struct Relay {
    tasks: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(port: u16, target: String) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let tasks = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let t = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                t.lock().push(conn);
            }
        });
        tasks.lock().push(accept);
        Relay { tasks }
    }

    fn kill(self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_local_shares_and_recovers() {
    let Some(addr) = redis_addr().await else {
        return;
    };
    // A port nobody listens on (yet).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = config(&format!(
        "requests_per_minute = 300\n[redis]\nurl = \"redis://127.0.0.1:{port}\"\nkey_prefix = \"{}\"\nreplicas = 3\n",
        prefix("outage")
    ));
    not_near_minute_end(25).await;
    let reg = prometheus::Registry::new();
    let l = Limiter::new(&cfg, &reg).unwrap();
    let count = |user: &str, n: usize| (0..n).filter(|_| l.admit(&req(user, 1, 1)).is_ok()).count();

    // Redis down from the start: this replica's share, 300 / 3.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!l.is_global());
    assert_eq!(fallback_gauge(&reg), 1);
    assert_eq!(count("a", 300), 100, "local share while Redis is down");

    // Redis comes back: global again, and the 100 spent meanwhile count.
    let relay = Relay::start(port, addr.clone()).await;
    wait_until("reconnect", || l.is_global()).await;
    assert_eq!(fallback_gauge(&reg), 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut after = 0;
    for _ in 0..300 {
        if l.admit(&req("a", 1, 1)).is_ok() {
            after += 1;
        }
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    eprintln!("after reconnect: admitted {after} of the 200 left globally");
    assert!(
        (190..=215).contains(&after),
        "admitted {after}, 200 left globally"
    );

    // Redis dies mid-run: requests keep flowing on the local share.
    relay.kill();
    wait_until("fallback", || !l.is_global()).await;
    assert_eq!(fallback_gauge(&reg), 1);
    assert_eq!(count("b", 300), 100, "local share after Redis died");
}
