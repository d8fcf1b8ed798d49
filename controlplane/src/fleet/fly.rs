//! [`FlyFleet`]: the Fly Machines REST API (`{base}/v1/apps/{app}/...`)
//! with a bearer token.
//!
//! Retries, and why only some: a 429 means Fly did nothing, so every call
//! is retried on it with exponential backoff. A 5xx or a lost response may
//! mean Fly *did* act, so only calls that are safe to repeat (reads, lease
//! acquisition, start/stop/delete under a lease) are retried here; creates
//! are not, and their failure goes back to the provisioner, whose next
//! attempt first looks up what the lost call may have made.
//!
//! Mutations of an existing machine (start, stop, delete) run under a
//! machine lease (`POST .../lease`, then `fly-machine-lease-nonce` on the
//! call), so two control planes never act on one machine at once.
//!
//! Base URLs: `http://` for the internal API endpoint
//! `http://_api.internal:4280` (the default on Fly, over the private
//! network), or `https://` for the public `https://api.machines.dev` (or
//! anything in front of it), through [`crate::https`]: webpki roots plus
//! `ca_file`, an optional PEM bundle for private CAs and tests. A refused
//! certificate is a [`FleetError::Tls`], which no retry can fix.

use super::{Fleet, FleetError, Machine, MachineSpec, Volume, VolumeSpec};
use crate::https::HttpsClient;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use molt_config::Secret;
use serde::Deserialize;
use serde_json::{json, Value};
use std::error::Error as StdError;
use std::path::PathBuf;
use std::time::Duration;

/// The bots' internal port (the seed's gateway port).
pub const BOT_PORT: u16 = 18789;

/// How to reach Fly and what to run there.
#[derive(Debug, Clone)]
pub struct FlySettings {
    /// Without `/v1`, e.g. `http://_api.internal:4280` or
    /// `https://api.machines.dev`.
    pub base_url: String,
    /// PEM file of CA certificates trusted for `https://`, on top of the
    /// webpki roots (a private CA in front of the API, or a test's).
    pub ca_file: Option<PathBuf>,
    pub app: String,
    pub token: Secret,
    pub image: String,
    pub region: Option<String>,
    pub memory_mb: u32,
    pub cpus: u32,
    pub volume_size_gb: u32,
    /// `{id}`, `{name}`, `{app}` and `{private_ip}` are replaced, e.g.
    /// `http://{id}.vm.{app}.internal:18789/`.
    pub gateway_url_template: String,
    /// Tries per call on 429 (all calls) and 5xx (repeatable calls).
    pub max_tries: u32,
    /// First backoff; doubles per try, capped at 5 s.
    pub backoff: Duration,
    /// Per-request timeout (a `wait` gets its own timeout on top).
    pub request_timeout: Duration,
}

impl FlySettings {
    /// Fly's defaults for `app`/`image`/`token`.
    pub fn new(app: &str, image: &str, token: Secret) -> Self {
        Self {
            base_url: "http://_api.internal:4280".into(),
            ca_file: None,
            app: app.into(),
            token,
            image: image.into(),
            region: None,
            memory_mb: 512,
            cpus: 1,
            volume_size_gb: 1,
            gateway_url_template: format!("http://{{id}}.vm.{{app}}.internal:{BOT_PORT}/"),
            max_tries: 5,
            backoff: Duration::from_millis(200),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The Fly Machines API client.
#[derive(Debug, Clone)]
pub struct FlyFleet {
    s: FlySettings,
    client: HttpsClient,
}

/// Whether a call may be sent again after a 5xx or a lost response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Safe,
    /// Only on 429, which means nothing was done.
    OnlyIfRefused,
}

/// One Fly API call, as [`FlyFleet::call`] sends it.
#[derive(Debug, Clone)]
struct Call<'a> {
    method: Method,
    /// Under `/v1/apps/{app}`.
    path: &'a str,
    body: Option<&'a Value>,
    /// The lease nonce of a leased mutation.
    nonce: Option<&'a str>,
    repeat: Repeat,
    /// Added to the request timeout (a wait Fly holds open).
    extra_timeout: Duration,
}

impl<'a> Call<'a> {
    /// A call without a body, safe to repeat: reads, deletes, lease
    /// releases.
    fn safe(method: Method, path: &'a str) -> Self {
        Self {
            method,
            path,
            body: None,
            nonce: None,
            repeat: Repeat::Safe,
            extra_timeout: Duration::ZERO,
        }
    }

