//! Notifications end to end on both databases: written in the transaction
//! of the change that causes them (a provisioning step, billing's past-due
//! mark, usage ingest), deduped by (user, kind, subject), delivered by the
//! real SMTP client (lettre) to an SMTP sink and by the real HTTP client to
//! a webhook receiver in the test, which checks the Standard Webhooks
//! signature itself; retries with backoff, `failed` when attempts run out,
//! replays, and the in-app list.

use crate::harness::{settings, Cp, TestDb};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use molt_controlplane::domain::{BotStatus, NewNotification};
use molt_controlplane::fleet::fly::{FlyFleet, FlySettings};
use molt_controlplane::fleet::Fleet;
use molt_controlplane::notify::{SmtpSettings, SmtpTls};
use molt_controlplane::provision::ProvisionSettings;
use molt_controlplane::server::Provisioning;
use molt_controlplane::store::StepUpdate;
use molt_controlplane::{App, Settings};
use molt_fakes::fake_fly::{FakeFly, FakeFlyOptions};
use molt_fakes::smtp_sink::SmtpSink;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

crate::on_both_databases!(
    a_running_bot_is_told_once_by_email_webhook_and_in_app,
    a_step_that_is_not_recorded_notifies_no_one,
    the_same_event_notifies_once,
    failed_sends_are_retried_with_backoff_then_failed_visibly,
    replay_sends_the_same_signed_message_again,
    in_app_pages_newest_first_with_read_marks,
);

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
struct Hook {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// A webhook receiver: records every request, answers 500 to the first
/// `fail` of them.
#[derive(Clone, Default)]
struct Receiver {
    hooks: Arc<Mutex<Vec<Hook>>>,
    fail: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn spawn(&self) -> String {
        async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
            let h = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            r.hooks.lock().unwrap().push(Hook {
                id: h("webhook-id"),
                timestamp: h("webhook-timestamp"),
                signature: h("webhook-signature"),
                body,
            });
            let mut fail = r.fail.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::NO_CONTENT
            }
        }
        let router = axum::Router::new()
            .route("/hooks/molt", axum::routing::post(hook))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/hooks/molt")
    }

    fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }
}

/// The Standard Webhooks check, written here from the spec rather than
/// taken from the product: base64 HMAC-SHA256 of `id.timestamp.body`
/// keyed by the decoded part of the `whsec_` secret.
fn verify(hook: &Hook, secret: &str) {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", hook.id, hook.timestamp, hook.body).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let sigs: Vec<&str> = hook
        .signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .collect();
    assert!(sigs.contains(&expected.as_str()), "bad signature: {hook:?}");
    let ts: i64 = hook.timestamp.parse().unwrap();
    assert!((ts - now_ms() / 1000).abs() < 60, "stale timestamp {ts}");
}

fn now_ms() -> i64 {
    molt_controlplane::domain::now_ms()
}

struct Env {
    cp: Cp,
    sink: SmtpSink,
    receiver: Receiver,
    secret: String,
}

/// Settings with email to `sink_port` (no TLS: a local sink), fast
/// retries, and no background notifier (the tests tick their own).
fn notify_settings(sink_port: u16, max_attempts: i64) -> Settings {
    let mut s = settings();
    s.notifications.email = Some(SmtpSettings {
        host: "127.0.0.1".into(),
        port: sink_port,
        tls: SmtpTls::None,
        credentials: None,
        from: "Molt <notify@molt.test>".into(),
        ca_file: None,
        timeout: Duration::from_secs(5),
    });
    s.notifications.run_worker = false;
    let n = &mut s.notifications.settings;
    n.backoff = Duration::from_millis(300);
    n.max_backoff = Duration::from_secs(2);
    n.max_attempts = max_attempts;
    n.lease = Duration::from_secs(5);
    s
}

