//! Provisioning end to end: the real router and worker, the real Fly client
//! against the in-process fake Fly (whose machines run mock bots), on both
//! databases. Faults: Fly 5xx, responses lost after Fly acted, workers
//! dropped between and inside steps, health that never passes. Each ends
//! with exactly one machine and one volume per bot (or none after delete).

use crate::harness::{settings, Cp, Resp, TestDb, MASTER_KEY};
use axum::http::StatusCode;
use molt_controlplane::fleet::fly::{FlyFleet, FlySettings};
use molt_controlplane::fleet::Fleet;
use molt_controlplane::provision::ProvisionSettings;
use molt_controlplane::server::Provisioning;
use molt_controlplane::App;
use molt_fakes::fake_fly::{FakeFly, FakeFlyOptions, Fault};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

crate::on_both_databases!(
    provisions_to_running_and_publishes_the_bot,
    fly_500s_then_success_makes_one_of_each,
    lost_responses_make_one_of_each,
    workers_dropped_between_and_inside_steps_resume,
    stop_start_and_delete_leave_nothing_behind,
    health_that_never_passes_fails_readably_and_retry_works,
    concurrent_workers_never_double_a_bot,
);

const APP: &str = "molt-bots";

struct Env {
    cp: Cp,
    fake: FakeFly,
}

fn fly_settings(base: &str) -> FlySettings {
    let mut s = FlySettings::new(
        APP,
        "ghcr.io/clawdbot/clawdbot:latest",
        molt_config::Secret::new(FakeFlyOptions::default().token),
    );
    s.base_url = base.to_owned();
    // The fake gives each machine its own loopback address.
    s.gateway_url_template = "http://{private_ip}:18789/".into();
    s.backoff = Duration::from_millis(20);
    s.request_timeout = Duration::from_secs(5);
    s
}

fn provision_settings() -> ProvisionSettings {
    ProvisionSettings {
        proxy_url: "http://127.0.0.1:8080/v1".into(),
        health_deadline: Duration::from_secs(10),
        poll_interval: Duration::from_millis(20),
        step_timeout: Duration::from_secs(2),
        lease: Duration::from_secs(3),
        max_attempts: 10,
        backoff: Duration::from_millis(20),
        ..ProvisionSettings::default()
    }
}

async fn start(
    db: TestDb,
    fake_opts: FakeFlyOptions,
    run_worker: bool,
    tweak: impl FnOnce(&mut ProvisionSettings),
) -> Env {
    let fake = FakeFly::new(fake_opts);
    let base = fake.spawn().await.unwrap();
    let fleet: Arc<dyn Fleet> = Arc::new(FlyFleet::new(fly_settings(&base)).unwrap());
    let mut ps = provision_settings();
    tweak(&mut ps);
    let app = App::start_with(
        db.store.clone(),
        &settings(),
        Some(Provisioning {
            fleet,
            settings: ps,
            run_worker,
        }),
    )
    .await
    .unwrap();
    Env {
        cp: Cp { app, db },
        fake,
    }
}

fn quick() -> FakeFlyOptions {
    FakeFlyOptions {
        boot_delay: Duration::from_millis(50),
        stop_delay: Duration::from_millis(20),
        rate_limits: false,
        ..FakeFlyOptions::default()
    }
}

