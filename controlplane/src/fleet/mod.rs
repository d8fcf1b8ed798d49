//! Where bots run: the narrow [`Fleet`] trait the provisioner drives, with
//! two implementations, [`fly::FlyFleet`] (the Fly Machines REST API) and
//! [`local::LocalFleet`] (bots in-process on loopback, served by the
//! [`local::BotLauncher`] it is given, for `molt dev` and tests).
//!
//! The trait is shaped for idempotent provisioning, not as a general Fly
//! SDK: every create has a matching lookup (`find_volumes` by name,
//! `find_machine` by the bot's metadata), so a step that may already have
//! happened is looked up before it is done again.
//!
//! Secrets: a [`MachineSpec`] carries the bot's gateway token as a
//! [`Secret`]; its `Debug` never shows it, and no [`FleetError`] quotes a
//! request body.

pub mod fly;
pub mod local;

use molt_config::Secret;
use std::time::Duration;

/// What a fleet call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The API answered with an error; `message` is its `error` field.
    #[error("fly api {status}: {message}")]
    Api {
        status: u16,
        message: String,
        /// Fly's `status` field (`name_taken`, `insufficient_capacity`, ...).
        kind: Option<String>,
    },
    /// A create refused because the name is in use (422 `name_taken`).
    #[error("name {0:?} is already taken")]
    NameTaken(String),
    /// `wait` ran out of time (Fly's 408).
    #[error("machine did not reach {0} in time")]
    Timeout(&'static str),
    /// No answer (connection failed or the response was lost): the call
    /// may or may not have taken effect.
    #[error("request failed, outcome unknown: {0}")]
    Transport(String),
    /// The TLS handshake with the API failed (certificate not trusted,
    /// wrong name, ...): nothing was sent, and trying again will not help
    /// until the deployment (`ca_file`, the URL) is fixed.
    #[error("TLS with the Fly API failed: {0}")]
    Tls(String),
    /// The fleet is configured wrongly (bad base URL, ...).
    #[error("fleet misconfigured: {0}")]
    Config(String),
}

impl FleetError {
    /// Whether trying the same step again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { status, .. } => matches!(status, 408 | 409 | 429 | 500..=599),
            Self::Transport(_) | Self::Timeout(_) | Self::NameTaken(_) => true,
            Self::Tls(_) | Self::Config(_) => false,
        }
    }

    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Api { status: 429, .. } => "rate_limited",
            Self::Api { status: 409, .. } => "lease_conflict",
            Self::Api {
                status: 500..=599, ..
            } => "api_5xx",
            Self::Api { .. } => "api_4xx",
            Self::NameTaken(_) => "name_taken",
            Self::Timeout(_) => "timeout",
            Self::Transport(_) => "transport",
            Self::Tls(_) => "tls",
            Self::Config(_) => "config",
        }
    }
}

/// A volume to create.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    /// At most 30 lowercase letters, digits and underscores (Fly's rule).
    pub name: String,
    pub region: Option<String>,
    pub size_gb: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub state: String,
}

/// A bot machine to create.
#[derive(Clone)]
pub struct MachineSpec {
    /// Unique per app; the provisioner uses the bot's name.
    pub name: String,
    /// Stored as metadata `molt_bot_id`, what `find_machine` looks for.
    pub bot_id: String,
    pub user_id: String,
    pub region: Option<String>,
    /// Mounted at `/data`.
    pub volume_id: String,
    pub gateway_token: Secret,
    /// The bot's `CLAWDBOT_CONFIG`.
    pub clawdbot_config: serde_json::Value,
    /// Where the bot sends model traffic (the data plane).
    pub proxy_url: String,
}

impl std::fmt::Debug for MachineSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineSpec")
            .field("name", &self.name)
            .field("bot_id", &self.bot_id)
            .field("user_id", &self.user_id)
            .field("region", &self.region)
            .field("volume_id", &self.volume_id)
            .field("gateway_token", &self.gateway_token)
            .finish_non_exhaustive()
    }
}

/// A machine as the provisioner needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    pub name: String,
    /// Fly's state: `created`, `starting`, `started`, `stopping`,
    /// `stopped`, `failed`, `destroyed`, ...
    pub state: String,
    pub private_ip: String,
}

/// A place to run bots.
#[async_trait::async_trait]
pub trait Fleet: std::fmt::Debug + Send + Sync + 'static {
    /// Volumes with this name that are not being destroyed (names are not
    /// unique on Fly, so there may be several after a lost response).
    async fn find_volumes(&self, name: &str) -> Result<Vec<Volume>, FleetError>;
    async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, FleetError>;
    /// Destroy a volume; one already gone is not an error.
    async fn delete_volume(&self, id: &str) -> Result<(), FleetError>;

    /// The live (not destroyed) machine made for `bot_id`, if any.
    async fn find_machine(&self, bot_id: &str) -> Result<Option<Machine>, FleetError>;
    /// Create and boot a machine. A name already in use is
    /// [`FleetError::NameTaken`].
    async fn create_machine(&self, spec: &MachineSpec) -> Result<Machine, FleetError>;
    /// `None` when it does not exist or is destroyed.
    async fn get_machine(&self, id: &str) -> Result<Option<Machine>, FleetError>;
    /// Wait up to `timeout` for `started`; [`FleetError::Timeout`] if not.
    async fn wait_started(&self, id: &str, timeout: Duration) -> Result<(), FleetError>;
    async fn start_machine(&self, id: &str) -> Result<(), FleetError>;
    async fn stop_machine(&self, id: &str) -> Result<(), FleetError>;
    /// Destroy a machine even if it runs; one already gone is not an error.
    async fn delete_machine(&self, id: &str) -> Result<(), FleetError>;

    /// The `ws://`/`http://` URL data planes dial for this machine's bot
    /// (also where the provisioner polls `/status`).
    fn gateway_url(&self, machine: &Machine) -> String;
}
