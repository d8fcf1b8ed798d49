//! The control-plane watch: a long poll on `GET /internal/v1/config`
//! that hot-swaps every newer snapshot in, and keeps a copy on disk.
//!
//! - Each snapshot goes through the same prepare-then-swap path as a file
//!   reload ([`ConfigReloader::apply_snapshot`]): merged over the local
//!   file, validated, prepared, swapped, limiter updated. A snapshot that
//!   fails any step is rejected (logged, `molt_config_reload_failures_total`)
//!   and the previous config keeps serving.
//! - An accepted snapshot is written to `cache_file` atomically (temp file,
//!   fsync, rename, fsync of the directory), so a restart while the control
//!   plane is down serves it (see [`startup_config`]). The file holds
//!   provider master keys in clear and is created mode 0600.
//! - Errors (control plane down, bad answers) back off exponentially with
//!   jitter, from 100 ms to 10 s; the watch never ends before shutdown.
//! - A snapshot from a newer control plane may carry fields this build does
//!   not know: it is applied without them
//!   ([`molt_config::contract::parse_snapshot`]); each such field is logged
//!   once per process and the last snapshot's count is a gauge.
//!
//! Metrics: `molt_control_plane_snapshot_version`,
//! `molt_control_plane_last_sync_timestamp_seconds` (last answer, 200 or
//! 304, that left this data plane up to date), `molt_control_plane_errors_total`,
//! `molt_control_plane_snapshot_unknown_fields`.
//!
//! Paths, the auth header and the bodies are those of
//! [`molt_config::contract`], which the control plane serves from too.
//!
//! The [`ControlPlaneClient`] is HTTP/1.1 (hyper) over plain TCP for an
//! `http://` URL or rustls (`ring`) for `https://`, trusting the platform's
//! roots (and `SSL_CERT_FILE`/`SSL_CERT_DIR`, like the proxy's upstream
//! peers) plus the optional `ca_file`; the scheme is never changed. The
//! usage shipper in [`crate::spool`] uses it too. It is the data plane's
//! only connection to the control plane, and it reaches nothing else.

