//! The fake Fly's state: machines with time-driven state transitions,
//! volumes, leases, rate-limit buckets, queued faults and the mock bots
//! that started machines run.

use super::{FakeFlyOptions, BOT_PORT};
use crate::mock_bot::{MockBot, MockBotOptions};
use axum::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// What a queued fault does to a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status and `{"error":"injected fault"}`, doing
    /// nothing.
    Fail(u16),
    /// Do what was asked, then drop the response.
    Drop,
    /// Do what was asked, log the call, then hold the response for this
    /// many milliseconds: a window in which the caller can die after Fly
    /// acted but before it heard so (`{"delay": 3000}` in JSON).
    Delay(u64),
}

/// A fault for the next `times` calls whose `METHOD /path` contains
/// `matching` (every call when empty).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub times: u32,
    #[serde(default)]
    pub matching: String,
}

impl Fault {
    pub fn fail(status: u16, times: u32) -> Self {
        Self {
            kind: FaultKind::Fail(status),
            times,
            matching: String::new(),
        }
    }

    pub fn drop_response(matching: &str) -> Self {
        Self {
            kind: FaultKind::Drop,
            times: 1,
            matching: matching.to_owned(),
        }
    }

    /// Act on the next call whose `METHOD /path` contains `matching`, then
    /// answer it `ms` milliseconds later.
    pub fn delay_response(matching: &str, ms: u64) -> Self {
        Self {
            kind: FaultKind::Delay(ms),
            times: 1,
            matching: matching.to_owned(),
        }
    }

    /// Only calls whose `METHOD /path` contains `s`.
    pub fn matching(mut self, s: &str) -> Self {
        s.clone_into(&mut self.matching);
        self
    }
}

/// A volume as the API shows it (`app` is the fake's own bookkeeping).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FakeVolume {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub app: String,
    pub state: String,
    pub size_gb: u32,
    pub region: String,
    pub zone: String,
    pub encrypted: bool,
    pub attached_machine_id: Option<String>,
    pub attached_alloc_id: Option<String>,
    pub fstype: String,
    pub snapshot_retention: u32,
    pub auto_backup_enabled: bool,
    pub created_at: String,
}

/// A machine as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FakeMachine {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub app: String,
    pub state: String,
    pub region: String,
    pub instance_id: String,
    pub private_ip: String,
    pub config: Value,
    pub image_ref: Value,
    pub created_at: String,
    pub updated_at: String,
    pub events: Vec<Value>,
    pub host_status: String,
}

/// A lease on a machine.
#[derive(Debug, Clone)]
struct Lease {
    nonce: String,
    expires: Instant,
    expires_unix: u64,
    description: String,
}

/// A machine and what it is turning into.
pub(super) struct Machine {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) app: String,
    pub(super) state: String,
    region: String,
    image: String,
    config: Value,
    instance_id: String,
    private_ip: String,
    created_at: String,
    updated_at: String,
    seq: u64,
    /// `(state, at)`: becomes `state` at `at`.
    next: Option<(&'static str, Instant)>,
    lease: Option<Lease>,
    events: Vec<Value>,
    bot: Option<tokio::task::JoinHandle<()>>,
}

impl Machine {
    pub(super) fn new(
        id: String,
        name: String,
        app: String,
        region: String,
        image: String,
        config: Value,
    ) -> Self {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = rfc3339_now();
        let b = rand_bytes(3);
        Self {
            id,
            name,
            app,
            state: "created".into(),
            region,
            image,
            config,
            instance_id: rand_hex(26).to_uppercase(),
            // Each machine gets its own loopback address so its bot can
            // listen on the real internal port, as on Fly's private network.
            private_ip: format!("127.{}.{}.{}", b[0].max(1), b[1], b[2].clamp(1, 254)),
            created_at: now.clone(),
            updated_at: now,
            seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            next: None,
            lease: None,
            events: vec![event("launch", "created")],
            bot: None,
        }
    }

    pub(super) fn view(&self) -> FakeMachine {
        let (repository, tag) = self
            .image
            .rsplit_once(':')
            .map_or((self.image.as_str(), "latest"), |(r, t)| (r, t));
        FakeMachine {
            id: self.id.clone(),
            name: self.name.clone(),
            app: self.app.clone(),
            state: self.state.clone(),
            region: self.region.clone(),
            instance_id: self.instance_id.clone(),
            private_ip: self.private_ip.clone(),
            config: self.config.clone(),
            image_ref: json!({"registry": "registry-1.docker.io", "repository": repository,
                "tag": tag, "digest": "sha256:0000", "labels": {}}),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            events: self.events.clone(),
            host_status: "ok".into(),
        }
    }

    fn set(&mut self, state: &str) {
        self.state = state.to_owned();
        self.updated_at = rfc3339_now();
        self.events.push(event(state, state));
    }

    pub(super) fn begin_start(&mut self, inner: &Inner) {
        if self.image.contains("unpullable") {
            self.set("failed");
            self.next = None;
            return;
        }
        self.set("starting");
        self.next = Some(("started", Instant::now() + inner.opts.boot_delay));
    }

    pub(super) fn begin_stop(&mut self, inner: &Inner) {
        self.set("stopping");
        self.next = Some(("stopped", Instant::now() + inner.opts.stop_delay));
        self.stop_bot();
    }

    pub(super) fn destroy(&mut self) {
        self.set("destroyed");
        self.next = None;
        self.lease = None;
        self.stop_bot();
    }

    fn stop_bot(&mut self) {
        if let Some(bot) = self.bot.take() {
            bot.abort();
        }
    }

