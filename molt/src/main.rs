//! The `molt` binary: parses the command line and hands over to the
//! libraries. No logic of its own beyond wiring (`molt dev` lives in
//! [`dev`]).

mod dev;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
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
    },
    /// Run the mock OpenAI/Anthropic-compatible provider.
    MockProvider {
        #[arg(long, default_value = "127.0.0.1:9800")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 8)]
        chunks: usize,
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
        #[arg(long, default_value_t = 0)]
        ttft_ms: u64,
    },
    /// Run the mock bot gateway (WebSocket chat, for tests and `molt dev`).
    MockBot {
        #[arg(long, default_value = "127.0.0.1:18789")]
        listen: SocketAddr,
        /// The gateway token it demands as `Authorization: Bearer`.
        #[arg(long, env = "MOLT_GATEWAY_TOKEN")]
        token: String,
        #[arg(long, default_value_t = 4)]
        chunks: usize,
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
    },
    /// Run the fake Fly Machines API (tests, local provisioning); started
    /// machines run mock bot gateways on their own 127.x.y.z:18789.
    FakeFly {
        #[arg(long, default_value = "127.0.0.1:4280")]
        listen: SocketAddr,
        /// The bearer token it demands.
        #[arg(
            long,
            env = "FLY_API_TOKEN",
            hide_env_values = true,
            default_value = "fake-fly-token"
        )]
        token: String,
        /// Time a machine takes from `starting` to `started`.
        #[arg(long, default_value_t = 200)]
        boot_delay_ms: u64,
        /// Do not enforce Fly's per-action rate limits.
        #[arg(long)]
        no_rate_limits: bool,
    },
    /// Run the fake Stripe API (meter events, for tests and local billing);
    /// `GET /_fake/meter_events` lists what it stored, `POST /_fake/faults`
    /// injects failures.
    FakeStripe {
        #[arg(long, default_value = "127.0.0.1:12111")]
        listen: SocketAddr,
        /// The secret key it demands.
        #[arg(
            long,
            env = "STRIPE_API_KEY",
            hide_env_values = true,
            default_value = "sk_test_fake"
        )]
        api_key: String,
        /// Calls per second before 429 (0: unlimited).
        #[arg(long, default_value_t = 100)]
        rate_limit: u32,
    },
    /// Run a load scenario against one or more targets (see loadtest/README.md).
    Load(molt_loadtest::loadgen::LoadArgs),
    /// Run the control plane: operators' API, config push, usage ingest.
    Controlplane {
        #[arg(long, short)]
        config: PathBuf,
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
        } => validate(&config),
        Command::Dataplane {
            config,
            validate: false,
        } => {
            let never = molt_dataplane::server::run(&config, launch())
                .context("data plane failed to start")?;
            match never {}
        }
        Command::MockProvider {
            listen,
            chunks,
            chunk_delay_ms,
            ttft_ms,
        } => {
            let opts = molt_loadtest::mock_provider::MockOptions {
                chunks,
                chunk_delay: Duration::from_millis(chunk_delay_ms),
                ttft: Duration::from_millis(ttft_ms),
            };
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                tracing::info!(%listen, "mock provider listening");
                molt_loadtest::mock_provider::MockProvider::new(opts)
                    .serve(listener)
                    .await
            })?;
            Ok(())
        }
        Command::MockBot {
            listen,
            token,
            chunks,
            chunk_delay_ms,
        } => {
            let opts = molt_loadtest::mock_bot::MockBotOptions {
                token,
                chunks,
                chunk_delay: Duration::from_millis(chunk_delay_ms),
            };
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                tracing::info!(%listen, "mock bot gateway listening");
                molt_loadtest::mock_bot::MockBot::new(opts)
                    .serve(listener)
                    .await
            })?;
            Ok(())
        }
        Command::FakeFly {
            listen,
            token,
            boot_delay_ms,
            no_rate_limits,
        } => {
            let opts = molt_loadtest::fake_fly::FakeFlyOptions {
                token,
                boot_delay: Duration::from_millis(boot_delay_ms),
                rate_limits: !no_rate_limits,
                ..Default::default()
            };
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                tracing::info!(%listen, "fake fly listening");
                molt_loadtest::fake_fly::FakeFly::new(opts)
                    .serve(listener)
                    .await
            })?;
            Ok(())
        }
        Command::FakeStripe {
            listen,
            api_key,
            rate_limit,
        } => {
            let opts = molt_loadtest::fake_stripe::FakeStripeOptions {
                api_key,
                rate_limit_per_sec: rate_limit,
            };
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                tracing::info!(%listen, "fake stripe listening");
                molt_loadtest::fake_stripe::FakeStripe::new(opts)
                    .serve(listener)
                    .await
            })?;
            Ok(())
        }
        Command::Load(args) => molt_loadtest::loadgen::main(args)
            .map(drop)
            .map_err(Into::into),
        Command::Controlplane { config } => {
            let settings =
                molt_controlplane::Settings::load(&config, &molt_config::dataplane::ProcessEnv)?;
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Runtime::new()?.block_on(molt_controlplane::run(settings))?;
            Ok(())
        }
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

/// How `molt dataplane` starts its data plane.
fn launch() -> molt_dataplane::server::Launch {
    molt_dataplane::server::Launch {
        init_tracing: true,
        ..Default::default()
    }
}
