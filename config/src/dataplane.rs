//! The validated data-plane config: what the proxy actually runs on.
//!
//! Built only from [`RawDataplaneConfig`] by [`DataplaneConfig::from_wire`]
//! (or `TryFrom`), which checks every field, resolves references between
//! sections (models to providers, fallbacks and allowlists to models) and
//! returns every problem at once with its field path. Nothing here panics.

use crate::error::ConfigErrors;
use crate::limits::LimitsConfig;
use crate::secret::Secret;
use crate::wire::{self, RawDataplaneConfig, CONFIG_VERSION};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default cap on a request body (16 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub server: ServerConfig,
    pub admin_listen: SocketAddr,
    pub log: LogConfig,
    pub usage_file: Option<PathBuf>,
    pub jwt: Option<JwtConfig>,
    /// `[auth.jwks]`: an identity provider's tokens (Clerk's).
    pub jwks: Option<crate::jwks::JwksConfig>,
    pub keys: Vec<ApiKey>,
    pub providers: Vec<Provider>,
    /// Models in config order; `Model::provider` indexes `providers`.
    pub models: Vec<Model>,
    /// Rate limits, token budgets and anomaly detection.
    pub limits: LimitsConfig,
    /// Users' bots, for the WebSocket chat router.
    pub bots: Vec<Bot>,
    pub websocket: WebSocketConfig,
    /// The origins browser apps may call from (CORS, WebSocket `Origin`).
    pub browser: crate::browser::BrowserConfig,
    /// Where operator-managed config comes from and usage goes, if any.
    pub control_plane: Option<ControlPlaneConfig>,
}

/// Default cap on unshipped usage in the spool (1 GiB).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// `[control_plane]`, validated.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// `http://host:port` or `https://host:port` (no path, query or
    /// credentials); the data plane's client honours the scheme.
    pub url: UpstreamUrl,
    /// Extra CA certificates (PEM) trusted for `https://`; only with it.
    pub ca_file: Option<PathBuf>,
    /// The data-plane token, read from `token_env`.
    pub token: Secret,
    pub cache_file: PathBuf,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub ship_interval: Duration,
    /// Wait for a response's usage event to be durable before its last
    /// byte goes out (see `RawControlPlane::hold_response_until_recorded`).
    pub hold_response_until_recorded: bool,
}

/// A user's bot gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Bot {
    pub id: String,
    pub user: String,
    pub gateway_url: BotUrl,
    pub gateway_token: Secret,
}

/// Where a bot gateway listens (plain `ws://`: bots are reached over a
/// private network; TLS to bots is not supported yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl BotUrl {
    /// The `ws://` URL to dial.
    pub fn ws_url(&self) -> String {
        if self.host.contains(':') {
            format!("ws://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            format!("ws://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// Default cap on one WebSocket message (1 MiB).
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// `[websocket]`, validated, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocketConfig {
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_connections_per_user: u32,
    pub ticket_ttl: Duration,
    /// `None`: the data plane makes a random one at start.
    pub ticket_secret: Option<Secret>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(120),
            ping_interval: Duration::from_secs(30),
            max_message_bytes: DEFAULT_WS_MAX_MESSAGE_BYTES,
            max_frame_bytes: DEFAULT_WS_MAX_MESSAGE_BYTES,
            max_connections_per_user: 20,
            ticket_ttl: Duration::from_secs(60),
            ticket_secret: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub threads: NonZeroUsize,
    pub grace_period: Duration,
    pub max_body_bytes: usize,
    pub client_body_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_read_timeout: Duration,
    /// A request header must arrive whole within this (default 10 s), from
    /// the connection's start or, on a reused connection, its first byte.
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this (default 60 s).
    pub keepalive_timeout: Duration,
    /// Client connections held at most (`None`: the default, derived from
    /// the process's open-file limit when the server starts).
    pub max_connections: Option<u64>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    /// PEM: the leaf certificate first, then its intermediates. The files'
    /// contents are reloaded when they change; their paths need a restart.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Make a self-signed certificate for loopback if the files are missing.
    pub self_signed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub access_log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    EdDsa,
}

#[derive(Debug, Clone)]
pub enum JwtKey {
    Hmac(Secret),
    PublicKeyPem(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub algorithm: JwtAlgorithm,
    pub key: JwtKey,
    pub audience: Option<String>,
    pub leeway: Duration,
}

/// A client API key, known only by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub user: String,
    pub sha256: [u8; 32],
    /// Canonical model names this key may use; `None` means all.
    pub models: Option<Vec<String>>,
}

/// Which request/response format a provider speaks. Requests are never
/// translated between formats: a route only reaches providers of its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiFormat {
    OpenAi,
    Anthropic,
}

/// How a provider wants its master key presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>` (OpenAI and compatibles).
    Bearer,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKeyHeader,
    /// `x-api-key: <key>` plus `anthropic-version` (Anthropic).
    XApiKey,
}

