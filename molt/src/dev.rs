//! `molt dev`: the whole product on loopback with one command.
//!
//! Writes `<dir>/dataplane.toml` (a fresh API key on first run, kept after),
//! a self-signed certificate, and `<dir>/dev.env` with what a client needs;
//! starts the mock provider in-process, then runs the data plane in the
//! foreground. Real OpenAI/Anthropic are used when their keys are in the
//! environment; their values are never written to disk (the config refers
//! to the variables).

use anyhow::Context;
use base64::Engine;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
}

/// A new random API key: `molt_sk_` + 32 random bytes, base64url.
pub(crate) fn new_api_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "molt_sk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub(crate) fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let env_file = args.dir.join("dev.env");
    let key = existing_key(&env_file).unwrap_or_else(new_api_key);
    let use_openai = std::env::var("OPENAI_API_KEY").is_ok_and(|v| !v.is_empty());
    let use_anthropic = std::env::var("ANTHROPIC_API_KEY").is_ok_and(|v| !v.is_empty());
    let config_path = args.dir.join("dataplane.toml");
    std::fs::write(
        &config_path,
        dev_config(&args, &key, use_openai, use_anthropic),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;

    let mock = args.mock;
    std::thread::Builder::new()
        .name("mock-provider".into())
        .spawn(move || {
            let run = async move {
                let listener = tokio::net::TcpListener::bind(mock).await?;
                molt_loadtest::mock_provider::MockProvider::new(Default::default())
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

    let url = format!("http://{}/v1", args.http);
    let metrics = format!("http://{}/metrics", args.admin);
    let env = format!(
        "MOLT_URL={url}\nMOLT_TLS_URL=https://{tls}/v1\nMOLT_API_KEY={key}\nMOLT_METRICS_URL={metrics}\nMOLT_CA_CERT={cert}\n",
        tls = args.tls,
        cert = abs(&args.dir.join("tls/cert.pem")).display(),
    );
    std::fs::write(&env_file, &env).with_context(|| format!("writing {}", env_file.display()))?;
    let mut banner = String::new();
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
    let _ = writeln!(
        banner,
        "\nTry it:\n  curl -sN {url}/chat/completions -H \"Authorization: Bearer {key}\" -H 'content-type: application/json' \\\n    -d '{{\"model\":\"gpt-4o-mini\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n"
    );
    eprintln!("{banner}");
    let never = molt_dataplane::server::run(&config_path).context("data plane failed to start")?;
    match never {}
}

fn abs(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// The key from an earlier run, so clients keep working across restarts.
fn existing_key(env_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(env_file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MOLT_API_KEY="))
        .filter(|k| k.starts_with(molt_dataplane::auth::API_KEY_PREFIX))
        .map(str::to_owned)
}

fn dev_config(args: &DevArgs, key: &str, use_openai: bool, use_anthropic: bool) -> String {
    let dir = abs(&args.dir);
    let mock = format!("http://{}/v1", args.mock);
    let openai = if use_openai {
        "kind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\nkeys_env = [\"OPENAI_API_KEY\"]".to_owned()
    } else {
        format!("kind = \"openai\"\nbase_url = \"{mock}\"\nkeys = [\"sk-mock-openai-master\"]")
    };
    let anthropic = if use_anthropic {
        "kind = \"anthropic\"\nbase_url = \"https://api.anthropic.com/v1\"\nkeys_env = [\"ANTHROPIC_API_KEY\"]".to_owned()
    } else {
        format!("kind = \"anthropic\"\nbase_url = \"{mock}\"\nkeys = [\"sk-ant-mock-master\"]")
    };
    format!(
        r#"# Generated by `molt dev`; rewritten on every start.
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

[[keys]]
id = "dev"
user = "dev-user"
sha256 = "{hash}"

[[providers]]
name = "openai"
{openai}

[[providers]]
name = "anthropic"
{anthropic}

[[models]]
name = "gpt-4o-mini"
provider = "openai"
aliases = ["mini"]

[[models]]
name = "gpt-4o"
provider = "openai"

[[models]]
name = "text-embedding-3-small"
provider = "openai"

[[models]]
name = "claude-sonnet-4-5"
provider = "anthropic"
aliases = ["sonnet"]

[[models]]
name = "claude-haiku-4-5"
provider = "anthropic"
"#,
        http = args.http,
        tls = args.tls,
        admin = args.admin,
        dir = dir.display(),
        hash = molt_config::hash_api_key(key),
    )
}
