//! Billing end to end: signed Stripe webhooks through the real router, usage
//! ingested as a data plane sends it, and the meter flush through the real
//! async-stripe client against the in-process fake Stripe, on both
//! databases. Faults: Stripe 500s, responses lost after Stripe recorded,
//! a flush "crash" between preparing and sending, a webhook delivered three
//! times. Each ends with reconciliation at zero difference and no duplicate
//! meter event. Bad input is refused with no state change.

use crate::harness::{post_with_headers, settings, Cp, Resp, Seed, TestDb};
use axum::http::StatusCode;
use molt_config::money::Picodollars;
use molt_controlplane::billing::meter::identifier;
use molt_controlplane::billing::stripe_sink::StripeMeterSink;
use molt_controlplane::billing::{Billing, BillingSettings, Meter};
use molt_controlplane::App;
use molt_fakes::fake_stripe::{
    sign_webhook, unix_now, FakeStripe, FakeStripeOptions, Fault, MeterEvent as StoredEvent,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

crate::on_both_databases!(
    checkout_then_usage_then_flush_bills_every_token_once,
    paid_checkout_provisions_a_running_bot_on_fake_fly,
    stripe_500s_then_success_bill_once,
    lost_responses_bill_once,
    a_crash_between_prepare_and_send_is_completed_by_the_next_flush,
    the_same_webhook_three_times_acts_once,
    bad_webhooks_change_nothing,
    subscription_deleted_suspends_and_payment_failed_follows_the_grace_policy,
    windows_older_than_35_days_are_unbillable_not_dropped,
    flush_on_demand_is_admin_only_audited_and_documented,
    overdue_tokens_and_the_last_clean_flush_are_exported,
);

const WHSEC: &str = "whsec_test_secret_for_molt";
const HOUR_MS: i64 = 3_600_000;

struct Env {
    cp: Cp,
    fake: FakeStripe,
    billing: Arc<Billing>,
    seed: Seed,
}

/// A tokens meter (`ai_tokens`), as before money.
fn billing_settings() -> BillingSettings {
    let mut s = cost_settings();
    s.flush.meter = Meter::Tokens;
    s.flush.event_name = "ai_tokens".into();
    s
}

/// The default: a cost meter (`ai_cost`) in units of $0.00001.
fn cost_settings() -> BillingSettings {
    let mut s = BillingSettings::new(molt_config::Secret::new(WHSEC));
    s.flush.backoff = Duration::from_millis(10);
    // Tests run flushes themselves.
    s.flush_interval = Duration::from_secs(3600);
    s
}

/// $0.00001 in picodollars: the cost meter's unit.
const UNIT: i64 = 10_000_000;

async fn sink(base: &str) -> Arc<StripeMeterSink> {
    Arc::new(
        StripeMeterSink::new(&FakeStripeOptions::default().api_key, Some(base))
            .expect("stripe client"),
    )
}

async fn env_with(db: TestDb, s: BillingSettings) -> Env {
    let fake = FakeStripe::new(FakeStripeOptions::default());
    let base = fake.spawn().await.expect("fake stripe");
    let store = db.store.clone();
    let mut cp = Cp::start(db).await;
    let seed = cp.seed().await;
    let billing = cp
        .app
        .enable_billing(&store, s, sink(&base).await)
        .expect("billing");
    Env {
        cp,
        fake,
        billing,
        seed,
    }
}

async fn env(db: TestDb) -> Env {
    env_with(db, billing_settings()).await
}

async fn env_cost(db: TestDb) -> Env {
    env_with(db, cost_settings()).await
}

fn now_ms() -> i64 {
    unix_now() * 1000
}

/// Deliver `body` to `/webhooks/stripe` with `signature`.
async fn deliver_raw(app: &App, body: &str, signature: Option<String>) -> Resp {
    let headers: Vec<(&str, String)> = signature
        .map(|sig| ("stripe-signature", sig))
        .into_iter()
        .collect();
    post_with_headers(app, "/webhooks/stripe", &headers, body).await
}

/// Deliver an event signed as Stripe signs it now.
async fn deliver(app: &App, event: &Value) -> Resp {
    let body = event.to_string();
    let sig = sign_webhook(body.as_bytes(), WHSEC, unix_now());
    deliver_raw(app, &body, Some(sig)).await
}

fn event(id: &str, kind: &str, object: Value) -> Value {
    json!({"id": id, "object": "event", "api_version": "2026-09-30.endive",
        "created": unix_now(), "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": kind,
        "data": {"object": object}})
}

fn checkout(id: &str, user: &str, customer: &str) -> Value {
    event(
        id,
        "checkout.session.completed",
        json!({"id": "cs_test_1", "object": "checkout.session", "mode": "subscription",
            "status": "complete", "payment_status": "paid", "client_reference_id": user,
            "customer": customer, "metadata": {}, "subscription": "sub_1"}),
    )
}

fn usage(id: &str, user: &str, at_ms: i64, input: u64, output: u64) -> Value {
    json!({
        "event_id": id, "request_id": format!("req-{id}"), "timestamp_ms": at_ms,
        "key_id": "key_x", "user_id": user, "model": "m1", "provider": "p1",
        "route": "chat.completions", "status": 200, "input_tokens": input,
        "output_tokens": output, "estimated": false, "stream": true, "attempts": 1,
        "duration_ms": 12, "outcome": "ok"
    })
}

/// The billed cost of `usage` events on `m1` ($2 / $10 per 1M), picodollars.
fn cost(input: i64, output: i64) -> i64 {
    input * 2_000_000 + output * 10_000_000
}

/// The cost of [`ingest_two_windows`]'s events: 7.44e8 + 4.34e9 pico,
/// 74 units and 434 units, with 0.000004 carried after each window.
const TWO_WINDOWS_COST: i64 = 744_000_000 + 4_340_000_000;

/// Usage in two closed hourly windows; returns the total tokens.
async fn ingest_two_windows(cp: &Cp, user: &str, tag: &str) -> i64 {
    let base = (now_ms() / HOUR_MS - 3) * HOUR_MS;
    let events = vec![
        usage(&format!("{tag}-1"), user, base + 10, 100, 50),
        usage(&format!("{tag}-2"), user, base + 20_000, 7, 3),
        usage(&format!("{tag}-3"), user, base + HOUR_MS + 5, 1000, 234),
    ];
    let r = cp.ingest(json!({ "events": events })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Redelivery from a data plane: duplicates, not double usage.
    let r = cp.ingest(json!({ "events": events })).await;
    assert_eq!(r.json()["duplicates"], 3);
    100 + 50 + 7 + 3 + 1000 + 234
}

async fn reconciliation(cp: &Cp) -> Value {
    let r = cp.get("/api/v1/billing/reconciliation").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()
}

/// Reconciliation at zero difference and the fake holding exactly one
/// event per window whose values sum to `tokens`.
async fn assert_billed_once(e: &Env, tokens: i64, windows: usize) {
    let events = e.fake.events();
    let sum: i64 = events.iter().map(|m| m.value.parse::<i64>().unwrap()).sum();
    assert_eq!(sum, tokens, "{events:?}");
    assert_eq!(events.len(), windows, "{events:?}");
    let mut ids: Vec<_> = events.iter().map(|m| m.identifier.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "duplicate identifiers");
    assert!(events.iter().all(|m| m.event_name == "ai_tokens"));
    let rec = reconciliation(&e.cp).await;
    assert_eq!(rec["totals"]["usage_tokens"], tokens, "{rec}");
    assert_eq!(rec["totals"]["reported_tokens"], tokens, "{rec}");
    assert_eq!(rec["totals"]["difference"], 0, "{rec}");
    for c in rec["customers"].as_array().unwrap() {
        assert_eq!(c["difference"], 0, "{rec}");
        assert_eq!(c["reasons"], json!([]), "{rec}");
    }
}

/// With a cost meter: the fake holds one event per window with a value
/// (each identifier once), and Σ values × unit + the remainder carried
/// = Σ the events' billed costs = `cost_pico`, to the picodollar; the
/// reconciliation says the same, with the remainder as its only reason.
async fn assert_billed_exactly(e: &Env, cost_pico: i64, windows: usize) {
    let events = e.fake.events();
    let units: i64 = events.iter().map(|m| m.value.parse::<i64>().unwrap()).sum();
    assert_eq!(events.len(), windows, "{events:?}");
    let mut ids: Vec<_> = events.iter().map(|m| m.identifier.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "duplicate identifiers");
    assert!(events.iter().all(|m| m.event_name == "ai_cost"));
    let rec = reconciliation(&e.cp).await;
    let c = &rec["customers"][0];
    let usd = |v: &Value| Picodollars::parse_usd(v.as_str().unwrap()).unwrap().0 as i64;
    let remainder = cost_pico - units * UNIT;
    assert!((0..UNIT).contains(&remainder), "{rec}");
    assert_eq!(usd(&c["usage_cost_usd"]), cost_pico, "{rec}");
    assert_eq!(c["reported_units"], units, "{rec}");
    assert_eq!(usd(&c["reported_usd"]), units * UNIT, "{rec}");
    assert_eq!(usd(&c["difference_usd"]), remainder, "{rec}");
    let reasons = c["reasons"].as_array().unwrap();
    if remainder == 0 {
        assert!(reasons.is_empty(), "{rec}");
    } else {
        assert_eq!(reasons.len(), 1, "{rec}");
        assert!(reasons[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("remainder"));
        assert_eq!(usd(&reasons[0]["amount_usd"]), remainder, "{rec}");
    }
    assert_eq!(rec["meter_unit_usd"], "0.00001", "{rec}");
}

async fn user(cp: &Cp, id: &str) -> Value {
    let r = cp.get(&format!("/api/v1/users/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

async fn bots(cp: &Cp, user: &str) -> Vec<Value> {
    let r = cp.get(&format!("/api/v1/bots?user_id={user}")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["items"].as_array().unwrap().clone()
}

async fn checkout_user(e: &Env, customer: &str) {
    let r = deliver(
        &e.cp.app,
        &checkout("evt_checkout", &e.seed.user_id, customer),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

// === tests ===

async fn checkout_then_usage_then_flush_bills_every_token_once(db: TestDb) {
    let e = env(db).await;
    // Start suspended: the paid checkout is what activates the user.
    let r =
        e.cp.admin(
            "PATCH",
            &format!("/api/v1/users/{}", e.seed.user_id),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = deliver(&e.cp.app, &checkout("evt_1", &e.seed.user_id, "cus_ada")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["result"], "handled");
    let u = user(&e.cp, &e.seed.user_id).await;
    assert_eq!(u["status"], "active");
    assert_eq!(u["stripe_customer_id"], "cus_ada");
    let b = bots(&e.cp, &e.seed.user_id).await;
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0]["status"], "requested");
    // The user's key is in the data planes' config again.
    let cfg = e.cp.config_after(0).await;
    assert!(String::from_utf8_lossy(&cfg.body).contains(&e.seed.key_id));

    let tokens = ingest_two_windows(&e.cp, &e.seed.user_id, "u").await;
    let out = e.billing.flusher().flush().await.unwrap();
    assert_eq!((out.prepared, out.sent), (2, 2), "{out:?}");
    assert_billed_once(&e, tokens, 2).await;
    assert!(e
        .fake
        .events()
        .iter()
        .all(|m| m.stripe_customer_id == "cus_ada"));
    // A second flush has nothing to do.
    let out = e.billing.flusher().flush().await.unwrap();
    assert_eq!((out.prepared, out.sent), (0, 0));
    assert_billed_once(&e, tokens, 2).await;
    let metrics = e.cp.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("billing_meter_events_total{result=\"sent\"} 2"),
        "{text}"
    );
    assert!(text.contains(&format!("billing_tokens_reported_total {tokens}")));
    assert!(text.contains(
        "billing_webhooks_total{result=\"handled\",type=\"checkout.session.completed\"} 1"
    ));
    assert!(
        text.contains("route=\"/webhooks/stripe\",status=\"200\""),
        "{text}"
    );
}

async fn stripe_500s_then_success_bill_once(db: TestDb) {
    let e = env_cost(db).await;
    checkout_user(&e, "cus_1").await;
    ingest_two_windows(&e.cp, &e.seed.user_id, "f").await;
    // Two 500s before Stripe acts, then one it saves under the key (a
    // replay would repeat it, so the client must move to a new key).
    e.fake.inject(Fault::Fail { times: 2 });
    e.fake.inject(Fault::FailSaved { times: 1 });
    let out = e.billing.flusher().flush().await.unwrap();
    assert_eq!(out.sent, 2, "{out:?}");
    assert_billed_exactly(&e, TWO_WINDOWS_COST, 2).await;
    let values: Vec<_> = e.fake.events().iter().map(|m| m.value.clone()).collect();
    assert_eq!(values, ["74", "434"]);
    assert_eq!(e.fake.calls(), 5);
}

async fn lost_responses_bill_once(db: TestDb) {
    let e = env_cost(db).await;
    checkout_user(&e, "cus_1").await;
    ingest_two_windows(&e.cp, &e.seed.user_id, "l").await;
    // Stripe records each event, the answer is lost; the retry with the
    // same Idempotency-Key gets the saved answer.
    e.fake.inject(Fault::RecordThenDrop { times: 2 });
    let out = e.billing.flusher().flush().await.unwrap();
    assert_eq!((out.sent, out.left_pending), (2, 0), "{out:?}");
    assert_eq!(e.fake.calls(), 4);
    assert_billed_exactly(&e, TWO_WINDOWS_COST, 2).await;

    // Stripe recorded an event, and the control plane died before marking
    // its report sent (so the next flush uses a fresh key): the
    // identifier's "already exists" answer counts as delivered.
    let late_window = (now_ms() / HOUR_MS - 5) * HOUR_MS;
    let r =
        e.cp.ingest(json!({"events": [usage("late-1", &e.seed.user_id, late_window + 1, 40, 2)]}))
            .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(e.billing.flusher().prepare(now_ms()).await.unwrap(), 1);
    let id = identifier(&e.seed.user_id, "cus_1", "ai_cost", late_window, 0);
    // 40 in, 2 out: 1e8 pico, plus the 4e6 carried: 10 units, 4e6 left.
    e.fake.preload(StoredEvent {
        identifier: id,
        event_name: "ai_cost".into(),
        stripe_customer_id: "cus_1".into(),
        value: "10".into(),
        timestamp: late_window / 1000 + 3599,
        created: unix_now(),
    });
    let out = e.billing.flusher().flush().await.unwrap();
    assert_eq!(out.sent, 1, "{out:?}");
    assert_billed_exactly(&e, TWO_WINDOWS_COST + cost(40, 2), 3).await;
}

async fn a_crash_between_prepare_and_send_is_completed_by_the_next_flush(db: TestDb) {
    let store = db.store.clone();
    let e = env_cost(db).await;
    checkout_user(&e, "cus_1").await;
    ingest_two_windows(&e.cp, &e.seed.user_id, "c").await;
    assert_eq!(e.billing.flusher().prepare(now_ms()).await.unwrap(), 2);
    // "Crash": the process dies with two pending reports written.
    let Env { cp, fake, seed, .. } = e;
    drop(cp);
    // Usage arriving meanwhile, in a window already prepared: a new report.
    let fake_base = fake.spawn().await.unwrap();
    let mut app = App::start(store.clone(), &settings()).await.unwrap();
    let billing = app
        .enable_billing(&store, cost_settings(), sink(&fake_base).await)
        .unwrap();
    let out = billing.flusher().flush().await.unwrap();
    assert_eq!((out.prepared, out.sent), (0, 2), "{out:?}");
    let db = TestDb {
        url: String::new(),
        pg_name: None,
        store,
    };
    let e = Env {
        cp: Cp { app, db },
        fake,
        billing,
        seed,
    };
    assert_billed_exactly(&e, TWO_WINDOWS_COST, 2).await;
}

async fn the_same_webhook_three_times_acts_once(db: TestDb) {
    let e = env(db).await;
    let ev = checkout("evt_same", &e.seed.user_id, "cus_3x");
    let mut results = Vec::new();
    for _ in 0..3 {
        let r = deliver(&e.cp.app, &ev).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        results.push(r.json()["result"].as_str().unwrap().to_owned());
    }
    assert_eq!(results, ["handled", "duplicate", "duplicate"]);
    assert_eq!(bots(&e.cp, &e.seed.user_id).await.len(), 1);
    // One audited user change, not three.
    let audit = e.cp.get("/api/v1/audit?limit=500").await.json();
    let creates = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "bot.create")
        .count();
    assert_eq!(creates, 1, "{audit}");
    let tokens = ingest_two_windows(&e.cp, &e.seed.user_id, "t").await;
    e.billing.flusher().flush().await.unwrap();
    assert_billed_once(&e, tokens, 2).await;
}

async fn bad_webhooks_change_nothing(db: TestDb) {
    let e = env(db).await;
    let before = user(&e.cp, &e.seed.user_id).await;
    let ev = checkout("evt_bad", &e.seed.user_id, "cus_bad");
    let body = ev.to_string();
    let now = unix_now();
    let cases: Vec<(&str, String, Option<String>, StatusCode, &str)> = vec![
        (
            "no signature",
            body.clone(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "wrong secret",
            body.clone(),
            Some(sign_webhook(body.as_bytes(), "whsec_wrong", now)),
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "tampered body",
            body.replace("cus_bad", "cus_evil"),
            Some(sign_webhook(body.as_bytes(), WHSEC, now)),
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "stale timestamp",
            body.clone(),
            Some(sign_webhook(body.as_bytes(), WHSEC, now - 301)),
            StatusCode::BAD_REQUEST,
            "invalid_signature",
        ),
        (
            "malformed JSON",
            "{\"id\": \"evt_x\",".to_owned(),
            Some(sign_webhook(b"{\"id\": \"evt_x\",", WHSEC, now)),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (what, body, sig, status, code) in cases {
        let r = deliver_raw(&e.cp.app, &body, sig).await;
        assert_eq!(r.status, status, "{what}: {:?}", r.body);
        assert_eq!(r.code(), code, "{what}");
    }
    // Unknown user / customer: verified, well-formed, but not ours.
    let r = deliver(&e.cp.app, &checkout("evt_u1", "usr_nobody", "cus_x")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.code(), "unknown_customer");
    let gone = event(
        "evt_u2",
        "customer.subscription.deleted",
        json!({"id": "sub_1", "object": "subscription", "customer": "cus_unknown"}),
    );
    let r = deliver(&e.cp.app, &gone).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    // Nothing changed: same user, no bot, and the refused event ids were
    // not recorded (the good delivery of `evt_bad` is handled, not a
    // duplicate).
    assert_eq!(user(&e.cp, &e.seed.user_id).await, before);
    assert!(bots(&e.cp, &e.seed.user_id).await.is_empty());
    let r = deliver(&e.cp.app, &ev).await;
    assert_eq!(r.json()["result"], "handled", "{:?}", r.body);
    // Unknown types are acknowledged.
    let r = deliver(
        &e.cp.app,
        &event("evt_o", "customer.created", json!({"id": "cus_9"})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["result"].clone()),
        (StatusCode::OK, json!("ignored"))
    );
}

async fn subscription_deleted_suspends_and_payment_failed_follows_the_grace_policy(db: TestDb) {
    let e = env(db).await;
    checkout_user(&e, "cus_g").await;
    let failed = |id: &str| {
        event(
            id,
            "invoice.payment_failed",
            json!({"id": "in_1", "object": "invoice", "customer": "cus_g"}),
        )
    };
    let r = deliver(&e.cp.app, &failed("evt_f1")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(user(&e.cp, &e.seed.user_id).await["status"], "past_due");
    // Within the grace period nothing more happens...
    assert_eq!(e.billing.enforce_grace(now_ms()).await.unwrap(), 0);
    // ...paying ends it...
    let paid = event(
        "evt_p1",
        "invoice.paid",
        json!({"id": "in_1", "object": "invoice", "customer": "cus_g"}),
    );
    assert_eq!(deliver(&e.cp.app, &paid).await.status, StatusCode::OK);
    assert_eq!(user(&e.cp, &e.seed.user_id).await["status"], "active");
    // ...and once it runs out the user is suspended.
    deliver(&e.cp.app, &failed("evt_f2")).await;
    // Two failed payments of one invoice tell the user once, written with
    // the past-due mark.
    let page =
        e.cp.get(&format!("/api/v1/users/{}/notifications", e.seed.user_id))
            .await
            .json();
    let told: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "invoice.payment_failed")
        .map(|n| &n["subject"])
        .collect();
    assert_eq!(told, [&json!("in_1")], "{page}");
    let later = now_ms() + 8 * 24 * HOUR_MS;
    assert_eq!(e.billing.enforce_grace(later).await.unwrap(), 1);
    assert_eq!(user(&e.cp, &e.seed.user_id).await["status"], "suspended");

    // Reactivate, then the subscription ends: suspended, key out of the
    // config, bot stopping.
    let r = deliver(&e.cp.app, &checkout("evt_c2", &e.seed.user_id, "cus_g")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(user(&e.cp, &e.seed.user_id).await["status"], "active");
    let gone = event(
        "evt_d1",
        "customer.subscription.deleted",
        json!({"id": "sub_1", "object": "subscription", "customer": "cus_g"}),
    );
    let r = deliver(&e.cp.app, &gone).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(user(&e.cp, &e.seed.user_id).await["status"], "suspended");
    let cfg = e.cp.config_after(0).await;
    assert!(!String::from_utf8_lossy(&cfg.body).contains(&e.seed.key_id));
    let b = bots(&e.cp, &e.seed.user_id).await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["desired"], "stopped", "{b:?}");
}

async fn windows_older_than_35_days_are_unbillable_not_dropped(db: TestDb) {
    let e = env(db).await;
    checkout_user(&e, "cus_old").await;
    let old = now_ms() - 40 * 24 * HOUR_MS;
    let r =
        e.cp.ingest(json!({"events": [usage("old-1", &e.seed.user_id, old, 500, 5)]}))
            .await;
    assert_eq!(r.status, StatusCode::OK);
    let out = e.billing.flusher().flush().await.unwrap();
    assert_eq!((out.unbillable, out.sent), (1, 0), "{out:?}");
    assert!(e.fake.events().is_empty());
    let rec = reconciliation(&e.cp).await;
    let c = &rec["customers"][0];
    assert_eq!(c["difference"], 505, "{rec}");
    assert_eq!(c["reasons"][0]["tokens"], 505, "{rec}");
    assert!(c["reasons"][0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("unbillable"));
    // Range filters: nothing in the last day.
    let today = time::OffsetDateTime::now_utc().date();
    let r =
        e.cp.get(&format!(
            "/api/v1/billing/reconciliation?from={today}&to={today}"
        ))
        .await;
    assert_eq!(r.json()["customers"], json!([]), "{:?}", r.body);
    let r =
        e.cp.get("/api/v1/billing/reconciliation?from=yesterday")
            .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r =
        e.cp.send("GET", "/api/v1/billing/reconciliation", None, None)
            .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn paid_checkout_provisions_a_running_bot_on_fake_fly(db: TestDb) {
    use molt_controlplane::fleet::fly::{FlyFleet, FlySettings};
    use molt_controlplane::fleet::Fleet;
    use molt_controlplane::provision::ProvisionSettings;
    use molt_controlplane::server::Provisioning;
    use molt_fakes::fake_fly::{FakeFly, FakeFlyOptions};

    let fly = FakeFly::new(FakeFlyOptions {
        boot_delay: Duration::from_millis(50),
        rate_limits: false,
        ..FakeFlyOptions::default()
    });
    let fly_base = fly.spawn().await.unwrap();
    let mut fs = FlySettings::new(
        "molt-bots",
        "ghcr.io/clawdbot/clawdbot:latest",
        molt_config::Secret::new(FakeFlyOptions::default().token),
    );
    fs.base_url = fly_base;
    fs.gateway_url_template = "http://{private_ip}:18789/".into();
    fs.backoff = Duration::from_millis(20);
    let fleet: Arc<dyn Fleet> = Arc::new(FlyFleet::new(fs).unwrap());
    let ps = ProvisionSettings {
        proxy_url: "http://127.0.0.1:8080/v1".into(),
        poll_interval: Duration::from_millis(20),
        backoff: Duration::from_millis(20),
        ..ProvisionSettings::default()
    };
    let store = db.store.clone();
    let mut app = App::start_with(
        store.clone(),
        &settings(),
        Some(Provisioning {
            fleet,
            settings: ps,
            run_worker: true,
        }),
    )
    .await
    .unwrap();
    let fake = FakeStripe::new(FakeStripeOptions::default());
    let base = fake.spawn().await.unwrap();
    let billing = app
        .enable_billing(&store, billing_settings(), sink(&base).await)
        .unwrap();
    let cp = Cp { app, db };
    let seed = cp.seed().await;
    let e = Env {
        cp,
        fake,
        billing,
        seed,
    };
    checkout_user(&e, "cus_fly").await;
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let b = bots(&e.cp, &e.seed.user_id).await;
        assert_eq!(b.len(), 1, "{b:?}");
        if b[0]["status"] == "running" {
            break;
        }
        assert_ne!(b[0]["status"], "failed", "{b:?}");
        assert!(std::time::Instant::now() < end, "never running: {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fly.machines().len(), 1);
    let tokens = ingest_two_windows(&e.cp, &e.seed.user_id, "fly").await;
    e.billing.flusher().flush().await.unwrap();
    assert_billed_once(&e, tokens, 2).await;
}

async fn flush_on_demand_is_admin_only_audited_and_documented(db: TestDb) {
    let e = env(db).await;
    checkout_user(&e, "cus_now").await;
    let tokens = ingest_two_windows(&e.cp, &e.seed.user_id, "d").await;

    // A read-only operator may look but not flush.
    let ro =
        e.cp.post(
            "/api/v1/admin-tokens",
            json!({"name": "viewer", "role": "read_only"}),
        )
        .await;
    assert_eq!(ro.status, StatusCode::CREATED, "{:?}", ro.body);
    let ro = ro.json()["secret"].as_str().unwrap().to_owned();
    let r =
        e.cp.send("POST", "/api/v1/billing/flush", Some(&ro), None)
            .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = e.cp.send("POST", "/api/v1/billing/flush", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(e.fake.events().is_empty(), "a refused flush sent nothing");
    let r =
        e.cp.send("GET", "/api/v1/billing/reconciliation", Some(&ro), None)
            .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["totals"]["reported_tokens"], 0);

    let r = e.cp.admin("POST", "/api/v1/billing/flush", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.json(),
        json!({"prepared": 2, "sent": 2, "left_pending": 0, "failed": 0, "unbillable": 0})
    );
    assert_billed_once(&e, tokens, 2).await;
    let audit = e.cp.get("/api/v1/audit?limit=500").await.json();
    let flushes: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "billing.flush")
        .collect();
    assert_eq!(flushes.len(), 1, "{audit}");
    assert_eq!(flushes[0]["actor"], "bootstrap", "{audit}");
    assert_eq!(flushes[0]["diff"]["sent"]["to"], 2, "{audit}");

    // Both operations are in the served document, with their schemas.
    let doc = e.cp.get("/api/v1/openapi.json").await.json();
    let recon = &doc["paths"]["/api/v1/billing/reconciliation"]["get"];
    let params: Vec<&str> = recon["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["from", "to"], "{recon}");
    assert_eq!(
        recon["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Reconciliation"
    );
    assert_eq!(
        doc["paths"]["/api/v1/billing/flush"]["post"]["responses"]["200"]["content"]
            ["application/json"]["schema"]["$ref"],
        "#/components/schemas/FlushOutcome"
    );
    for schema in [
        "Reconciliation",
        "CustomerReconciliation",
        "Difference",
        "Totals",
        "FlushOutcome",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
}

async fn metrics_text(cp: &Cp) -> String {
    String::from_utf8_lossy(&cp.get("/metrics").await.body).into_owned()
}

/// What the alerts on billing read: tokens Stripe should hold by now and
/// does not (the reconciliation's difference), the time of the last flush
/// that left nothing pending, and the periodic job's runs.
async fn overdue_tokens_and_the_last_clean_flush_are_exported(db: TestDb) {
    let e = env(db).await;
    checkout_user(&e, "cus_1").await;
    let started = unix_now();
    let tokens = ingest_two_windows(&e.cp, &e.seed.user_id, "o").await;
    let value = |text: &str, series: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    // Both windows are older than window + settle + flush interval at
    // `due`: a flush should have delivered them, none has run.
    let due = now_ms() + 3 * HOUR_MS;
    e.billing.publish_overdue(due).await.unwrap();
    let text = metrics_text(&e.cp).await;
    let overdue = |reason: &str| format!("molt_cp_billing_overdue_tokens{{reason=\"{reason}\"}}");
    assert_eq!(value(&text, &overdue("unreported")), tokens);
    for reason in ["pending", "failed", "unbillable"] {
        assert_eq!(value(&text, &overdue(reason)), 0, "{reason}");
    }
    let last = "molt_cp_billing_last_flush_success_timestamp_seconds";
    let at_start = value(&text, last);
    assert!(at_start <= started, "{at_start} > {started}");

    let out = e.billing.flusher().flush().await.unwrap();
    assert_eq!((out.sent, out.left_pending), (2, 0), "{out:?}");
    e.billing.publish_overdue(due).await.unwrap();
    let text = metrics_text(&e.cp).await;
    for reason in ["unreported", "pending", "failed", "unbillable"] {
        assert_eq!(value(&text, &overdue(reason)), 0, "{reason}");
    }
    assert!(value(&text, last) >= started);

    // The periodic job counts its runs.
    e.billing.tick().await;
    let text = metrics_text(&e.cp).await;
    assert_eq!(
        value(
            &text,
            "molt_cp_job_runs_total{job=\"billing_flush\",result=\"ok\"}"
        ),
        1
    );
}