crate::text_enum! {
    /// The upstream API family a provider speaks.
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    pub enum ProviderKind {
        OpenAi = "openai",
        AzureOpenAi = "azure_openai",
        Venice = "venice",
        Vllm = "vllm",
        OpenRouter = "openrouter",
        Anthropic = "anthropic",
    }
}

impl ProviderKind {
    pub fn format(self) -> ApiFormat {
        match self {
            Self::Anthropic => ApiFormat::Anthropic,
            _ => ApiFormat::OpenAi,
        }
    }

    pub fn auth_style(self) -> AuthStyle {
        match self {
            Self::AzureOpenAi => AuthStyle::ApiKeyHeader,
            Self::Anthropic => AuthStyle::XApiKey,
            _ => AuthStyle::Bearer,
        }
    }
}

/// An upstream base URL, split the way the proxy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1` or `/openai/v1`.
    pub path_prefix: String,
}

impl UpstreamUrl {
    /// `host:port`, as the `Host` header and the connect address want it.
    pub fn authority(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: UpstreamUrl,
    /// Master keys; requests are spread across them.
    pub keys: Vec<Secret>,
    pub anthropic_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub name: String,
    pub provider: usize,
    pub upstream_name: String,
    pub aliases: Vec<String>,
    /// Canonical names of the models tried next, in order.
    pub fallbacks: Vec<String>,
    /// The price in force, when the config says; dollar budgets need it.
    pub price: Option<crate::money::ModelPrice>,
}

/// Where validation reads environment variables from, so tests and the
/// control plane can validate without touching the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<S: std::hash::BuildHasher> Env for HashMap<&str, &str, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}

impl TryFrom<RawDataplaneConfig> for DataplaneConfig {
    type Error = ConfigErrors;

    fn try_from(raw: RawDataplaneConfig) -> Result<Self, Self::Error> {
        Self::from_wire(raw, &ProcessEnv)
    }
}

impl DataplaneConfig {
    /// Parse TOML text and validate it.
    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Self, ConfigErrors> {
        Self::from_wire(Self::parse_toml(text)?, env)
    }

    /// Parse TOML text into the wire form only (no validation): for callers
    /// that merge a control-plane snapshot in before validating. A field the
    /// wire form has no place for is an error under its path
    /// (`server.lisen: unknown field ...`).
    pub fn parse_toml(text: &str) -> Result<RawDataplaneConfig, ConfigErrors> {
        let (raw, unknown) = crate::unknown::from_toml(text).map_err(|e| {
            let mut errs = ConfigErrors::default();
            // Some syntax errors (a control character in a comment) come
            // with an empty message; their `Display` still says what it is.
            let message = match e.message().trim() {
                "" => e.to_string(),
                m => m.to_owned(),
            };
            errs.push(toml_error_path(text, &e), message);
            errs
        })?;
        if unknown.is_empty() {
            return Ok(raw);
        }
        let mut errs = ConfigErrors::default();
        for path in unknown {
            errs.push(path, "unknown field (not a setting of this version)");
        }
        Err(errs)
    }

