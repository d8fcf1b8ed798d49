//! Assembling and running the data plane: Pingora server, client listeners
//! (plain HTTP with h2c, and TLS), admin listener, reload (the config, and
//! the TLS certificate: [`crate::tls::watch`]) and readiness services, and
//! with `[control_plane]` the config watch ([`crate::sync`]) and the usage
//! spool with its shipper ([`crate::spool`]).

use crate::admin::AdminApp;
use crate::conn_gate::{ConnectionCount, Gate};
use crate::limits::Limiter;
use crate::listen::ListenAddr;
use crate::metrics::Metrics;
use crate::proxy::MoltProxy;
use crate::reload::{ConfigReloader, ReloadService};
use crate::runtime::{BuildError, Runtime, RuntimeHandle};
use crate::sink::{JsonlFileSink, Tee, TotalsOnlySink, UsageSink, UsageTotals};
use crate::spool::{Spool, SpoolError};
use crate::sync::{ControlPlaneClient, SyncService};
use crate::tls::watch::CertWatchService;
use crate::tls::{self, TlsError};
use async_trait::async_trait;
use molt_config::{ConfigErrors, LogFormat};
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Socket buffers of every client connection: no read buffer, Pingora's
/// default 1460-byte write buffer (which, with patch 14, takes memory only
/// while data waits in it).
///
/// Pingora's default read buffer is a 64 KiB zero-filled `BufReader` per
/// accepted connection, resident for the connection's whole life: it was
/// nearly all of what an idle WebSocket or a held SSE stream cost (65 KiB of
/// the measured 69 KiB; `loadtest/scale.sh`). Nothing here needs it. Pingora
/// reads request heads into its own 4 KiB header buffer and bodies into its
/// body reader's buffer, so without the read buffer those reads go straight
/// from the socket into the buffer that keeps the bytes (one copy fewer), and
/// the WebSocket relay reads through its own 4 KiB buffer. Under TLS, rustls
/// reads up to 4 KiB per call, so a large upload costs more `read` calls
/// (about 500 for a 2 MiB body instead of 32): a small price next to the
/// body's own transfer, for 64 KiB less per connection.
///
/// The write buffer stays: it is what puts a small answer's head and body in
/// one `sendto` (without it, `loadtest/syscalls.sh` counts two per request).
const CLIENT_SOCKET_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot open the usage file {path}: {source}")]
    UsageFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Limits(#[from] crate::limits::LimitsError),
    #[error("cannot start the limiter's runtime: {0}")]
    LimitsRuntime(std::io::Error),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    ControlPlaneClient(#[from] crate::sync::ClientBuildError),
    #[error("cannot reserve a listening port: {0}")]
    Listen(std::io::Error),
}

/// Set up logging to stderr in the configured format. `RUST_LOG` overrides
/// the default level (`info`).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only if a subscriber is already set (tests, `molt
    // dev`), which is fine to keep.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Where the data plane listens, with port-0 addresses resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    /// Plain HTTP (with h2c).
    pub http: SocketAddr,
    /// TLS, when configured.
    pub https: Option<SocketAddr>,
    /// Metrics, health and readiness.
    pub admin: SocketAddr,
}

impl Listeners {
    /// Every address, named as in a ready file ([`molt_config::ready`]).
    pub fn named(&self) -> Vec<(&'static str, SocketAddr)> {
        use molt_config::ready::{ADMIN, HTTP, HTTPS};
        let mut all = vec![(HTTP, self.http)];
        all.extend(self.https.map(|a| (HTTPS, a)));
        all.push((ADMIN, self.admin));
        all
    }
}

/// Called once every listener accepts connections.
pub type OnListening = Box<dyn FnOnce(&Listeners) + Send>;

