//! Provisioning: one bot gateway per user on a [`crate::fleet::Fleet`],
//! driven by a durable state machine in the database.
//!
//! ```text
//! requested ─► volume_created ─► machine_created ─► waiting_health ─► running
//!     │              │                  │                  │
//!     └──────────────┴──── failed(reason) ◄────────────────┘   (retry ─► resume)
//! running ─stop─► stopping ─► stopped ─start─► starting ─► machine_created ─► ...
//! any ─delete─► deleting ─► deleted
//! ```
//!
//! Why it cannot orphan or duplicate: every step first looks for what an
//! earlier attempt may already have made (the volume by its name, the
//! machine by the bot's `molt_bot_id` metadata; the machine name is unique
//! per app, so a second create is refused), and only then creates. A crash
//! between "Fly did it" and "we recorded it" therefore just repeats the
//! lookup. Steps run only under a claim (a conditional UPDATE of
//! `lease_owner`/`lease_until`), and their results are written back only
//! while the claim is still the worker's and the bot is still in the state
//! the step started from, so two workers never both record a step and an
//! operator's stop/delete is never overwritten by a step in flight.
//!
//! [`worker`] runs the steps through the slice of storage it declares,
//! [`WorkerStore`] (the SQL is `store::bots`); the API's rules live
//! in `service::bots`.

pub mod metrics;
pub mod store;
pub mod worker;

pub use crate::domain::{Bot, BotRecord, BotStatus, Desired};
pub use store::WorkerStore;
pub use worker::Worker;

use std::time::Duration;

/// Knobs of the provisioner.
#[derive(Debug, Clone)]
pub struct ProvisionSettings {
    /// Where bots send model traffic: the data plane's URL (`PROXY_URL`).
    pub proxy_url: String,
    /// Primary model when a request names none.
    pub default_model: String,
    /// Fallback models in every bot's config.
    pub fallback_models: Vec<String>,
    pub volume_size_gb: u32,
    /// From machine creation to `/status` answering 200.
    pub health_deadline: Duration,
    /// Pause between health polls (and between worker scans).
    pub poll_interval: Duration,
    /// Longest single `wait` call and `/status` request.
    pub step_timeout: Duration,
    /// A claim older than this is considered abandoned (a crashed worker).
    pub lease: Duration,
    /// Failed tries of one step before the bot is `failed`.
    pub max_attempts: i64,
    /// First retry delay; doubles per try, capped at one minute.
    pub backoff: Duration,
    /// Bots stepped at once by one worker.
    pub concurrency: usize,
}

impl Default for ProvisionSettings {
    fn default() -> Self {
        Self {
            proxy_url: "http://127.0.0.1:8080/v1".into(),
            default_model: "venice-uncensored".into(),
            fallback_models: Vec::new(),
            volume_size_gb: 1,
            health_deadline: Duration::from_secs(180),
            poll_interval: Duration::from_secs(1),
            step_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            max_attempts: 8,
            backoff: Duration::from_secs(1),
            concurrency: 4,
        }
    }
}

/// The machine and volume name for a bot: Fly volume names are at most 30
/// lowercase letters, digits and underscores, and the random tail of the
/// bot's UUIDv7 keeps it unique.
pub fn bot_name(bot_id: &str) -> String {
    let hex = bot_id.rsplit('_').next().unwrap_or(bot_id);
    let tail = &hex[hex.len().saturating_sub(26)..];
    format!("bot_{tail}")
}

/// The seed's `CLAWDBOT_CONFIG`: the model, its fallbacks, the user's
/// workspace on the volume, and the data plane as the model provider.
pub fn clawdbot_config(
    user_id: &str,
    model: &str,
    fallbacks: &[String],
    proxy_url: &str,
) -> serde_json::Value {
    serde_json::json!({
        "agents": {"defaults": {
            "model": {"primary": model, "fallbacks": fallbacks},
            "workspace": format!("/data/{user_id}"),
        }},
        "models": {"providers": {"venice": {"baseUrl": proxy_url}}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_fly_volume_rules() {
        let id = crate::domain::new_id("bot");
        let n = bot_name(&id);
        assert!(n.len() <= 30, "{n}");
        assert!(n
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'));
        assert_ne!(bot_name(&crate::domain::new_id("bot")), n);
    }
}