    /// Read and parse a TOML file into the wire form (see [`Self::parse_toml`]).
    pub fn load_raw(path: &Path) -> Result<RawDataplaneConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let mut errs = ConfigErrors::default();
            errs.push("<file>", format!("cannot read {}: {e}", path.display()));
            errs
        })?;
        Self::parse_toml(&text)
    }

    /// Read, parse and validate a TOML file. Relative paths inside it stay
    /// relative to the process's working directory.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigErrors> {
        Self::from_wire(Self::load_raw(path)?, env)
    }

    /// Validate a parsed config, collecting every error.
    pub fn from_wire(raw: RawDataplaneConfig, env: &dyn Env) -> Result<Self, ConfigErrors> {
        let mut errs = ConfigErrors::default();
        if raw.version != CONFIG_VERSION {
            errs.push(
                "version",
                format!(
                    "unsupported version {}, expected {CONFIG_VERSION}",
                    raw.version
                ),
            );
        }
        let server = validate_server(&raw.server, &mut errs);
        let admin_listen = parse_addr(
            raw.admin.listen.as_deref().unwrap_or("127.0.0.1:9901"),
            "admin.listen",
            &mut errs,
        );
        let log = LogConfig {
            format: match raw.log.format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    errs.push(
                        "log.format",
                        format!("expected \"text\" or \"json\", got {other:?}"),
                    );
                    LogFormat::Text
                }
            },
            access_log: raw.log.access_log.unwrap_or(true),
        };
        let jwt = raw
            .auth
            .jwt
            .as_ref()
            .and_then(|j| validate_jwt(j, env, &mut errs));
        let jwks = raw
            .auth
            .jwks
            .as_ref()
            .and_then(|j| crate::jwks::JwksConfig::from_wire(j, &mut errs));
        let providers = validate_providers(&raw.providers, env, &mut errs);
        let models = validate_models(&raw.models, &providers, &mut errs);
        let keys = validate_keys(&raw.keys, &models, &mut errs);
        let limits = {
            let names: HashMap<&str, &str> = models
                .iter()
                .flat_map(|m| {
                    std::iter::once(&m.name)
                        .chain(&m.aliases)
                        .map(move |n| (n.as_str(), m.name.as_str()))
                })
                .collect();
            let provider_names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
            LimitsConfig::from_wire(&raw.limits, Some(&names), Some(&provider_names), &mut errs)
        };
        let bots = validate_bots(&raw.bots, &mut errs);
        let websocket = validate_websocket(&raw.websocket, env, &mut errs);
        let browser = crate::browser::BrowserConfig::from_wire(&raw.browser, &mut errs);
        let control_plane = raw
            .control_plane
            .as_ref()
            .and_then(|c| validate_control_plane(c, env, &mut errs));

        if !errs.is_empty() {
            return Err(errs);
        }
        match (server, admin_listen) {
            (Some(server), Some(admin_listen)) => Ok(Self {
                server,
                admin_listen,
                log,
                usage_file: raw.usage.file.map(PathBuf::from),
                jwt,
                jwks,
                keys,
                providers,
                models,
                limits,
                bots,
                websocket,
                browser,
                control_plane,
            }),
            // Unreachable in practice: a `None` above always pushed an error.
            _ => {
                errs.push("<config>", "invalid listener configuration");
                Err(errs)
            }
        }
    }

    /// The model a client name refers to (canonical name or alias).
    pub fn resolve_model(&self, name: &str) -> Option<&Model> {
        self.models
            .iter()
            .find(|m| m.name == name || m.aliases.iter().any(|a| a == name))
    }
}