    /// A create: repeated only when Fly refused it (429), since a lost
    /// answer may mean it was done.
    fn create(path: &'a str, body: &'a Value) -> Self {
        Self {
            body: Some(body),
            repeat: Repeat::OnlyIfRefused,
            ..Self::safe(Method::POST, path)
        }
    }

    fn with_body(self, body: Option<&'a Value>) -> Self {
        Self { body, ..self }
    }

    fn with_nonce(self, nonce: &'a str) -> Self {
        Self {
            nonce: Some(nonce),
            ..self
        }
    }
}

#[derive(Debug, Deserialize)]
struct FlyErrorBody {
    error: Option<String>,
    message: Option<String>,
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MachineJson {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    private_ip: String,
}

impl From<MachineJson> for Machine {
    fn from(m: MachineJson) -> Self {
        Self {
            id: m.id,
            name: m.name,
            state: m.state,
            private_ip: m.private_ip,
        }
    }
}

#[derive(Debug, Deserialize)]
struct VolumeJson {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: String,
}

impl From<VolumeJson> for Volume {
    fn from(v: VolumeJson) -> Self {
        Self {
            id: v.id,
            name: v.name,
            state: v.state,
        }
    }
}

impl FlyFleet {
    /// A client for `s.base_url` (`http://` or `https://`); fails on any
    /// other scheme or an unreadable `ca_file`.
    pub fn new(s: FlySettings) -> Result<Self, FleetError> {
        if !(s.base_url.starts_with("http://") || s.base_url.starts_with("https://")) {
            return Err(FleetError::Config(format!(
                "base URL {:?}: must start with http:// or https://",
                s.base_url
            )));
        }
        let client = crate::https::client(s.ca_file.as_deref())
            .map_err(|e| FleetError::Config(e.to_string()))?;
        let mut s = s;
        s.base_url = s.base_url.trim_end_matches('/').to_owned();
        Ok(Self { s, client })
    }

    fn path(&self, rest: &str) -> String {
        format!("{}/v1/apps/{}{rest}", self.s.base_url, self.s.app)
    }

    /// One API call with retries; the JSON body of a 2xx answer.
    async fn call(&self, call: Call<'_>) -> Result<Value, FleetError> {
        let (method, rest, repeat) = (&call.method, call.path, call.repeat);
        let url = self.path(rest);
        let mut delay = self.s.backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            let last = tries >= self.s.max_tries;
            let outcome = self.send(&url, &call).await;
            let retry = match &outcome {
                Ok((status, _)) if *status == StatusCode::TOO_MANY_REQUESTS => true,
                Ok((status, _)) if status.is_server_error() => repeat == Repeat::Safe,
                // A refused certificate stays refused.
                Err(FleetError::Tls(_)) => false,
                Err(_) => repeat == Repeat::Safe,
                Ok(_) => false,
            };
            if retry && !last {
                tracing::debug!(%method, path = rest, tries, "fly call retried");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
            let (status, bytes) = outcome?;
            if status.is_success() {
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_slice(&bytes).map_err(|e| {
                    FleetError::Transport(format!("{method} {rest}: unreadable answer: {e}"))
                });
            }
            return Err(api_error(status, &bytes));
        }
    }

