//! Wiring: store + services + router + background jobs, and the server
//! loop behind `molt controlplane`. The one place that knows the store is
//! a [`SqlStore`]: each part gets it as the narrow trait it declares
//! (`ServiceStore`, `SnapshotStore`, `WorkerStore`, `BillingStore`).

use crate::api::{router, AppState};
use crate::billing::stripe_sink::StripeMeterSink;
use crate::billing::{Billing, BillingSettings, MeterSink};
use crate::config::{BillingConfig, FleetConfig, FleetKind, IdentityConfig, Settings};
use crate::fleet::fly::FlyFleet;
use crate::fleet::local::{BotLauncher, LocalFleet};
use crate::fleet::Fleet;
use crate::identity::jwks::JwksFetcher;
use crate::identity::metrics::IdentityMetrics;
use crate::identity::Identity;
use crate::metrics::{Metrics, MetricsError};
use crate::provision::metrics::ProvisionMetrics;
use crate::provision::{ProvisionSettings, Worker, WorkerStore};
use crate::service::{Service, ServiceError};
use crate::store::{SqlStore, StoreError};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How often the audit retention job runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("stripe client: {0}")]
    Stripe(String),
    #[error("fleet: {0}")]
    Fleet(String),
    #[error("identity: {0}")]
    Identity(String),
}

impl Provisioning {
    /// The fleet a `[fleet]` section names, with a background worker.
    /// `kind = "local"` serves its bots with `local_bots`, which the
    /// program embedding the control plane supplies (the `molt` binary's
    /// serves mock bot gateways); without one it is refused.
    pub fn from_config(
        config: &FleetConfig,
        local_bots: Option<Arc<dyn BotLauncher>>,
    ) -> Result<Self, ServerError> {
        let fleet: Arc<dyn Fleet> = match &config.kind {
            FleetKind::Fly(s) => Arc::new(
                FlyFleet::new((**s).clone()).map_err(|e| ServerError::Fleet(e.to_string()))?,
            ),
            FleetKind::Local => Arc::new(LocalFleet::new(local_bots.ok_or_else(|| {
                ServerError::Fleet(
                    "kind = \"local\" runs bots in-process, and this program has no bot launcher"
                        .into(),
                )
            })?)),
        };
        Ok(Self {
            fleet,
            settings: config.provision.clone(),
            run_worker: true,
        })
    }
}

/// A running control plane without its listener: tests drive `router`
/// directly; [`run`] serves it.
#[derive(Debug)]
pub struct App {
    pub service: Arc<Service>,
    pub router: Router,
    jobs: Vec<JoinHandle<()>>,
    provisioner: Option<Provisioner>,
}

/// Where bots run and how they are provisioned.
#[derive(Debug, Clone)]
pub struct Provisioning {
    pub fleet: Arc<dyn Fleet>,
    pub settings: ProvisionSettings,
    /// Run a worker in the background (tests drive their own instead).
    pub run_worker: bool,
}

/// What new workers are made from.
#[derive(Debug)]
struct Provisioner {
    store: Arc<dyn WorkerStore>,
    provisioning: Provisioning,
    metrics: ProvisionMetrics,
}

impl App {
    /// Start the services on `store` (publishing the first snapshot) and
    /// the background jobs (snapshot refresh, audit retention), without a
    /// fleet: bots can be requested but nothing provisions them.
    pub async fn start(store: Arc<SqlStore>, settings: &Settings) -> Result<Self, ServerError> {
        Self::start_with(store, settings, None).await
    }

    /// A new provisioning worker with a claim name of its own (`None`
    /// without a fleet). Several may run at once.
    pub fn worker(&self) -> Option<Worker> {
        let p = self.provisioner.as_ref()?;
        Some(Worker::new(
            p.store.clone(),
            p.provisioning.fleet.clone(),
            self.service.clone(),
            self.service.cipher().clone(),
            p.provisioning.settings.clone(),
            p.metrics.clone(),
        ))
    }

    /// [`App::start`], plus the provisioning worker when a fleet is given.
    pub async fn start_with(
        store: Arc<SqlStore>,
        settings: &Settings,
        provisioning: Option<Provisioning>,
    ) -> Result<Self, ServerError> {
        let metrics = Metrics::new()?;
        let provisioner = match provisioning {
            Some(provisioning) => Some(Provisioner {
                store: store.clone(),
                metrics: ProvisionMetrics::register(&metrics)?,
                provisioning,
            }),
            None => None,
        };
        let service = Arc::new(
            Service::start(store.clone(), store, settings.service.clone(), metrics).await?,
        );
        // In the background: it reads every sealed value, and start-up need not wait.
        tokio::spawn({
            let service = service.clone();
            async move { service.log_secrets_status().await }
        });
        let router = router(AppState {
            service: service.clone(),
            settings: settings.api.clone(),
        });
        let jobs = vec![
            spawn_every(settings.refresh_interval, {
                let service = service.clone();
                move || {
                    let service = service.clone();
                    async move { service.refresh_snapshot().await }
                }
            }),
            spawn_every(RETENTION_EVERY, {
                let service = service.clone();
                let retention = settings.audit_retention;
                move || {
                    let service = service.clone();
                    async move {
                        match service.run_audit_retention(retention).await {
                            Ok(n) if n > 0 => tracing::info!(deleted = n, "audit retention"),
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %e, "audit retention failed"),
                        }
                    }
                }
            }),
        ];
        let mut app = Self {
            service,
            router,
            jobs,
            provisioner,
        };
        let run = app
            .provisioner
            .as_ref()
            .is_some_and(|p| p.provisioning.run_worker);
        if let Some(worker) = app.worker().filter(|_| run) {
            app.jobs.push(worker.spawn());
        }
        Ok(app)
    }
}