/// The dotted field path a TOML error is about (`server.grace_period`,
/// `models[1].name`), worked out from the error's byte span: the key on that
/// line under the last table header above it. Falls back to the line number.
fn toml_error_path(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "<toml>".to_owned();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    // A line that starts with `=` has no key: the line number says where.
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty());
    // The table this line belongs to, with an index for arrays of tables.
    let mut table = String::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for l in text[..line_start].lines().map(str::trim) {
        if let Some(name) = l
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim())
        {
            let n = counts.entry(name).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n.trim())
        {
            table = name.to_owned();
        }
    }
    match key {
        Some(k) if !table.is_empty() && line.trim_start().starts_with(k) => format!("{table}.{k}"),
        Some(k) if line.trim_start().starts_with(k) => k.to_owned(),
        _ => format!("<toml line {line_no}>"),
    }
}

fn parse_addr(s: &str, path: &str, errs: &mut ConfigErrors) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(e) => {
            errs.push(path, format!("not a socket address ({e}): {s:?}"));
            None
        }
    }
}

fn validate_server(raw: &wire::RawServer, errs: &mut ConfigErrors) -> Option<ServerConfig> {
    let listen = parse_addr(&raw.listen, "server.listen", errs);
    let threads = match raw.threads {
        None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        Some(n) => match NonZeroUsize::new(n) {
            Some(n) => n,
            None => {
                errs.push("server.threads", "must be at least 1");
                NonZeroUsize::MIN
            }
        },
    };
    let max_body_bytes = match raw.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(0) => {
            errs.push("server.max_body_bytes", "must be greater than 0");
            DEFAULT_MAX_BODY_BYTES
        }
        Some(n) => match usize::try_from(n) {
            Ok(n) if n <= 1 << 30 => n,
            _ => {
                errs.push("server.max_body_bytes", "must be at most 1 GiB");
                DEFAULT_MAX_BODY_BYTES
            }
        },
    };
    let nonzero = |d: Option<Duration>, default: Duration, path: &str, errs: &mut ConfigErrors| {
        let d = d.unwrap_or(default);
        if d.is_zero() {
            errs.push(path, "must be greater than 0");
        }
        d
    };
    let tls = raw.tls.as_ref().and_then(|t| {
        let listen = parse_addr(&t.listen, "server.tls.listen", errs)?;
        for (path, file) in [
            ("server.tls.cert_file", &t.cert_file),
            ("server.tls.key_file", &t.key_file),
        ] {
            if file.is_empty() {
                errs.push(path, "must not be empty");
            } else if !t.self_signed && !Path::new(file).is_file() {
                errs.push(path, format!("no such file: {file}"));
            }
        }
        Some(TlsConfig {
            listen,
            cert_file: PathBuf::from(&t.cert_file),
            key_file: PathBuf::from(&t.key_file),
            self_signed: t.self_signed,
        })
    });
    let cfg = ServerConfig {
        listen: listen?,
        threads,
        grace_period: raw.grace_period.unwrap_or(Duration::from_secs(30)),
        max_body_bytes,
        client_body_timeout: nonzero(
            raw.client_body_timeout,
            Duration::from_secs(30),
            "server.client_body_timeout",
            errs,
        ),
        upstream_connect_timeout: nonzero(
            raw.upstream_connect_timeout,
            Duration::from_secs(5),
            "server.upstream_connect_timeout",
            errs,
        ),
        upstream_read_timeout: nonzero(
            raw.upstream_read_timeout,
            Duration::from_secs(300),
            "server.upstream_read_timeout",
            errs,
        ),
        header_timeout: nonzero(
            raw.header_timeout,
            Duration::from_secs(10),
            "server.header_timeout",
            errs,
        ),
        keepalive_timeout: nonzero(
            raw.keepalive_timeout,
            Duration::from_secs(60),
            "server.keepalive_timeout",
            errs,
        ),
        max_connections: match raw.max_connections {
            Some(0) => {
                errs.push("server.max_connections", "must be greater than 0");
                None
            }
            n => n,
        },
        tls,
    };
    Some(cfg)
}