    async fn send(&self, url: &str, call: &Call<'_>) -> Result<(StatusCode, Bytes), FleetError> {
        let method = &call.method;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.s.token.expose()),
            )
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(n) = call.nonce {
            req = req.header("fly-machine-lease-nonce", n);
        }
        let payload = match call.body {
            Some(b) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| FleetError::Config(format!("bad request URL {url:?}: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| transport_error(method, url, &e))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| FleetError::Transport(format!("{method} {url}: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.s.request_timeout + call.extra_timeout, exchange)
            .await
            .map_err(|_| FleetError::Transport(format!("{method} {url}: timed out")))?
    }

    /// One mutation of machine `id` under its lease (safe to repeat: the
    /// lease makes it ours alone), answer discarded.
    async fn leased(&self, id: &str, release: bool, call: Call<'_>) -> Result<(), FleetError> {
        self.with_lease(id, release, |nonce| async move {
            self.call(call.with_nonce(&nonce)).await.map(drop)
        })
        .await
    }

    /// Run `op` holding the machine's lease; the lease is released after
    /// (best effort: it expires on its own anyway).
    async fn with_lease<F, Fut>(&self, id: &str, release: bool, op: F) -> Result<(), FleetError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), FleetError>>,
    {
        let path = format!("/machines/{id}/lease");
        let ask = json!({"ttl": 60, "description": "molt control plane"});
        let acquire = Call::safe(Method::POST, &path).with_body(Some(&ask));
        let lease = match self.call(acquire.clone()).await {
            // A held lease (409) is someone else at work: worth a second
            // try after a pause, like fly-go does.
            Err(FleetError::Api { status: 409, .. }) => {
                tokio::time::sleep(self.s.backoff * 4).await;
                self.call(acquire).await?
            }
            other => other?,
        };
        let nonce = lease
            .pointer("/data/nonce")
            .and_then(Value::as_str)
            .ok_or_else(|| FleetError::Transport("lease answer has no nonce".into()))?
            .to_owned();
        let result = op(nonce.clone()).await;
        if release {
            let release = Call::safe(Method::DELETE, &path).with_nonce(&nonce);
            if let Err(e) = self.call(release).await {
                tracing::debug!(machine = id, error = %e, "lease not released; it will expire");
            }
        }
        result
    }

