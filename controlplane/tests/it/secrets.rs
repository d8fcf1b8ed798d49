//! Rotation of the at-rest key on both databases: a control plane with the
//! old key keeps serving while one with the new key current (and the old
//! as previous) re-encrypts; the snapshot's content is the same before,
//! during and after; once the old key is dropped everything still opens.
//! A value under a key that is not configured is a clear error naming the
//! key id, and nothing is lost.

use crate::harness::{settings_with_env, Cp, Resp, TestDb};
use axum::http::StatusCode;
use molt_controlplane::crypto::Cipher;
use molt_controlplane::domain::{SealedKind, SealedValue};
use molt_controlplane::Settings;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

crate::on_both_databases!(
    rotation_keeps_serving_and_the_snapshot_unchanged,
    values_under_a_dropped_key_are_named_and_recover,
    reencrypt_is_admin_only_and_audited_without_secrets,
    reseal_only_replaces_what_was_read,
);

const OLD: &str = "old:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const NEW: &str = "new:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
/// More providers than one page of re-encryption reads.
const PROVIDERS: usize = 105;

/// The test config with the at-rest key `current` and `previous` keys.
fn keyring(current: &str, previous: &str) -> Settings {
    settings_with_env("", &[("KEY", current), ("PREV", previous)])
}

/// Another control plane on `db`'s database (one deployment replacing
/// another); the database is dropped with the first.
async fn on_same_db(db: &TestDb, settings: &Settings) -> Cp {
    let db = TestDb {
        url: db.url.clone(),
        pg_name: None,
        store: db.store.clone(),
    };
    Cp::start_with(db, settings).await
}

/// The served snapshot without its version (which a start always moves).
async fn content(cp: &Cp) -> Value {
    let r = cp.config_after(0).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let mut v = r.json();
    v.as_object_mut().unwrap().remove("version");
    v
}

/// Every sealed value of `kind`, as stored.
async fn stored(cp: &Cp, kind: SealedKind) -> Vec<SealedValue> {
    cp.db.store.sealed_values(kind, "", 10_000).await.unwrap()
}

