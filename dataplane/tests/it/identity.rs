//! Clients authenticated by an identity provider's own tokens
//! (`[auth.jwks]`, as a control plane ships it): a token signed by a
//! published key reaches the provider and is counted as the mapped Molt
//! user's, under key id `jwt`; a token from an unpublished key, for an
//! unmapped subject or for another app is refused before any upstream byte.

use crate::support::{client, config_with, mock_provider, request_id, Dataplane};
use bytes::Bytes;
use http_body_util::Full;
use molt_fakes::fake_clerk::jwks::FakeJwks;
use molt_fakes::mock_provider::MockOptions;
use serde_json::{json, Value};
use std::fmt::Write as _;

const ISS: &str = "https://clerk.molt.test";
const APP: &str = "https://app.molt.test";

/// `[auth.jwks]` with the fake's published keys, `user_clerk` -> `usr_molt`.
fn jwks_tail(fake: &FakeJwks) -> String {
    let mut tail = format!(
        "[auth.jwks]\nissuer = \"{ISS}\"\nauthorized_parties = [\"{APP}\"]\n[auth.jwks.users]\nuser_clerk = \"usr_molt\"\n"
    );
    for k in fake.document()["keys"].as_array().unwrap() {
        let _ = writeln!(tail, "[[auth.jwks.keys]]");
        for field in ["kid", "kty", "alg", "use", "crv", "x", "y"] {
            let _ = writeln!(tail, "{field} = {}", k[field]);
        }
    }
    tail
}

fn claims(sub: &str, azp: &str) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"sub": sub, "iss": ISS, "azp": azp, "iat": now, "nbf": now - 5, "exp": now + 60})
}

fn chat(dp: &Dataplane, token: &str) -> http::Request<Full<Bytes>> {
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]});
    http::Request::post(dp.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_token_is_its_mapped_users_and_others_are_refused() {
    let fake = FakeJwks::new().unwrap();
    let (mock, addr) = mock_provider(MockOptions::default()).await;
    let dp = Dataplane::start(&config_with(addr, "", &jwks_tail(&fake))).await;

    let resp = client()
        .request(chat(&dp, &fake.sign(&claims("user_clerk", APP))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let event = dp.events.of(&request_id(&resp)).await;
    assert_eq!(
        (event.key_id.as_str(), event.user_id.as_str()),
        ("jwt", "usr_molt")
    );
    assert_eq!(mock.records().len(), 1);

    for (what, token) in [
        (
            "unpublished key",
            fake.sign_unpublished(&claims("user_clerk", APP)),
        ),
        ("unmapped subject", fake.sign(&claims("user_other", APP))),
        (
            "another app",
            fake.sign(&claims("user_clerk", "https://evil.example")),
        ),
    ] {
        let resp = client().request(chat(&dp, &token)).await.unwrap();
        assert_eq!(resp.status(), 401, "{what}");
    }
    assert_eq!(
        mock.records().len(),
        1,
        "nothing refused reached the provider"
    );
}