use crate::metrics::Metrics;
use crate::reload::{merge, ConfigReloader};
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use molt_config::contract::{self, ConfigPoll};
use molt_config::dataplane::{ControlPlaneConfig, ProcessEnv};
use molt_config::files::write_atomically;
use molt_config::metrics::Registrar;
use molt_config::wire::{RawDataplaneConfig, RawSnapshot};
use molt_config::{ConfigErrors, DataplaneConfig};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longer than the control plane's longest hold (30 s by default, 5 min at
/// most) so a held poll is never cut short by us.
const POLL_TIMEOUT: Duration = Duration::from_secs(330);
/// Bound on a usage POST.
const POST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a [`ControlPlaneClient`] cannot be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("control_plane.token_env: the token is not a valid header value")]
    Token,
    #[error("control_plane.ca_file: {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("control_plane: TLS client config: {0}")]
    Tls(#[from] rustls::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// With the causes: hyper's own text ("client error (Connect)") does
    /// not say whether the TCP connect or the TLS handshake failed, or why.
    #[error("cannot reach the control plane: {}", molt_config::outbound::cause_text(.0))]
    Connect(#[from] hyper_util::client::legacy::Error),
    #[error("control plane answered {0}")]
    Status(StatusCode),
    #[error("control plane did not answer in time")]
    Timeout,
    #[error("reading the control plane's answer: {0}")]
    Body(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
}

/// HTTP client for `/internal/v1`, carrying the data-plane token.
#[derive(Clone)]
pub struct ControlPlaneClient {
    base: String,
    auth: HeaderValue,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for ControlPlaneClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ControlPlaneClient {
    /// A client for `cfg.url` in its own scheme (validated to be `http` or
    /// `https`); TLS trusts the platform's roots and `cfg.ca_file`.
    pub fn new(cfg: &ControlPlaneConfig) -> Result<Self, ClientBuildError> {
        let mut auth = HeaderValue::from_str(&contract::bearer(cfg.token.expose()))
            .map_err(|_| ClientBuildError::Token)?;
        auth.set_sensitive(true);
        let tls = tls_config(cfg.ca_file.as_deref())?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        // The HTTPS connector hands `https://` URIs to it for the TCP part.
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let scheme = if cfg.url.tls { "https" } else { "http" };
        Ok(Self {
            base: format!("{scheme}://{}", cfg.url.authority()),
            auth,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The snapshot newer than `after`, or `None` when the control plane
    /// held the poll and answered 304.
    pub async fn config(&self, after: u64) -> Result<Option<Bytes>, ClientError> {
        let uri = format!(
            "{}{}?{}",
            self.base,
            contract::CONFIG_PATH,
            ConfigPoll::query(after)
        );
        let (status, body) = self
            .send(Method::GET, &uri, Bytes::new(), POLL_TIMEOUT)
            .await?;
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_MODIFIED => Ok(None),
            other => Err(ClientError::Status(other)),
        }
    }

    /// `POST /internal/v1/usage` with a ready
    /// [`UsageBatch`](molt_config::contract::UsageBatch) body.
    pub async fn post_usage(&self, body: Bytes) -> Result<(), ClientError> {
        let uri = format!("{}{}", self.base, contract::USAGE_PATH);
        let (status, _) = self.send(Method::POST, &uri, body, POST_TIMEOUT).await?;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(ClientError::Status(status))
        }
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(contract::AUTH_HEADER, self.auth.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let exchange = async {
            let resp = self.http.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

/// The client's rustls config: the `ring` provider, the platform's roots
/// (with `SSL_CERT_FILE`/`SSL_CERT_DIR`) and `ca_file`'s certificates.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    match pingora_rustls::load_native_certs() {
        // Unparsable platform certificates are skipped, as
        // rustls-native-certs' own callers do.
        Ok(certs) => {
            roots.add_parsable_certificates(certs);
        }
        // Not fatal: `ca_file` may be all this data plane needs.
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the platform's root certificates for the control plane")
        }
    }
    if let Some(path) = ca_file {
        let bad = |reason: String| ClientBuildError::CaFile {
            path: path.to_owned(),
            reason,
        };
        for cert in molt_config::outbound::ca_certificates(path).map_err(bad)? {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `min(max, base × 2^(failures-1))`, scaled by a random factor in
/// [0.5, 1): data planes that lost the control plane together don't come
/// back in lockstep.
pub fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    use rand::Rng;
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    exp.min(max).mul_f64(rand::thread_rng().gen_range(0.5..1.0))
}

/// What the data plane starts on: its file, with the cached snapshot
/// merged over it when there is a valid one.
#[derive(Debug)]
pub struct StartupConfig {
    pub config: DataplaneConfig,
    pub snapshot: Option<RawSnapshot>,
    /// Why a cached snapshot was not used, to log once logging is set up.
    pub cache_problem: Option<String>,
}

/// Load `path` and, with `[control_plane]`, its cached snapshot. A cache
/// that is unreadable or no longer validates against the file is skipped
/// (the file alone is used); only the file's own errors are fatal.
pub fn startup_config(path: &Path) -> Result<StartupConfig, ConfigErrors> {
    let raw = DataplaneConfig::load_raw(path)?;
    let Some(cache) = raw
        .control_plane
        .as_ref()
        .map(|c| PathBuf::from(&c.cache_file))
    else {
        return plain(raw, None);
    };
    let snapshot = match read_cache(&cache) {
        Ok(Some(s)) => s,
        Ok(None) => return plain(raw, None),
        Err(e) => return plain(raw, Some(e)),
    };
    match DataplaneConfig::from_wire(merge(raw.clone(), Some(&snapshot)), &ProcessEnv) {
        Ok(config) => Ok(StartupConfig {
            config,
            snapshot: Some(snapshot),
            cache_problem: None,
        }),
        Err(e) => plain(
            raw,
            Some(format!("cached snapshot {} rejected: {e}", cache.display())),
        ),
    }
}

fn plain(raw: RawDataplaneConfig, problem: Option<String>) -> Result<StartupConfig, ConfigErrors> {
    Ok(StartupConfig {
        config: DataplaneConfig::from_wire(raw, &ProcessEnv)?,
        snapshot: None,
        cache_problem: problem,
    })
}

/// The cached snapshot, `None` if there is no cache file yet. Read as the
/// control plane's answer was: fields this build does not know (the cache
/// of a newer control plane's snapshot, kept across a downgrade) are
/// ignored.
pub fn read_cache(path: &Path) -> Result<Option<RawSnapshot>, String> {
    match std::fs::read(path) {
        Ok(bytes) => contract::parse_snapshot(&bytes)
            .map(|parsed| Some(parsed.snapshot))
            .map_err(|e| format!("cannot parse {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The watch's metrics, on the data plane's registry.
#[derive(Debug, Clone)]
struct SyncMetrics {
    version: IntGauge,
    last_sync: IntGauge,
    errors: IntCounter,
    unknown_fields: IntGauge,
}

impl SyncMetrics {
    fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let r = Registrar(metrics.registry());
        Ok(Self {
            version: r.gauge(
                "molt_control_plane_snapshot_version",
                "Version of the control-plane snapshot being served (0: none).",
            )?,
            last_sync: r.gauge(
                "molt_control_plane_last_sync_timestamp_seconds",
                "Unix time of the last control-plane answer that left this data plane up to date.",
            )?,
            errors: r.counter(
                "molt_control_plane_errors_total",
                "Failed exchanges with the control plane (config watch and usage shipping).",
            )?,
            unknown_fields: r.gauge(
                "molt_control_plane_snapshot_unknown_fields",
                "Fields of the last control-plane snapshot this build does not know and ignored (a newer control plane).",
            )?,
        })
    }

    fn synced(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_sync.set(i64::try_from(now).unwrap_or(i64::MAX));
    }
}

/// The long-poll watch, as a Pingora background service.
pub struct SyncService {
    client: ControlPlaneClient,
    reloader: Arc<ConfigReloader>,
    cache_file: PathBuf,
    metrics: SyncMetrics,
    /// Unknown snapshot fields already logged, so each is logged once.
    unknown_logged: Mutex<HashSet<String>>,
    /// Error counter shared with the usage shipper.
    pub errors: IntCounter,
}

impl SyncService {
    pub fn new(
        client: ControlPlaneClient,
        reloader: Arc<ConfigReloader>,
        cache_file: PathBuf,
        metrics: &Metrics,
    ) -> Result<Self, prometheus::Error> {
        let metrics = SyncMetrics::new(metrics)?;
        Ok(Self {
            client,
            reloader,
            cache_file,
            errors: metrics.errors.clone(),
            metrics,
            unknown_logged: Mutex::new(HashSet::new()),
        })
    }

    /// Count the fields a snapshot carried that this build does not know,
    /// and log each the first time it is seen.
    fn note_unknown_fields(&self, version: u64, fields: Vec<String>) {
        self.metrics
            .unknown_fields
            .set(i64::try_from(fields.len()).unwrap_or(i64::MAX));
        let mut logged = self
            .unknown_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for field in fields {
            if !logged.contains(&field) {
                tracing::warn!(version, %field, "control-plane snapshot has a field this data plane does not know (a newer control plane?); ignored");
                logged.insert(field);
            }
        }
    }

    /// Handle one 200 body; returns the version to poll after next.
    async fn accept(&self, body: Bytes, after: u64) -> Result<u64, String> {
        let parsed = contract::parse_snapshot(&body)
            .map_err(|e| format!("snapshot is not valid JSON for this build: {e}"))?;
        let snap = parsed.snapshot;
        let version = snap.version;
        self.note_unknown_fields(version, parsed.unknown_fields);
        if version <= after {
            // Versions only move forward; an older one is a control plane
            // restored from a backup. Keep what we have and wait for newer.
            tracing::warn!(version, serving = after, "ignoring an older snapshot");
            return Ok(after);
        }
        if self.reloader.apply_snapshot(snap).await.is_some() {
            self.metrics
                .version
                .set(i64::try_from(version).unwrap_or(i64::MAX));
            self.metrics.synced();
            let path = self.cache_file.clone();
            let written = tokio::task::spawn_blocking(move || write_atomically(&path, &body)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, path = %self.cache_file.display(), "cannot cache the snapshot; a restart without the control plane would serve an older one");
                }
                Err(e) => tracing::error!(error = %e, "snapshot cache task failed"),
            }
            tracing::info!(version, "control-plane snapshot applied");
        }
        // A rejected snapshot (already counted and logged by the reloader)
        // is not asked for again: wait for a newer version.
        Ok(version)
    }
}

#[async_trait]
impl BackgroundService for SyncService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut after = self
            .reloader
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |s| s.version);
        self.metrics
            .version
            .set(i64::try_from(after).unwrap_or(i64::MAX));
        let mut failures = 0u32;
        loop {
            let answer = tokio::select! {
                a = self.client.config(after) => a,
                _ = shutdown.changed() => return,
            };
            let result = match answer {
                Ok(None) => {
                    self.metrics.synced();
                    Ok(after)
                }
                Ok(Some(body)) => self.accept(body, after).await.inspect_err(|_| {
                    // Unparseable is rejected like an invalid config.
                    self.reloader.metrics.config_reload_failures.inc();
                }),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(v) => {
                    if failures > 0 {
                        tracing::info!(version = v, "control plane reachable again");
                    }
                    failures = 0;
                    after = v;
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(error = %e, "control-plane watch failed; serving the last good config and retrying");
                    } else {
                        tracing::debug!(error = %e, failures, "control-plane watch still failing");
                    }
                    let wait = backoff(failures, BACKOFF_MIN, BACKOFF_MAX);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use molt_config::dataplane::UpstreamUrl;
    use molt_config::Secret;

    const TOKEN: &str = "dataplane-token-0123";
    const SNAPSHOT: &str = r#"{"version":5}"#;

    /// A stand-in control plane over TLS with a fresh self-signed
    /// certificate for 127.0.0.1 (its PEM written to `dir/cp.pem`): config
    /// and usage for the right token, 401 otherwise. Returns the port.
    async fn tls_control_plane(dir: &Path) -> (u16, PathBuf) {
        let (pem, config) = molt_fakes::tls::loopback_certificate(dir, "cp.pem").unwrap();
        let acceptor = pingora_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let answer = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let authorized =
                                req.headers().get(header::AUTHORIZATION).is_some_and(|v| {
                                    v.as_bytes() == format!("Bearer {TOKEN}").as_bytes()
                                });
                            let (status, body) = match (req.method().as_str(), req.uri().path()) {
                                _ if !authorized => (401, ""),
                                ("GET", "/internal/v1/config") => (200, SNAPSHOT),
                                ("POST", "/internal/v1/usage") => (200, "{}"),
                                _ => (404, ""),
                            };
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), answer)
                        .await;
                });
            }
        });
        (port, pem)
    }

    fn cp_config(tls: bool, port: u16, ca_file: Option<PathBuf>) -> ControlPlaneConfig {
        ControlPlaneConfig {
            url: UpstreamUrl {
                tls,
                host: "127.0.0.1".into(),
                port,
                path_prefix: String::new(),
            },
            ca_file,
            token: Secret::new(TOKEN.to_owned()),
            cache_file: PathBuf::from("unused.json"),
            spool_dir: PathBuf::from("unused"),
            spool_max_bytes: 1 << 20,
            hold_response_until_recorded: true,
            ship_interval: Duration::from_secs(1),
        }
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("molt-sync-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn https_control_plane_with_its_ca_file() {
        let dir = temp_dir();
        let (port, ca) = tls_control_plane(&dir).await;
        let client = ControlPlaneClient::new(&cp_config(true, port, Some(ca))).unwrap();
        // The scheme is kept, never downgraded to http.
        assert!(
            format!("{client:?}").contains(&format!("\"https://127.0.0.1:{port}\"")),
            "{client:?}"
        );
        let body = client.config(0).await.unwrap().unwrap();
        assert_eq!(&body[..], SNAPSHOT.as_bytes());
        client
            .post_usage(Bytes::from_static(br#"{"events":[]}"#))
            .await
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn https_control_plane_with_an_untrusted_certificate_is_refused() {
        let dir = temp_dir();
        let (port, _) = tls_control_plane(&dir).await;
        // The platform's roots do not know a fresh self-signed certificate.
        let client = ControlPlaneClient::new(&cp_config(true, port, None)).unwrap();
        let e = client.config(0).await.unwrap_err();
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
        assert!(e.to_string().contains("certificate"), "{e}");

        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = ControlPlaneClient::new(&cp_config(true, port, Some(junk))).unwrap_err();
        assert!(matches!(e, ClientBuildError::CaFile { .. }), "{e:?}");
        assert!(e.to_string().starts_with("control_plane.ca_file: "), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        for _ in 0..100 {
            let first = backoff(1, base, max);
            assert!(first >= base / 2 && first < base, "{first:?}");
            let late = backoff(40, base, max);
            assert!(late >= max / 2 && late < max, "{late:?}");
        }
        assert!(backoff(4, base, max) >= Duration::from_millis(400));
    }

    #[test]
    fn a_cached_snapshot_of_a_newer_control_plane_is_read_without_its_new_fields() {
        let dir = std::env::temp_dir().join(format!("molt-sync-{}", uuid::Uuid::new_v4()));
        let path = dir.join("snapshot.json");
        write_atomically(
            &path,
            br#"{"version":6,"keys":[{"id":"k","user":"u","sha256":"ab","tier":"gold"}],"routing":{}}"#,
        )
        .unwrap();
        let snap = read_cache(&path).unwrap().unwrap();
        assert_eq!((snap.version, snap.keys[0].id.as_str()), (6, "k"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cache_is_replaced_atomically_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("molt-sync-{}", uuid::Uuid::new_v4()));
        let path = dir.join("snapshot.json");
        assert!(matches!(read_cache(&path), Ok(None)));
        write_atomically(&path, br#"{"version":3}"#).unwrap();
        write_atomically(&path, br#"{"version":4}"#).unwrap();
        let snap = read_cache(&path).unwrap().unwrap();
        assert_eq!(snap.version, 4);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(read_cache(&path).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
