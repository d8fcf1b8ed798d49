//! The identity provider (Clerk) end to end on both databases: webhooks
//! signed as Svix signs them through the real router (valid, tampered,
//! expired, replayed, out of order, several signatures), the users they
//! make, update and deactivate (keys revoked, bots stopped, audited), and
//! the JWKS fetched from the fake into the snapshot (rotation, the endpoint
//! down keeping the last good keys).

use crate::harness::{post_with_headers, settings_with, Cp, Resp, TestDb, CLERK_WHSEC};
use axum::http::StatusCode;
use molt_controlplane::identity::jwks::{JwksFetcher, RETRY_FIRST};
use molt_controlplane::App;
use molt_fakes::fake_clerk::jwks::{FakeJwks, JWKS_PATH};
use molt_fakes::fake_clerk::{sign_svix, user_deleted_event, user_event};
use serde_json::{json, Value};
use std::time::Duration;

crate::on_both_databases!(
    a_signed_user_created_makes_one_user_and_a_replay_changes_nothing,
    tampered_expired_and_unsigned_deliveries_change_nothing,
    several_signatures_pass_when_one_matches,
    deliveries_out_of_order_end_in_the_newest_state,
    a_delete_deactivates_revokes_keys_stops_bots_and_stays_final,
    a_user_an_operator_made_is_linked_by_email,
    jwks_keys_and_users_reach_the_snapshot_and_rotation_is_picked_up,
    the_jwks_endpoint_down_keeps_the_last_good_keys,
);

const ISS: &str = "https://clerk.molt.test";
const APP: &str = "https://app.molt.test";
const T0: i64 = 1_750_000_000_000;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const IDENTITY: &str = "[identity]\nwebhook_secret_env = \"CLERK_WHSEC\"\n";

async fn start(db: TestDb) -> Cp {
    let settings = settings_with(IDENTITY);
    let store = db.store.clone();
    let mut cp = Cp::start_with(db, &settings).await;
    cp.app
        .enable_identity(&store, settings.identity.as_ref().unwrap(), false)
        .expect("identity");
    cp
}

/// POST `body` to `/webhooks/clerk` with these Svix headers.
async fn post_raw(app: &App, headers: &[(&str, String)], body: &str) -> Resp {
    post_with_headers(app, "/webhooks/clerk", headers, body).await
}

/// Header names and values of one delivery.
type Headers = Vec<(&'static str, String)>;

fn svix_headers(id: &str, t: i64, signature: String) -> Headers {
    vec![
        ("svix-id", id.to_owned()),
        ("svix-timestamp", t.to_string()),
        ("svix-signature", signature),
    ]
}

/// Deliver `event` as message `id`, signed now; the `result` it came to.
async fn deliver(cp: &Cp, id: &str, event: &Value) -> String {
    let body = event.to_string();
    let t = now_secs();
    let sig = sign_svix(CLERK_WHSEC, id, t, body.as_bytes());
    let r = post_raw(&cp.app, &svix_headers(id, t, sig), &body).await;
    assert_eq!(r.status, StatusCode::OK, "{id}: {:?}", r.body);
    r.json()["result"].as_str().unwrap().to_owned()
}

/// Every user, as the API lists them.
async fn users(cp: &Cp) -> Vec<Value> {
    let r = cp.get("/api/v1/users?limit=100").await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["items"].as_array().unwrap().clone()
}

async fn user_of(cp: &Cp, clerk_id: &str) -> Option<Value> {
    users(cp)
        .await
        .into_iter()
        .find(|u| u["clerk_id"] == json!(clerk_id))
}

/// Audit entries (newest first) with this action.
async fn audit(cp: &Cp, action: &str) -> Vec<Value> {
    let r = cp.get("/api/v1/audit?limit=200").await;
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == json!(action))
        .cloned()
        .collect()
}

async fn a_signed_user_created_makes_one_user_and_a_replay_changes_nothing(db: TestDb) {
    let cp = start(db).await;
    let event = user_event("user.created", "user_ada", "Ada@Example.com", T0);
    assert_eq!(deliver(&cp, "msg_1", &event).await, "created");
    let u = user_of(&cp, "user_ada").await.expect("user made");
    assert_eq!(u["email"], "ada@example.com");
    assert_eq!(u["status"], "active");
    let created = audit(&cp, "user.create").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["actor"], "clerk_webhook");

    // The same message again (Svix retries with the same id and a new
    // timestamp and signature): acknowledged, nothing changes.
    assert_eq!(deliver(&cp, "msg_1", &event).await, "duplicate");
    assert_eq!(users(&cp).await.len(), 1);
    assert_eq!(audit(&cp, "user.create").await.len(), 1);
    // An event Molt does not act on is acknowledged.
    let other = json!({"type": "session.created", "object": "event", "timestamp": T0, "data": {"id": "sess_1"}});
    assert_eq!(deliver(&cp, "msg_2", &other).await, "ignored");
    let metrics = cp.send("GET", "/metrics", None, None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains(
            r#"molt_cp_identity_webhooks_total{result="duplicate",type="user.created"} 1"#
        ),
        "{text}"
    );
}

