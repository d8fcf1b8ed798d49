//! `molt dev`: the whole product on loopback with one command.
//!
//! Under `<dir>` (default `.molt/`): `secrets.env` (generated once, mode
//! 0600: the at-rest encryption key, the data-plane token, the bootstrap
//! admin token, the JWT secret), `controlplane.toml` and its SQLite
//! database, `dataplane.toml`, a self-signed certificate, the data plane's
//! snapshot cache and usage spool, and `dev.env` with what a client needs
//! (`export` lines, and `molt`'s directory on `PATH`, so
//! `source .molt/dev.env && molt ctl users list` works as printed).
//!
//! Order: the mock provider starts in-process; the control plane starts
//! in-process on SQLite and is seeded through its service layer (a dev
//! user and key, the OpenAI and Anthropic providers, the usual models);
//! its first snapshot is written to the data plane's cache; then the data
//! plane runs in the foreground, fed by the control plane's long poll and
//! shipping usage back to it, exactly as in production. Bot provisioning
//! is on with a local fleet: `POST /api/v1/bots` starts a mock bot gateway
//! in-process, reachable through the data plane's `/ws/chat?bot=`.
//!
//! Billing is recorded locally (unless `--no-billing`): a fake Stripe runs
//! in-process (`molt_fakes::fake_stripe`, on `--stripe`) and the control
//! plane's `[billing]` points async-stripe at it, with short windows so a
//! developer sees meter events within seconds at
//! `$MOLT_STRIPE_URL/_fake/meter_events`. The dev user gets a Stripe
//! customer id, and webhooks signed with `MOLT_STRIPE_WEBHOOK_SECRET` are
//! accepted at the control plane's `/webhooks/stripe`.
//!
//! Identity: Clerk's webhooks, signed with `MOLT_CLERK_WEBHOOK_SECRET`
//! (in `dev.env`), are accepted at the control plane's `/webhooks/clerk`
//! and make users; with `--clerk-jwks-url` and `--clerk-issuer`, the
//! provider's session tokens are accepted by the data plane too.
//! Notifications are delivered locally: email to an SMTP sink in-process
//! (`--smtp`), each message kept as `<dir>/mail/<n>.eml` (`dev_mail.rs`);
//! in-app ones through `molt ctl notifications list`.
//!
//! Real OpenAI/Anthropic are used when their keys are in the environment;
//! they are then stored like any provider key: sealed in the database with
//! the key from `secrets.env`, and in clear only in the data plane's
//! snapshot cache (mode 0600).

use anyhow::Context;
use base64::Engine;
use molt_controlplane::domain::PageRequest;
use molt_controlplane::service::{Operator, Service, ServiceError};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The data plane reads its control-plane token from this variable.
const DATAPLANE_TOKEN_ENV: &str = "MOLT_DEV_DATAPLANE_TOKEN";
const ENCRYPTION_KEY_ENV: &str = "MOLT_DEV_ENCRYPTION_KEY";
const JWT_SECRET_ENV: &str = "MOLT_DEV_JWT_SECRET";
const ADMIN_TOKEN_ENV: &str = "MOLT_ADMIN_TOKEN";
const STRIPE_WEBHOOK_SECRET_ENV: &str = "MOLT_STRIPE_WEBHOOK_SECRET";
const STRIPE_API_KEY_ENV: &str = "MOLT_DEV_STRIPE_API_KEY";
/// Signs the identity provider's (Clerk's) webhooks to `/webhooks/clerk`.
const CLERK_WEBHOOK_SECRET_ENV: &str = "MOLT_CLERK_WEBHOOK_SECRET";
const DEV_EMAIL: &str = "dev@molt.local";
/// The dev user's customer in the local fake Stripe.
const DEV_CUSTOMER: &str = "cus_molt_dev";
/// Billing window and flush period under `molt dev`: short, so meter
/// events show up while the developer watches (production: 1h).
const DEV_BILLING_WINDOW: &str = "10s";

