//! The `molt` binary: parses the command line and hands over to the
//! libraries. No logic of its own beyond wiring (`molt dev` lives in
//! [`dev`], the fakes' subcommands and the local fleet's bots in [`fakes`]).

mod dev;
mod dev_mail;
mod fakes;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "molt",
    version,
    about = "Molt Gateway: a streaming proxy appliance for AI model traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on loopback: data plane (HTTP and TLS) and a mock
    /// provider (or the real ones when OPENAI_API_KEY/ANTHROPIC_API_KEY are set).
    Dev(dev::DevArgs),
    /// Run the data plane.
    Dataplane {
        #[arg(long, short)]
        config: PathBuf,
        /// Only validate the config: print every error and exit non-zero.
        #[arg(long)]
        validate: bool,
        // The listeners are reported as `http`, `https` and `admin`.
        #[command(flatten)]
        ready: fakes::ReadyFileArg,
    },
    /// Run the mock OpenAI/Anthropic-compatible provider.
    MockProvider(fakes::MockProviderArgs),
    /// Run the mock bot gateway (WebSocket chat, for tests and `molt dev`).
    MockBot(fakes::MockBotArgs),
    /// Run the fake Fly Machines API (tests, local provisioning); started
    /// machines run mock bot gateways on their own 127.x.y.z:18789.
    FakeFly(fakes::FakeFlyArgs),
    /// Run the fake Stripe API (meter events, for tests and local billing);
    /// `GET /_fake/meter_events` lists what it stored, `POST /_fake/faults`
    /// injects failures.
    FakeStripe(fakes::FakeStripeArgs),
    /// Run a load scenario against one or more targets (see loadtest/README.md).
    Load(molt_loadtest::loadgen::LoadArgs),
    /// Run the control plane: operators' API, config push, usage ingest.
    Controlplane {
        #[arg(long, short)]
        config: PathBuf,
        // The API listener is reported as `api`.
        #[command(flatten)]
        ready: fakes::ReadyFileArg,
        /// Only validate the config (with the secrets it names, from the
        /// environment): print every error and exit non-zero.
        #[arg(long, conflicts_with = "migrate")]
        validate: bool,
        /// Apply pending database migrations and exit (a deploy's step
        /// before the new version starts; starting applies them too).
        #[arg(long)]
        migrate: bool,
    },
    /// Check a health endpoint (`/readyz`, `/healthz`): exit 0 on a 2xx
    /// answer, 1 otherwise. For container healthchecks in images without
    /// a shell or curl.
    Probe {
        /// e.g. http://127.0.0.1:9901/readyz
        url: String,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Operate the control plane through its API (users, keys, models, ...).
    Ctl(molt_controlplane::ctl::CtlArgs),
    /// Client API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a new molt API key and print it with the SHA-256 the config stores.
    New,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Dataplane {
            config,
            validate: true,
            ..
        } => validate(&config),
        Command::Dataplane {
            config,
            validate: false,
            ready,
        } => {
            let never = molt_dataplane::server::run(&config, launch(ready.ready_file))
                .context("data plane failed to start")?;
            match never {}
        }
        Command::MockProvider(args) => fakes::mock_provider(args),
        Command::MockBot(args) => fakes::mock_bot(args),
        Command::FakeFly(args) => fakes::fake_fly(args),
        Command::FakeStripe(args) => fakes::fake_stripe(args),
        Command::Load(args) => molt_loadtest::loadgen::main(args)
            .map(drop)
            .map_err(Into::into),
        Command::Controlplane {
            config,
            validate: true,
            ..
        } => validate_controlplane(&config),
        Command::Controlplane {
            config,
            migrate,
            ready,
            ..
        } => {
            let settings =
                molt_controlplane::Settings::load(&config, &molt_config::dataplane::ProcessEnv)?;
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Runtime::new()?;
            if migrate {
                // Connecting applies every pending migration.
                rt.block_on(molt_controlplane::store::SqlStore::connect(
                    &settings.database_url,
                    1,
                ))
                .context("database migrations failed")?;
                tracing::info!("database migrations applied");
                return Ok(());
            }
            rt.block_on(async {
                let server =
                    molt_controlplane::Server::bind(&settings, Some(fakes::local_bots())).await?;
                if let Some(path) = &ready.ready_file {
                    let api = server.local_addr()?;
                    molt_config::ready::write_ready_file(path, [(molt_config::ready::API, api)])
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                server.serve().await?;
                anyhow::Ok(())
            })
        }
        Command::Probe { url, timeout } => probe(&url, timeout),
        Command::Ctl(args) => {
            let mut out = std::io::stdout().lock();
            tokio::runtime::Runtime::new()?
                .block_on(molt_controlplane::ctl::run(args, &mut out))?;
            Ok(())
        }
        Command::Key {
            command: KeyCommand::New,
        } => {
            let key = dev::new_api_key();
            let mut out = std::io::stdout().lock();
            use std::io::Write;
            writeln!(out, "key: {key}")?;
            writeln!(out, "sha256: {}", molt_config::hash_api_key(&key))?;
            Ok(())
        }
    }
}

/// `molt probe`: one GET through the control plane's outbound client.
fn probe(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let uri: http::Uri = url.parse().with_context(|| format!("not a URL: {url}"))?;
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let client = molt_controlplane::https::client(None)?;
            let response = tokio::time::timeout(timeout, client.get(uri))
                .await
                .with_context(|| format!("{url}: no answer within {timeout:?}"))?
                .with_context(|| format!("{url}: request failed"))?;
            anyhow::Ok(response.status())
        })?;
    anyhow::ensure!(status.is_success(), "{url}: {status}");
    Ok(())
}

fn validate_controlplane(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    match molt_controlplane::Settings::load(path, &molt_config::dataplane::ProcessEnv) {
        Ok(_) => {
            writeln!(std::io::stdout(), "config OK: {}", path.display())?;
            Ok(())
        }
        Err(errors) => {
            let mut err = std::io::stderr().lock();
            for e in &errors.0 {
                writeln!(err, "{e}")?;
            }
            std::process::exit(1);
        }
    }
}

fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    match molt_config::DataplaneConfig::load(path, &molt_config::dataplane::ProcessEnv) {
        Ok(_) => {
            writeln!(std::io::stdout(), "config OK: {}", path.display())?;
            Ok(())
        }
        Err(errors) => {
            let mut err = std::io::stderr().lock();
            for e in errors.iter() {
                writeln!(err, "{e}")?;
            }
            std::process::exit(1);
        }
    }
}

/// How `molt dataplane` starts its data plane: logging to stderr, and the
/// ready file written once its listeners are up.
fn launch(ready_file: Option<PathBuf>) -> molt_dataplane::server::Launch {
    molt_dataplane::server::Launch {
        init_tracing: true,
        on_listening: ready_file.map(|path| -> molt_dataplane::server::OnListening {
            Box::new(move |listeners| {
                if let Err(e) = molt_config::ready::write_ready_file(&path, listeners.named()) {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the ready file");
                }
            })
        }),
        ..Default::default()
    }
}