fn validate_jwt(raw: &wire::RawJwt, env: &dyn Env, errs: &mut ConfigErrors) -> Option<JwtConfig> {
    if raw.issuer.is_empty() {
        errs.push("auth.jwt.issuer", "must not be empty");
    }
    let algorithm = match raw.algorithm.as_str() {
        "HS256" => JwtAlgorithm::Hs256,
        "RS256" => JwtAlgorithm::Rs256,
        "EdDSA" => JwtAlgorithm::EdDsa,
        other => {
            errs.push(
                "auth.jwt.algorithm",
                format!("expected HS256, RS256 or EdDSA, got {other:?}"),
            );
            return None;
        }
    };
    let key = match algorithm {
        JwtAlgorithm::Hs256 => {
            let secret = match (&raw.secret, &raw.secret_env) {
                (Some(s), None) => Some(s.clone()),
                (None, Some(var)) => match env.var(var) {
                    Some(v) => Some(v),
                    None => {
                        errs.push(
                            "auth.jwt.secret_env",
                            format!("environment variable {var} is not set"),
                        );
                        None
                    }
                },
                _ => {
                    errs.push(
                        "auth.jwt",
                        "HS256 needs exactly one of `secret` or `secret_env`",
                    );
                    None
                }
            }?;
            if secret.len() < 32 {
                errs.push("auth.jwt.secret", "must be at least 32 bytes for HS256");
            }
            JwtKey::Hmac(Secret::new(secret))
        }
        JwtAlgorithm::Rs256 | JwtAlgorithm::EdDsa => {
            let Some(file) = &raw.public_key_file else {
                errs.push("auth.jwt.public_key_file", "required for RS256 and EdDSA");
                return None;
            };
            match std::fs::read(file) {
                Ok(pem) => JwtKey::PublicKeyPem(pem),
                Err(e) => {
                    errs.push(
                        "auth.jwt.public_key_file",
                        format!("cannot read {file}: {e}"),
                    );
                    return None;
                }
            }
        }
    };
    Some(JwtConfig {
        issuer: raw.issuer.clone(),
        algorithm,
        key,
        audience: raw.audience.clone(),
        leeway: raw.leeway.unwrap_or(Duration::from_secs(5)),
    })
}