#[derive(clap::Args)]
pub(crate) struct DevArgs {
    /// Where the generated config, certificate and env file go.
    #[arg(long, default_value = ".molt")]
    dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8443")]
    tls: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9800")]
    mock: SocketAddr,
    /// The control plane's API (MOLT_ADMIN_URL).
    #[arg(long, default_value = "127.0.0.1:9700")]
    controlplane: SocketAddr,
    /// The local fake Stripe that billing reports meter events to
    /// (MOLT_STRIPE_URL).
    #[arg(long, default_value = "127.0.0.1:12111")]
    stripe: SocketAddr,
    /// Do not run the fake Stripe nor bill usage.
    #[arg(long)]
    no_billing: bool,
    /// Accept the identity provider's session tokens: its JWKS
    /// (`https://<clerk frontend api>/.well-known/jwks.json`, or a local
    /// stand-in). Needs `--clerk-issuer`.
    #[arg(long, requires = "clerk_issuer")]
    clerk_jwks_url: Option<String>,
    /// The `iss` of the identity provider's tokens.
    #[arg(long, requires = "clerk_jwks_url")]
    clerk_issuer: Option<String>,
    /// An accepted `azp` (the app's origin); repeat for several.
    #[arg(long, requires = "clerk_jwks_url")]
    clerk_authorized_party: Vec<String>,
    /// The local SMTP sink notification email goes to (messages are kept
    /// in `<dir>/mail/`).
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp: SocketAddr,
    // Any address above may use port 0; the ready file reports them all as
    // `http`, `https`, `admin`, `api` (the control plane), `mock`,
    // `stripe` and `smtp`.
    #[command(flatten)]
    ready: crate::fakes::ReadyFileArg,
}

/// The listeners `molt dev` binds before anything starts, so every address
/// is known (port 0 resolved) before the configs are written.
struct Bound {
    mock: std::net::TcpListener,
    stripe: Option<std::net::TcpListener>,
    smtp: std::net::TcpListener,
    controlplane: std::net::TcpListener,
    /// The data plane's listeners, reserved for it (see `molt_dataplane::listen`).
    dataplane: Vec<molt_dataplane::listen::ListenAddr>,
}

impl Bound {
    /// Bind or reserve every address in `args`, and write back the ports
    /// they got.
    fn new(args: &mut DevArgs) -> anyhow::Result<Self> {
        let bind = |addr: &mut SocketAddr, what: &str| -> anyhow::Result<std::net::TcpListener> {
            let listener = std::net::TcpListener::bind(*addr)
                .with_context(|| format!("{what} cannot listen on {addr}"))?;
            *addr = listener.local_addr()?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        };
        let mock = bind(&mut args.mock, "the mock provider (see --mock)")?;
        let stripe = (!args.no_billing)
            .then(|| {
                bind(
                    &mut args.stripe,
                    "the fake Stripe (see --stripe, --no-billing)",
                )
            })
            .transpose()?;
        let smtp = bind(&mut args.smtp, "the SMTP sink (see --smtp)")?;
        let controlplane = bind(
            &mut args.controlplane,
            "the control plane (see --controlplane)",
        )?;
        let mut dataplane = Vec::new();
        for addr in [&mut args.http, &mut args.tls, &mut args.admin] {
            let reserved = molt_dataplane::listen::ListenAddr::resolve(*addr)
                .with_context(|| format!("the data plane cannot listen on {addr}"))?;
            *addr = reserved.addr;
            dataplane.push(reserved);
        }
        Ok(Self {
            mock,
            stripe,
            smtp,
            controlplane,
            dataplane,
        })
    }
}

/// A new random API key: `molt_sk_` + 32 random bytes, base64url.
pub(crate) fn new_api_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "molt_sk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

