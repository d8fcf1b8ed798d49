//! Plans and limits through the real router: the limits document and
//! users' overrides reach the snapshot, invalid limits are refused with
//! their field paths and change nothing, and read-only operators cannot
//! write them.

use crate::harness::{Cp, TestDb};
use axum::body::Body;
use axum::http::StatusCode;
use serde_json::{json, Value};

crate::on_both_databases!(
    limits_reach_the_next_snapshot,
    invalid_limits_are_refused_and_nothing_is_stored,
    read_only_operators_cannot_set_limits,
);

async fn put_limits(cp: &Cp, body: Value) -> crate::harness::Resp {
    cp.admin("PUT", "/api/v1/limits", Some(body)).await
}

/// `v` without the fields it shows as `null` (absent and `null` are the
/// same limit: none).
fn no_nulls(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.retain(|_, f| !f.is_null());
        for f in m.values_mut() {
            *f = no_nulls(f.take());
        }
    } else if let Some(a) = v.as_array_mut() {
        for f in a.iter_mut() {
            *f = no_nulls(f.take());
        }
    }
    v
}

/// `GET /api/v1/limits`, without `null`s.
async fn get_limits(cp: &Cp) -> Value {
    no_nulls(cp.get("/api/v1/limits").await.json())
}

async fn audit_len(cp: &Cp) -> usize {
    cp.get("/api/v1/audit?limit=500").await.json()["items"]
        .as_array()
        .unwrap()
        .len()
}

async fn limits_reach_the_next_snapshot(db: TestDb) {
    let cp = Cp::start(db).await;
    let seed = cp.seed().await;
    assert_eq!(get_limits(&cp).await, json!({}));
    let v = cp.app.service.publisher().current_version();

    let doc = json!({
        "tokens_per_minute": 100000,
        "default_max_output_tokens": 512,
        "users": [{"user": seed.user_id, "requests_per_minute": 5, "tokens_per_day": 9000}],
        "models": [{"model": "mini", "tokens_per_minute": 2000}],
        "providers": [{"provider": "p1", "requests_per_minute": 600}],
        "anomaly": {"window": "30s", "block": true},
    });
    let r = put_limits(&cp, doc.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(get_limits(&cp).await, doc);

    let r = cp.config_after(v).await;
    assert_eq!(r.status, StatusCode::OK);
    let snap: molt_config::wire::RawSnapshot = serde_json::from_slice(&r.body).unwrap();
    assert!(snap.version > v);
    molt_controlplane::snapshot::validate(&snap).unwrap();
    assert_eq!(no_nulls(serde_json::to_value(&snap.limits).unwrap()), doc);

    // The audit entry carries the diff.
    let audit = cp.get("/api/v1/audit?limit=1").await.json();
    let entry = &audit["items"][0];
    assert_eq!(entry["action"], "limits.update");
    assert_eq!(entry["diff"]["tokens_per_minute"]["to"], 100000);
    assert_eq!(entry["diff"]["tokens_per_minute"]["from"], Value::Null);

    // A user's own overrides are layered over the document's entry.
    let r = cp
        .admin(
            "PATCH",
            &format!("/api/v1/users/{}", seed.user_id),
            Some(json!({"limits": {"tokens_per_day": 500}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = cp.config_after(snap.version).await;
    assert_eq!(r.status, StatusCode::OK);
    let next: Value = r.json();
    assert_eq!(
        no_nulls(next["limits"]["users"].clone()),
        json!([{"user": seed.user_id, "requests_per_minute": 5, "tokens_per_day": 500}])
    );

    // The data plane keeps its own Redis section when it merges a snapshot.
    let local: molt_config::wire::RawDataplaneConfig = serde_json::from_value(json!({
        "version": molt_config::wire::CONFIG_VERSION,
        "server": {"listen": "127.0.0.1:0"},
        "limits": {"redis": {"url": "redis://127.0.0.1:6379"}, "tokens_per_day": 1},
    }))
    .unwrap();
    let merged = local.with_snapshot(snap);
    assert_eq!(
        merged.limits.redis.map(|r| r.url).as_deref(),
        Some("redis://127.0.0.1:6379")
    );
    assert_eq!(merged.limits.tokens_per_minute, Some(100000));
    assert_eq!(merged.limits.tokens_per_day, None);
}

async fn invalid_limits_are_refused_and_nothing_is_stored(db: TestDb) {
    let cp = Cp::start(db).await;
    let seed = cp.seed().await;
    let r = put_limits(&cp, json!({"tokens_per_minute": 1000})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let audit_before = audit_len(&cp).await;
    let version = cp.app.service.publisher().current_version();

    let r = put_limits(
        &cp,
        json!({
            "tokens_per_day": 0,
            "users": [{"user": "a"}, {"user": "a"}],
            "models": [{"model": "nope", "tokens_per_minute": 1}],
            "providers": [{"provider": "p1"}],
            "anomaly": {"multiple": 0.5},
        }),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
    );
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    for path in [
        "limits.tokens_per_day:",
        "limits.users[1].user:",
        "limits.models[0].model:",
        "limits.providers[0]:",
        "limits.anomaly.multiple:",
    ] {
        assert!(message.contains(path), "{path} missing in {message}");
    }

    // Redis is each data plane's own.
    let r = put_limits(&cp, json!({"redis": {"url": "redis://127.0.0.1:6379"}})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limits.redis"));
    // Unknown fields and wrong types never reach the service.
    let r = put_limits(&cp, json!({"tokens_per_hour": 5})).await;
    assert!(r.status.is_client_error(), "{:?}", r.status);
    let r = put_limits(&cp, json!({"tokens_per_minute": -1})).await;
    assert!(r.status.is_client_error(), "{:?}", r.status);
    // A user's overrides go through the same validation.
    let r = cp
        .admin(
            "PATCH",
            &format!("/api/v1/users/{}", seed.user_id),
            Some(json!({"limits": {"tokens_per_day": 0}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens_per_day"));

    assert_eq!(get_limits(&cp).await, json!({"tokens_per_minute": 1000}));
    assert_eq!(
        cp.get(&format!("/api/v1/users/{}", seed.user_id))
            .await
            .json()["limits"],
        json!({})
    );
    assert_eq!(audit_len(&cp).await, audit_before);
    assert_eq!(cp.app.service.publisher().current_version(), version);
}

async fn read_only_operators_cannot_set_limits(db: TestDb) {
    let cp = Cp::start(db).await;
    let secret = cp.read_only_token().await;
    let audit_before = audit_len(&cp).await;

    let r = cp.send("GET", "/api/v1/limits", Some(&secret), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = cp
        .send(
            "PUT",
            "/api/v1/limits",
            Some(&secret),
            Some(Body::from(json!({"tokens_per_minute": 5}).to_string())),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = cp
        .send(
            "PUT",
            "/api/v1/limits",
            None,
            Some(Body::from(json!({"tokens_per_minute": 5}).to_string())),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get_limits(&cp).await, json!({}));
    assert_eq!(audit_len(&cp).await, audit_before);
}
