//! Browser apps on other origins (`[browser] allowed_origins`): CORS
//! preflights and headers on the routes a browser calls, nothing for an
//! origin that is not allowed, and the `Origin` check of WebSocket upgrades.

use crate::support::{client, config_with, mock_provider, post, text, Dataplane, CLIENT_KEY};
use http_body_util::Full;
use molt_fakes::mock_provider::MockOptions;
use serde_json::json;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";

async fn start() -> Dataplane {
    let (_mock, addr) = mock_provider(MockOptions::default()).await;
    let tail = format!("[browser]\nallowed_origins = [\"{APP}\", \"https://*.molt.test\"]\n");
    Dataplane::start(&config_with(addr, "", &tail)).await
}

fn preflight(url: &str, origin: &str) -> http::Request<Full<bytes::Bytes>> {
    http::Request::options(url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-stainless-os",
        )
        .body(Full::default())
        .unwrap()
}

fn header<B>(resp: &http::Response<B>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_gets_its_preflight_answered_and_can_read_answers() {
    let dp = start().await;
    for (path, origin) in [
        ("/v1/chat/completions", APP),
        ("/v1/ws/tickets", APP),
        ("/v1/messages", "https://a.molt.test"),
    ] {
        let resp = client()
            .request(preflight(&dp.url(path), origin))
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{path} from {origin}");
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
        assert_eq!(
            header(&resp, "access-control-allow-methods").as_deref(),
            Some("POST")
        );
        assert_eq!(
            header(&resp, "access-control-allow-headers").as_deref(),
            Some("authorization, content-type, x-stainless-os")
        );
        assert_eq!(
            header(&resp, "access-control-max-age").as_deref(),
            Some("600")
        );
        assert!(header(&resp, "access-control-allow-credentials").is_none());
    }

    // The actual requests: a success and a refusal both readable.
    let mut req = post(
        &dp.url("/v1/chat/completions"),
        json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
    );
    req.headers_mut().insert("origin", APP.parse().unwrap());
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    assert!(header(&resp, "access-control-expose-headers")
        .unwrap()
        .contains("x-request-id"));
    assert!(header(&resp, "vary").unwrap().contains("origin"));

    let ticket = http::Request::post(dp.url("/v1/ws/tickets"))
        .header("origin", APP)
        .header("authorization", "Bearer molt_sk_wrong")
        .body(Full::default())
        .unwrap();
    let resp = client().request(ticket).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_get_no_cors_header_at_all() {
    let dp = start().await;
    let resp = client()
        .request(preflight(&dp.url("/v1/ws/tickets"), EVIL))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(header(&resp, "access-control-allow-origin").is_none());
    let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(body["error"]["code"], "origin_not_allowed");

    // A request that skips the preflight (a non-browser client sending an
    // Origin) is served, but a browser could not read it.
    let mut req = post(&dp.url("/v1/ws/tickets"), json!({}));
    req.headers_mut().insert("origin", EVIL.parse().unwrap());
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "access-control-allow-origin").is_none());

    // The suffix pattern does not match the domain itself or look-alikes.
    for origin in [
        "https://molt.test",
        "https://evilmolt.test",
        "http://a.molt.test",
    ] {
        let resp = client()
            .request(preflight(&dp.url("/v1/chat/completions"), origin))
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{origin}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_from_other_origins_are_refused() {
    let dp = start().await;
    let upgrade = |origin: Option<&str>| {
        let mut req = http::Request::get(dp.url("/ws/chat?bot=nope"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("authorization", format!("Bearer {CLIENT_KEY}"));
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req.body(Full::default()).unwrap()
    };
    let resp = client().request(upgrade(Some(EVIL))).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    // An allowed origin, and a client with no Origin, get past the check
    // (to the unknown bot).
    for origin in [Some(APP), None] {
        let resp = client().request(upgrade(origin)).await.unwrap();
        assert_eq!(resp.status(), 404, "{origin:?}");
    }
}