pub(crate) fn run(mut args: DevArgs) -> anyhow::Result<()> {
    let bound = Bound::new(&mut args)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    // Holds every name it is indexed by below: `load_secrets` generates
    // whichever is missing.
    let secrets = load_secrets(&args.dir.join("secrets.env"))?;
    // The data plane reads its token from the environment. Set it now,
    // before any thread exists, so no one reads the environment meanwhile.
    std::env::set_var(DATAPLANE_TOKEN_ENV, &secrets[DATAPLANE_TOKEN_ENV]);

    let env_file = args.dir.join("dev.env");
    let old_key = existing_key(&env_file);
    let use_openai = std::env::var("OPENAI_API_KEY").is_ok_and(|v| !v.is_empty());
    let use_anthropic = std::env::var("ANTHROPIC_API_KEY").is_ok_and(|v| !v.is_empty());
    let config_path = args.dir.join("dataplane.toml");
    std::fs::write(&config_path, dataplane_config(&args))
        .with_context(|| format!("writing {}", config_path.display()))?;

    start_mock(bound.mock)?;
    if let Some(stripe) = bound.stripe {
        start_fake_stripe(stripe, &secrets[STRIPE_API_KEY_ENV])?;
    }
    let mail_dir = abs(&args.dir.join("mail"));
    crate::dev_mail::start_sink(bound.smtp, &mail_dir)?;
    let key = start_controlplane(
        &args,
        bound.controlplane,
        &secrets,
        old_key,
        (use_openai, use_anthropic),
    )?;

    let url = format!("http://{}/v1", args.http);
    let metrics = format!("http://{}/metrics", args.admin);
    let mut vars = vec![
        ("MOLT_URL", url.clone()),
        ("MOLT_TLS_URL", format!("https://{}/v1", args.tls)),
        ("MOLT_API_KEY", key.clone()),
        ("MOLT_METRICS_URL", metrics),
        (
            "MOLT_CA_CERT",
            abs(&args.dir.join("tls/cert.pem")).display().to_string(),
        ),
        ("MOLT_ADMIN_URL", format!("http://{}", args.controlplane)),
        ("MOLT_ADMIN_TOKEN", secrets[ADMIN_TOKEN_ENV].clone()),
        (
            CLERK_WEBHOOK_SECRET_ENV,
            secrets[CLERK_WEBHOOK_SECRET_ENV].clone(),
        ),
    ];
    if !args.no_billing {
        vars.push(("MOLT_STRIPE_URL", format!("http://{}", args.stripe)));
        vars.push((
            "MOLT_STRIPE_WEBHOOK_SECRET",
            secrets[STRIPE_WEBHOOK_SECRET_ENV].clone(),
        ));
    }
    let env = env_file_text(&vars, molt_dir().as_deref());
    std::fs::write(&env_file, &env).with_context(|| format!("writing {}", env_file.display()))?;
    let mut banner = String::new();
    let env_file = abs(&env_file);
    let _ = writeln!(
        banner,
        "\nMolt dev is starting. Wrote {} :\n\n{env}",
        env_file.display()
    );
    let _ = writeln!(
        banner,
        "Providers: OpenAI -> {}, Anthropic -> {}",
        if use_openai { "api.openai.com" } else { "mock" },
        if use_anthropic {
            "api.anthropic.com"
        } else {
            "mock"
        },
    );
    if args.no_billing {
        let _ = writeln!(banner, "Billing: off (--no-billing)");
    } else {
        let _ = writeln!(
            banner,
            "Billing: usage of {DEV_EMAIL} (customer {DEV_CUSTOMER}) goes to a local fake Stripe in \
             {DEV_BILLING_WINDOW} windows, flushed every {DEV_BILLING_WINDOW}:\n  \
             meter events:   curl -s http://{stripe}/_fake/meter_events\n  \
             flush now:      curl -s -X POST http://{cp}/api/v1/billing/flush -H \"Authorization: Bearer $MOLT_ADMIN_TOKEN\"\n  \
             reconciliation: curl -s http://{cp}/api/v1/billing/reconciliation -H \"Authorization: Bearer $MOLT_ADMIN_TOKEN\"\n  \
             webhooks:       POST http://{cp}/webhooks/stripe, signed with MOLT_STRIPE_WEBHOOK_SECRET",
            stripe = args.stripe,
            cp = args.controlplane,
        );
    }
    let _ = writeln!(
        banner,
        "Identity: Clerk webhooks at POST http://{cp}/webhooks/clerk, signed (Svix) with \
         MOLT_CLERK_WEBHOOK_SECRET; provider tokens {tokens}",
        cp = args.controlplane,
        tokens = args
            .clerk_jwks_url
            .as_deref()
            .map_or("off (--clerk-jwks-url)".to_owned(), |u| format!(
                "verified against {u}"
            )),
    );
    let _ = writeln!(
        banner,
        "{}",
        crate::dev_mail::banner(&mail_dir, args.controlplane)
    );
    let _ = writeln!(
        banner,
        "\nTry it:\n  curl -sN {url}/chat/completions -H \"Authorization: Bearer {key}\" -H 'content-type: application/json' \\\n    -d '{{\"model\":\"gpt-4o-mini\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\nOperate it:\n  source {env_file} && molt ctl users list\n",
        env_file = env_file.display(),
    );
    eprintln!("{banner}");
    let never = molt_dataplane::server::run(&config_path, dataplane_launch(&args, bound.dataplane))
        .context("data plane failed to start")?;
    match never {}
}