impl App {
    /// Billing on this app: `POST /webhooks/stripe`,
    /// `GET /api/v1/billing/reconciliation` and the periodic flush job.
    /// Once per app (it registers the billing metrics).
    pub fn enable_billing(
        &mut self,
        store: &SqlStore,
        settings: BillingSettings,
        sink: Arc<dyn MeterSink>,
    ) -> Result<Arc<Billing>, ServerError> {
        let billing = Billing::new(
            self.service.clone(),
            Arc::new(store.clone()),
            settings,
            sink,
        )?;
        let routes = crate::api::tracked(
            crate::api::billing::routes(billing.clone()),
            self.service.metrics().clone(),
        );
        self.router = std::mem::take(&mut self.router).merge(routes);
        self.jobs.push(billing.spawn());
        Ok(billing)
    }

    /// [`App::enable_billing`] as a `[billing]` section configures it:
    /// meter events through async-stripe to Stripe or `stripe_base_url`.
    pub fn enable_configured_billing(
        &mut self,
        store: &SqlStore,
        config: &BillingConfig,
    ) -> Result<Arc<Billing>, ServerError> {
        let sink = StripeMeterSink::new(
            config.stripe_api_key.expose(),
            config.stripe_base_url.as_deref(),
        )
        .map_err(|e| ServerError::Stripe(e.to_string()))?;
        self.enable_billing(store, config.settings.clone(), Arc::new(sink))
    }
}

impl App {
    /// The identity provider on this app: `POST /webhooks/clerk`, and with
    /// a `jwks_url` the background fetch of its keys into the snapshot.
    /// Once per app (it registers the identity metrics). The fetcher, if
    /// any, is returned rather than started when `fetch_in_background` is
    /// false (tests drive it).
    pub fn enable_identity(
        &mut self,
        store: &SqlStore,
        config: &IdentityConfig,
        fetch_in_background: bool,
    ) -> Result<(Arc<Identity>, Option<JwksFetcher>), ServerError> {
        let metrics = IdentityMetrics::register(self.service.metrics())?;
        let identity = Arc::new(Identity::new(
            self.service.clone(),
            Arc::new(store.clone()),
            config.webhook_secret.clone(),
            metrics.clone(),
        ));
        let routes = crate::api::tracked(
            crate::api::identity::routes(identity.clone()),
            self.service.metrics().clone(),
        );
        self.router = std::mem::take(&mut self.router).merge(routes);
        let Some(source) = &config.jwks else {
            return Ok((identity, None));
        };
        let client = crate::https::client(source.ca_file.as_deref())
            .map_err(|e| ServerError::Identity(e.to_string()))?;
        let fetcher = JwksFetcher::new(
            source.url.clone(),
            client,
            source.keys.clone(),
            source.refresh,
            metrics,
        );
        if !fetch_in_background {
            return Ok((identity, Some(fetcher)));
        }
        self.jobs.push(fetcher.spawn(self.service.clone()));
        Ok((identity, None))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for job in &self.jobs {
            job.abort();
        }
    }
}

fn spawn_every<F, Fut>(every: Duration, mut tick: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            tick().await;
        }
    })
}

/// A control plane bound to its listener and not yet serving, so the
/// caller can learn the address it got ([`Server::local_addr`]: `listen`
/// may say port 0) before anyone is told to connect.
#[derive(Debug)]
pub struct Server {
    app: App,
    listener: TcpListener,
}

impl Server {
    /// Open the database, start the app with its `[fleet]` (a local fleet
    /// serves its bots with `local_bots`) and `[billing]`, and bind
    /// `listen`.
    pub async fn bind(
        settings: &Settings,
        local_bots: Option<Arc<dyn BotLauncher>>,
    ) -> Result<Self, ServerError> {
        let store = SqlStore::connect(&settings.database_url, settings.max_connections).await?;
        let provisioning = settings
            .fleet
            .as_ref()
            .map(|f| Provisioning::from_config(f, local_bots))
            .transpose()?;
        let mut app = App::start_with(Arc::new(store.clone()), settings, provisioning).await?;
        if let Some(f) = &settings.fleet {
            let kind = match f.kind {
                FleetKind::Fly(_) => "fly",
                FleetKind::Local => "local",
            };
            tracing::info!(fleet = kind, "bot provisioning enabled");
        }
        if let Some(b) = &settings.billing {
            app.enable_configured_billing(&store, b)?;
            tracing::info!(
                stripe = b
                    .stripe_base_url
                    .as_deref()
                    .unwrap_or("https://api.stripe.com"),
                "billing enabled"
            );
        }
        if let Some(i) = &settings.identity {
            app.enable_identity(&store, i, true)?;
            tracing::info!(
                jwks = i.jwks.as_ref().map_or("none", |j| j.url.as_str()),
                "identity provider webhooks enabled"
            );
        }
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: settings.listen,
                    source,
                })?;
        Ok(Self { app, listener })
    }

    /// The address the API listener is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener.local_addr().map_err(ServerError::Serve)
    }

    /// Serve the API until Ctrl-C / SIGTERM.
    pub async fn serve(self) -> Result<(), ServerError> {
        let listen = self.local_addr()?;
        tracing::info!(%listen, "control plane listening");
        axum::serve(self.listener, self.app.router.clone())
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(ServerError::Serve)
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
