//! Test databases (a fresh SQLite file or a fresh PostgreSQL database per
//! test, so tests run in parallel), a started control plane, and a client
//! that drives its router without a socket.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use molt_controlplane::store::SqlStore;
use molt_controlplane::{App, Settings};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tower::ServiceExt;

pub(crate) const ADMIN: &str = "bootstrap-admin-token-for-tests";
pub(crate) const DATAPLANE: &str = "dataplane-token-for-tests";
pub(crate) const JWT_SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";
/// Clerk's webhook secret (`whsec_` + base64 of "clerk-webhook-secret-for-tests").
pub(crate) const CLERK_WHSEC: &str = "whsec_Y2xlcmstd2ViaG9vay1zZWNyZXQtZm9yLXRlc3Rz";

/// Generate one `#[tokio::test]` per database for each listed
/// `async fn name(db: TestDb)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::TestDb::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = $crate::harness::TestDb::postgres().await else { return };
                    let name = db.pg_name.clone();
                    super::$name(db).await;
                    // Only after a pass: a failed test's database stays
                    // for inspection.
                    $crate::harness::drop_pg_database(name).await;
                }
            )*
        }
    };
}

/// One test's own database.
#[derive(Debug)]
pub(crate) struct TestDb {
    pub(crate) url: String,
    /// The PostgreSQL database this test created, if any.
    pub(crate) pg_name: Option<String>,
    pub(crate) store: Arc<SqlStore>,
}

impl TestDb {
    pub(crate) async fn sqlite() -> Self {
        let (url, _) = empty_database(false).await;
        let store = SqlStore::connect(&url, 4).await.expect("sqlite store");
        Self {
            url,
            pg_name: None,
            store: Arc::new(store),
        }
    }

    /// A fresh database on the server `DATABASE_URL` names; `None` (with a
    /// loud note) when it is unset, a failure when it is unset under CI.
    pub(crate) async fn postgres() -> Option<Self> {
        if std::env::var("DATABASE_URL").is_err() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("DATABASE_URL must be set when CI=true: PostgreSQL tests cannot be skipped");
            }
            eprintln!(
                "\n!!! DATABASE_URL is not set: SKIPPING the PostgreSQL half of this test !!!\n"
            );
            return None;
        }
        let (url, pg_name) = empty_database(true).await;
        let store = SqlStore::connect(&url, 4).await.expect("postgres store");
        Some(Self {
            url,
            pg_name,
            store: Arc::new(store),
        })
    }
}

/// A new, empty (unmigrated) database: a SQLite file, or a PostgreSQL
/// database on the server `DATABASE_URL` names (which must be set). Its URL,
/// and the PostgreSQL database's name to drop afterwards.
pub(crate) async fn empty_database(postgres: bool) -> (String, Option<String>) {
    if !postgres {
        let path = std::env::temp_dir().join(format!("molt-cp-{}.db", uuid::Uuid::now_v7()));
        return (format!("sqlite://{}?mode=rwc", path.display()), None);
    }
    use sqlx::Connection;
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set");
    sqlx::any::install_default_drivers();
    let name = format!("molt_cp_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::AnyConnection::connect(&base)
        .await
        .expect("connect to DATABASE_URL");
    // A database name cannot be a bind parameter; `name` is generated
    // above from a UUID, never from input.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    admin.close().await.ok();
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    (url.to_string(), Some(name))
}

/// Drop a test's PostgreSQL database (forcing out pooled connections).
pub(crate) async fn drop_pg_database(name: Option<String>) {
    use sqlx::Connection;
    let (Some(name), Ok(base)) = (name, std::env::var("DATABASE_URL")) else {
        return;
    };
    let mut admin = sqlx::AnyConnection::connect(&base)
        .await
        .expect("connect to DATABASE_URL");
    // As in `postgres()`: the name is ours, generated from a UUID.
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop test database");
    admin.close().await.ok();
}

pub(crate) fn env() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        (
            "KEY",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ),
        ("DP", DATAPLANE),
        ("ADMIN", ADMIN),
        ("JWT", JWT_SECRET),
        ("CLERK_WHSEC", CLERK_WHSEC),
    ])
}

pub(crate) fn settings() -> Settings {
    settings_with("")
}

/// The test settings with `tail` (whole tables, e.g. `[identity]`) added.
pub(crate) fn settings_with(tail: &str) -> Settings {
    settings_with_env(tail, &[])
}