fn parse_upstream_url(s: &str, path: &str, errs: &mut ConfigErrors) -> Option<UpstreamUrl> {
    let url = match url::Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            errs.push(path, format!("not a URL ({e}): {s:?}"));
            return None;
        }
    };
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            errs.push(path, format!("scheme must be http or https, got {other:?}"));
            return None;
        }
    };
    if url.query().is_some() || url.fragment().is_some() {
        errs.push(path, "must not have a query or fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        errs.push(path, "must not carry credentials; use `keys`");
    }
    let Some(host) = url.host_str() else {
        errs.push(path, "has no host");
        return None;
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    Some(UpstreamUrl {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        path_prefix: url.path().trim_end_matches('/').to_owned(),
    })
}

fn validate_control_plane(
    raw: &wire::RawControlPlane,
    env: &dyn Env,
    errs: &mut ConfigErrors,
) -> Option<ControlPlaneConfig> {
    let url = parse_upstream_url(&raw.url, "control_plane.url", errs);
    if let Some(u) = &url {
        if !u.path_prefix.is_empty() {
            errs.push("control_plane.url", "must not have a path");
        }
    }
    if let Some(file) = &raw.ca_file {
        if url.as_ref().is_some_and(|u| !u.tls) {
            errs.push("control_plane.ca_file", "only with an https:// url");
        } else if file.is_empty() {
            errs.push("control_plane.ca_file", "must not be empty");
        } else if !Path::new(file).is_file() {
            errs.push("control_plane.ca_file", format!("no such file: {file}"));
        }
    }
    let token = match env.var(&raw.token_env) {
        Some(t) => Some(Secret::new(t)),
        None => {
            errs.push(
                "control_plane.token_env",
                format!("environment variable {} is not set", raw.token_env),
            );
            None
        }
    };
    for (path, value) in [
        ("control_plane.cache_file", &raw.cache_file),
        ("control_plane.spool_dir", &raw.spool_dir),
    ] {
        if value.is_empty() {
            errs.push(path, "must not be empty");
        }
    }
    let spool_max_bytes = raw.spool_max_bytes.unwrap_or(DEFAULT_SPOOL_MAX_BYTES);
    if spool_max_bytes < 1 << 20 {
        errs.push("control_plane.spool_max_bytes", "must be at least 1 MiB");
    }
    let ship_interval = raw.ship_interval.unwrap_or(Duration::from_secs(1));
    if ship_interval.is_zero() || ship_interval > Duration::from_secs(3600) {
        errs.push("control_plane.ship_interval", "must be between 1ms and 1h");
    }
    Some(ControlPlaneConfig {
        url: url?,
        ca_file: raw.ca_file.as_ref().map(PathBuf::from),
        token: token?,
        cache_file: PathBuf::from(&raw.cache_file),
        spool_dir: PathBuf::from(&raw.spool_dir),
        spool_max_bytes,
        ship_interval,
        hold_response_until_recorded: raw.hold_response_until_recorded.unwrap_or(true),
    })
}

fn validate_providers(
    raw: &[wire::RawProvider],
    env: &dyn Env,
    errs: &mut ConfigErrors,
) -> Vec<Provider> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let at = |field: &str| format!("providers[{i}].{field}");
        if p.name.is_empty() {
            errs.push(at("name"), "must not be empty");
        } else if !seen.insert(p.name.as_str()) {
            errs.push(at("name"), format!("duplicate provider {:?}", p.name));
        }
        let Some(kind) = ProviderKind::parse(&p.kind) else {
            errs.push(
                at("kind"),
                format!(
                    "unknown kind {:?}; expected one of {}",
                    p.kind,
                    ProviderKind::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            continue;
        };
        let Some(base_url) = parse_upstream_url(&p.base_url, &at("base_url"), errs) else {
            continue;
        };
        let mut keys: Vec<Secret> = p.keys.iter().map(Secret::new).collect();
        for (j, var) in p.keys_env.iter().enumerate() {
            match env.var(var) {
                Some(v) => keys.push(Secret::new(v)),
                None => errs.push(
                    format!("providers[{i}].keys_env[{j}]"),
                    format!("environment variable {var} is not set"),
                ),
            }
        }
        if keys.iter().any(|k| k.expose().is_empty()) {
            errs.push(at("keys"), "a master key is empty");
        }
        if keys.is_empty() && p.keys_env.is_empty() {
            errs.push(
                at("keys"),
                "needs at least one master key (`keys` or `keys_env`)",
            );
        }
        if p.anthropic_version.is_some() && kind != ProviderKind::Anthropic {
            errs.push(
                at("anthropic_version"),
                "only applies to kind = \"anthropic\"",
            );
        }
        out.push(Provider {
            name: p.name.clone(),
            kind,
            base_url,
            keys,
            anthropic_version: p
                .anthropic_version
                .clone()
                .unwrap_or_else(|| "2023-06-01".to_owned()),
        });
    }
    out
}

fn validate_models(
    raw: &[wire::RawModel],
    providers: &[Provider],
    errs: &mut ConfigErrors,
) -> Vec<Model> {
    // Every name a client may write, canonical or alias, must be unique.
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, m) in raw.iter().enumerate() {
        for (j, name) in std::iter::once(&m.name).chain(&m.aliases).enumerate() {
            let path = if j == 0 {
                format!("models[{i}].name")
            } else {
                format!("models[{i}].aliases[{}]", j - 1)
            };
            if name.is_empty() {
                errs.push(path, "must not be empty");
            } else if let Some(prev) = names.insert(name.as_str(), i) {
                errs.push(path, format!("{name:?} is already used by models[{prev}]"));
            }
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let Some(provider) = providers.iter().position(|p| p.name == m.provider) else {
            errs.push(
                format!("models[{i}].provider"),
                format!("unknown provider {:?}", m.provider),
            );
            continue;
        };
        let mut fallbacks = Vec::with_capacity(m.fallbacks.len());
        for (j, f) in m.fallbacks.iter().enumerate() {
            let path = format!("models[{i}].fallbacks[{j}]");
            match names.get(f.as_str()).map(|&k| &raw[k]) {
                None => errs.push(path, format!("unknown model {f:?}")),
                Some(target) if target.name == m.name => {
                    errs.push(path, "a model cannot fall back to itself")
                }
                Some(target) => {
                    let target_format = providers
                        .iter()
                        .find(|p| p.name == target.provider)
                        .map(|p| p.kind.format());
                    if target_format.is_some_and(|f| f != providers[provider].kind.format()) {
                        errs.push(
                            path,
                            "fallback speaks a different API format; requests are never translated",
                        );
                    }
                    fallbacks.push(target.name.clone());
                }
            }
        }
        out.push(Model {
            name: m.name.clone(),
            provider,
            upstream_name: m.upstream_name.clone().unwrap_or_else(|| m.name.clone()),
            aliases: m.aliases.clone(),
            fallbacks,
            price: m.price.as_ref().and_then(|p| {
                crate::money::ModelPrice::from_wire(p, &format!("models[{i}].price"), errs)
            }),
        });
    }
    out
}

fn validate_bots(raw: &[wire::RawBot], errs: &mut ConfigErrors) -> Vec<Bot> {
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, b) in raw.iter().enumerate() {
        let at = |field: &str| format!("bots[{i}].{field}");
        if b.id.is_empty() {
            errs.push(at("id"), "must not be empty");
        } else if !ids.insert(b.id.as_str()) {
            errs.push(at("id"), format!("duplicate bot id {:?}", b.id));
        }
        if b.user.is_empty() {
            errs.push(at("user"), "must not be empty");
        }
        if b.gateway_token.is_empty() {
            errs.push(at("gateway_token"), "must not be empty");
        } else if !b.gateway_token.bytes().all(|c| c.is_ascii_graphic()) {
            // It goes into an HTTP header as is.
            errs.push(at("gateway_token"), "must be printable ASCII");
        }
        let Some(gateway_url) = parse_bot_url(&b.gateway_url, &at("gateway_url"), errs) else {
            continue;
        };
        out.push(Bot {
            id: b.id.clone(),
            user: b.user.clone(),
            gateway_url,
            gateway_token: Secret::new(b.gateway_token.clone()),
        });
    }
    out
}