async fn start(db: TestDb, max_attempts: i64, provisioning: Option<Provisioning>) -> Env {
    let sink = SmtpSink::new();
    let port = sink.spawn().await.unwrap();
    let app = App::start_with(
        db.store.clone(),
        &notify_settings(port, max_attempts),
        provisioning,
    )
    .await
    .unwrap();
    let cp = Cp { app, db };
    let receiver = Receiver::default();
    let url = receiver.spawn().await;
    let r = cp
        .post(
            "/api/v1/webhook-endpoints",
            json!({"url": url, "description": "the app"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    Env {
        cp,
        sink,
        receiver,
        secret,
    }
}

impl Env {
    async fn user(&self, email: &str) -> String {
        let r = self.cp.post("/api/v1/users", json!({"email": email})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.json()["id"].as_str().unwrap().to_owned()
    }

    async fn notifications(&self, user: &str, query: &str) -> Value {
        let r = self
            .cp
            .get(&format!("/api/v1/users/{user}/notifications{query}"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.json()
    }

    /// Tick a notifier until nothing is due, waiting out backoffs for at
    /// most `for_at_most`.
    async fn drain(&self, for_at_most: Duration) {
        let notifier = self.cp.app.notifier();
        let end = Instant::now() + for_at_most;
        while Instant::now() < end {
            notifier.tick().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The statuses of a notification's deliveries, by channel.
fn statuses(n: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = n["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["channel"].as_str().unwrap().to_owned(),
                d["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn delivered() -> Vec<(String, String)> {
    vec![
        ("email".into(), "delivered".into()),
        ("webhook".into(), "delivered".into()),
    ]
}

fn fly(base: &str) -> Arc<dyn Fleet> {
    let mut s = FlySettings::new(
        "molt-bots",
        "ghcr.io/clawdbot/clawdbot:latest",
        molt_config::Secret::new(FakeFlyOptions::default().token),
    );
    s.base_url = base.to_owned();
    s.gateway_url_template = "http://{private_ip}:18789/".into();
    s.backoff = Duration::from_millis(20);
    Arc::new(FlyFleet::new(s).unwrap())
}

async fn a_running_bot_is_told_once_by_email_webhook_and_in_app(db: TestDb) {
    let fake = FakeFly::new(FakeFlyOptions {
        boot_delay: Duration::from_millis(50),
        rate_limits: false,
        ..FakeFlyOptions::default()
    });
    let base = fake.spawn().await.unwrap();
    let provisioning = Provisioning {
        fleet: fly(&base),
        settings: ProvisionSettings {
            poll_interval: Duration::from_millis(20),
            backoff: Duration::from_millis(20),
            ..ProvisionSettings::default()
        },
        run_worker: true,
    };
    let env = start(db, 5, Some(provisioning)).await;
    let user = env.user("ada@example.com").await;
    let r = env
        .cp
        .post("/api/v1/bots", json!({"user_id": user, "model": "m1"}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let bot = r.json()["id"].as_str().unwrap().to_owned();
    let end = Instant::now() + Duration::from_secs(30);
    while env.cp.get(&format!("/api/v1/bots/{bot}")).await.json()["status"] != "running" {
        assert!(Instant::now() < end, "bot never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Written with the step, before anything was sent: in-app at once.
    let page = env.notifications(&user, "").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    let n = &items[0];
    assert_eq!(n["kind"], "bot.running");
    assert_eq!(n["title"], "Your bot is ready");
    assert_eq!(n["data"]["bot_id"], json!(bot));
    assert_eq!(n["read_at"], Value::Null);
    env.drain(Duration::from_millis(500)).await;

    let mail = env.sink.messages();
    assert_eq!(mail.len(), 1, "{mail:#?}");
    assert_eq!(mail[0].to, ["ada@example.com"]);
    assert_eq!(mail[0].from, "notify@molt.test");
    let data = &mail[0].data;
    assert!(data.contains("Subject: Your bot is ready"), "{data}");
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(data.contains("text/plain"), "{data}");
    assert!(data.contains("text/html"), "{data}");

    let hooks = env.receiver.hooks();
    assert_eq!(hooks.len(), 1, "{hooks:#?}");
    verify(&hooks[0], &env.secret);
    assert_eq!(hooks[0].id, n["id"].as_str().unwrap());
    let body: Value = serde_json::from_str(&hooks[0].body).unwrap();
    assert_eq!(body["type"], "bot.running");
    assert_eq!(body["data"]["user_id"], json!(user));
    assert_eq!(body["data"]["details"]["bot_id"], json!(bot));

    let page = env.notifications(&user, "").await;
    assert_eq!(statuses(&page["items"][0]), delivered(), "{page}");
    // Nothing more to send, however often the worker looks.
    env.drain(Duration::from_millis(200)).await;
    assert_eq!(env.sink.messages().len(), 1);
    assert_eq!(env.receiver.hooks().len(), 1);
    let text = env.cp.get("/metrics").await;
    let text = String::from_utf8_lossy(&text.body);
    for line in [
        "molt_cp_notification_deliveries_total{channel=\"email\",result=\"delivered\"} 1",
        "molt_cp_notification_deliveries_total{channel=\"webhook\",result=\"delivered\"} 1",
        "molt_cp_notification_outbox_depth{channel=\"email\"} 0",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
}

async fn a_step_that_is_not_recorded_notifies_no_one(db: TestDb) {
    let env = start(db, 5, None).await;
    let user = env.user("ada@example.com").await;
    let r = env
        .cp
        .post("/api/v1/bots", json!({"user_id": user, "model": "m1"}))
        .await;
    let bot = r.json()["id"].as_str().unwrap().to_owned();
    let store = env.cp.db.store.clone();
    let now = now_ms();
    assert!(store
        .claim_bot(&bot, "w1", now, now + 60_000)
        .await
        .unwrap());
    let update = StepUpdate {
        status: Some(BotStatus::Running),
        next_attempt_at: now,
        notify: Some(Box::new(NewNotification::bot_running(&user, &bot, 1))),
        ..StepUpdate::default()
    };
    // Not the claim's owner: the step and its notification are dropped
    // together.
    assert!(!store
        .record_step(&bot, "w2", BotStatus::Requested, &update, now)
        .await
        .unwrap());
    assert_eq!(env.notifications(&user, "").await["items"], json!([]));
    // The owner records it: the notification comes with it, once.
    assert!(store
        .record_step(&bot, "w1", BotStatus::Requested, &update, now)
        .await
        .unwrap());
    let page = env.notifications(&user, "").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(
        statuses(&page["items"][0]),
        vec![
            ("email".into(), "pending".into()),
            ("webhook".into(), "pending".into())
        ]
    );
}

async fn the_same_event_notifies_once(db: TestDb) {
    let env = start(db, 5, None).await;
    let user = env.user("ada@example.com").await;
    let store = env.cp.db.store.clone();
    let n = NewNotification::payment_failed(&user, "in_1");
    assert!(store.insert_notification(&n, now_ms()).await.unwrap());
    assert!(!store.insert_notification(&n, now_ms()).await.unwrap());
    // Another user's, or another subject: their own.
    let other = env.user("bob@example.com").await;
    assert!(store
        .insert_notification(&NewNotification::payment_failed(&other, "in_1"), now_ms())
        .await
        .unwrap());
    assert!(store
        .insert_notification(&NewNotification::payment_failed(&user, "in_2"), now_ms())
        .await
        .unwrap());
    // A user this database does not know: nothing, and no error.
    assert!(!store
        .insert_notification(
            &NewNotification::payment_failed("usr_nobody", "in_1"),
            now_ms()
        )
        .await
        .unwrap());

    // Usage: two anomalous events in one hour and one re-sent: one
    // notification; a normal event none.
    let hour = 1_700_000_000_000u64 / 3_600_000 * 3_600_000;
    let event = |id: &str, at: u64, anomaly: bool| {
        let mut e = crate::harness::event(id, &user, "m1", 1, 1);
        e["timestamp_ms"] = json!(at);
        e["anomaly"] = json!(anomaly);
        e
    };
    for batch in [
        vec![event("e1", hour + 10, true), event("e2", hour + 20, true)],
        vec![event("e1", hour + 10, true), event("e3", hour + 30, false)],
    ] {
        let r = env.cp.ingest(json!({"events": batch})).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    env.cp
        .ingest(json!({"events": [event("e4", hour + 3_600_000, true)]}))
        .await;
    let page = env.notifications(&user, "").await;
    let kinds: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "usage.anomaly",
            "usage.anomaly",
            "invoice.payment_failed",
            "invoice.payment_failed"
        ],
        "{page}"
    );
}

async fn failed_sends_are_retried_with_backoff_then_failed_visibly(db: TestDb) {
    let env = start(db, 3, None).await;
    let user = env.user("ada@example.com").await;
    let store = env.cp.db.store.clone();
    env.sink.refuse_next(2);
    *env.receiver.fail.lock().unwrap() = 5;
    store
        .insert_notification(&NewNotification::payment_failed(&user, "in_1"), now_ms())
        .await
        .unwrap();
    let notifier = env.cp.app.notifier();
    notifier.tick().await.unwrap();
    let page = env.notifications(&user, "").await;
    let n = &page["items"][0];
    for d in n["deliveries"].as_array().unwrap() {
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(d["attempts"], 1, "{d}");
        let wait = d["next_attempt_at"].as_i64().unwrap() - now_ms();
        assert!((100..=300).contains(&wait), "first backoff {wait} ms: {d}");
    }
    let email = |n: &Value| {
        n["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["channel"] == "email")
            .unwrap()
            .clone()
    };
    assert!(
        email(n)["last_error"].as_str().unwrap().contains("451"),
        "{n}"
    );
    // Not due yet: nothing is sent again before the backoff.
    notifier.tick().await.unwrap();
    assert_eq!(env.receiver.hooks().len(), 1);
    // Email gets through on the third try; the webhook never does and is
    // failed after three.
    env.drain(Duration::from_millis(2500)).await;
    assert_eq!(env.sink.messages().len(), 1);
    assert_eq!(env.receiver.hooks().len(), 3);
    let page = env.notifications(&user, "").await;
    let n = &page["items"][0];
    assert_eq!(
        statuses(n),
        vec![
            ("email".into(), "delivered".into()),
            ("webhook".into(), "failed".into())
        ]
    );
    let hook = n["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["channel"] == "webhook")
        .unwrap();
    assert_eq!(hook["attempts"], 3, "{hook}");
    assert_eq!(hook["last_error"], "HTTP 500", "{hook}");
    assert_eq!(email(n)["attempts"], 3);
    let text = env.cp.get("/metrics").await;
    let text = String::from_utf8_lossy(&text.body);
    for line in [
        "molt_cp_notification_deliveries_total{channel=\"webhook\",result=\"failed\"} 1",
        "molt_cp_notification_deliveries_total{channel=\"webhook\",result=\"retried\"} 2",
        "molt_cp_notification_deliveries_total{channel=\"email\",result=\"retried\"} 2",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
}

async fn replay_sends_the_same_signed_message_again(db: TestDb) {
    let env = start(db, 3, None).await;
    let user = env.user("ada@example.com").await;
    env.cp
        .db
        .store
        .insert_notification(&NewNotification::payment_failed(&user, "in_1"), now_ms())
        .await
        .unwrap();
    env.drain(Duration::from_millis(200)).await;
    let page = env.notifications(&user, "").await;
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let viewer = env.cp.read_only_token().await;
    let r = env
        .cp
        .send(
            "POST",
            &format!("/api/v1/notifications/{id}/replay"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = env
        .cp
        .post(&format!("/api/v1/notifications/{id}/replay"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert!(statuses(&r.json()).contains(&("webhook".into(), "pending".into())));
    env.drain(Duration::from_millis(200)).await;
    let hooks = env.receiver.hooks();
    assert_eq!(hooks.len(), 2, "{hooks:#?}");
    for h in &hooks {
        verify(h, &env.secret);
        assert_eq!(h.id, id);
    }
    assert_eq!(hooks[0].body, hooks[1].body);
    // Email is not replayed.
    assert_eq!(env.sink.messages().len(), 1);
    let r = env
        .cp
        .post("/api/v1/notifications/ntf_nope/replay", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A disabled endpoint gets nothing new.
    let endpoints = env.cp.get("/api/v1/webhook-endpoints").await.json();
    let endpoint = endpoints["items"][0]["id"].as_str().unwrap().to_owned();
    assert!(
        endpoints.to_string().find("whsec_").is_none(),
        "{endpoints}"
    );
    let r = env
        .cp
        .admin(
            "DELETE",
            &format!("/api/v1/webhook-endpoints/{endpoint}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.json()["disabled_at"].is_i64());
    env.cp
        .db
        .store
        .insert_notification(&NewNotification::payment_failed(&user, "in_2"), now_ms())
        .await
        .unwrap();
    env.drain(Duration::from_millis(200)).await;
    assert_eq!(env.receiver.hooks().len(), 2);
    // Nor does a replay to it.
    let r = env
        .cp
        .post(&format!("/api/v1/notifications/{id}/replay"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    env.drain(Duration::from_millis(200)).await;
    assert_eq!(env.receiver.hooks().len(), 2);
    let page = env.notifications(&user, "").await;
    let first = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == json!(id))
        .unwrap();
    assert!(
        statuses(first).contains(&("webhook".into(), "skipped".into())),
        "{first}"
    );
    let audit = env.cp.get("/api/v1/audit").await.json().to_string();
    for action in [
        "webhook_endpoint.create",
        "notification.replay",
        "webhook_endpoint.disable",
    ] {
        assert!(audit.contains(action), "{action}: {audit}");
    }
}

async fn in_app_pages_newest_first_with_read_marks(db: TestDb) {
    let env = start(db, 3, None).await;
    let user = env.user("ada@example.com").await;
    for i in 0..5 {
        env.cp
            .db
            .store
            .insert_notification(
                &NewNotification::payment_failed(&user, &format!("in_{i}")),
                now_ms(),
            )
            .await
            .unwrap();
    }
    let first = env.notifications(&user, "?limit=2").await;
    let subjects = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["subject"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(subjects(&first), ["in_4", "in_3"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = env
        .notifications(&user, &format!("?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(subjects(&second), ["in_2", "in_1"]);
    let last = env
        .notifications(
            &user,
            &format!(
                "?limit=2&cursor={}",
                second["next_cursor"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(subjects(&last), ["in_0"]);
    assert_eq!(last["next_cursor"], Value::Null);

    let id = first["items"][1]["id"].as_str().unwrap();
    let path = format!("/api/v1/users/{user}/notifications/{id}/read");
    let viewer = env.cp.read_only_token().await;
    let r = env.cp.send("POST", &path, Some(&viewer), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = env.cp.post(&path, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let read_at = r.json()["read_at"].as_i64().unwrap();
    // Reading again keeps the first time.
    let again = env.cp.post(&path, json!({})).await.json();
    assert_eq!(again["read_at"].as_i64(), Some(read_at));
    let unread = env.notifications(&user, "?unread=true").await;
    assert_eq!(subjects(&unread), ["in_4", "in_2", "in_1", "in_0"]);
    // Another user's notification cannot be marked through this user.
    let bob = env.user("bob@example.com").await;
    let r = env
        .cp
        .post(
            &format!("/api/v1/users/{bob}/notifications/{id}/read"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = env.cp.get("/api/v1/users/usr_nobody/notifications").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = env
        .cp
        .get(&format!("/api/v1/users/{user}/notifications?unread=maybe"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}