/// The test settings with `tail` added and some of the test environment's
/// variables replaced (`KEY` the at-rest key, `PREV` the previous keys).
pub(crate) fn settings_with_env(tail: &str, vars: &[(&'static str, &str)]) -> Settings {
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        database_url = "unused"
        [secrets]
        encryption_key_env = "KEY"
        previous_encryption_keys_env = "PREV"
        dataplane_token_env = "DP"
        bootstrap_admin_token_env = "ADMIN"
        [jwt]
        issuer = "molt-test"
        secret_env = "JWT"
        [tuning]
        poll_hold = "300ms"
        refresh_interval = "1h"
        max_body_bytes = 65536
        max_ingest_bytes = 65536
        {tail}
        "#
    );
    let raw = toml::from_str(&text).expect("test config parses");
    let mut env = env();
    env.extend(vars.iter().copied());
    Settings::resolve(raw, &env).expect("test config resolves")
}

/// A started control plane and a client for it.
pub(crate) struct Cp {
    pub(crate) app: App,
    pub(crate) db: TestDb,
}

/// A response: status and raw body.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Resp {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The message of an error body.
    pub(crate) fn message(&self) -> String {
        let v = self.json();
        v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {v}"))
            .to_owned()
    }

    /// The error code of an error body, checking its shape.
    pub(crate) fn code(&self) -> String {
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "error body: {v}");
        v["error"]["code"].as_str().expect("error.code").to_owned()
    }
}

impl Cp {
    pub(crate) async fn start(db: TestDb) -> Self {
        Self::start_with(db, &settings()).await
    }

    /// With `settings` instead of the test config (another at-rest key,
    /// identity settings).
    pub(crate) async fn start_with(db: TestDb, settings: &Settings) -> Self {
        let app = App::start(db.store.clone(), settings)
            .await
            .expect("control plane starts");
        Self { app, db }
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.unwrap_or_else(Body::empty)).unwrap();
        let resp = self.app.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Resp { status, body }
    }

    /// As the bootstrap admin.
    pub(crate) async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.send(
            method,
            path,
            Some(ADMIN),
            body.map(|b| Body::from(b.to_string())),
        )
        .await
    }

    pub(crate) async fn get(&self, path: &str) -> Resp {
        self.admin("GET", path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Resp {
        self.admin("POST", path, Some(body)).await
    }

    /// The secret of a new read-only operator token.
    pub(crate) async fn read_only_token(&self) -> String {
        let r = self
            .post(
                "/api/v1/admin-tokens",
                serde_json::json!({"name": "viewer", "role": "read_only"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.json()["secret"].as_str().unwrap().to_owned()
    }

    /// `GET /internal/v1/config?after=N` as a data plane.
    pub(crate) async fn config_after(&self, after: u64) -> Resp {
        self.send(
            "GET",
            &format!("/internal/v1/config?after={after}"),
            Some(DATAPLANE),
            None,
        )
        .await
    }

    pub(crate) async fn ingest(&self, body: Value) -> Resp {
        self.send(
            "POST",
            "/internal/v1/usage",
            Some(DATAPLANE),
            Some(Body::from(body.to_string())),
        )
        .await
    }

    /// A provider `p1`, a model `m1` on it, an active user and a key.
    pub(crate) async fn seed(&self) -> Seed {
        let r = self
            .post(
                "/api/v1/providers",
                serde_json::json!({"name":"p1","kind":"openai","base_url":"http://127.0.0.1:9800","keys":[MASTER_KEY]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let r = self
            .post(
                "/api/v1/models",
                serde_json::json!({"name":"m1","provider":"p1","aliases":["mini"],
                    "price": {"input": "2", "output": "10"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let user = self
            .post(
                "/api/v1/users",
                serde_json::json!({"email":"ada@example.com"}),
            )
            .await;
        assert_eq!(user.status, StatusCode::CREATED, "{:?}", user.body);
        let user_id = user.json()["id"].as_str().unwrap().to_owned();
        let key = self
            .post(
                "/api/v1/keys",
                serde_json::json!({"user_id": user_id, "models": ["mini"]}),
            )
            .await;
        assert_eq!(key.status, StatusCode::CREATED, "{:?}", key.body);
        let k = key.json();
        Seed {
            user_id,
            key_id: k["key"]["id"].as_str().unwrap().to_owned(),
            secret: k["secret"].as_str().unwrap().to_owned(),
        }
    }
}

/// POST `body` (JSON) to `uri` with `headers`, as a webhook sender does.
pub(crate) async fn post_with_headers(
    app: &App,
    uri: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Resp {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = app
        .router
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Resp { status, body }
}

/// A provider master key: must appear in snapshots and nowhere else.
pub(crate) const MASTER_KEY: &str = "sk-MASTER-never-shown-4f1d2c";

#[derive(Debug, Clone)]
pub(crate) struct Seed {
    pub(crate) user_id: String,
    pub(crate) key_id: String,
    pub(crate) secret: String,
}

pub(crate) fn event(id: &str, user: &str, model: &str, input: u64, output: u64) -> Value {
    serde_json::json!({
        "event_id": id, "request_id": format!("req-{id}"), "timestamp_ms": 1_700_000_000_000u64,
        "key_id": "key_x", "user_id": user, "model": model, "provider": "p1",
        "route": "chat.completions", "status": 200, "input_tokens": input,
        "output_tokens": output, "estimated": false, "stream": true, "attempts": 1,
        "duration_ms": 12, "outcome": "ok"
    })
}