async fn tampered_expired_and_unsigned_deliveries_change_nothing(db: TestDb) {
    let cp = start(db).await;
    let body = user_event("user.created", "user_eve", "eve@example.com", T0).to_string();
    let now = now_secs();
    let good = |t: i64| sign_svix(CLERK_WHSEC, "msg_x", t, body.as_bytes());
    let tampered = body.replace("eve@example.com", "mallory@example.com");
    let wrong_secret = sign_svix(
        "whsec_b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==",
        "msg_x",
        now,
        body.as_bytes(),
    );
    let cases: Vec<(&str, Headers, &str)> = vec![
        (
            "tampered body",
            svix_headers("msg_x", now, good(now)),
            &tampered,
        ),
        ("other id", svix_headers("msg_y", now, good(now)), &body),
        (
            "expired",
            svix_headers("msg_x", now - 301, good(now - 301)),
            &body,
        ),
        (
            "future",
            svix_headers("msg_x", now + 301, good(now + 301)),
            &body,
        ),
        (
            "wrong secret",
            svix_headers("msg_x", now, wrong_secret),
            &body,
        ),
        (
            "no signature",
            svix_headers("msg_x", now, String::new())[..2].to_vec(),
            &body,
        ),
        ("no headers", Vec::new(), &body),
        (
            "not v1",
            svix_headers("msg_x", now, good(now).replace("v1,", "v2,")),
            &body,
        ),
    ];
    for (what, headers, body) in cases {
        let r = post_raw(&cp.app, &headers, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_signature", "{what}");
    }
    assert!(users(&cp).await.is_empty());
    // Signed but not JSON: refused as malformed, after verification.
    let sig = sign_svix(CLERK_WHSEC, "msg_z", now, b"not json");
    let r = post_raw(&cp.app, &svix_headers("msg_z", now, sig), "not json").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    // The genuine delivery still goes through: nothing was recorded.
    assert_eq!(
        deliver(&cp, "msg_x", &serde_json::from_str(&body).unwrap()).await,
        "created"
    );
}

async fn several_signatures_pass_when_one_matches(db: TestDb) {
    let cp = start(db).await;
    let body = user_event("user.created", "user_rot", "rot@example.com", T0).to_string();
    let t = now_secs();
    let old = sign_svix(
        "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA==",
        "msg_r",
        t,
        body.as_bytes(),
    );
    let good = sign_svix(CLERK_WHSEC, "msg_r", t, body.as_bytes());
    let header = format!("v1a,c29tZS1hc3ltbWV0cmljLXNpZw== {old} {good}");
    let r = post_raw(&cp.app, &svix_headers("msg_r", t, header), &body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(user_of(&cp, "user_rot").await.is_some());
}

async fn deliveries_out_of_order_end_in_the_newest_state(db: TestDb) {
    let cp = start(db).await;
    // An update arrives before the create: it makes the user.
    let newer = user_event("user.updated", "user_bo", "bo-new@example.com", T0 + 2_000);
    assert_eq!(deliver(&cp, "msg_u2", &newer).await, "created");
    let create = user_event("user.created", "user_bo", "bo@example.com", T0);
    assert_eq!(deliver(&cp, "msg_c", &create).await, "stale");
    let older = user_event("user.updated", "user_bo", "bo-mid@example.com", T0 + 1_000);
    assert_eq!(deliver(&cp, "msg_u1", &older).await, "stale");
    let u = user_of(&cp, "user_bo").await.unwrap();
    assert_eq!(u["email"], "bo-new@example.com");
    let newest = user_event("user.updated", "user_bo", "bo-last@example.com", T0 + 3_000);
    assert_eq!(deliver(&cp, "msg_u3", &newest).await, "updated");
    assert_eq!(
        user_of(&cp, "user_bo").await.unwrap()["email"],
        "bo-last@example.com"
    );

    // A delete that overtakes the create of another user: the create,
    // arriving later, makes nothing.
    assert_eq!(
        deliver(&cp, "msg_d", &user_deleted_event("user_cy", T0 + 9_000)).await,
        "ignored"
    );
    let late = user_event("user.created", "user_cy", "cy@example.com", T0);
    assert_eq!(deliver(&cp, "msg_c2", &late).await, "stale");
    assert!(user_of(&cp, "user_cy").await.is_none());
    assert_eq!(users(&cp).await.len(), 1);
}

async fn a_delete_deactivates_revokes_keys_stops_bots_and_stays_final(db: TestDb) {
    let cp = start(db).await;
    let create = user_event("user.created", "user_di", "di@example.com", T0);
    deliver(&cp, "msg_c", &create).await;
    let id = user_of(&cp, "user_di").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        let r = cp.post("/api/v1/keys", json!({"user_id": id})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = cp.post("/api/v1/bots", json!({"user_id": id})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let bot = r.json()["id"].as_str().unwrap().to_owned();

    let delete = user_deleted_event("user_di", T0 + 5_000);
    assert_eq!(deliver(&cp, "msg_d", &delete).await, "deactivated");
    let u = user_of(&cp, "user_di").await.unwrap();
    assert_eq!(u["status"], "deactivated");
    let keys = cp.get(&format!("/api/v1/keys?user_id={id}")).await.json();
    let keys = keys["items"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k["revoked_at"].is_i64()), "{keys:?}");
    let b = cp.get(&format!("/api/v1/bots/{bot}")).await.json();
    assert_eq!(b["desired"], "stopped", "{b}");
    assert_eq!(audit(&cp, "user.deactivate").await.len(), 1);
    assert_eq!(audit(&cp, "key.revoke").await.len(), 2);
    assert_eq!(audit(&cp, "bot.stop").await.len(), 1);
    assert!(audit(&cp, "user.deactivate").await[0]["actor"] == "clerk_webhook");

    // A stale update after the delete does nothing, nor does a newer one
    // (a deleted Clerk user is gone for good), nor the delete again.
    let stale = user_event("user.updated", "user_di", "di2@example.com", T0 + 1_000);
    assert_eq!(deliver(&cp, "msg_u", &stale).await, "stale");
    let later = user_event("user.updated", "user_di", "di3@example.com", T0 + 9_000);
    assert_eq!(deliver(&cp, "msg_u2", &later).await, "stale");
    let again = user_deleted_event("user_di", T0 + 6_000);
    assert_eq!(deliver(&cp, "msg_d2", &again).await, "deactivated");
    let u = user_of(&cp, "user_di").await.unwrap();
    assert_eq!(
        (u["email"].as_str(), u["status"].as_str()),
        (Some("di@example.com"), Some("deactivated"))
    );
    assert_eq!(audit(&cp, "user.deactivate").await.len(), 1);
    assert_eq!(audit(&cp, "key.revoke").await.len(), 2);
}

async fn a_user_an_operator_made_is_linked_by_email(db: TestDb) {
    let cp = start(db).await;
    let r = cp
        .post("/api/v1/users", json!({"email": "op@example.com"}))
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert!(r.json()["clerk_id"].is_null());
    let create = user_event("user.created", "user_op", "OP@example.com", T0);
    assert_eq!(deliver(&cp, "msg_1", &create).await, "linked");
    let u = user_of(&cp, "user_op").await.unwrap();
    assert_eq!(u["id"], json!(id));
    assert_eq!(audit(&cp, "user.link").await.len(), 1);
    // Another Clerk user with that email: a conflict, nothing recorded.
    let other = user_event("user.created", "user_op2", "op@example.com", T0);
    let body = other.to_string();
    let t = now_secs();
    let sig = sign_svix(CLERK_WHSEC, "msg_2", t, body.as_bytes());
    let r = post_raw(&cp.app, &svix_headers("msg_2", t, sig), &body).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert_eq!(users(&cp).await.len(), 1);
}

/// A control plane whose `[identity]` fetches the fake's JWKS (driven by
/// the test), with one Clerk user made by webhook.
async fn start_with_jwks(db: TestDb, fake: &FakeJwks) -> (Cp, JwksFetcher, String) {
    let base = fake.spawn().await.unwrap();
    let tail = format!(
        "{IDENTITY}jwks_url = \"{base}{JWKS_PATH}\"\nissuer = \"{ISS}\"\nauthorized_parties = [\"{APP}\"]\njwks_refresh = \"1m\"\n"
    );
    let settings = settings_with(&tail);
    let store = db.store.clone();
    let mut cp = Cp::start_with(db, &settings).await;
    let (_, fetcher) = cp
        .app
        .enable_identity(&store, settings.identity.as_ref().unwrap(), false)
        .unwrap();
    let event = user_event("user.created", "user_jw", "jw@example.com", T0);
    deliver(&cp, "msg_jw", &event).await;
    let user = user_of(&cp, "user_jw").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (cp, fetcher.expect("a fetcher for jwks_url"), user)
}

/// The `auth.jwks` of the snapshot being served.
async fn served_jwks(cp: &Cp) -> Value {
    let r = cp.config_after(0).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["auth"]["jwks"].clone()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn jwks_keys_and_users_reach_the_snapshot_and_rotation_is_picked_up(db: TestDb) {
    let fake = FakeJwks::new().unwrap();
    let (cp, fetcher, user) = start_with_jwks(db, &fake).await;
    // Before the first fetch: the section, with no key (nothing verifies).
    let jwks = served_jwks(&cp).await;
    assert_eq!(jwks["issuer"], ISS);
    assert!(kids(&jwks).is_empty());

    let fetched = fetcher.fetch().await.unwrap();
    assert!(fetched.changed);
    assert_eq!(fetched.max_age, Some(Duration::from_secs(60)));
    cp.app.service.refresh_snapshot().await;
    let jwks = served_jwks(&cp).await;
    assert_eq!(kids(&jwks), [fake.current_kid()]);
    assert_eq!(jwks["authorized_parties"], json!([APP]));
    assert_eq!(jwks["users"], json!({"user_jw": user}));
    let key = &jwks["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );

    // Rotation: the next fetch brings the new kid, beside the old one
    // while Clerk still publishes it, then alone.
    let old = fake.current_kid();
    let new = fake.rotate().unwrap();
    assert!(fetcher.fetch().await.unwrap().changed);
    cp.app.service.refresh_snapshot().await;
    assert_eq!(kids(&served_jwks(&cp).await), [old, new.clone()]);
    fake.retire_old_keys();
    assert!(fetcher.fetch().await.unwrap().changed);
    cp.app.service.refresh_snapshot().await;
    assert_eq!(kids(&served_jwks(&cp).await), [new]);
    // An unchanged set is not a change.
    assert!(!fetcher.fetch().await.unwrap().changed);

    // A deactivated user leaves the map.
    deliver(&cp, "msg_del", &user_deleted_event("user_jw", T0 + 1)).await;
    assert_eq!(served_jwks(&cp).await["users"], json!({}));
}

async fn the_jwks_endpoint_down_keeps_the_last_good_keys(db: TestDb) {
    let fake = FakeJwks::new().unwrap();
    let (cp, fetcher, _) = start_with_jwks(db, &fake).await;
    let good = fetcher.fetch().await;
    assert!(good.is_ok());
    // max-age 60 within a 1m refresh: refetch after 60s.
    assert_eq!(fetcher.next_fetch(&good, 0), Duration::from_secs(60));
    cp.app.service.refresh_snapshot().await;
    let before = served_jwks(&cp).await;
    let version = cp.app.service.publisher().current_version();

    fake.set_failing(true);
    fake.rotate().unwrap();
    let failed = fetcher.fetch().await;
    assert!(failed.is_err());
    // Retries back off from 1s, doubling, up to the refresh interval.
    assert_eq!(fetcher.next_fetch(&failed, 1), RETRY_FIRST);
    assert_eq!(fetcher.next_fetch(&failed, 3), RETRY_FIRST * 4);
    assert_eq!(fetcher.next_fetch(&failed, 30), Duration::from_secs(60));
    cp.app.service.refresh_snapshot().await;
    assert_eq!(served_jwks(&cp).await, before);
    assert_eq!(cp.app.service.publisher().current_version(), version);
    let metrics = cp.send("GET", "/metrics", None, None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("molt_cp_identity_jwks_fetch_failures_total 1"),
        "{text}"
    );
    assert!(text.contains("molt_cp_identity_jwks_keys 1"), "{text}");

    // Back up: the rotated set arrives. A longer max-age is capped by the
    // refresh interval.
    fake.set_failing(false);
    fake.set_max_age(Some(3600));
    let back = fetcher.fetch().await;
    assert!(back.as_ref().unwrap().changed);
    assert_eq!(fetcher.next_fetch(&back, 0), Duration::from_secs(60));
    cp.app.service.refresh_snapshot().await;
    assert_eq!(kids(&served_jwks(&cp).await).len(), 2);
    assert!(fake.fetches() >= 3);
}