fn parse_bot_url(s: &str, path: &str, errs: &mut ConfigErrors) -> Option<BotUrl> {
    let url = match url::Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            errs.push(path, format!("not a URL ({e}): {s:?}"));
            return None;
        }
    };
    match url.scheme() {
        "ws" | "http" => {}
        "wss" | "https" => {
            errs.push(
                path,
                "TLS to bot gateways is not supported yet; use ws:// on the private network",
            );
            return None;
        }
        other => {
            errs.push(path, format!("scheme must be ws or http, got {other:?}"));
            return None;
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        errs.push(path, "must not carry credentials; use `gateway_token`");
    }
    if url.fragment().is_some() {
        errs.push(path, "must not have a fragment");
    }
    let Some(host) = url.host_str() else {
        errs.push(path, "has no host");
        return None;
    };
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    Some(BotUrl {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: url.port_or_known_default().unwrap_or(80),
        path: target,
    })
}

fn validate_websocket(
    raw: &wire::RawWebSocket,
    env: &dyn Env,
    errs: &mut ConfigErrors,
) -> WebSocketConfig {
    let d = WebSocketConfig::default();
    let positive =
        |v: Option<Duration>, default: Duration, field: &str, errs: &mut ConfigErrors| {
            let v = v.unwrap_or(default);
            if v.is_zero() {
                errs.push(format!("websocket.{field}"), "must be more than zero");
            }
            v
        };
    let idle_timeout = positive(raw.idle_timeout, d.idle_timeout, "idle_timeout", errs);
    let ping_interval = positive(raw.ping_interval, d.ping_interval, "ping_interval", errs);
    let ticket_ttl = positive(raw.ticket_ttl, d.ticket_ttl, "ticket_ttl", errs);
    let size = |v: Option<u64>, default: usize, field: &str, errs: &mut ConfigErrors| match v {
        None => default,
        // 125 bytes: a message must at least hold a control frame's payload.
        Some(n) if (125..=1 << 30).contains(&n) => n as usize,
        Some(_) => {
            errs.push(
                format!("websocket.{field}"),
                "must be between 125 bytes and 1 GiB",
            );
            default
        }
    };
    let max_message_bytes = size(
        raw.max_message_bytes,
        d.max_message_bytes,
        "max_message_bytes",
        errs,
    );
    let max_frame_bytes = size(
        raw.max_frame_bytes,
        max_message_bytes,
        "max_frame_bytes",
        errs,
    );
    if max_frame_bytes > max_message_bytes {
        errs.push(
            "websocket.max_frame_bytes",
            "must not be more than max_message_bytes",
        );
    }
    let max_connections_per_user = raw
        .max_connections_per_user
        .unwrap_or(d.max_connections_per_user);
    if max_connections_per_user == 0 {
        errs.push("websocket.max_connections_per_user", "must be at least 1");
    }
    let ticket_secret = match (&raw.ticket_secret, &raw.ticket_secret_env) {
        (Some(_), Some(_)) => {
            errs.push(
                "websocket.ticket_secret",
                "set `ticket_secret` or `ticket_secret_env`, not both",
            );
            None
        }
        (Some(s), None) => Some(s.clone()),
        (None, Some(var)) => {
            let v = env.var(var);
            if v.is_none() {
                errs.push(
                    "websocket.ticket_secret_env",
                    format!("environment variable {var} is not set"),
                );
            }
            v
        }
        (None, None) => None,
    };
    if ticket_secret.as_ref().is_some_and(|s| s.len() < 32) {
        errs.push("websocket.ticket_secret", "must be at least 32 bytes long");
    }
    WebSocketConfig {
        idle_timeout,
        ping_interval,
        max_message_bytes,
        max_frame_bytes,
        max_connections_per_user,
        ticket_ttl,
        ticket_secret: ticket_secret.map(Secret::new),
    }
}