    fn machine_body(&self, spec: &MachineSpec) -> Value {
        let env = json!({
            "CLAWDBOT_CONFIG": spec.clawdbot_config.to_string(),
            "MOLT_USER_ID": spec.user_id,
            "MOLT_GATEWAY_TOKEN": spec.gateway_token.expose(),
            "PROXY_URL": spec.proxy_url,
        });
        let mut body = json!({
            "name": spec.name,
            "config": {
                "image": self.s.image,
                "env": env,
                "services": [{
                    "protocol": "tcp",
                    "internal_port": BOT_PORT,
                    "ports": [{"port": 443, "handlers": ["tls", "http"]}],
                }],
                "mounts": [{"volume": spec.volume_id, "path": "/data"}],
                "restart": {"policy": "always"},
                "auto_destroy": false,
                "guest": {"cpu_kind": "shared", "cpus": self.s.cpus, "memory_mb": self.s.memory_mb},
                "metadata": {"molt_bot_id": spec.bot_id, "molt_user_id": spec.user_id},
            },
        });
        if let Some(r) = spec.region.as_ref().or(self.s.region.as_ref()) {
            body["region"] = json!(r);
        }
        body
    }
}

/// A failed exchange as a [`FleetError`]: [`FleetError::Tls`] when rustls
/// refused the handshake (nothing was sent), else `Transport`. The message
/// carries the whole cause chain: hyper's own text ("client error
/// (Connect)") says nothing about why.
fn transport_error(method: &Method, url: &str, e: &(dyn StdError + 'static)) -> FleetError {
    let tls = molt_config::outbound::causes(e).any(|c| c.downcast_ref::<rustls::Error>().is_some());
    let message = format!("{method} {url}: {}", molt_config::outbound::cause_text(e));
    if tls {
        FleetError::Tls(message)
    } else {
        FleetError::Transport(message)
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> FleetError {
    let parsed: Option<FlyErrorBody> = serde_json::from_slice(bytes).ok();
    let (message, kind) = match parsed {
        Some(b) => (
            b.error
                .or(b.message)
                .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned()),
            b.status,
        ),
        None => (String::from_utf8_lossy(bytes).into_owned(), None),
    };
    // Error bodies are Fly's words about our request, never our secrets;
    // cap them so a proxy's HTML page does not flood the bot's status.
    let message: String = message.chars().take(300).collect();
    if status == StatusCode::REQUEST_TIMEOUT {
        return FleetError::Timeout("started");
    }
    if status == StatusCode::UNPROCESSABLE_ENTITY && kind.as_deref() == Some("name_taken") {
        return FleetError::NameTaken(message);
    }
    FleetError::Api {
        status: status.as_u16(),
        message,
        kind,
    }
}

fn not_found(e: &FleetError) -> bool {
    matches!(e, FleetError::Api { status: 404, .. })
}

#[async_trait::async_trait]
impl Fleet for FlyFleet {
    async fn find_volumes(&self, name: &str) -> Result<Vec<Volume>, FleetError> {
        let v = self.call(Call::safe(Method::GET, "/volumes")).await?;
        let vols: Vec<VolumeJson> = serde_json::from_value(v)
            .map_err(|e| FleetError::Transport(format!("unreadable volume list: {e}")))?;
        Ok(vols
            .into_iter()
            .filter(|v| {
                v.name == name
                    && !matches!(
                        v.state.as_str(),
                        "destroyed" | "destroying" | "pending_destroy"
                    )
            })
            .map(Volume::from)
            .collect())
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, FleetError> {
        let mut body = json!({"name": spec.name, "size_gb": spec.size_gb, "encrypted": true});
        if let Some(r) = spec.region.as_ref().or(self.s.region.as_ref()) {
            body["region"] = json!(r);
        }
        let v = self.call(Call::create("/volumes", &body)).await?;
        serde_json::from_value::<VolumeJson>(v)
            .map(Volume::from)
            .map_err(|e| FleetError::Transport(format!("unreadable volume: {e}")))
    }

    async fn delete_volume(&self, id: &str) -> Result<(), FleetError> {
        match self
            .call(Call::safe(Method::DELETE, &format!("/volumes/{id}")))
            .await
        {
            Err(e) if not_found(&e) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn find_machine(&self, bot_id: &str) -> Result<Option<Machine>, FleetError> {
        let v = self
            .call(Call::safe(
                Method::GET,
                &format!("/machines?metadata.molt_bot_id={bot_id}"),
            ))
            .await?;
        let ms: Vec<MachineJson> = serde_json::from_value(v)
            .map_err(|e| FleetError::Transport(format!("unreadable machine list: {e}")))?;
        Ok(ms
            .into_iter()
            .map(Machine::from)
            .find(|m| m.state != "destroyed" && m.state != "destroying"))
    }

    async fn create_machine(&self, spec: &MachineSpec) -> Result<Machine, FleetError> {
        let body = self.machine_body(spec);
        let v = self.call(Call::create("/machines", &body)).await?;
        serde_json::from_value::<MachineJson>(v)
            .map(Machine::from)
            .map_err(|e| FleetError::Transport(format!("unreadable machine: {e}")))
    }

    async fn get_machine(&self, id: &str) -> Result<Option<Machine>, FleetError> {
        match self
            .call(Call::safe(Method::GET, &format!("/machines/{id}")))
            .await
        {
            Ok(v) => {
                let m: Machine = serde_json::from_value::<MachineJson>(v)
                    .map_err(|e| FleetError::Transport(format!("unreadable machine: {e}")))?
                    .into();
                Ok((m.state != "destroyed").then_some(m))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn wait_started(&self, id: &str, timeout: Duration) -> Result<(), FleetError> {
        // Fly's proxy cuts waits at 60 s; the API takes whole seconds.
        let secs = timeout.as_secs().clamp(1, 60);
        let path = format!("/machines/{id}/wait?state=started&timeout={secs}");
        let wait = Call {
            extra_timeout: Duration::from_secs(secs),
            ..Call::safe(Method::GET, &path)
        };
        self.call(wait).await.map(drop)
    }

    async fn start_machine(&self, id: &str) -> Result<(), FleetError> {
        let path = format!("/machines/{id}/start");
        self.leased(id, true, Call::safe(Method::POST, &path)).await
    }

    async fn stop_machine(&self, id: &str) -> Result<(), FleetError> {
        let path = format!("/machines/{id}/stop");
        let body = json!({"signal": "SIGTERM", "timeout": "10s"});
        self.leased(
            id,
            true,
            Call::safe(Method::POST, &path).with_body(Some(&body)),
        )
        .await
    }

    async fn delete_machine(&self, id: &str) -> Result<(), FleetError> {
        // A deleted machine's lease goes with it: nothing to release.
        let path = format!("/machines/{id}?force=true");
        let result = self
            .leased(id, false, Call::safe(Method::DELETE, &path))
            .await;
        match result {
            Err(e) if not_found(&e) => Ok(()),
            other => other,
        }
    }

    fn gateway_url(&self, m: &Machine) -> String {
        self.s
            .gateway_url_template
            .replace("{id}", &m.id)
            .replace("{name}", &m.name)
            .replace("{app}", &self.s.app)
            .replace("{private_ip}", &m.private_ip)
    }
}
