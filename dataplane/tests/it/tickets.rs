//! WebSocket tickets are single-use across replicas: two data planes share
//! a Redis (and a ticket secret); a ticket spent on one is refused on the
//! other. With Redis unreachable, a ticket is still single-use per replica
//! and the fallback is counted.

use crate::support::{client, config_with, mock_provider, post, redis_addr, text, Dataplane};
use futures::StreamExt;
use molt_fakes::mock_bot::{MockBot, MockBotOptions};
use molt_fakes::mock_provider::MockOptions;
use serde_json::json;

const TICKET_SECRET: &str = "ticket-secret-shared-by-replicas-0123456789";

async fn mock_bot() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(MockBot::new(MockBotOptions::default()).serve(listener));
    addr
}

fn tail(bot: std::net::SocketAddr, redis_url: &str, prefix: &str) -> String {
    format!(
        r#"
[[bots]]
id = "bot-1"
user = "u1"
gateway_url = "ws://{bot}/ws"
gateway_token = "mock-gateway-token"

[websocket]
ticket_secret = "{TICKET_SECRET}"

[limits.redis]
url = "{redis_url}"
key_prefix = "{prefix}"
replicas = 2
"#
    )
}

async fn ticket(dp: &Dataplane) -> String {
    let resp = client()
        .request(post(&dp.url("/v1/ws/tickets"), json!({})))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    body["ticket"].as_str().unwrap().to_owned()
}

/// Open `/ws/chat` with `ticket`: the upgrade's status.
async fn redeem(dp: &Dataplane, ticket: &str) -> u16 {
    let url = format!(
        "ws://{}/ws/chat?bot=bot-1&ticket={ticket}",
        dp.listeners.http
    );
    match tokio_tungstenite::connect_async(url).await {
        Ok((mut ws, resp)) => {
            let _ = ws.close(None).await;
            while ws.next().await.is_some() {}
            resp.status().as_u16()
        }
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_spent_on_one_replica_is_refused_on_the_other() {
    let Some(redis) = redis_addr().await else {
        return;
    };
    let (_mock, addr) = mock_provider(MockOptions::default()).await;
    let bot = mock_bot().await;
    let prefix = format!("molt-it-tickets-{}:", uuid::Uuid::now_v7());
    let config = config_with(addr, "", &tail(bot, &format!("redis://{redis}"), &prefix));
    let (a, b) = (
        Dataplane::start(&config).await,
        Dataplane::start(&config).await,
    );

    let first = ticket(&a).await;
    assert_eq!(redeem(&a, &first).await, 101);
    assert_eq!(redeem(&b, &first).await, 401, "spent on A, refused on B");
    assert_eq!(redeem(&a, &first).await, 401, "and on A again");

    // The other way round, and a ticket issued by A is good on B once.
    let second = ticket(&a).await;
    assert_eq!(redeem(&b, &second).await, 101);
    assert_eq!(redeem(&a, &second).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_ticket_is_still_single_use_on_its_replica() {
    let (_mock, addr) = mock_provider(MockOptions::default()).await;
    let bot = mock_bot().await;
    // A port nothing listens on: every claim falls back.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = config_with(addr, "", &tail(bot, &format!("redis://{dead}"), "molt-it:"));
    let dp = Dataplane::start(&config).await;
    let t = ticket(&dp).await;
    assert_eq!(redeem(&dp, &t).await, 101);
    assert_eq!(redeem(&dp, &t).await, 401);
    let metrics = text(
        client()
            .request(
                http::Request::get(format!("http://{}/metrics", dp.listeners.admin))
                    .body(Default::default())
                    .unwrap(),
            )
            .await
            .unwrap(),
    )
    .await;
    assert!(
        metrics.contains("molt_ws_ticket_claim_fallbacks_total 2"),
        "both claims fell back: {}",
        metrics
            .lines()
            .filter(|l| l.contains("ticket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
