//! Where the `molt` binary meets `molt-fakes`: the fakes' subcommands
//! (`mock-provider`, `mock-bot`, `fake-fly`, `fake-stripe`) and the bots
//! of a local fleet ([`MockBots`]). No library crate of the product
//! depends on the fakes; this binary plugs them in.

use anyhow::Context;
use molt_controlplane::fleet::local::{BotGateway, BotLauncher};
use molt_fakes::fake_fly::{FakeFly, FakeFlyOptions};
use molt_fakes::fake_stripe::{FakeStripe, FakeStripeOptions};
use molt_fakes::mock_bot::{MockBot, MockBotOptions};
use molt_fakes::mock_provider::{MockOptions, MockProvider};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A local fleet's bots (`[fleet] kind = "local"`): mock bot gateways
/// demanding the bot's gateway token.
pub(crate) struct MockBots;

impl BotLauncher for MockBots {
    fn launch(&self, listener: TcpListener, gateway_token: &str) -> BotGateway {
        let bot = MockBot::new(MockBotOptions {
            token: gateway_token.to_owned(),
            ..MockBotOptions::default()
        });
        Box::pin(bot.serve(listener))
    }
}

/// The launcher a control plane started by this binary gets.
pub(crate) fn local_bots() -> Arc<dyn BotLauncher> {
    Arc::new(MockBots)
}

/// `--ready-file`, shared by every server subcommand.
#[derive(clap::Args)]
pub(crate) struct ReadyFileArg {
    /// Once every listener is bound, write `{"listeners": {"<name>":
    /// "<address>"}}` here (atomically), so the listen address may use
    /// port 0.
    #[arg(long, value_name = "PATH")]
    pub(crate) ready_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct MockProviderArgs {
    #[arg(long, default_value = "127.0.0.1:9800")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    #[command(flatten)]
    ready: ReadyFileArg,
}

pub(crate) fn mock_provider(args: MockProviderArgs) -> anyhow::Result<()> {
    let provider = MockProvider::new(MockOptions {
        chunks: args.chunks,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        ttft: Duration::from_millis(args.ttft_ms),
    });
    serve("mock provider", args.listen, args.ready, |l| {
        provider.serve(l)
    })
}

#[derive(clap::Args)]
pub(crate) struct MockBotArgs {
    #[arg(long, default_value = "127.0.0.1:18789")]
    listen: SocketAddr,
    /// The gateway token it demands as `Authorization: Bearer`.
    #[arg(long, env = "MOLT_GATEWAY_TOKEN")]
    token: String,
    #[arg(long, default_value_t = 4)]
    chunks: usize,
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    #[command(flatten)]
    ready: ReadyFileArg,
}

pub(crate) fn mock_bot(args: MockBotArgs) -> anyhow::Result<()> {
    let bot = MockBot::new(MockBotOptions {
        token: args.token,
        chunks: args.chunks,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
    });
    serve("mock bot gateway", args.listen, args.ready, |l| {
        bot.serve(l)
    })
}

#[derive(clap::Args)]
pub(crate) struct FakeFlyArgs {
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
    #[command(flatten)]
    ready: ReadyFileArg,
}

pub(crate) fn fake_fly(args: FakeFlyArgs) -> anyhow::Result<()> {
    let fly = FakeFly::new(FakeFlyOptions {
        token: args.token,
        boot_delay: Duration::from_millis(args.boot_delay_ms),
        rate_limits: !args.no_rate_limits,
        ..Default::default()
    });
    serve("fake fly", args.listen, args.ready, |l| fly.serve(l))
}

#[derive(clap::Args)]
pub(crate) struct FakeStripeArgs {
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
    #[command(flatten)]
    ready: ReadyFileArg,
}

pub(crate) fn fake_stripe(args: FakeStripeArgs) -> anyhow::Result<()> {
    let stripe = FakeStripe::new(FakeStripeOptions {
        api_key: args.api_key,
        rate_limit_per_sec: args.rate_limit,
    });
    serve("fake stripe", args.listen, args.ready, |l| stripe.serve(l))
}

/// Run one fake until it fails: bind `listen`, report the address in the
/// ready file as `http`, serve.
fn serve<F, Fut>(
    what: &'static str,
    listen: SocketAddr,
    ready: ReadyFileArg,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Runtime::new()?.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("{what} cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        if let Some(path) = &ready.ready_file {
            molt_config::ready::write_ready_file(path, [(molt_config::ready::HTTP, addr)])
                .with_context(|| format!("writing {}", path.display()))?;
        }
        tracing::info!(listen = %addr, "{what} listening");
        serve(listener)
            .await
            .with_context(|| format!("{what} stopped"))
    })
}