impl Env {
    async fn user(&self, email: &str) -> String {
        let r = self.cp.post("/api/v1/users", json!({"email": email})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.json()["id"].as_str().unwrap().to_owned()
    }

    async fn create_bot(&self, user: &str) -> String {
        let r = self
            .cp
            .post("/api/v1/bots", json!({"user_id": user, "model": "m1"}))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        let b = r.json();
        assert_eq!(b["status"], "requested");
        b["id"].as_str().unwrap().to_owned()
    }

    async fn bot(&self, id: &str) -> Value {
        let r = self.cp.get(&format!("/api/v1/bots/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.json()
    }

    /// Poll until the bot is `status` (failing on a different final one).
    async fn wait_for(&self, id: &str, status: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let b = self.bot(id).await;
            if b["status"] == status {
                return b;
            }
            assert!(
                b["status"] != "failed",
                "bot failed while waiting for {status}: {b}"
            );
            assert!(Instant::now() < end, "bot never became {status}: {b}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn act(&self, id: &str, action: &str) -> Resp {
        let r = if action == "delete" {
            self.cp
                .admin("DELETE", &format!("/api/v1/bots/{id}"), None)
                .await
        } else {
            self.cp
                .post(&format!("/api/v1/bots/{id}/{action}"), json!({}))
                .await
        };
        assert_eq!(r.status, StatusCode::ACCEPTED, "{action}: {:?}", r.body);
        r
    }

    /// Exactly one live machine and one volume, both the bot's.
    fn assert_one_of_each(&self, bot: &Value) {
        let machines = self.fake.live_machines();
        let volumes = self.fake.volumes();
        assert_eq!(machines.len(), 1, "machines: {machines:#?}");
        assert_eq!(volumes.len(), 1, "volumes: {volumes:#?}");
        assert_eq!(bot["machine_id"], json!(machines[0].id));
        assert_eq!(bot["volume_id"], json!(volumes[0].id));
        assert_eq!(
            volumes[0].attached_machine_id.as_deref(),
            Some(machines[0].id.as_str())
        );
    }

    /// The snapshot's bots once it holds `n` (the worker publishes right
    /// after recording `running`, so a reader may be a moment early).
    async fn snapshot_with(&self, n: usize) -> Value {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let bots = self.snapshot_bots().await;
            if bots.as_array().map_or(0, Vec::len) == n {
                return bots;
            }
            assert!(Instant::now() < end, "snapshot never had {n} bots: {bots}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn snapshot_bots(&self) -> Value {
        let r = self.cp.config_after(0).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.json()["bots"].clone()
    }
}

async fn provisions_to_running_and_publishes_the_bot(db: TestDb) {
    // Fly's real rate limits on: the client must back off through them.
    let env = start(
        db,
        FakeFlyOptions {
            boot_delay: Duration::from_millis(100),
            ..FakeFlyOptions::default()
        },
        true,
        |_| {},
    )
    .await;
    // A provider with a master key exists: it must never reach the bot.
    let r = env
        .cp
        .post(
            "/api/v1/providers",
            json!({"name": "p1", "kind": "openai", "base_url": "http://127.0.0.1:9800", "keys": [MASTER_KEY]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let user = env.user("ada@example.com").await;
    let id = env.create_bot(&user).await;
    let bot = env.wait_for(&id, "running").await;
    env.assert_one_of_each(&bot);
    assert_eq!(bot["error"], Value::Null);
    let machine = serde_json::to_string(&env.fake.live_machines()[0].config).unwrap();
    assert!(
        !machine.contains(MASTER_KEY),
        "a master key in the bot's machine: {machine}"
    );

    // The machine is what the seed asks for.
    let m = &env.fake.live_machines()[0];
    let c = &m.config;
    assert_eq!(c["image"], "ghcr.io/clawdbot/clawdbot:latest");
    assert_eq!(c["env"]["MOLT_USER_ID"], json!(user));
    assert_eq!(c["env"]["PROXY_URL"], "http://127.0.0.1:8080/v1");
    let claw: Value = serde_json::from_str(c["env"]["CLAWDBOT_CONFIG"].as_str().unwrap()).unwrap();
    assert_eq!(claw["agents"]["defaults"]["model"]["primary"], "m1");
    assert_eq!(
        claw["agents"]["defaults"]["workspace"],
        json!(format!("/data/{user}"))
    );
    let token = c["env"]["MOLT_GATEWAY_TOKEN"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    assert_eq!(c["services"][0]["internal_port"], 18789);
    assert_eq!(
        c["services"][0]["ports"][0],
        json!({"port": 443, "handlers": ["tls", "http"]})
    );
    assert_eq!(c["mounts"][0]["path"], "/data");
    assert_eq!(c["restart"]["policy"], "always");
    assert_eq!(c["auto_destroy"], false);
    assert_eq!(
        c["guest"],
        json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 512})
    );
    assert_eq!(c["metadata"]["molt_bot_id"], json!(id));

    // The data planes get it, token included; the API never shows it.
    let bots = env.snapshot_with(1).await;
    assert_eq!(bots[0]["id"], json!(id));
    assert_eq!(bots[0]["user"], json!(user));
    assert_eq!(bots[0]["gateway_token"], json!(token));
    assert_eq!(bots[0]["gateway_url"], bot["gateway_url"]);
    let raw: molt_config::wire::RawSnapshot =
        serde_json::from_value(env.cp.config_after(0).await.json()).unwrap();
    molt_controlplane::snapshot::validate(&raw).unwrap();
    for path in [
        format!("/api/v1/bots/{id}"),
        "/api/v1/bots".into(),
        "/api/v1/audit".into(),
    ] {
        let body = env.cp.get(&path).await.body;
        assert!(
            !String::from_utf8_lossy(&body).contains(&token),
            "{path} leaks the gateway token"
        );
    }

    // The bot behind the gateway URL answers its health check.
    let list = env
        .cp
        .get(&format!("/api/v1/bots?user_id={user}"))
        .await
        .json();
    assert_eq!(list["items"][0]["id"], json!(id));
    let audit = env.cp.get("/api/v1/audit").await.json();
    assert!(audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "bot.create" && e["target"] == json!(id)));
    let metrics = String::from_utf8_lossy(&env.cp.get("/metrics").await.body).into_owned();
    assert!(
        metrics.contains("molt_cp_bots{status=\"running\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("molt_cp_provision_step_seconds_count{step=\"requested\"}"));
    // Nothing is left in an unfinished state, so nothing is "stuck".
    assert!(
        metrics.contains("molt_cp_provision_oldest_step_seconds{status=\"waiting_health\"} 0"),
        "{metrics}"
    );

    // A second bot for the same user is refused.
    let r = env.cp.post("/api/v1/bots", json!({"user_id": user})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let r = env
        .cp
        .post("/api/v1/bots", json!({"user_id": "usr_nobody"}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
}

async fn fly_500s_then_success_makes_one_of_each(db: TestDb) {
    let env = start(db, quick(), true, |_| {}).await;
    let user = env.user("b@example.com").await;
    // Every Fly call fails twice, whatever it is, before anything is done.
    env.fake.inject(Fault::fail(500, 2));
    env.fake
        .inject(Fault::fail(503, 2).matching("POST /v1/apps/molt-bots/machines"));
    let id = env.create_bot(&user).await;
    let bot = env.wait_for(&id, "running").await;
    env.assert_one_of_each(&bot);
    let calls = env.fake.calls();
    assert!(
        calls.iter().filter(|(_, s)| *s >= 500).count() >= 4,
        "{calls:?}"
    );
}

async fn lost_responses_make_one_of_each(db: TestDb) {
    let env = start(db, quick(), true, |_| {}).await;
    let user = env.user("c@example.com").await;
    // Fly creates the volume and the machine, but neither answer arrives.
    env.fake
        .inject(Fault::drop_response("POST /v1/apps/molt-bots/volumes"));
    env.fake
        .inject(Fault::drop_response("POST /v1/apps/molt-bots/machines"));
    let id = env.create_bot(&user).await;
    let bot = env.wait_for(&id, "running").await;
    env.assert_one_of_each(&bot);
    let creates = |p: &str| {
        env.fake
            .calls()
            .iter()
            .filter(|(c, _)| c == &format!("POST /v1/apps/molt-bots/{p}"))
            .count()
    };
    // Each create was sent once: the retry found what the first one made.
    assert_eq!((creates("volumes"), creates("machines")), (1, 1));
}

async fn workers_dropped_between_and_inside_steps_resume(db: TestDb) {
    let env = start(
        db,
        FakeFlyOptions {
            boot_delay: Duration::from_millis(600),
            ..quick()
        },
        false,
        |s| s.lease = Duration::from_millis(800),
    )
    .await;
    let user = env.user("d@example.com").await;
    let id = env.create_bot(&user).await;

    // A worker does the first step and is gone.
    let w = env.cp.app.worker().unwrap();
    assert_eq!(w.tick().await.unwrap(), 1);
    drop(w);
    assert_eq!(env.bot(&id).await["status"], "volume_created");

    // Fly makes the machine, but the worker never hears of it (as if it
    // crashed right after the call).
    env.fake
        .inject(Fault::drop_response("POST /v1/apps/molt-bots/machines"));
    let w = env.cp.app.worker().unwrap();
    w.tick().await.unwrap();
    drop(w);
    let b = env.bot(&id).await;
    assert_eq!(b["status"], "volume_created", "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("outcome unknown"),
        "{b}"
    );
    assert_eq!(env.fake.live_machines().len(), 1);

    // A new worker finds that machine instead of making a second.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w = env.cp.app.worker().unwrap();
    assert_eq!(w.tick().await.unwrap(), 1);
    drop(w);
    assert_eq!(env.bot(&id).await["status"], "machine_created");

    // A worker is killed in the middle of waiting for the boot, holding
    // its claim.
    let w = env.cp.app.worker().unwrap();
    let task = tokio::spawn(async move { w.tick().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    task.abort();
    let _ = task.await;

    // Until the claim expires nobody else runs the bot's step ...
    let w = env.cp.app.worker().unwrap();
    assert_eq!(w.tick().await.unwrap(), 0);
    // ... then the next worker takes over and finishes.
    let end = Instant::now() + Duration::from_secs(20);
    while env.bot(&id).await["status"] != "running" {
        assert!(Instant::now() < end, "{}", env.bot(&id).await);
        w.tick().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    env.assert_one_of_each(&env.bot(&id).await);
}

async fn stop_start_and_delete_leave_nothing_behind(db: TestDb) {
    let env = start(db, quick(), true, |_| {}).await;
    let user = env.user("e@example.com").await;
    let id = env.create_bot(&user).await;
    env.wait_for(&id, "running").await;

    env.act(&id, "stop").await;
    env.wait_for(&id, "stopped").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.fake.live_machines()[0].state != "stopped" {
        assert!(Instant::now() < deadline, "{:?}", env.fake.live_machines());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.snapshot_bots().await, json!([]));

    env.act(&id, "start").await;
    let bot = env.wait_for(&id, "running").await;
    env.assert_one_of_each(&bot);
    env.snapshot_with(1).await;

    env.act(&id, "delete").await;
    env.wait_for(&id, "deleted").await;
    assert_eq!(
        env.fake.live_machines().len(),
        0,
        "{:?}",
        env.fake.machines()
    );
    assert_eq!(env.fake.volumes().len(), 0, "{:?}", env.fake.volumes());
    assert_eq!(env.snapshot_bots().await, json!([]));
    let r = env
        .cp
        .post(&format!("/api/v1/bots/{id}/start"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let audit = env.cp.get("/api/v1/audit").await.json();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == json!(id))
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["bot.delete", "bot.start", "bot.stop", "bot.create"]
    );
    // The user may have a new bot once the old one is deleted.
    env.create_bot(&user).await;
}

async fn health_that_never_passes_fails_readably_and_retry_works(db: TestDb) {
    let env = start(db, quick(), true, |s| {
        s.health_deadline = Duration::from_millis(800);
    })
    .await;
    env.fake.set_bots_healthy(false);
    let user = env.user("f@example.com").await;
    let id = env.create_bot(&user).await;
    let bot = env.wait_for(&id, "failed").await;
    let error = bot["error"].as_str().unwrap();
    assert!(
        error.contains("GET /status") && error.contains("HTTP 503"),
        "{error}"
    );
    assert_eq!(env.snapshot_bots().await, json!([]));
    let r = env
        .cp
        .post(&format!("/api/v1/bots/{id}/stop"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    env.wait_for(&id, "stopped").await;
    // Retry only applies to failed bots.
    let r = env
        .cp
        .post(&format!("/api/v1/bots/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);

    env.fake.set_bots_healthy(true);
    env.act(&id, "start").await;
    let bot = env.wait_for(&id, "running").await;
    env.assert_one_of_each(&bot);

    // And a real retry: fail it again, heal, retry.
    env.act(&id, "stop").await;
    env.wait_for(&id, "stopped").await;
    env.fake.set_bots_healthy(false);
    env.act(&id, "start").await;
    env.wait_for(&id, "failed").await;
    env.fake.set_bots_healthy(true);
    let r = env.act(&id, "retry").await;
    assert_eq!(r.json()["status"], "requested");
    let bot = env.wait_for(&id, "running").await;
    env.assert_one_of_each(&bot);
}

async fn concurrent_workers_never_double_a_bot(db: TestDb) {
    let env = start(db, quick(), false, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let user = env.user(&format!("w{i}@example.com")).await;
        ids.push(env.create_bot(&user).await);
    }
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let w = env.cp.app.worker().unwrap();
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                w.tick().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for id in &ids {
        env.wait_for(id, "running").await;
    }
    for t in &tasks {
        t.abort();
    }
    let machines = env.fake.live_machines();
    let volumes = env.fake.volumes();
    assert_eq!((machines.len(), volumes.len()), (3, 3), "{machines:#?}");
    let creates = env
        .fake
        .calls()
        .iter()
        .filter(|(c, _)| c.starts_with("POST /v1/apps/molt-bots/") && !c.contains("/machines/"))
        .count();
    assert_eq!(creates, 6, "one volume and one machine create per bot");
}