fn start_mock(listener: std::net::TcpListener) -> anyhow::Result<()> {
    let mock = listener.local_addr()?;
    std::thread::Builder::new()
        .name("mock-provider".into())
        .spawn(move || {
            let run = async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                molt_fakes::mock_provider::MockProvider::new(Default::default())
                    .serve(listener)
                    .await
            };
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    if let Err(e) = rt.block_on(run) {
                        tracing::error!(error = %e, %mock, "mock provider stopped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot start the mock provider runtime"),
            }
        })?;
    Ok(())
}

/// The fake Stripe on its own thread and runtime, on a listener bound
/// before anything started (so a port in use is an error at once rather
/// than a billing flush that fails later).
fn start_fake_stripe(listener: std::net::TcpListener, api_key: &str) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let opts = molt_fakes::fake_stripe::FakeStripeOptions {
        api_key: api_key.to_owned(),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("fake-stripe".into())
        .spawn(move || {
            let run = async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                molt_fakes::fake_stripe::FakeStripe::new(opts)
                    .serve(listener)
                    .await
            };
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    if let Err(e) = rt.block_on(run) {
                        tracing::error!(error = %e, %addr, "fake stripe stopped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot start the fake stripe runtime"),
            }
        })?;
    Ok(())
}

/// Start the control plane on its own thread and runtime, seed it, write
/// its first snapshot to the data plane's cache, and return the dev key.
fn start_controlplane(
    args: &DevArgs,
    listener: std::net::TcpListener,
    secrets: &HashMap<String, String>,
    old_key: Option<String>,
    (use_openai, use_anthropic): (bool, bool),
) -> anyhow::Result<String> {
    let cp_config = args.dir.join("controlplane.toml");
    std::fs::write(&cp_config, controlplane_config(args))
        .with_context(|| format!("writing {}", cp_config.display()))?;
    let env: HashMap<&str, &str> = secrets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let settings = molt_controlplane::Settings::load(&cp_config, &env)?;
    let billing = !args.no_billing;
    let providers = dev_providers(args.mock, use_openai, use_anthropic);
    let cache = args.dir.join("snapshot.json");
    let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<String>>();
    std::thread::Builder::new()
        .name("controlplane".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let started = async {
                    let store = molt_controlplane::store::SqlStore::connect(
                        &settings.database_url,
                        settings.max_connections,
                    )
                    .await?;
                    // `[fleet] kind = "local"`: bots are mock gateways
                    // in this process, so `POST /api/v1/bots` works.
                    let provisioning = settings
                        .fleet
                        .as_ref()
                        .map(|f| {
                            molt_controlplane::server::Provisioning::from_config(
                                f,
                                Some(crate::fakes::local_bots()),
                            )
                        })
                        .transpose()?;
                    let mut app = molt_controlplane::App::start_with(
                        Arc::new(store.clone()),
                        &settings,
                        provisioning,
                    )
                    .await?;
                    // `[billing]` points at the in-process fake Stripe.
                    if let Some(b) = &settings.billing {
                        app.enable_configured_billing(&store, b)?;
                    }
                    // `[identity]`: Clerk's webhooks, and its keys fetched
                    // in the background when `--clerk-jwks-url` is given.
                    if let Some(i) = &settings.identity {
                        app.enable_identity(&store, i, true)?;
                    }
                    let key = seed(&app.service, &providers, old_key, billing).await?;
                    let published = app.service.publisher().subscribe().borrow().clone();
                    // Version 0 means the state did not compile: the data
                    // plane then starts from its file and waits for a fix.
                    if published.version > 0 {
                        molt_config::files::write_atomically(&cache, &published.body)?;
                    }
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    anyhow::Ok((app, listener, key))
                }
                .await;
                match started {
                    Ok((app, listener, key)) => {
                        let _ = tx.send(Ok(key));
                        if let Err(e) = axum::serve(listener, app.router.clone()).await {
                            tracing::error!(error = %e, "control plane stopped");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    rx.recv()
        .context("the control plane thread ended before starting")?
        .context("control plane failed to start")
}

/// One provider to seed: name, kind, base URL, master key.
type DevProvider = (&'static str, &'static str, String, String);

fn dev_providers(mock: SocketAddr, use_openai: bool, use_anthropic: bool) -> Vec<DevProvider> {
    let mock = format!("http://{mock}/v1");
    let real = |var: &str| std::env::var(var).unwrap_or_default();
    vec![
        if use_openai {
            (
                "openai",
                "openai",
                "https://api.openai.com/v1".into(),
                real("OPENAI_API_KEY"),
            )
        } else {
            (
                "openai",
                "openai",
                mock.clone(),
                "sk-mock-openai-master".into(),
            )
        },
        if use_anthropic {
            (
                "anthropic",
                "anthropic",
                "https://api.anthropic.com/v1".into(),
                real("ANTHROPIC_API_KEY"),
            )
        } else {
            ("anthropic", "anthropic", mock, "sk-ant-mock-master".into())
        },
    ]
}

/// Make the database hold the dev world (idempotent across restarts):
/// providers (updated to this run's URLs and keys), models, the dev user
/// (with a Stripe customer when `billing`), and a working key, reusing
/// `old_key` when it is still valid.
async fn seed(
    service: &Service,
    providers: &[DevProvider],
    old_key: Option<String>,
    billing: bool,
) -> anyhow::Result<String> {
    let op = Operator {
        actor: "molt-dev".into(),
        role: molt_controlplane::domain::Role::Admin,
    };
    for (name, kind, base_url, key) in providers {
        let create =
            serde_json::json!({"name": name, "kind": kind, "base_url": base_url, "keys": [key]});
        match service
            .create_provider(&op, serde_json::from_value(create)?)
            .await
        {
            Ok(_) => {}
            Err(ServiceError::Conflict(_)) => {
                let update = serde_json::json!({"base_url": base_url, "keys": [key]});
                service
                    .update_provider(&op, name, serde_json::from_value(update)?)
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Published prices, USD per million tokens of each class.
    let models = [
        (
            "gpt-4o-mini",
            "openai",
            vec!["mini"],
            serde_json::json!({"input": "0.15", "cache_read_input": "0.075", "output": "0.60"}),
        ),
        (
            "gpt-4o",
            "openai",
            vec![],
            serde_json::json!({"input": "2.50", "cache_read_input": "1.25", "output": "10.00"}),
        ),
        (
            "text-embedding-3-small",
            "openai",
            vec![],
            serde_json::json!({"input": "0.02", "output": "0"}),
        ),
        (
            "claude-sonnet-4-5",
            "anthropic",
            vec!["sonnet"],
            serde_json::json!({"input": "3", "cache_read_input": "0.30",
                "cache_write_5m_input": "3.75", "cache_write_1h_input": "6", "output": "15"}),
        ),
        (
            "claude-haiku-4-5",
            "anthropic",
            vec![],
            serde_json::json!({"input": "1", "cache_read_input": "0.10",
                "cache_write_5m_input": "1.25", "cache_write_1h_input": "2", "output": "5"}),
        ),
    ];
    for (name, provider, aliases, price) in models {
        let create = serde_json::json!({"name": name, "provider": provider, "aliases": aliases,
            "price": price});
        match service
            .create_model(&op, serde_json::from_value(create)?)
            .await
        {
            Ok(_) | Err(ServiceError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let all = PageRequest {
        cursor: None,
        limit: molt_controlplane::service::MAX_PAGE,
    };
    // The dev user's plan: no limits of its own (the deployment defaults),
    // there to be tried with `molt ctl plans update dev --limit ...`.
    let plan = serde_json::json!({"name": "dev", "description": "molt dev's user"});
    match service
        .create_plan(&op, serde_json::from_value(plan)?)
        .await
    {
        Ok(_) | Err(ServiceError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let users = service.list_users(&op, &all).await?;
    let user = match users.items.into_iter().find(|u| u.email == DEV_EMAIL) {
        Some(u) if billing && u.stripe_customer_id.is_none() => {
            let update = serde_json::json!({"stripe_customer_id": DEV_CUSTOMER});
            service
                .update_user(&op, &u.id, serde_json::from_value(update)?)
                .await?
        }
        Some(u) => u,
        None => {
            let mut create = serde_json::json!({"email": DEV_EMAIL, "plan": "dev"});
            if billing {
                create["stripe_customer_id"] = DEV_CUSTOMER.into();
            }
            service
                .create_user(&op, serde_json::from_value(create)?)
                .await?
        }
    };
    if let Some(old) = old_key {
        let hash = molt_config::hash_api_key(&old);
        let keys = service.list_keys(&op, Some(&user.id), &all).await?;
        if keys
            .items
            .iter()
            .any(|k| k.sha256 == hash && k.revoked_at.is_none())
        {
            return Ok(old);
        }
    }
    let create = serde_json::json!({"user_id": user.id, "name": "dev"});
    let created = service
        .create_key(&op, serde_json::from_value(create)?)
        .await?;
    Ok(created.secret)
}

/// `secrets.env`, with any missing secret generated and the file rewritten
/// (mode 0600). Kept across runs: the encryption key opens the database.
fn load_secrets(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let mut secrets: HashMap<String, String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let before = secrets.len();
    for name in [
        ENCRYPTION_KEY_ENV,
        DATAPLANE_TOKEN_ENV,
        JWT_SECRET_ENV,
        ADMIN_TOKEN_ENV,
        STRIPE_WEBHOOK_SECRET_ENV,
        STRIPE_API_KEY_ENV,
        CLERK_WEBHOOK_SECRET_ENV,
    ] {
        secrets
            .entry(name.to_owned())
            .or_insert_with(|| match name {
                ADMIN_TOKEN_ENV => format!("molt_admin_{}", random_hex()),
                // Shaped like Stripe's, so they read as what they are.
                STRIPE_WEBHOOK_SECRET_ENV => format!("whsec_{}", random_hex()),
                STRIPE_API_KEY_ENV => format!("sk_test_{}", random_hex()),
                // Svix's form: whsec_ + base64 of the key bytes.
                CLERK_WEBHOOK_SECRET_ENV => format!(
                    "whsec_{}",
                    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 24]>())
                ),
                _ => random_hex(),
            });
    }
    if secrets.len() != before {
        let mut text =
            String::from("# Generated by `molt dev`. Keep private: it opens .molt's database.\n");
        let mut names: Vec<_> = secrets.keys().collect();
        names.sort();
        for name in names {
            let _ = writeln!(text, "{name}={}", secrets[name]);
        }
        molt_config::files::write_atomically(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(secrets)
}

fn abs(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// `dev.env`: one `export NAME=value` line per variable, so `source`
/// hands them to the commands run after it (`molt ctl` reads
/// `MOLT_ADMIN_URL` and `MOLT_ADMIN_TOKEN`), and `molt`'s own directory put
/// first on `PATH`, so the `molt` the banner's commands name is this one
/// whether or not it was installed.
fn env_file_text(vars: &[(&str, String)], molt_dir: Option<&Path>) -> String {
    let mut text = String::from(
        "# Written by `molt dev` on every start: `source` it to talk to this molt dev.\n",
    );
    if let Some(dir) = molt_dir {
        let _ = writeln!(
            text,
            "export PATH={}:\"$PATH\"",
            shell_quote(&dir.display().to_string())
        );
    }
    for (name, value) in vars {
        let _ = writeln!(text, "export {name}={}", shell_quote(value));
    }
    text
}

/// The directory of the running `molt`, if the OS says.
fn molt_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

/// `value` as one shell word: as is when it holds only characters no shell
/// treats specially (every URL, key and token `molt dev` writes), else in
/// single quotes.
fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// The key from an earlier run, so clients keep working across restarts.
fn existing_key(env_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(env_file).ok()?;
    text.lines()
        .map(|l| l.strip_prefix("export ").unwrap_or(l))
        .find_map(|l| l.strip_prefix("MOLT_API_KEY="))
        .filter(|k| k.starts_with(molt_dataplane::auth::API_KEY_PREFIX))
        .map(str::to_owned)
}

fn controlplane_config(args: &DevArgs) -> String {
    let billing = if args.no_billing {
        String::new()
    } else {
        format!(
            r#"
# Usage is billed to the in-process fake Stripe (GET {stripe}/_fake/meter_events).
[billing]
webhook_secret_env = "{STRIPE_WEBHOOK_SECRET_ENV}"
stripe_api_key_env = "{STRIPE_API_KEY_ENV}"
stripe_base_url = "http://{stripe}"
window = "{DEV_BILLING_WINDOW}"
flush_interval = "{DEV_BILLING_WINDOW}"
settle = "2s"
"#,
            stripe = args.stripe,
        )
    };
    let tokens = match (&args.clerk_jwks_url, &args.clerk_issuer) {
        (Some(url), Some(issuer)) => format!(
            "jwks_url = {url:?}\nissuer = {issuer:?}\nauthorized_parties = {parties:?}\njwks_refresh = \"10s\"\n",
            parties = args.clerk_authorized_party,
        ),
        _ => String::new(),
    };
    format!(
        r#"# Generated by `molt dev`; rewritten on every start. Secrets are in secrets.env.
listen = "{listen}"
database_url = "sqlite://{db}?mode=rwc"

[secrets]
encryption_key_env = "{ENCRYPTION_KEY_ENV}"
dataplane_token_env = "{DATAPLANE_TOKEN_ENV}"
bootstrap_admin_token_env = "{ADMIN_TOKEN_ENV}"

[jwt]
issuer = "molt-dev"
secret_env = "{JWT_SECRET_ENV}"

# Bots (POST /api/v1/bots) run as mock gateways inside `molt dev`.
[fleet]
kind = "local"
proxy_url = "http://{http}/v1"
health_deadline = "30s"

# Clerk's webhooks (POST /webhooks/clerk) make and update users.
[identity]
webhook_secret_env = "{CLERK_WEBHOOK_SECRET_ENV}"
{tokens}{billing}{notifications}"#,
        listen = args.controlplane,
        http = args.http,
        db = abs(&args.dir.join("controlplane.db")).display(),
        notifications = crate::dev_mail::notifications_config(args.smtp),
    )
}

fn dataplane_config(args: &DevArgs) -> String {
    let dir = abs(&args.dir);
    format!(
        r#"# Generated by `molt dev`; rewritten on every start. Keys, providers and
# models come from the control plane (molt ctl, or the API at MOLT_ADMIN_URL).
version = 1

[server]
listen = "{http}"
threads = 2
grace_period = "5s"

[server.tls]
listen = "{tls}"
cert_file = "{dir}/tls/cert.pem"
key_file = "{dir}/tls/key.pem"
self_signed = true

[admin]
listen = "{admin}"

[usage]
file = "{dir}/usage.jsonl"

[control_plane]
url = "http://{cp}"
token_env = "{DATAPLANE_TOKEN_ENV}"
cache_file = "{dir}/snapshot.json"
spool_dir = "{dir}/spool"
ship_interval = "1s"
"#,
        http = args.http,
        tls = args.tls,
        admin = args.admin,
        cp = args.controlplane,
        dir = dir.display(),
    )
}

/// How `molt dev` starts its data plane: on the listeners reserved for it,
/// and, with `--ready-file`, reporting every listener of the whole product
/// once the data plane's are up (the others were bound before it started).
fn dataplane_launch(
    args: &DevArgs,
    reserved: Vec<molt_dataplane::listen::ListenAddr>,
) -> molt_dataplane::server::Launch {
    use molt_config::ready::API;
    let others = [
        ("mock", args.mock),
        (API, args.controlplane),
        ("smtp", args.smtp),
    ]
    .into_iter()
    .chain((!args.no_billing).then_some(("stripe", args.stripe)))
    .collect::<Vec<_>>();
    let on_listening = args.ready.ready_file.clone().map(|path| {
        Box::new(move |dp: &molt_dataplane::server::Listeners| {
            let named = dp.named().into_iter().chain(others);
            if let Err(e) = molt_config::ready::write_ready_file(&path, named) {
                tracing::error!(path = %path.display(), error = %e, "cannot write the ready file");
            }
        }) as molt_dataplane::server::OnListening
    });
    molt_dataplane::server::Launch {
        init_tracing: true,
        reserved,
        on_listening,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_env_exports_every_variable_and_puts_molt_on_the_path() {
        let vars = [
            ("MOLT_URL", "http://127.0.0.1:8080/v1".to_owned()),
            ("MOLT_API_KEY", "molt_sk_abc-DEF_123".to_owned()),
            ("MOLT_CA_CERT", "/home/a b/.molt/tls/cert.pem".to_owned()),
        ];
        let text = env_file_text(&vars, Some(Path::new("/opt/it's/bin")));
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                r#"export PATH='/opt/it'\''s/bin':"$PATH""#,
                "export MOLT_URL=http://127.0.0.1:8080/v1",
                "export MOLT_API_KEY=molt_sk_abc-DEF_123",
                "export MOLT_CA_CERT='/home/a b/.molt/tls/cert.pem'",
            ]
        );
    }

    #[test]
    fn the_key_of_an_earlier_run_is_read_back_from_either_format() {
        let dir = std::env::temp_dir().join(format!("molt-dev-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dev.env");
        for line in [
            "export MOLT_API_KEY=molt_sk_new",
            "MOLT_API_KEY=molt_sk_new",
        ] {
            std::fs::write(&file, format!("# c\nexport MOLT_URL=x\n{line}\n")).unwrap();
            assert_eq!(
                existing_key(&file).as_deref(),
                Some("molt_sk_new"),
                "{line}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
