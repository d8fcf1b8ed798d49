//! Bots as records: where one is in its life ([`BotStatus`]), what the
//! operator asked for ([`Desired`]), the API's view ([`Bot`]) and the row
//! the provisioner and the snapshot compiler use ([`BotRecord`]). The state
//! machine that moves them is `provision`'s.

use super::Millis;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

molt_config::text_enum! {
    /// Where a bot is in its life.
    #[derive(ToSchema)]
    pub enum BotStatus {
        Requested = "requested",
        VolumeCreated = "volume_created",
        MachineCreated = "machine_created",
        WaitingHealth = "waiting_health",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Starting = "starting",
        Deleting = "deleting",
        Deleted = "deleted",
        Failed = "failed",
    }
}

impl BotStatus {
    /// The states in which a worker still has a step to run.
    pub const ACTIVE: [Self; 7] = [
        Self::Requested,
        Self::VolumeCreated,
        Self::MachineCreated,
        Self::WaitingHealth,
        Self::Stopping,
        Self::Starting,
        Self::Deleting,
    ];

    /// Whether a worker still has a step to run in this state.
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }
}

molt_config::text_enum! {
    /// What the operator asked for.
    #[derive(ToSchema)]
    pub enum Desired {
        Running = "running",
        Stopped = "stopped",
        Deleted = "deleted",
    }
}

impl Desired {
    /// The state a (re)started provisioning of this wish begins in.
    pub fn first_step(self) -> BotStatus {
        match self {
            // From the top: every step looks up what exists first.
            Self::Running => BotStatus::Requested,
            Self::Stopped => BotStatus::Stopping,
            Self::Deleted => BotStatus::Deleting,
        }
    }
}

/// A bot as the API shows it: never its gateway token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Bot {
    pub id: String,
    pub user_id: String,
    /// The Fly machine and volume name.
    pub name: String,
    pub status: BotStatus,
    pub desired: Desired,
    pub region: Option<String>,
    /// The bot's primary model (`CLAWDBOT_CONFIG`); `null` means the
    /// provisioner's default.
    pub model: Option<String>,
    pub volume_id: Option<String>,
    pub machine_id: Option<String>,
    pub gateway_url: Option<String>,
    /// Why the last step failed (set with `failed`, and while retrying).
    pub error: Option<String>,
    /// Failed tries of the current step.
    pub attempts: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A bot row: the view plus what only the worker and the snapshot use.
/// Not `Serialize`: the sealed token never leaves the control plane.
#[derive(Debug, Clone)]
pub struct BotRecord {
    pub bot: Bot,
    /// [`crate::crypto::Cipher::seal`] of the gateway token, bound to the id.
    pub token_sealed: String,
    pub next_attempt_at: Millis,
    /// When the current step began (the boot/health deadline counts from
    /// entering `machine_created`).
    pub step_started_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in BotStatus::ALL {
            assert_eq!(BotStatus::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for d in Desired::ALL {
            assert_eq!(Desired::parse(d.as_str()), Some(*d));
        }
        let idle: Vec<_> = BotStatus::ALL.iter().filter(|s| !s.is_active()).collect();
        assert_eq!(
            idle,
            [
                &BotStatus::Running,
                &BotStatus::Stopped,
                &BotStatus::Deleted,
                &BotStatus::Failed
            ]
        );
    }
}