/// How a data plane is started, beyond its config file.
#[derive(Default)]
pub struct Launch {
    /// Set up logging to stderr in the configured format. Off when the
    /// embedding process has its own subscriber.
    pub init_tracing: bool,
    /// Where usage events go instead of `usage_file` and the in-memory
    /// totals (with `[control_plane]`, the spool still comes first): an
    /// in-process test watches the events with it.
    pub usage_sink: Option<Arc<dyn UsageSink>>,
    /// Run once the listeners are up (e.g. to write a ready file).
    pub on_listening: Option<OnListening>,
    /// Listen addresses the embedding process already resolved (port 0
    /// reserved, see [`crate::listen`]); a configured address equal to one
    /// of these uses it instead of resolving again.
    pub reserved: Vec<ListenAddr>,
}

/// Load, validate and run the data plane until the process is signalled.
/// Returns only on a startup error.
pub fn run(config_path: &Path, launch: Launch) -> Result<std::convert::Infallible, StartError> {
    DataPlane::assemble(config_path, launch)?.run_forever()
}

/// A data plane, assembled and about to run.
pub struct DataPlane {
    server: Server,
    listeners: Listeners,
    /// Port-0 reservations, held while the server runs (see [`crate::listen`]).
    reserved: Vec<ListenAddr>,
    on_listening: Option<OnListening>,
    /// Client connections held, for the drain at shutdown.
    connections: Arc<ConnectionCount>,
}

