//! Plans through the real router: the resource (create, list, get, update,
//! delete, audit), bad input refused with its field and nothing stored,
//! read-only operators kept out, users naming only existing plans, and a
//! plan's limits reaching its users' snapshot entries under their own
//! overrides.

use crate::harness::{Cp, TestDb};
use axum::body::Body;
use axum::http::StatusCode;
use serde_json::{json, Value};

crate::on_both_databases!(
    plans_are_created_listed_updated_and_deleted_with_audit,
    bad_plans_are_refused_and_nothing_is_stored,
    users_must_name_an_existing_plan,
    read_only_operators_cannot_write_plans,
    plan_limits_reach_their_users_under_their_overrides,
);

async fn create_plan(cp: &Cp, body: Value) -> Value {
    let r = cp.post("/api/v1/plans", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.json()
}

async fn audit(cp: &Cp) -> Vec<Value> {
    cp.get("/api/v1/audit?limit=500").await.json()["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// The snapshot after `version`, as JSON.
async fn snapshot_after(cp: &Cp, version: u64) -> Value {
    let r = cp.config_after(version).await;
    assert_eq!(r.status, StatusCode::OK, "no snapshot after {version}");
    r.json()
}

/// The snapshot's `limits.users` entry of `user`, if any.
fn user_entry(snap: &Value, user: &str) -> Option<Value> {
    snap["limits"]["users"]
        .as_array()
        .and_then(|users| users.iter().find(|u| u["user"] == user).cloned())
}

async fn plans_are_created_listed_updated_and_deleted_with_audit(db: TestDb) {
    let cp = Cp::start(db).await;
    let pro = create_plan(
        &cp,
        json!({"name": "pro", "description": "Pro", "limits": {"requests_per_minute": 60}}),
    )
    .await;
    assert_eq!(pro["name"], "pro");
    assert_eq!(pro["limits"], json!({"requests_per_minute": 60}));
    assert!(pro["id"].as_str().unwrap().starts_with("pln_"));
    let free = create_plan(&cp, json!({"name": "free"})).await;
    assert_eq!(
        (&free["description"], &free["limits"]),
        (&json!(""), &json!({}))
    );

    // By id and by name.
    let id = pro["id"].as_str().unwrap();
    assert_eq!(cp.get(&format!("/api/v1/plans/{id}")).await.json(), pro);
    assert_eq!(cp.get("/api/v1/plans/pro").await.json(), pro);
    let r = cp.get("/api/v1/plans/nope").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // Paginated like every list: creation order, a cursor while more remain.
    let page = cp.get("/api/v1/plans?limit=1").await.json();
    assert_eq!(page["items"], json!([pro]));
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let page = cp
        .get(&format!("/api/v1/plans?limit=1&cursor={cursor}"))
        .await
        .json();
    assert_eq!(page["items"], json!([free]));
    assert_eq!(page["next_cursor"], Value::Null);

    // PATCH: absent fields stay; `limits` replaces the whole set.
    let r = cp
        .admin(
            "PATCH",
            "/api/v1/plans/pro",
            Some(json!({"limits": {"tokens_per_day": 1000, "concurrent_streams": 2}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let updated = r.json();
    assert_eq!(updated["description"], "Pro");
    assert_eq!(
        updated["limits"],
        json!({"tokens_per_day": 1000, "concurrent_streams": 2})
    );
    assert_eq!(cp.get("/api/v1/plans/pro").await.json(), updated);

    let r = cp.admin("DELETE", "/api/v1/plans/free", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        cp.get("/api/v1/plans/free").await.status,
        StatusCode::NOT_FOUND
    );

    // Each write has its audit entry with the diff, newest first.
    let entries = audit(&cp).await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["plan.delete", "plan.update", "plan.create", "plan.create"]
    );
    assert_eq!(entries[0]["target"], free["id"]);
    assert_eq!(
        entries[0]["diff"]["name"],
        json!({"from": "free", "to": null})
    );
    assert_eq!(entries[1]["target"], pro["id"]);
    assert_eq!(
        entries[1]["diff"]["limits"],
        json!({"from": {"requests_per_minute": 60},
               "to": {"tokens_per_day": 1000, "concurrent_streams": 2}})
    );
    assert!(entries[1]["diff"].get("description").is_none());
    assert_eq!(
        entries[3]["diff"]["name"],
        json!({"from": null, "to": "pro"})
    );
}

async fn bad_plans_are_refused_and_nothing_is_stored(db: TestDb) {
    let cp = Cp::start(db).await;
    create_plan(
        &cp,
        json!({"name": "pro", "limits": {"requests_per_minute": 5}}),
    )
    .await;
    let audit_before = audit(&cp).await.len();

    let r = cp.post("/api/v1/plans", json!({"name": "pro"})).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    assert!(r.message().contains("\"pro\""));

    for bad in ["Pro", "pro plan", "-x", "pro_1", ""] {
        let r = cp.post("/api/v1/plans", json!({"name": bad})).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            "{bad:?}"
        );
        assert!(r.message().starts_with("name:"));
    }

    // Zero is an error, named by its field path, as in the data plane's file.
    let r = cp
        .post(
            "/api/v1/plans",
            json!({"name": "zero", "limits": {"requests_per_minute": 0, "tokens_per_day": 0}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    let message = r.message();
    assert!(message.contains("limits.requests_per_minute:"), "{message}");
    assert!(message.contains("limits.tokens_per_day:"), "{message}");
    let r = cp
        .admin(
            "PATCH",
            "/api/v1/plans/pro",
            Some(json!({"limits": {"concurrent_streams": 0}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert!(r.message().contains("limits.concurrent_streams:"));

    // Shape errors never reach the service: unknown limit, negative, renaming.
    for body in [
        json!({"name": "x", "limits": {"requests_per_hour": 5}}),
        json!({"name": "x", "limits": {"requests_per_minute": -1}}),
        json!({"name": "x", "plan": "y"}),
    ] {
        let r = cp.post("/api/v1/plans", body.clone()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{body}"
        );
    }
    let r = cp
        .admin("PATCH", "/api/v1/plans/pro", Some(json!({"name": "other"})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let r = cp
        .admin(
            "PATCH",
            "/api/v1/plans/nope",
            Some(json!({"description": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    assert_eq!(
        cp.get("/api/v1/plans/pro").await.json()["limits"],
        json!({"requests_per_minute": 5})
    );
    assert_eq!(
        cp.get("/api/v1/plans").await.json()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(audit(&cp).await.len(), audit_before);
}

async fn users_must_name_an_existing_plan(db: TestDb) {
    let cp = Cp::start(db).await;
    let seed = cp.seed().await;
    create_plan(&cp, json!({"name": "pro"})).await;
    let audit_before = audit(&cp).await.len();
    let users_before = cp.get("/api/v1/users").await.json()["items"].clone();
    let version = cp.app.service.publisher().current_version();

    let r = cp
        .post(
            "/api/v1/users",
            json!({"email": "new@example.com", "plan": "gold"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
    );
    let message = r.message();
    assert!(
        message.starts_with("plan:") && message.contains("\"gold\""),
        "{message}"
    );
    // A plan's id is not its name: users refer to plans by name.
    let pro_id = cp.get("/api/v1/plans/pro").await.json()["id"].clone();
    let r = cp
        .post(
            "/api/v1/users",
            json!({"email": "new@example.com", "plan": pro_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    // No partial write: the rest of an update with a bad plan is not applied.
    let r = cp
        .admin(
            "PATCH",
            &format!("/api/v1/users/{}", seed.user_id),
            Some(json!({"email": "changed@example.com", "plan": "gold", "limits": {"tokens_per_day": 5}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert!(r.message().starts_with("plan:"));

    assert_eq!(cp.get("/api/v1/users").await.json()["items"], users_before);
    assert_eq!(audit(&cp).await.len(), audit_before);
    assert_eq!(cp.app.service.publisher().current_version(), version);

    // An existing plan is accepted, and `null` takes the user off it.
    let r = cp
        .post(
            "/api/v1/users",
            json!({"email": "new@example.com", "plan": "pro"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["plan"], "pro");
    let path = format!("/api/v1/users/{}", seed.user_id);
    let r = cp.admin("PATCH", &path, Some(json!({"plan": "pro"}))).await;
    assert_eq!(
        (r.status, r.json()["plan"].clone()),
        (StatusCode::OK, json!("pro"))
    );

    // A plan with users on it cannot be deleted; the error says why.
    let r = cp.admin("DELETE", "/api/v1/plans/pro", None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    let message = r.message();
    assert!(message.contains("in use by 2 user"), "{message}");
    assert_eq!(cp.get("/api/v1/plans/pro").await.status, StatusCode::OK);

    let r = cp.admin("PATCH", &path, Some(json!({"plan": null}))).await;
    assert_eq!(
        (r.status, r.json()["plan"].clone()),
        (StatusCode::OK, Value::Null)
    );
}

async fn read_only_operators_cannot_write_plans(db: TestDb) {
    let cp = Cp::start(db).await;
    create_plan(&cp, json!({"name": "pro"})).await;
    let secret = cp.read_only_token().await;
    let audit_before = audit(&cp).await.len();

    for path in ["/api/v1/plans", "/api/v1/plans/pro"] {
        let r = cp.send("GET", path, Some(&secret), None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    let writes = [
        ("POST", "/api/v1/plans", Some(json!({"name": "free"}))),
        (
            "PATCH",
            "/api/v1/plans/pro",
            Some(json!({"description": "x"})),
        ),
        ("DELETE", "/api/v1/plans/pro", None),
    ];
    for (method, path, body) in writes {
        let body = body.map(|b| Body::from(b.to_string()));
        let r = cp.send(method, path, Some(&secret), body).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {path}"
        );
    }
    let r = cp.send("GET", "/api/v1/plans", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let plans = cp.get("/api/v1/plans").await.json()["items"].clone();
    assert_eq!(plans.as_array().unwrap().len(), 1);
    assert_eq!(plans[0]["description"], "");
    assert_eq!(audit(&cp).await.len(), audit_before);
}

async fn plan_limits_reach_their_users_under_their_overrides(db: TestDb) {
    let cp = Cp::start(db).await;
    let seed = cp.seed().await;
    // Deployment defaults, and an operator's per-user line in the document.
    let other = cp
        .post("/api/v1/users", json!({"email": "bo@example.com"}))
        .await
        .json();
    let other = other["id"].as_str().unwrap().to_owned();
    let r = cp
        .admin(
            "PUT",
            "/api/v1/limits",
            Some(json!({"requests_per_minute": 100, "tokens_per_day": 50000,
                "users": [{"user": other, "concurrent_streams": 3}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    create_plan(
        &cp,
        json!({"name": "starter", "limits": {"requests_per_minute": 2, "tokens_per_minute": 4000}}),
    )
    .await;
    let v = cp.app.service.publisher().current_version();

    // On the plan, with one override of their own: the override wins for
    // its field, the plan gives the rest.
    let path = format!("/api/v1/users/{}", seed.user_id);
    let r = cp
        .admin(
            "PATCH",
            &path,
            Some(json!({"plan": "starter", "limits": {"tokens_per_minute": 9000, "monthly_token_budget": 1000000}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let snap = snapshot_after(&cp, v).await;
    assert_eq!(
        user_entry(&snap, &seed.user_id),
        Some(
            json!({"user": seed.user_id, "requests_per_minute": 2, "tokens_per_minute": 9000,
            "monthly_token_budget": 1000000})
        )
    );
    // The data plane merges the entry over the defaults: what it enforces.
    let wire: molt_config::wire::RawSnapshot = serde_json::from_value(snap.clone()).unwrap();
    molt_controlplane::snapshot::validate(&wire).unwrap();
    let mut errs = molt_config::ConfigErrors::default();
    let enforced =
        molt_config::limits::LimitsConfig::from_wire(&wire.limits, None, None, &mut errs);
    assert!(errs.is_empty(), "{errs:?}");
    let u = enforced.user_limits(&seed.user_id);
    assert_eq!(
        (u.requests_per_minute, u.tokens_per_minute, u.tokens_per_day),
        (Some(2), Some(9000), Some(50000))
    );

    // A user on the plan with a line in the document: plan, then the line.
    let r = cp
        .admin(
            "PATCH",
            &format!("/api/v1/users/{other}"),
            Some(json!({"plan": "starter"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let v = cp.app.service.publisher().current_version();
    // Changing the plan reaches every user on it with the next snapshot.
    let r = cp
        .admin(
            "PATCH",
            "/api/v1/plans/starter",
            Some(json!({"limits": {"requests_per_minute": 50}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let snap = snapshot_after(&cp, v).await;
    assert!(snap["version"].as_u64().unwrap() > v);
    assert_eq!(
        user_entry(&snap, &seed.user_id),
        Some(
            json!({"user": seed.user_id, "requests_per_minute": 50, "tokens_per_minute": 9000,
            "monthly_token_budget": 1000000})
        )
    );
    assert_eq!(
        user_entry(&snap, &other),
        Some(json!({"user": other, "requests_per_minute": 50, "concurrent_streams": 3}))
    );

    // Off the plan and without overrides: no entry, the deployment defaults.
    let v = snap["version"].as_u64().unwrap();
    let r = cp
        .admin("PATCH", &path, Some(json!({"plan": null, "limits": {}})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let snap = snapshot_after(&cp, v).await;
    assert_eq!(user_entry(&snap, &seed.user_id), None);
}