    /// Apply a due transition.
    fn settle(&mut self, inner: &Inner, now: Instant) {
        if let Some((state, at)) = self.next {
            if now >= at {
                self.next = None;
                self.set(state);
                if state == "started" && inner.opts.spawn_bots {
                    self.spawn_bot(inner);
                }
            }
        }
    }

    fn spawn_bot(&mut self, inner: &Inner) {
        let token = self
            .config
            .pointer("/env/MOLT_GATEWAY_TOKEN")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let addr = format!("{}:{BOT_PORT}", self.private_ip);
        let listener = match std::net::TcpListener::bind(&addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, %addr, "fake fly: machine's bot cannot listen");
                return;
            }
        };
        let healthy = inner.bots_healthy.clone();
        let router = MockBot::new(MockBotOptions {
            token,
            ..MockBotOptions::default()
        })
        .router()
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let healthy = healthy.load(Ordering::Relaxed);
                async move {
                    use axum::response::IntoResponse;
                    if req.uri().path() == "/status" && !healthy {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
                            .into_response();
                    }
                    next.run(req).await
                }
            },
        ));
        self.bot = Some(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::warn!(%error, "fake fly: machine's bot stopped");
            }
        }));
    }

    pub(super) fn lease_live(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| l.expires > Instant::now())
    }

    /// Whether a held lease blocks a caller presenting `nonce`.
    pub(super) fn lease_blocks(&self, nonce: Option<&str>) -> bool {
        match &self.lease {
            Some(l) if l.expires > Instant::now() => nonce != Some(l.nonce.as_str()),
            _ => false,
        }
    }

    pub(super) fn take_lease(&mut self, ttl_secs: u64, description: &str) -> String {
        let nonce = rand_hex(12);
        let ttl = Duration::from_secs(ttl_secs.max(1));
        self.lease = Some(Lease {
            nonce: nonce.clone(),
            expires: Instant::now() + ttl,
            expires_unix: unix_now() + ttl.as_secs(),
            description: description.to_owned(),
        });
        nonce
    }

    pub(super) fn release_lease(&mut self) {
        self.lease = None;
    }

    pub(super) fn lease_json(&self) -> Value {
        let Some(l) = &self.lease else {
            return json!({});
        };
        json!({"status": "success", "data": {"nonce": l.nonce, "expires_at": l.expires_unix,
            "owner": "fake@fly", "description": l.description, "version": self.instance_id}})
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop_bot();
    }
}

/// Token bucket for one (action, machine-or-app).
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Everything behind the lock.
pub(super) struct St {
    pub(super) machines: BTreeMap<String, Machine>,
    pub(super) volumes: BTreeMap<String, FakeVolume>,
    pub(super) faults: Vec<Fault>,
    pub(super) calls: Vec<(String, u16)>,
    buckets: HashMap<String, Bucket>,
}

impl St {
    /// Apply every due state transition.
    pub(super) fn settle(&mut self, inner: &Inner) {
        let now = Instant::now();
        for m in self.machines.values_mut() {
            m.settle(inner, now);
        }
    }

    /// The first queued fault matching `call`, used up by one.
    pub(super) fn take_fault(&mut self, call: &str) -> Option<FaultKind> {
        let i = self
            .faults
            .iter()
            .position(|f| f.times > 0 && call.contains(&f.matching))?;
        let kind = self.faults[i].kind;
        self.faults[i].times -= 1;
        if self.faults[i].times == 0 {
            self.faults.remove(i);
        }
        Some(kind)
    }

    /// Fly's limits: per action and per machine (or app), 1 req/s bursting
    /// to 3; getting a machine 5 req/s bursting to 10.
    pub(super) fn admit(&mut self, method: &Method, path: &str) -> bool {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // v1 apps {app} {kind} [{id} [{action}]]
        let ident = parts.get(4).or(parts.get(2)).copied().unwrap_or_default();
        let action = format!(
            "{method} {} {}",
            parts.get(3).copied().unwrap_or_default(),
            parts.get(5).copied().unwrap_or_default()
        );
        let is_get_one = *method == Method::GET && parts.len() == 5;
        let (rate, burst) = if is_get_one { (5.0, 10.0) } else { (1.0, 3.0) };
        let now = Instant::now();
        let b = self
            .buckets
            .entry(format!("{action} {ident}"))
            .or_insert(Bucket {
                tokens: burst,
                at: now,
            });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub(super) struct Inner {
    pub(super) opts: FakeFlyOptions,
    pub(super) bots_healthy: Arc<AtomicBool>,
    st: Mutex<St>,
}

impl Inner {
    pub(super) fn new(opts: FakeFlyOptions) -> Self {
        Self {
            opts,
            bots_healthy: Arc::new(AtomicBool::new(true)),
            st: Mutex::new(St {
                machines: BTreeMap::new(),
                volumes: BTreeMap::new(),
                faults: Vec::new(),
                calls: Vec::new(),
                buckets: HashMap::new(),
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, St> {
        // Every update leaves the maps consistent even if a holder
        // panicked, so a poisoned lock is safe to reuse.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Views of every machine, oldest first.
pub(super) fn machine_views(st: &St) -> Vec<FakeMachine> {
    let mut ms: Vec<&Machine> = st.machines.values().collect();
    ms.sort_by_key(|m| m.seq);
    ms.into_iter().map(Machine::view).collect()
}

fn event(kind: &str, status: &str) -> Value {
    json!({"type": kind, "status": status, "source": "flyd",
        "timestamp": u64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default().as_millis()).unwrap_or(u64::MAX)})
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub(super) fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn rand_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out.truncate(n);
    out
}

/// `n` random lowercase hex characters.
pub(super) fn rand_hex(n: usize) -> String {
    let mut s = hex::encode(rand_bytes(n.div_ceil(2)));
    s.truncate(n);
    s
}