impl DataPlane {
    /// Load and validate the config at `config_path` (and the control
    /// plane's cached snapshot over it, if any) and build every service.
    pub fn assemble(config_path: &Path, launch: Launch) -> Result<Self, StartError> {
        // The file, with the control plane's cached snapshot over it if any:
        // a restart while the control plane is down serves the last good one.
        let startup = crate::sync::startup_config(config_path).map_err(StartError::Config)?;
        let config = startup.config;
        if launch.init_tracing {
            init_tracing(config.log.format);
        }
        if let Some(problem) = &startup.cache_problem {
            tracing::warn!(problem, "starting from the config file alone");
        }
        let server_cfg = config.server.clone();
        let metrics = Arc::new(Metrics::new()?);
        let tls = server_cfg
            .tls
            .as_ref()
            .map(|t| tls::prepare(t, metrics.registry()))
            .transpose()?;
        let mut reserved = launch.reserved;
        let mut resolve = |addr: SocketAddr| match reserved.iter().position(|r| r.addr == addr) {
            Some(i) => Ok(reserved.swap_remove(i)),
            None => ListenAddr::resolve(addr).map_err(StartError::Listen),
        };
        let http = resolve(server_cfg.listen)?;
        let https = server_cfg
            .tls
            .as_ref()
            .map(|t| resolve(t.listen))
            .transpose()?;
        let admin = resolve(config.admin_listen)?;
        let listeners = Listeners {
            http: http.addr,
            https: https.as_ref().map(|l| l.addr),
            admin: admin.addr,
        };

        let totals = Arc::new(UsageTotals::default());
        let sink: Arc<dyn UsageSink> = match (launch.usage_sink, &config.usage_file) {
            (Some(sink), _) => sink,
            (None, Some(path)) => {
                let dropped = metrics.usage_events_dropped.clone();
                Arc::new(
                    JsonlFileSink::start(path, totals.clone(), Box::new(move || dropped.inc()))
                        .map_err(|source| StartError::UsageFile {
                            path: path.clone(),
                            source,
                        })?,
                )
            }
            (None, None) => Arc::new(TotalsOnlySink(totals.clone())),
        };
        let control_plane = config.control_plane.clone();
        let (sink, spool) = match &control_plane {
            Some(cp) => {
                let dropped = metrics.usage_events_dropped.clone();
                let spool = Arc::new(Spool::open(
                    &cp.spool_dir,
                    cp.spool_max_bytes,
                    cp.hold_response_until_recorded,
                    metrics.registry(),
                    move || dropped.inc(),
                )?);
                let sink: Arc<dyn UsageSink> = Arc::new(Tee(spool.clone(), sink));
                (sink, Some(spool))
            }
            None => (sink, None),
        };
        let limiter = start_limiter(&config.limits, &metrics)?;
        let snapshot_version = startup.snapshot.as_ref().map(|s| s.version);
        let runtime = RuntimeHandle::new(Runtime::build(config, 1)?);
        metrics.config_version.set(1);

        let conf = ServerConf {
            threads: server_cfg.threads.get(),
            grace_period_seconds: Some(server_cfg.grace_period.as_secs()),
            graceful_shutdown_timeout_seconds: Some(1),
            pid_file: std::env::temp_dir()
                .join(format!("molt-{}.pid", std::process::id()))
                .to_string_lossy()
                .into_owned(),
            upgrade_sock: std::env::temp_dir()
                .join(format!("molt-upgrade-{}.sock", std::process::id()))
                .to_string_lossy()
                .into_owned(),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
        server.bootstrap();

        let proxy = MoltProxy::new(runtime.clone(), metrics.clone(), sink, limiter.clone());
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        options.h1_header_timeout = Some(server_cfg.header_timeout);
        // Requests are never forwarded as they came (the upstream gets a
        // header built in `proxy::headers`): no second header map per request
        // for its names' original case (Pingora patch 12).
        options.h1_drop_header_case = true;
        // The proxy reads back only the status of the response it wrote
        // (`logging`, `fail_to_proxy`): the written header keeps no fields,
        // which would otherwise live as long as the response (patch 13).
        options.h1_status_only_written_header = true;
        options.h2_idle_timeout = Some(server_cfg.keepalive_timeout);
        let mut proxy_app = pingora_proxy::http_proxy(&server.configuration, proxy);
        proxy_app.server_options = Some(options);
        let max_connections = server_cfg
            .max_connections
            .unwrap_or_else(crate::conn_gate::default_max_connections);
        let connections = ConnectionCount::new(
            max_connections,
            metrics.clients.connections.clone(),
            metrics.clients.refused.clone(),
        );
        let mut proxy_service = Service::new(
            "molt-proxy".to_owned(),
            Gate::new(proxy_app, connections.clone()),
        );
        proxy_service.add_listener(client_listener(&http));
        let cert_watch = match (&https, tls) {
            (Some(https), Some(tls)) => {
                proxy_service.add_listener(client_listener(https).tls(tls.settings));
                Some(CertWatchService(tls.reloader))
            }
            _ => None,
        };

        let ready = Arc::new(AtomicBool::new(true));
        let mut admin_service = Service::new(
            "molt-admin".to_owned(),
            HttpServer::new_app(AdminApp {
                metrics: metrics.clone(),
                runtime: runtime.clone(),
                totals,
                ready: ready.clone(),
            }),
        );
        match admin.socket_options() {
            Some(options) => admin_service.add_tcp_with_settings(&admin.addr.to_string(), options),
            None => admin_service.add_tcp(&admin.addr.to_string()),
        }

        let reloader = Arc::new(ConfigReloader {
            path: config_path.to_owned(),
            runtime,
            metrics: metrics.clone(),
            limiter,
            version: Arc::new(AtomicU64::new(1)),
            snapshot: std::sync::Mutex::new(startup.snapshot),
        });
        server.add_service(proxy_service);
        server.add_service(admin_service);
        if let (Some(cp), Some(spool)) = (&control_plane, spool) {
            let client = ControlPlaneClient::new(cp)?;
            let sync = SyncService::new(
                client.clone(),
                reloader.clone(),
                cp.cache_file.clone(),
                &metrics,
            )?;
            let shipper = spool.shipper(client, cp.ship_interval, sync.errors.clone());
            tracing::info!(control_plane = %cp.url.authority(), cached_version = ?snapshot_version, "config from the control plane; usage shipped to it");
            server.add_service(background_service("control-plane-sync", sync));
            server.add_service(background_service("usage-shipper", shipper));
        }
        server.add_service(background_service("config-reload", ReloadService(reloader)));
        if let Some(cert_watch) = cert_watch {
            server.add_service(background_service("tls-certificate-reload", cert_watch));
        }
        server.add_service(background_service("readiness", Readiness(ready)));
        tracing::info!(listen = %listeners.http, tls = ?listeners.https, admin = %listeners.admin, max_connections, "molt data plane starting");
        let reserved = [Some(http), https, Some(admin)]
            .into_iter()
            .flatten()
            .collect();
        Ok(Self {
            server,
            listeners,
            reserved,
            on_listening: launch.on_listening,
            connections,
        })
    }

    /// Where it listens (port-0 addresses already resolved).
    pub fn listeners(&self) -> Listeners {
        self.listeners
    }

    /// Serve until the process is signalled (SIGTERM drains, SIGINT stops
    /// at once), then exit the process.
    pub fn run_forever(self) -> ! {
        let (server, drained) = self.start_watch();
        server.run(RunArgs {
            drained: Some(drained),
            ..RunArgs::default()
        });
        std::process::exit(0)
    }

    /// Serve until `stop` says so, then return: for a data plane embedded
    /// in another process (tests).
    pub fn run_until(self, stop: Box<dyn ShutdownSignalWatch>) {
        let (server, drained) = self.start_watch();
        server.run(RunArgs {
            shutdown_signal: stop,
            drained: Some(drained),
        });
    }

    /// Start the thread that calls `on_listening` once the listeners are up;
    /// the port reservations go with it and live as long as the process.
    /// Also returns the drain check: at shutdown, the grace period ends as
    /// soon as no client connection is left.
    fn start_watch(self) -> (Server, Box<dyn Fn() -> bool + Send>) {
        let Self {
            server,
            listeners,
            reserved,
            on_listening,
            connections,
        } = self;
        let addrs: Vec<SocketAddr> = listeners.named().into_iter().map(|(_, a)| a).collect();
        std::thread::spawn(move || {
            if crate::listen::wait_listening(&addrs, LISTEN_WAIT) {
                if let Some(notify) = on_listening {
                    notify(&listeners);
                }
            } else {
                tracing::error!(?addrs, "the listeners did not come up");
            }
            // Reserved ports stay reserved while the process lives.
            std::mem::forget(reserved);
        });
        (server, Box::new(move || connections.open() == 0))
    }
}

/// How long the listeners may take to come up before `on_listening` is
/// given up on.
const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A client-facing listener on `addr`: no L4 read buffer, and the
/// reservation's socket options for a port-0 address.
fn client_listener(addr: &ListenAddr) -> ListenerConfig {
    let listener = ListenerConfig::tcp(addr.addr.to_string()).l4_buffer(CLIENT_SOCKET_BUFFERS);
    match addr.socket_options() {
        Some(options) => listener.tcp_socket_options(options),
        None => listener,
    }
}

/// The limiter, with its background work (Redis leases, reconnects) on a
/// small runtime of its own: Pingora's runtimes belong to its services and
/// don't exist yet at this point.
fn start_limiter(
    cfg: &molt_config::limits::LimitsConfig,
    metrics: &Metrics,
) -> Result<Limiter, StartError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("molt-limits")
        .enable_all()
        .build()
        .map_err(StartError::LimitsRuntime)?;
    let limiter = {
        let _entered = rt.enter();
        Limiter::new(cfg, metrics.registry())?
    };
    // The runtime must live as long as the process (its tasks keep limits
    // global); the process exits through Pingora, never by unwinding here.
    std::mem::forget(rt);
    Ok(limiter)
}

/// Flips `/readyz` to 503 as soon as shutdown begins.
struct Readiness(Arc<AtomicBool>);

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        self.0.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: draining in-flight requests");
    }
}