fn validate_keys(raw: &[wire::RawKey], models: &[Model], errs: &mut ConfigErrors) -> Vec<ApiKey> {
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, k) in raw.iter().enumerate() {
        let at = |field: &str| format!("keys[{i}].{field}");
        if k.id.is_empty() {
            errs.push(at("id"), "must not be empty");
        } else if !ids.insert(k.id.as_str()) {
            errs.push(at("id"), format!("duplicate key id {:?}", k.id));
        }
        if k.user.is_empty() {
            errs.push(at("user"), "must not be empty");
        }
        let mut sha256 = [0u8; 32];
        if hex::decode_to_slice(&k.sha256, &mut sha256).is_err() {
            errs.push(
                at("sha256"),
                "must be 64 hex characters (SHA-256 of the key)",
            );
        } else if !hashes.insert(sha256) {
            errs.push(at("sha256"), "the same key hash appears twice");
        }
        let allowed = k.models.as_ref().map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(j, name)| {
                    let found = models
                        .iter()
                        .find(|m| &m.name == name || m.aliases.iter().any(|a| a == name));
                    if found.is_none() {
                        errs.push(
                            format!("keys[{i}].models[{j}]"),
                            format!("unknown model {name:?}"),
                        );
                    }
                    found.map(|m| m.name.clone())
                })
                .collect()
        });
        out.push(ApiKey {
            id: k.id.clone(),
            user: k.user.clone(),
            sha256,
            models: allowed,
        });
    }
    out
}
