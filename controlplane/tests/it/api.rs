//! API tests through the real router: config snapshots follow changes,
//! the long-poll, ingest idempotency, auth and roles, bad input with no
//! partial writes, and master keys never leaving through `/api/v1`.

use crate::harness::{event, Cp, TestDb, DATAPLANE, JWT_SECRET, MASTER_KEY};
use axum::body::Body;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

crate::on_both_databases!(
    snapshot_contains_what_was_created_and_drops_revoked_keys,
    long_poll_answers_at_once_when_newer_and_304_after_the_hold,
    ingest_is_idempotent_and_usage_is_priced,
    bad_input_gets_clear_errors_and_changes_nothing,
    roles_and_tokens_are_enforced,
    master_keys_never_appear_in_api_responses,
    client_jwts_match_the_data_plane_format,
    lists_paginate_and_mutations_are_audited,
    version_survives_restart,
);

async fn snapshot(cp: &Cp, after: u64) -> Value {
    let r = cp.config_after(after).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()
}

async fn snapshot_contains_what_was_created_and_drops_revoked_keys(db: TestDb) {
    let cp = Cp::start(db).await;
    let seed = cp.seed().await;
    let snap = snapshot(&cp, 0).await;
    // The data plane's own type parses it and its validation accepts it.
    let raw: molt_config::wire::RawSnapshot = serde_json::from_value(snap.clone()).unwrap();
    molt_controlplane::snapshot::validate(&raw).unwrap();
    assert_eq!(raw.keys.len(), 1);
    assert_eq!(raw.keys[0].sha256, molt_config::hash_api_key(&seed.secret));
    assert_eq!(raw.keys[0].user, seed.user_id);
    assert_eq!(
        raw.keys[0].models.as_deref(),
        Some(&["mini".to_owned()][..])
    );
    assert_eq!(raw.providers[0].keys, vec![MASTER_KEY.to_owned()]);
    assert_eq!(raw.models[0].name, "m1");
    assert_eq!(
        raw.auth.jwt.as_ref().unwrap().secret.as_deref(),
        Some(JWT_SECRET)
    );

    let r = cp
        .post(&format!("/api/v1/keys/{}/revoke", seed.key_id), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let next = snapshot(&cp, raw.version).await;
    assert!(next["version"].as_u64().unwrap() > raw.version);
    assert_eq!(next["keys"], json!([]));

    // A suspended user's keys leave the snapshot too.
    let k2 = cp
        .post("/api/v1/keys", json!({"user_id": seed.user_id}))
        .await
        .json();
    let v = cp.app.service.publisher().current_version();
    assert_eq!(snapshot(&cp, v - 1).await["keys"][0]["id"], k2["key"]["id"]);
    let r = cp
        .admin(
            "PATCH",
            &format!("/api/v1/users/{}", seed.user_id),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(snapshot(&cp, v).await["keys"], json!([]));

    // Expired keys are never published.
    cp.admin(
        "PATCH",
        &format!("/api/v1/users/{}", seed.user_id),
        Some(json!({"status": "active"})),
    )
    .await;
    let past = cp
        .post(
            "/api/v1/keys",
            json!({"user_id": seed.user_id, "expires_at": 1}),
        )
        .await;
    assert_eq!(past.status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn long_poll_answers_at_once_when_newer_and_304_after_the_hold(db: TestDb) {
    let cp = std::sync::Arc::new(Cp::start(db).await);
    let v = cp.app.service.publisher().current_version();
    assert!(v >= 1, "a version is published at start");
    // Newer than `after`: answered at once.
    let t = tokio::time::Instant::now();
    assert_eq!(snapshot(&cp, v - 1).await["version"], json!(v));
    assert!(t.elapsed() < Duration::from_millis(250));
    // Nothing newer: held, then 304 with no body.
    let t = tokio::time::Instant::now();
    let r = cp.config_after(v).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(300));
    // A change while a poll is held wakes it with the new version.
    let poll = tokio::spawn({
        let cp = cp.clone();
        async move { cp.config_after(v).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    cp.post(
        "/api/v1/providers",
        json!({"name":"p2","kind":"anthropic","base_url":"https://api.anthropic.com","keys":["k"]}),
    )
    .await;
    let r = poll.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["version"].as_u64().unwrap() > v);
    // Wrong or missing data-plane token.
    let r = cp
        .send("GET", "/internal/v1/config?after=0", Some("nope"), None)
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let r = cp.send("GET", "/internal/v1/config", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn ingest_is_idempotent_and_usage_is_priced(db: TestDb) {
    let cp = Cp::start(db).await;
    let seed = cp.seed().await;
    let batch = json!({"events": [
        event("e1", &seed.user_id, "m1", 1_000_000, 0),
        event("e2", &seed.user_id, "m1", 0, 500_000),
    ]});
    let r = cp.ingest(batch.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({"accepted": 2, "duplicates": 0}));
    let r = cp.ingest(batch).await;
    assert_eq!(r.json(), json!({"accepted": 0, "duplicates": 2}));

    let report = cp
        .get(&format!("/api/v1/usage?user_id={}", seed.user_id))
        .await
        .json();
    assert_eq!(report["rows"].as_array().unwrap().len(), 1);
    assert_eq!(report["totals"]["requests"], json!(2));
    // 1M input at $2 + 0.5M output at $10.
    assert_eq!(report["totals"]["cost_usd"], "7.00");
    assert_eq!(report["totals"]["billed_usd"], "7.00");
    assert_eq!(report["totals"]["unpriced_events"], 0);

    // A bad event anywhere in the batch: 400 and nothing stored.
    let mut bad = event("e3", &seed.user_id, "m1", 1, 1);
    bad["input_tokens"] = json!("lots");
    let r = cp
        .ingest(json!({"events": [event("e4", &seed.user_id, "m1", 1, 1), bad]}))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let r = cp
        .ingest(json!({"events": [event("", "u", "m1", 1, 1)]}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let report = cp.get("/api/v1/usage").await.json();
    assert_eq!(report["totals"]["requests"], json!(2));
    // Oversized batch: 413.
    let big: Vec<Value> = (0..400)
        .map(|i| event(&format!("big{i}"), &seed.user_id, "m1", 1, 1))
        .collect();
    let r = cp.ingest(json!({ "events": big })).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let r = cp
        .send(
            "POST",
            "/internal/v1/usage",
            Some("wrong"),
            Some(Body::from("{}")),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn bad_input_gets_clear_errors_and_changes_nothing(db: TestDb) {
    let cp = Cp::start(db).await;
    let seed = cp.seed().await;
    let audit_before = cp.get("/api/v1/audit?limit=500").await.json()["items"]
        .as_array()
        .unwrap()
        .len();
    let version = cp.app.service.publisher().current_version();

    let cases: Vec<(&str, &str, Value, StatusCode, &str)> = vec![
        (
            "POST",
            "/api/v1/users",
            json!({"email": "ADA@example.com"}),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "POST",
            "/api/v1/users",
            json!({"email": "nope"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/users",
            json!({"email": "x@y.io", "role": "x"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PATCH",
            "/api/v1/users/usr_missing",
            json!({"plan": "pro"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/keys",
            json!({"user_id": "usr_missing"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/keys",
            json!({"user_id": seed.user_id, "models": ["gpt-9"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/keys/key_missing/revoke",
            json!({}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/models",
            json!({"name": "m2", "provider": "nope"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/models",
            json!({"name": "m2", "provider": "p1", "fallbacks": ["ghost"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/models",
            json!({"name": "m2", "provider": "p1", "aliases": ["mini"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/models",
            json!({"name": "m1", "provider": "p1"}),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "POST",
            "/api/v1/models",
            json!({"name": "m2", "provider": "p1", "price": {"input": "-1", "output": "1"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/providers",
            json!({"name": "p9", "kind": "openai", "base_url": "ftp://x", "keys": ["k"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/providers",
            json!({"name": "p9", "kind": "openai", "base_url": "http://x", "keys": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "POST",
            "/api/v1/providers",
            json!({"name": "p9", "kind": "gemini", "base_url": "http://x", "keys": ["k"]}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/providers",
            json!({"name": "p1", "kind": "openai", "base_url": "http://x", "keys": ["k"]}),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "DELETE",
            "/api/v1/models/m1",
            json!(null),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "GET",
            "/api/v1/models/ghost",
            json!(null),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "GET",
            "/api/v1/users?limit=0",
            json!(null),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/usage?from=yesterday",
            json!(null),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/auth/token",
            json!({"user_id": "usr_missing"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let body = (!body.is_null()).then_some(body);
        let r = cp.admin(method, path, body).await;
        assert_eq!(
            (r.status, r.code()),
            (status, code.to_owned()),
            "{method} {path}: {:?}",
            r.body
        );
    }
    // Malformed JSON and an oversized body.
    let r = cp
        .send(
            "POST",
            "/api/v1/users",
            Some(crate::harness::ADMIN),
            Some(Body::from("{")),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let big = json!({"email": format!("{}@x.io", "a".repeat(70_000))});
    let r = cp.post("/api/v1/users", big).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    // Nothing was written: no new audit entries, rows or versions.
    let audit_after = cp.get("/api/v1/audit?limit=500").await.json()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(audit_after, audit_before);
    assert_eq!(
        cp.get("/api/v1/users").await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cp.get("/api/v1/models").await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cp.get("/api/v1/providers").await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(cp.app.service.publisher().current_version(), version);
}

async fn roles_and_tokens_are_enforced(db: TestDb) {
    let cp = Cp::start(db).await;
    let r = cp.send("GET", "/api/v1/users", None, None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let r = cp.send("GET", "/api/v1/users", Some(DATAPLANE), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let ro = cp
        .post(
            "/api/v1/admin-tokens",
            json!({"name": "viewer", "role": "read_only"}),
        )
        .await;
    assert_eq!(ro.status, StatusCode::CREATED);
    let ro = ro.json();
    let ro_secret = ro["secret"].as_str().unwrap().to_owned();
    let r = cp
        .send("GET", "/api/v1/users", Some(&ro_secret), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = cp
        .send(
            "POST",
            "/api/v1/users",
            Some(&ro_secret),
            Some(Body::from(json!({"email": "x@y.io"}).to_string())),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert_eq!(cp.get("/api/v1/users").await.json()["items"], json!([]));

    // A stored admin token works, is audited as itself, and stops at revoke.
    let adm = cp
        .post(
            "/api/v1/admin-tokens",
            json!({"name": "ops", "role": "admin"}),
        )
        .await
        .json();
    let adm_secret = adm["secret"].as_str().unwrap().to_owned();
    let r = cp
        .send(
            "POST",
            "/api/v1/users",
            Some(&adm_secret),
            Some(Body::from(json!({"email": "x@y.io"}).to_string())),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let audit = cp.get("/api/v1/audit?limit=1").await.json();
    assert_eq!(
        audit["items"][0]["actor"],
        json!(format!(
            "admin_token:{}",
            adm["token"]["id"].as_str().unwrap()
        ))
    );
    let r = cp
        .post(
            &format!(
                "/api/v1/admin-tokens/{}/revoke",
                adm["token"]["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = cp
        .send("GET", "/api/v1/users", Some(&adm_secret), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Token secrets are stored hashed: listings never show them.
    let list = cp.get("/api/v1/admin-tokens").await;
    let text = String::from_utf8_lossy(&list.body);
    assert!(!text.contains(&ro_secret) && !text.contains(&adm_secret));
}

async fn master_keys_never_appear_in_api_responses(db: TestDb) {
    let cp = Cp::start(db).await;
    let seed = cp.seed().await;
    let mut bodies = Vec::new();
    let rotate = cp
        .admin(
            "PATCH",
            "/api/v1/providers/p1",
            Some(json!({"keys": [MASTER_KEY, "sk-SECOND-master-9a8b"]})),
        )
        .await;
    assert_eq!(rotate.status, StatusCode::OK);
    assert_eq!(rotate.json()["key_count"], json!(2));
    bodies.push(rotate.body);
    let create = cp
        .post(
            "/api/v1/providers",
            json!({"name":"p2","kind":"venice","base_url":"https://api.venice.ai","keys":[MASTER_KEY]}),
        )
        .await;
    bodies.push(create.body);
    for path in [
        "/api/v1/providers",
        "/api/v1/providers/p1",
        "/api/v1/providers/p2",
        "/api/v1/models",
        "/api/v1/audit?limit=500",
        "/api/v1/keys",
        "/api/v1/users",
        "/api/v1/openapi.json",
        "/metrics",
    ] {
        let r = cp.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        bodies.push(r.body);
    }
    bodies.push(cp.get(&format!("/api/v1/keys/{}", seed.key_id)).await.body);
    for body in &bodies {
        for secret in [
            MASTER_KEY,
            "sk-SECOND-master-9a8b",
            JWT_SECRET,
            seed.secret.as_str(),
        ] {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret leaked: {}",
                String::from_utf8_lossy(body)
            );
        }
    }
    // ... while data planes do get them.
    let snap = snapshot(&cp, 0).await;
    let p1 = snap["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p1")
        .unwrap();
    assert_eq!(p1["keys"], json!([MASTER_KEY, "sk-SECOND-master-9a8b"]));
}

async fn client_jwts_match_the_data_plane_format(db: TestDb) {
    let cp = Cp::start(db).await;
    let seed = cp.seed().await;
    let r = cp
        .post(
            "/api/v1/auth/token",
            json!({"user_id": seed.user_id, "ttl_seconds": 60, "models": ["mini"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_issuer(&["molt-test"]);
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    let data = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &v,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], json!(seed.user_id));
    assert_eq!(data.claims["models"], json!(["mini"]));
    let r = cp
        .post(
            "/api/v1/auth/token",
            json!({"user_id": seed.user_id, "models": ["ghost"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = cp
        .post(
            "/api/v1/auth/token",
            json!({"user_id": seed.user_id, "ttl_seconds": 999_999}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    cp.admin(
        "PATCH",
        &format!("/api/v1/users/{}", seed.user_id),
        Some(json!({"status": "past_due"})),
    )
    .await;
    let r = cp
        .post("/api/v1/auth/token", json!({"user_id": seed.user_id}))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
}

async fn lists_paginate_and_mutations_are_audited(db: TestDb) {
    let cp = Cp::start(db).await;
    for i in 0..5 {
        let r = cp
            .post("/api/v1/users", json!({"email": format!("u{i}@x.io")}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = cp
            .get(&format!("/api/v1/users?limit=2&cursor={cursor}"))
            .await
            .json();
        for u in page["items"].as_array().unwrap() {
            seen.push(u["email"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["u0@x.io", "u1@x.io", "u2@x.io", "u3@x.io", "u4@x.io"]
    );

    let id = cp.get("/api/v1/users?limit=1").await.json()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = cp.post("/api/v1/plans", json!({"name": "pro"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = cp
        .admin(
            "PATCH",
            &format!("/api/v1/users/{id}"),
            Some(json!({"plan": "pro"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let audit = cp.get("/api/v1/audit?limit=1").await.json();
    let e = &audit["items"][0];
    assert_eq!(e["action"], json!("user.update"));
    assert_eq!(e["actor"], json!("bootstrap"));
    assert_eq!(e["target"], json!(id));
    assert_eq!(e["diff"]["plan"], json!({"from": null, "to": "pro"}));
    assert_eq!(
        cp.get("/api/v1/audit?limit=500").await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    let doc = cp.get("/api/v1/openapi.json").await.json();
    assert!(doc["paths"]["/api/v1/users/{id}"]["patch"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}

async fn version_survives_restart(db: TestDb) {
    let cp = Cp::start(db).await;
    cp.seed().await;
    let before = cp.app.service.publisher().current_version();
    let Cp { app, db } = cp;
    drop(app);
    let cp = Cp::start(db).await;
    let after = cp.app.service.publisher().current_version();
    assert!(after > before, "{after} > {before}");
    let snap = snapshot(&cp, before).await;
    assert_eq!(snap["keys"].as_array().unwrap().len(), 1);
}
