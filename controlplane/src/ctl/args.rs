//! `molt ctl`'s command line: every command and its arguments (clap).

use super::encode;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Control plane base URL.
    #[arg(long, env = "MOLT_ADMIN_URL", default_value = "http://127.0.0.1:9700")]
    pub url: String,
    /// Operator token.
    #[arg(long, env = "MOLT_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// PEM file of extra CA certificates to trust for an https:// URL.
    #[arg(long, env = "MOLT_ADMIN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Users.
    Users {
        #[command(subcommand)]
        command: UsersCmd,
    },
    /// Client API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Models.
    Models {
        #[command(subcommand)]
        command: ModelsCmd,
    },
    /// Providers.
    Providers {
        #[command(subcommand)]
        command: ProvidersCmd,
    },
    /// Bots: one per user, provisioned on the fleet in the background.
    Bots {
        #[command(subcommand)]
        command: BotsCmd,
    },
    /// Plans: named limit sets users are on.
    Plans {
        #[command(subcommand)]
        command: PlansCmd,
    },
    /// The deployment-wide limits document the data planes enforce.
    Limits {
        #[command(subcommand)]
        command: LimitsCmd,
    },
    /// Usage per user, model and day, with its stored cost, by model and
    /// token class.
    Usage {
        #[arg(long)]
        user_id: Option<String>,
        #[arg(long)]
        model: Option<String>,
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD.
        #[arg(long)]
        to: Option<String>,
    },
    /// Secrets at rest: which key they are under, and re-encryption to the
    /// current key (a rotation of the at-rest key, see deploy/README.md).
    Secrets {
        #[command(subcommand)]
        command: SecretsCmd,
    },
    /// A user's notifications (in-app), newest first; replays of their
    /// webhooks.
    Notifications {
        #[command(subcommand)]
        command: NotificationsCmd,
    },
    /// The webhook endpoints of the operator's app (Standard Webhooks).
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCmd,
    },
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotificationsCmd {
    /// A user's notifications, newest first.
    List {
        #[arg(long)]
        user_id: String,
        /// Only unread ones.
        #[arg(long)]
        unread: bool,
        #[command(flatten)]
        page: ListArgs,
    },
    /// Mark one of a user's notifications read.
    Read {
        #[arg(long)]
        user_id: String,
        id: String,
    },
    /// Send a notification to its webhook endpoints again.
    Replay { id: String },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    List(ListArgs),
    /// Add an endpoint; its signing secret is shown once.
    Create {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Disable an endpoint: nothing more is sent to it.
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// Print the limits document (JSON).
    Get,
    /// Replace the limits document with a JSON file (`[limits]` of the
    /// data plane's config, without `redis`).
    Set {
        #[arg(long)]
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlansCmd {
    List(ListArgs),
    /// Create a plan.
    Create {
        /// A slug: lower-case letters, digits and '-'.
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A limit as FIELD=N, e.g. requests_per_minute=60 (repeatable;
        /// fields as in the limits document).
        #[arg(long = "limit", value_name = "FIELD=N")]
        limits: Vec<String>,
    },
    /// Show one plan, by id or name.
    Get {
        id: String,
    },
    /// Change a plan's description or limits.
    Update {
        /// Id or name.
        id: String,
        #[arg(long)]
        description: Option<String>,
        /// The plan's new limits as FIELD=N (repeatable); they replace all
        /// of its limits.
        #[arg(long = "limit", value_name = "FIELD=N")]
        limits: Vec<String>,
        /// Remove all of the plan's limits.
        #[arg(long, conflicts_with = "limits")]
        clear_limits: bool,
    },
    /// Delete a plan no user is on.
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    List(ListArgs),
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        plan: Option<String>,
        /// active, suspended or past_due.
        #[arg(long)]
        status: Option<String>,
    },
    /// A user's month against their dollar budget, and the thresholds
    /// crossed.
    Budget {
        id: String,
        /// YYYY-MM (UTC); default: this month.
        #[arg(long)]
        month: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    List {
        #[arg(long)]
        user_id: Option<String>,
        #[command(flatten)]
        page: ListArgs,
    },
    /// Create a key; its secret is printed once.
    Create {
        #[arg(long)]
        user_id: String,
        #[arg(long)]
        name: Option<String>,
        /// Allowed model (repeatable); none means all.
        #[arg(long = "model")]
        models: Vec<String>,
        /// Unix milliseconds.
        #[arg(long)]
        expires_at: Option<i64>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BotsCmd {
    List {
        #[arg(long)]
        user_id: Option<String>,
        #[command(flatten)]
        page: ListArgs,
    },
    /// Request a user's bot; `get` shows it move to `running`.
    Create {
        #[arg(long)]
        user_id: String,
        /// Fly region; absent means the fleet's default.
        #[arg(long)]
        region: Option<String>,
        /// The bot's primary model; absent means the provisioner's default.
        #[arg(long)]
        model: Option<String>,
    },
    Get {
        id: String,
    },
    Stop {
        id: String,
    },
    Start {
        id: String,
    },
    /// Try a failed bot's provisioning again.
    Retry {
        id: String,
    },
    /// Destroy the bot's machine and volume.
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCmd {
    List(ListArgs),
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        provider: String,
        #[arg(long)]
        upstream_name: Option<String>,
        #[arg(long = "alias")]
        aliases: Vec<String>,
        #[arg(long = "fallback")]
        fallbacks: Vec<String>,
        /// The first price (both --input-price and --output-price, or none:
        /// the model is then unpriced).
        #[command(flatten)]
        price: Box<PriceArgs>,
    },
    /// Set a model's price: a new version in force from now (or
    /// --effective-from); stored costs never change.
    Price {
        /// Model name or id.
        model: String,
        #[command(flatten)]
        price: Box<PriceArgs>,
        /// Unix ms from which the new price applies (not in the past).
        #[arg(long)]
        effective_from: Option<i64>,
    },
    /// Every version of a model's price, oldest first.
    Prices {
        /// Model name or id.
        model: String,
    },
}

/// A price in USD per million tokens of each class, as exact decimals
/// ("2.50"); classes not given cost the input (or output) price.
#[derive(Debug, Args)]
pub struct PriceArgs {
    #[arg(long)]
    pub input_price: Option<String>,
    #[arg(long)]
    pub output_price: Option<String>,
    #[arg(long)]
    pub cache_read_price: Option<String>,
    /// Cache writes with a 5-minute (or unstated) lifetime.
    #[arg(long)]
    pub cache_write_5m_price: Option<String>,
    #[arg(long)]
    pub cache_write_1h_price: Option<String>,
    #[arg(long)]
    pub audio_input_price: Option<String>,
    #[arg(long)]
    pub reasoning_price: Option<String>,
    #[arg(long)]
    pub audio_output_price: Option<String>,
}

impl PriceArgs {
    /// The API's `price` object; `None` when neither base price is given.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        if self.input_price.is_none() && self.output_price.is_none() {
            return None;
        }
        Some(serde_json::json!({
            "input": self.input_price, "output": self.output_price,
            "cache_read_input": self.cache_read_price,
            "cache_write_5m_input": self.cache_write_5m_price,
            "cache_write_1h_input": self.cache_write_1h_price,
            "audio_input": self.audio_input_price,
            "reasoning_output": self.reasoning_price,
            "audio_output": self.audio_output_price,
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCmd {
    List(ListArgs),
    Create {
        #[arg(long)]
        name: String,
        /// openai, azure_openai, venice, vllm, openrouter or anthropic.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        base_url: String,
        /// Environment variable holding a master key (repeatable).
        #[arg(long = "key-env", required = true)]
        key_env: Vec<String>,
    },
    /// Replace every master key of a provider (a rotation: data planes
    /// switch to the new keys on their next snapshot).
    SetKeys {
        /// Provider id or name.
        id: String,
        /// Environment variable holding a master key (repeatable).
        #[arg(long = "key-env", required = true)]
        key_env: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Sealed values per at-rest key id, and how many are not under the
    /// current key.
    Status,
    /// Rewrite every sealed value under the current key (while serving;
    /// idempotent). Fails if any value is still not under it afterwards.
    Reencrypt,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub cursor: Option<String>,
}

impl ListArgs {
    pub(super) fn query(&self) -> String {
        let mut q = format!("?limit={}", self.limit);
        if let Some(c) = &self.cursor {
            q.push_str("&cursor=");
            q.push_str(&encode(c));
        }
        q
    }

    /// `resource` with this page's query, narrowed to one user's items.
    pub(super) fn path_for_user(&self, resource: &str, user_id: Option<&str>) -> String {
        let mut path = format!("{resource}{}", self.query());
        if let Some(u) = user_id {
            path.push_str("&user_id=");
            path.push_str(&encode(u));
        }
        path
    }
}