/// `count` providers (the seed's `p1` included), a model, a user, a key
/// and a bot, all sealed under the running key; one provider's keys
/// rewritten in the `v1:` form from before key ids.
async fn populate(cp: &Cp, count: usize) {
    let seed = cp.seed().await;
    for i in 2..=count {
        let r = cp
            .post(
                "/api/v1/providers",
                json!({"name": format!("p{i}"), "kind": "openai",
                    "base_url": "http://127.0.0.1:9800", "keys": [format!("sk-master-{i}")]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = cp
        .post("/api/v1/bots", json!({"user_id": seed.user_id}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    // A v2 value minus its key id is the v1 value the same key made.
    let first = stored(cp, SealedKind::ProviderKeys).await.remove(0);
    let body = first.sealed.rsplit(':').next().unwrap();
    let legacy = format!("v1:{body}");
    assert!(cp
        .db
        .store
        .reseal(SealedKind::ProviderKeys, &first, &legacy)
        .await
        .unwrap());
}

async fn reencrypt(cp: &Cp) -> Value {
    let r: Resp = cp.post("/api/v1/secrets/reencrypt", json!(null)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()
}

async fn rotation_keeps_serving_and_the_snapshot_unchanged(db: TestDb) {
    let old = Cp::start_with(db, &keyring(OLD, "")).await;
    populate(&old, PROVIDERS).await;
    let before = content(&old).await;
    let values = PROVIDERS as u64 + 1;
    let status = old.get("/api/v1/secrets").await.json();
    assert_eq!(status["sealed"], json!({"old": values - 1, "v1": 1}));
    assert_eq!(status["stale"], json!(1));

    // Step 1: the new key current, the old one previous, beside the old
    // deployment; both keep serving the same content throughout.
    let new = on_same_db(&old.db, &keyring(NEW, OLD)).await;
    assert_eq!(content(&new).await, before);
    let status = new.get("/api/v1/secrets").await.json();
    assert_eq!(status["current_key_id"], "new");
    assert_eq!(status["previous_key_ids"], json!(["old"]));
    assert_eq!(status["stale"], json!(values));

    let old = Arc::new(old);
    let new = Arc::new(new);
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let poller = tokio::spawn({
        let (old, new, stop, polls, before) = (
            old.clone(),
            new.clone(),
            stop.clone(),
            polls.clone(),
            before.clone(),
        );
        async move {
            while !stop.load(Ordering::Relaxed) {
                for cp in [&old, &new] {
                    assert_eq!(content(cp).await, before, "a snapshot changed mid-rotation");
                }
                new.app.service.refresh_snapshot().await;
                polls.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    // Step 2: re-encrypt, while both serve and the new one recompiles.
    let report = reencrypt(&new).await;
    assert_eq!(report["rewritten"], json!(values), "{report}");
    assert_eq!(report["failed"], json!([]), "{report}");
    assert_eq!(report["status"]["stale"], json!(0), "{report}");
    assert_eq!(
        report["status"]["sealed"],
        json!({"new": values}),
        "{report}"
    );
    // Idempotent: nothing left to do.
    let again = reencrypt(&new).await;
    assert_eq!(again["rewritten"], json!(0), "{again}");
    assert_eq!(again["status"]["stale"], json!(0), "{again}");
    stop.store(true, Ordering::Relaxed);
    poller.await.unwrap();
    assert!(polls.load(Ordering::Relaxed) > 0);
    new.app.service.refresh_snapshot().await;
    assert_eq!(content(&new).await, before);

    // Step 3: the old key dropped. Everything opens; the content is the same.
    let only_new = on_same_db(&new.db, &keyring(NEW, "")).await;
    assert_eq!(content(&only_new).await, before);
    let cipher = Cipher::from_text(NEW).unwrap();
    for kind in [SealedKind::ProviderKeys, SealedKind::BotToken] {
        for v in stored(&only_new, kind).await {
            assert!(v.sealed.starts_with("v2:new:"), "{kind}: {}", v.sealed);
            cipher.open(&v.sealed, &v.id).unwrap();
        }
    }
    // And the services that open keys work: a provider's base URL changes
    // with its keys kept (opened, sealed again).
    let r = only_new
        .admin(
            "PATCH",
            "/api/v1/providers/p1",
            Some(json!({"base_url": "http://127.0.0.1:9801"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let after = content(&only_new).await;
    let p1 = |snap: &Value| {
        snap["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "p1")
            .unwrap()
            .clone()
    };
    assert_eq!(p1(&after)["keys"], p1(&before)["keys"]);
}

async fn values_under_a_dropped_key_are_named_and_recover(db: TestDb) {
    let old = Cp::start_with(db, &keyring(OLD, "")).await;
    // p1 (in the v1 form), p2, p3 and the bot's token: 4 values.
    populate(&old, 3).await;
    let before = content(&old).await;

    // The old key dropped too early: the control plane starts, publishes
    // nothing it cannot open (data planes keep what they have) and says
    // which key is missing; re-encryption fails per value, naming it, and
    // rewrites nothing.
    let early = on_same_db(&old.db, &keyring(NEW, "")).await;
    assert_eq!(early.config_after(0).await.status, StatusCode::NOT_MODIFIED);
    let status = early.get("/api/v1/secrets").await.json();
    assert_eq!(status["missing_key_ids"], json!(["old"]), "{status}");
    assert_eq!(status["stale"], json!(4), "{status}");
    let report = reencrypt(&early).await;
    assert_eq!(report["rewritten"], json!(0), "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 4, "{report}");
    let named = failed
        .iter()
        .filter(|f| {
            f["error"]
                == "sealed with key id \"old\", which is not configured (add it to the previous keys)"
        })
        .count();
    // The v1 value names no key: it just does not open with any configured one.
    assert_eq!(named, 3, "{report}");
    assert!(!report.to_string().contains(&OLD[4..]), "{report}");

    // The old key back as previous: everything re-encrypts, nothing lost.
    let fixed = on_same_db(&old.db, &keyring(NEW, OLD)).await;
    let report = reencrypt(&fixed).await;
    assert_eq!(report["rewritten"], json!(4), "{report}");
    assert_eq!(report["status"]["missing_key_ids"], json!([]), "{report}");
    let only_new = on_same_db(&old.db, &keyring(NEW, "")).await;
    assert_eq!(content(&only_new).await, before);
}

/// A value rewritten by someone else after it was read is left alone.
async fn reseal_only_replaces_what_was_read(db: TestDb) {
    let cp = Cp::start_with(db, &keyring(OLD, "")).await;
    populate(&cp, 1).await;
    let read = stored(&cp, SealedKind::BotToken).await.remove(0);
    let store = &cp.db.store;
    let mut changed = read.clone();
    changed.sealed = format!("{}x", read.sealed);
    assert!(!store
        .reseal(SealedKind::BotToken, &changed, "v2:x:AAAA")
        .await
        .unwrap());
    assert_eq!(
        stored(&cp, SealedKind::BotToken).await[0].sealed,
        read.sealed
    );
}

async fn reencrypt_is_admin_only_and_audited_without_secrets(db: TestDb) {
    let cp = Cp::start_with(db, &keyring(OLD, "")).await;
    populate(&cp, 2).await;
    let rotated = on_same_db(&cp.db, &keyring(NEW, OLD)).await;
    let viewer = rotated.read_only_token().await;
    let r = rotated
        .send("POST", "/api/v1/secrets/reencrypt", Some(&viewer), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    // Reading where things stand is allowed.
    let r = rotated
        .send("GET", "/api/v1/secrets", Some(&viewer), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["stale"], json!(3));

    let report = reencrypt(&rotated).await;
    assert_eq!(report["rewritten"], json!(3), "{report}");
    let audit = rotated.get("/api/v1/audit?limit=1").await.json();
    let entry = &audit["items"][0];
    assert_eq!(entry["action"], "secrets.reencrypt", "{entry}");
    assert_eq!(entry["target"], "new", "{entry}");
    assert_eq!(entry["diff"]["rewritten"]["to"], json!(3), "{entry}");
    let text = audit.to_string();
    for secret in [OLD, NEW, &OLD[4..], &NEW[4..], crate::harness::MASTER_KEY] {
        assert!(!text.contains(secret), "audit holds a secret: {text}");
    }
}
