//! Money, through the real router on both databases: price versions (a
//! change never alters a stored cost), the cost of an event fixed at ingest
//! per token class (a worked example), unpriced events flagged, a plan's
//! markup, and dollar-budget thresholds recorded once per month.

use crate::harness::{event, Cp, Seed, TestDb};
use axum::http::StatusCode;
use serde_json::{json, Value};

crate::on_both_databases!(
    a_price_change_never_alters_stored_costs,
    cost_is_fixed_at_ingest_per_class,
    unpriced_events_are_flagged_not_costed_at_zero,
    a_plans_markup_is_billed_apart_from_the_cost,
    budget_thresholds_are_recorded_once_per_month,
);

fn now_ms() -> u64 {
    molt_controlplane::domain::now_ms() as u64
}

/// `event` at `at_ms` with token `classes`.
fn event_at(id: &str, user: &str, at_ms: u64, tokens: (u64, u64), classes: Value) -> Value {
    let mut e = event(id, user, "m1", tokens.0, tokens.1);
    e["timestamp_ms"] = json!(at_ms);
    e["classes"] = classes;
    e
}

async fn ingest(cp: &Cp, events: Vec<Value>) {
    let r = cp.ingest(json!({ "events": events })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

async fn report(cp: &Cp, query: &str) -> Value {
    let r = cp.get(&format!("/api/v1/usage?{query}")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()
}

async fn put_price(cp: &Cp, model: &str, body: Value) -> crate::harness::Resp {
    cp.admin("PUT", &format!("/api/v1/models/{model}/price"), Some(body))
        .await
}

async fn metrics(cp: &Cp) -> String {
    String::from_utf8_lossy(&cp.get("/metrics").await.body).into_owned()
}

async fn a_price_change_never_alters_stored_costs(db: TestDb) {
    let cp = Cp::start(db).await;
    let Seed { user_id, .. } = cp.seed().await;
    let t0 = now_ms() - 60_000;
    // 1M input at $2 + 0.5M output at $10: $7.
    ingest(
        &cp,
        vec![event_at("a", &user_id, t0, (1_000_000, 500_000), json!({}))],
    )
    .await;
    assert_eq!(report(&cp, "").await["totals"]["cost_usd"], "7.00");

    // Prices go up; the version in force now is the new one.
    let r = put_price(&cp, "m1", json!({"price": {"input": "4", "output": "20"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let v2 = r.json();
    assert!(v2["effective_from"].as_u64().unwrap() >= t0);
    let m = cp.get("/api/v1/models/m1").await.json();
    assert_eq!(m["price"]["id"], v2["id"], "{m}");
    assert_eq!(
        m["price"]["price"],
        json!({"input": "4.00", "output": "20.00"})
    );
    // The data planes get the price in force for budgets.
    let snap = cp.config_after(0).await.json();
    assert_eq!(snap["models"][0]["price"]["input"], "4.00", "{snap}");

    // The stored cost is what it was; a new event costs the new price,
    // and a late event from before the change the old one.
    let t1 = now_ms() + 1;
    ingest(
        &cp,
        vec![
            event_at("b", &user_id, t1, (1_000_000, 500_000), json!({})),
            event_at("late", &user_id, t0 + 1, (1_000_000, 0), json!({})),
        ],
    )
    .await;
    let totals = &report(&cp, "").await["totals"];
    assert_eq!(totals["cost_usd"], "23.00", "{totals}"); // 7 + 14 + 2

    // History: both versions, oldest first; the first from the beginning.
    let h = cp.get("/api/v1/models/m1/prices").await.json();
    assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
    assert_eq!(h[0]["effective_from"], 0);
    assert_eq!(h[0]["price"]["input"], "2.00");
    assert_eq!(h[1]["id"], v2["id"]);

    // The past is not repriced; a bad price names its field.
    let r = put_price(
        &cp,
        "m1",
        json!({"price": {"input": "1", "output": "1"}, "effective_from": t0}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    let r = put_price(
        &cp,
        "m1",
        json!({"price": {"input": "0.0000001", "output": "1"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("price.input"));
    // A later version scheduled ahead does not apply yet.
    let r = put_price(
        &cp,
        "m1",
        json!({"price": {"input": "9", "output": "9"}, "effective_from": now_ms() + 3_600_000}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let m = cp.get("/api/v1/models/m1").await.json();
    assert_eq!(m["price"]["id"], v2["id"]);
    // Every version is audited.
    let audit = cp.get("/api/v1/audit").await.json();
    let prices = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "model.price")
        .count();
    assert_eq!(prices, 3, "{audit}");
}

async fn cost_is_fixed_at_ingest_per_class(db: TestDb) {
    let cp = Cp::start(db).await;
    let Seed { user_id, .. } = cp.seed().await;
    // Anthropic-like prices, USD per 1M: reasoning has no price of its own
    // (so the output price).
    let r = put_price(
        &cp,
        "m1",
        json!({"price": {"input": "3", "cache_read_input": "0.30",
            "cache_write_5m_input": "3.75", "cache_write_1h_input": "6", "output": "15"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // 10,000 input: 6,000 cache reads, 2,000 5-minute and 1,000 1-hour
    // cache writes, 1,000 plain; 2,000 output of which 500 reasoning.
    let classes = json!({"cache_read_input": 6000, "cache_write_5m_input": 2000,
        "cache_write_1h_input": 1000, "reasoning_output": 500});
    ingest(
        &cp,
        vec![event_at(
            "c",
            &user_id,
            now_ms() + 5,
            (10_000, 2_000),
            classes,
        )],
    )
    .await;
    let t = &report(&cp, "").await["totals"];
    // 1000×3 + 6000×0.30 + 2000×3.75 + 1000×6 + 1500×15 + 500×15 µ$
    // = 3000 + 1800 + 7500 + 6000 + 22500 + 7500 = 48300 µ$.
    assert_eq!(t["cost_usd"], "0.0483", "{t}");
    assert_eq!(
        t["cost_by_class"],
        json!({"input": "0.003", "cache_read_input": "0.0018",
            "cache_write_5m_input": "0.0075", "cache_write_1h_input": "0.006",
            "audio_input": "0.00", "output": "0.0225", "reasoning_output": "0.0075",
            "audio_output": "0.00"}),
        "{t}"
    );
    assert_eq!(
        t["tokens_by_class"],
        json!({"input": 1000, "cache_read_input": 6000, "cache_write_5m_input": 2000,
            "cache_write_1h_input": 1000, "audio_input": 0, "output": 1500,
            "reasoning_output": 500, "audio_output": 0}),
        "{t}"
    );
    assert_eq!(
        (t["input_tokens"].as_i64(), t["output_tokens"].as_i64()),
        (Some(10_000), Some(2_000))
    );
    let models = &report(&cp, "").await["models"];
    assert_eq!(models[0]["model"], "m1");
    assert_eq!(models[0]["cost_usd"], "0.0483");
}

async fn unpriced_events_are_flagged_not_costed_at_zero(db: TestDb) {
    let cp = Cp::start(db).await;
    let Seed { user_id, .. } = cp.seed().await;
    let r = cp
        .post("/api/v1/models", json!({"name": "m2", "provider": "p1"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["price"], Value::Null);
    let mut e = event("u1", &user_id, "m2", 100, 100);
    e["timestamp_ms"] = json!(now_ms());
    ingest(&cp, vec![e, event("p1", &user_id, "m1", 1_000_000, 0)]).await;
    let rep = report(&cp, "").await;
    assert_eq!(rep["totals"]["unpriced_events"], 1, "{rep}");
    assert_eq!(rep["totals"]["cost_usd"], "2.00", "{rep}");
    let m2 = rep["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "m2")
        .unwrap()
        .clone();
    assert_eq!(
        (m2["unpriced_events"].as_i64(), m2["cost_usd"].as_str()),
        (Some(1), Some("0.00"))
    );
    assert!(metrics(&cp)
        .await
        .contains("molt_cp_usage_unpriced_events_total{model=\"m2\"} 1"));
}

async fn a_plans_markup_is_billed_apart_from_the_cost(db: TestDb) {
    let cp = Cp::start(db).await;
    let Seed { user_id, .. } = cp.seed().await;
    let r = cp
        .post(
            "/api/v1/plans",
            json!({"name": "resale", "markup_bp": 2500}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = cp
        .post(
            "/api/v1/plans",
            json!({"name": "greedy", "markup_bp": 100_001}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = cp
        .admin(
            "PATCH",
            &format!("/api/v1/users/{user_id}"),
            Some(json!({"plan": "resale"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    ingest(&cp, vec![event("k", &user_id, "m1", 1_000_000, 500_000)]).await;
    let t = &report(&cp, "").await["totals"];
    assert_eq!(
        (t["cost_usd"].as_str(), t["billed_usd"].as_str()),
        (Some("7.00"), Some("8.75"))
    );
}

async fn budget_thresholds_are_recorded_once_per_month(db: TestDb) {
    let cp = Cp::start(db).await;
    let Seed { user_id, .. } = cp.seed().await;
    // $0.01 a month; each event of 1,000 input tokens costs $0.002.
    let r = cp
        .admin(
            "PATCH",
            &format!("/api/v1/users/{user_id}"),
            Some(json!({"limits": {"monthly_budget_usd": "0.01"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let now = now_ms();
    let spend = |n: u64| event_at(&format!("b{n}"), &user_id, now + n, (1_000, 0), json!({}));
    ingest(&cp, vec![spend(1), spend(2)]).await; // $0.004: 40%
    let path = format!("/api/v1/users/{user_id}/budget");
    let b = cp.get(&path).await.json();
    assert_eq!(
        (b["budget_usd"].as_str(), b["spent_usd"].as_str()),
        (Some("0.01"), Some("0.004"))
    );
    assert_eq!(b["thresholds_crossed"], json!([]), "{b}");
    ingest(&cp, vec![spend(3)]).await; // 60%
    ingest(&cp, vec![spend(4), spend(5)]).await; // 100%
    ingest(&cp, vec![spend(6)]).await; // 120%: nothing new
    ingest(&cp, vec![spend(6)]).await; // a duplicate: nothing new
    let b = cp.get(&path).await.json();
    assert_eq!(b["percent_used"], 120, "{b}");
    let crossed: Vec<_> = b["thresholds_crossed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["threshold_pct"].as_i64().unwrap(),
                e["spent_usd"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        crossed,
        [
            (50, "0.006".to_owned()),
            (80, "0.01".to_owned()),
            (100, "0.01".to_owned())
        ],
        "{b}"
    );
    // Each crossing told the user once, in the same transaction.
    let page = cp
        .get(&format!("/api/v1/users/{user_id}/notifications"))
        .await
        .json();
    let mut told: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "budget.threshold")
        .map(|n| n["data"]["threshold_pct"].as_i64().unwrap())
        .collect();
    told.sort_unstable();
    assert_eq!(told, [50, 80, 100], "{page}");
    let text = metrics(&cp).await;
    for t in ["50", "80", "100"] {
        assert!(
            text.contains(&format!(
                "molt_cp_budget_thresholds_crossed_total{{threshold=\"{t}\"}} 1"
            )),
            "{text}"
        );
    }
    // Another month is another period; a bad month is refused.
    let b = cp.get(&format!("{path}?month=2020-01")).await.json();
    assert_eq!(
        (b["spent_usd"].as_str(), b["thresholds_crossed"].clone()),
        (Some("0.00"), json!([]))
    );
    assert_eq!(
        cp.get(&format!("{path}?month=2020-13")).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        cp.get("/api/v1/users/usr_nobody/budget").await.status,
        StatusCode::NOT_FOUND
    );
}
