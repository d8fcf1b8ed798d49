//! The in-process test bed: a mock provider on the test's runtime, and a
//! data plane (Pingora, its own runtimes) on a thread of its own, both on
//! `127.0.0.1:0`, with a usage sink the test reads and can hold shut.

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use molt_config::UsageEvent;
use molt_dataplane::server::{DataPlane, Launch, Listeners};
use molt_dataplane::sink::{Recorded, UsageSink};
use molt_fakes::mock_provider::{MockOptions, MockProvider};
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// The client key every test uses (its hash is in the config).
pub(crate) const CLIENT_KEY: &str = "molt_sk_in_process_test_key_000000000000000000000";
/// The provider's master key, which only the mock may ever see.
pub(crate) const MASTER_KEY: &str = "sk-master-in-process-000000";

/// The mock provider, serving on a port of its own.
pub(crate) async fn mock_provider(options: MockOptions) -> (MockProvider, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mock = MockProvider::new(options);
    tokio::spawn(mock.clone().serve(listener));
    (mock, addr)
}

/// A data plane config routing to the mock at `mock`:
/// - `gpt` (alias `mini`) on the mock;
/// - `flaky`: the mock answers 503, falls back to `gpt`;
/// - `unreachable`: a provider nobody listens for, falls back to `gpt`;
/// - `claude` on the mock as an Anthropic provider.
pub(crate) fn config(mock: SocketAddr) -> String {
    config_with(mock, "", "")
}

/// [`config`] with `server` lines added to `[server]` and `tail` (whole
/// tables) appended.
pub(crate) fn config_with(mock: SocketAddr, server: &str, tail: &str) -> String {
    // A port that was free a moment ago and is closed now: connect refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hash = hex::encode(Sha256::digest(CLIENT_KEY.as_bytes()));
    format!(
        r#"
version = 1

[server]
listen = "127.0.0.1:0"
threads = 1
grace_period = "1s"
upstream_connect_timeout = "2s"
upstream_read_timeout = "10s"
{server}

[admin]
listen = "127.0.0.1:0"

[log]
access_log = false

[[keys]]
id = "k1"
user = "u1"
sha256 = "{hash}"

[[providers]]
name = "mock-openai"
kind = "openai"
base_url = "http://{mock}/v1"
keys = ["{MASTER_KEY}"]

[[providers]]
name = "mock-anthropic"
kind = "anthropic"
base_url = "http://{mock}/v1"
keys = ["{MASTER_KEY}"]

[[providers]]
name = "dead"
kind = "openai"
base_url = "http://{dead}/v1"
keys = ["{MASTER_KEY}"]

[[models]]
name = "gpt"
provider = "mock-openai"
aliases = ["mini"]

[[models]]
name = "flaky"
provider = "mock-openai"
upstream_name = "mock-error-503"
fallbacks = ["gpt"]

[[models]]
name = "unreachable"
provider = "dead"
fallbacks = ["gpt"]

[[models]]
name = "claude"
provider = "mock-anthropic"

{tail}
"#
    )
}

/// The usage sink of an in-process data plane: every event it was handed,
/// and, while held, durable records that stay unrecorded until released.
#[derive(Default)]
pub(crate) struct Events {
    kept: Mutex<Vec<UsageEvent>>,
    held: Mutex<Option<Vec<oneshot::Sender<()>>>>,
    arrived: Notify,
}

impl UsageSink for Events {
    fn record(&self, event: UsageEvent) {
        self.kept.lock().unwrap().push(event);
        self.arrived.notify_waiters();
    }

    fn record_durable(&self, event: UsageEvent) -> Recorded {
        self.record(event);
        match self.held.lock().unwrap().as_mut() {
            Some(waiting) => {
                let (tx, rx) = oneshot::channel();
                waiting.push(tx);
                Recorded::on(rx)
            }
            None => Recorded::now(),
        }
    }
}

impl Events {
    /// From now on, durable records stay unrecorded until [`Self::release`].
    pub(crate) fn hold(&self) {
        *self.held.lock().unwrap() = Some(Vec::new());
    }

    /// Record everything held, and stop holding.
    pub(crate) fn release(&self) {
        if let Some(waiting) = self.held.lock().unwrap().take() {
            for tx in waiting {
                let _ = tx.send(());
            }
        }
    }

    /// How many durable records are waiting to be recorded.
    pub(crate) fn waiting(&self) -> usize {
        self.held.lock().unwrap().as_ref().map_or(0, Vec::len)
    }

    /// The event of `request_id`, waiting up to 5 s for it.
    pub(crate) async fn of(&self, request_id: &str) -> UsageEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let arrived = self.arrived.notified();
            if let Some(e) = self
                .kept
                .lock()
                .unwrap()
                .iter()
                .find(|e| e.request_id == request_id)
            {
                return e.clone();
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("no usage event for request {request_id}");
            }
        }
    }
}

/// Ends a data plane run by [`DataPlane::run_until`].
struct Stop(Arc<Notify>);

#[async_trait]
impl ShutdownSignalWatch for Stop {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A data plane running in this process; stopped when dropped.
pub(crate) struct Dataplane {
    pub(crate) listeners: Listeners,
    pub(crate) events: Arc<Events>,
    stop: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl Dataplane {
    /// Start a data plane on `config` (TOML) and wait until it listens.
    pub(crate) async fn start(config: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("molt-it-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dataplane.toml");
        std::fs::write(&path, config).unwrap();
        let events = Arc::new(Events::default());
        let (up_tx, up_rx) = oneshot::channel();
        let launch = Launch {
            init_tracing: false,
            usage_sink: Some(events.clone()),
            on_listening: Some(Box::new(move |_: &Listeners| {
                let _ = up_tx.send(());
            })),
            ..Launch::default()
        };
        let dataplane = DataPlane::assemble(&path, launch).expect("the data plane starts");
        let listeners = dataplane.listeners();
        let stop = Arc::new(Notify::new());
        let signal = Stop(stop.clone());
        let thread = std::thread::spawn(move || dataplane.run_until(Box::new(signal)));
        tokio::time::timeout(Duration::from_secs(10), up_rx)
            .await
            .expect("the listeners come up")
            .unwrap();
        Self {
            listeners,
            events,
            stop,
            thread: Some(thread),
            dir,
        }
    }

    /// `http://127.0.0.1:<port>` of the plain listener.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listeners.http)
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        // `notify_one` keeps the permit if the server is not waiting yet.
        self.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/1.1 client.
pub(crate) fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A JSON POST with the client key.
pub(crate) fn post(url: &str, body: serde_json::Value) -> http::Request<Full<Bytes>> {
    http::Request::post(url)
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The whole body of a response, as text.
pub(crate) async fn text(resp: http::Response<hyper::body::Incoming>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The response's `x-request-id`.
pub(crate) fn request_id<B>(resp: &http::Response<B>) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// The Redis to use, or `None` (skip) outside CI.
pub(crate) async fn redis_addr() -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let Some(url) = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) else {
        assert!(!ci, "REDIS_URL must be set in CI");
        eprintln!("!!! SKIPPED: REDIS_URL is not set; the Redis-backed limiter tests did not run");
        return None;
    };
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    if tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(!ci, "Redis at {addr} is unreachable in CI");
        eprintln!("!!! SKIPPED: Redis at {addr} is unreachable; the Redis-backed limiter tests did not run");
        return None;
    }
    Some(addr)
}
