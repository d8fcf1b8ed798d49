//! The provisioning [`Worker`]: finds bots with a step due, claims each,
//! runs one idempotent step against the [`Fleet`], and records the result.
//!
//! A step either advances the bot, asks to be run again later (still
//! booting, still unhealthy, Fly still destroying), or fails. A transient
//! failure (Fly 5xx/429/409/408, a lost response) is retried with
//! exponential backoff up to `max_attempts`; anything else, or a boot or
//! health deadline passed, makes the bot `failed` with a readable reason,
//! from which `retry` resumes.
//!
//! Any number of workers (in one or several control planes) may run: the
//! claim in [`WorkerStore::claim_bot`] lets one step of a bot run at a time, a
//! crashed worker's claim expires after `lease`, and what it may have made
//! before crashing is found by the next attempt's lookups.

use super::metrics::ProvisionMetrics;
use super::store::{StepUpdate, WorkerStore};
use super::{clawdbot_config, BotRecord, BotStatus, ProvisionSettings};
use crate::crypto::Cipher;
use crate::domain::{millis, now_ms, Millis, NewNotification};
use crate::fleet::{Fleet, FleetError, Machine, MachineSpec, VolumeSpec};
use crate::service::Service;
use crate::store::StoreError;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use molt_config::Secret;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};

/// Why a step did not advance.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// Permanent: a deadline passed or the machine cannot run.
    #[error("{message}")]
    GiveUp {
        reason: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gateway token cannot be decrypted: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
}

impl StepError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Fleet(e) => e.is_transient(),
            Self::Store(_) => true,
            Self::GiveUp { .. } | Self::Crypto(_) => false,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Fleet(e) => e.reason(),
            Self::GiveUp { reason, .. } => reason,
            Self::Store(_) => "store",
            Self::Crypto(_) => "crypto",
        }
    }
}

/// What a step achieved.
enum Outcome {
    /// Move to the update's status.
    Advance(StepUpdate),
    /// Nothing to record yet; run this step again after the pause.
    Again(Duration),
}

struct Inner {
    /// This worker's claim name.
    owner: String,
    store: Arc<dyn WorkerStore>,
    fleet: Arc<dyn Fleet>,
    service: Arc<Service>,
    cipher: Cipher,
    settings: ProvisionSettings,
    metrics: ProvisionMetrics,
    http: Client<HttpConnector, Empty<Bytes>>,
}

/// Runs provisioning steps; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        store: Arc<dyn WorkerStore>,
        fleet: Arc<dyn Fleet>,
        service: Arc<Service>,
        cipher: Cipher,
        settings: ProvisionSettings,
        metrics: ProvisionMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                owner: crate::domain::new_id("wrk"),
                store,
                fleet,
                service,
                cipher,
                settings,
                metrics,
                http: Client::builder(TokioExecutor::new()).build_http(),
            }),
        }
    }

    /// Run the loop in the background: a scan, then a pause unless the
    /// scan found work.
    pub fn spawn(&self) -> JoinHandle<()> {
        let me = self.clone();
        let pause = self.inner.settings.poll_interval;
        crate::scan::spawn_scans("provisioning", pause, move || {
            let me = me.clone();
            async move { me.tick().await }
        })
    }

    /// One scan: claim the due bots (up to `concurrency`) and run one step
    /// of each. Returns how many steps ran.
    pub async fn tick(&self) -> Result<usize, StoreError> {
        let s = &self.inner.settings;
        let now = now_ms();
        let limit = i64::try_from(s.concurrency.max(1)).unwrap_or(1);
        let ids = self.inner.store.due_bots(now, limit).await?;
        let mut set = JoinSet::new();
        for id in ids {
            if !self
                .inner
                .store
                .claim_bot(&id, &self.inner.owner, now, now + millis(s.lease))
                .await?
            {
                continue;
            }
            let me = self.clone();
            set.spawn(async move { me.step_claimed(&id).await });
        }
        let mut ran = 0;
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Ok(true)) => ran += 1,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "provisioning step not recorded"),
                Err(e) => tracing::error!(error = %e, "provisioning step panicked"),
            }
        }
        match self.inner.store.count_bots().await {
            Ok(counts) => self.inner.metrics.set_counts(&counts, now_ms()),
            Err(e) => tracing::warn!(error = %e, "bot counts not updated"),
        }
        Ok(ran)
    }

    /// Run one step of a bot this worker has claimed and record it.
    async fn step_claimed(&self, id: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let Some(rec) = inner.store.get_bot(id).await? else {
            return Ok(false);
        };
        let from = rec.bot.status;
        if !from.is_active() {
            inner.store.release_bot(id, &inner.owner).await?;
            return Ok(false);
        }
        let started = Instant::now();
        let outcome = self.step(&rec).await;
        inner
            .metrics
            .step_seconds
            .with_label_values(&[from.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let now = now_ms();
        let mut update = match outcome {
            Ok(Outcome::Advance(u)) => u,
            Ok(Outcome::Again(after)) => StepUpdate {
                attempts: rec.bot.attempts,
                next_attempt_at: now + millis(after),
                ..StepUpdate::default()
            },
            Err(e) => self.failure(&rec, &e, now),
        };
        update.notify = notice(&rec, &update);
        let to = update.status;
        let recorded = inner
            .store
            .record_step(id, &inner.owner, from, &update, now)
            .await?;
        if !recorded {
            // The claim expired or an operator changed the bot meanwhile:
            // the next attempt starts from what is recorded, and its
            // lookups find whatever this step made.
            tracing::info!(bot = id, step = from.as_str(), "step result dropped");
            return Ok(false);
        }
        if let Some(to) = to {
            tracing::info!(
                bot = id,
                from = from.as_str(),
                to = to.as_str(),
                "bot advanced"
            );
            if matches!(
                to,
                BotStatus::Running | BotStatus::Stopped | BotStatus::Deleted | BotStatus::Failed
            ) {
                inner.service.refresh_snapshot().await;
            }
        }
        Ok(true)
    }

    fn failure(&self, rec: &BotRecord, e: &StepError, now: Millis) -> StepUpdate {
        let s = &self.inner.settings;
        let attempts = rec.bot.attempts + 1;
        let message = format!("{}: {e}", rec.bot.status.as_str());
        let give_up = !e.is_transient() || attempts >= s.max_attempts;
        self.inner
            .metrics
            .failures
            .with_label_values(&[e.reason(), if give_up { "1" } else { "0" }])
            .inc();
        if give_up {
            tracing::warn!(bot = rec.bot.id, error = %message, "bot failed");
            StepUpdate {
                status: Some(BotStatus::Failed),
                error: Some(Some(message)),
                attempts,
                next_attempt_at: now,
                ..StepUpdate::default()
            }
        } else {
            let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(16);
            let delay = s
                .backoff
                .saturating_mul(2u32.saturating_pow(exp))
                .min(Duration::from_secs(60));
            tracing::info!(bot = rec.bot.id, error = %message, ?delay, "step will be retried");
            StepUpdate {
                error: Some(Some(message)),
                attempts,
                next_attempt_at: now + millis(delay),
                ..StepUpdate::default()
            }
        }
    }

    /// The step for the bot's current state.
    async fn step(&self, rec: &BotRecord) -> Result<Outcome, StepError> {
        match rec.bot.status {
            BotStatus::Requested => self.ensure_volume(rec).await,
            BotStatus::VolumeCreated => self.ensure_machine(rec).await,
            BotStatus::MachineCreated => self.ensure_started(rec).await,
            BotStatus::WaitingHealth => self.check_health(rec).await,
            BotStatus::Stopping => self.stop(rec).await,
            BotStatus::Starting => self.start(rec).await,
            BotStatus::Deleting => self.delete(rec).await,
            BotStatus::Running | BotStatus::Stopped | BotStatus::Deleted | BotStatus::Failed => {
                Ok(Outcome::Again(self.inner.settings.poll_interval))
            }
        }
    }

    async fn ensure_volume(&self, rec: &BotRecord) -> Result<Outcome, StepError> {
        let fleet = &self.inner.fleet;
        let name = &rec.bot.name;
        let found = fleet.find_volumes(name).await?;
        // Prefer the one already recorded; any one with our name is ours
        // (made by an attempt whose answer was lost).
        let vol = match found
            .iter()
            .find(|v| Some(&v.id) == rec.bot.volume_id.as_ref())
            .or(found.first())
        {
            Some(v) => v.clone(),
            None => {
                fleet
                    .create_volume(&VolumeSpec {
                        name: name.clone(),
                        region: rec.bot.region.clone(),
                        size_gb: self.inner.settings.volume_size_gb,
                    })
                    .await?
            }
        };
        Ok(Outcome::Advance(StepUpdate {
            volume_id: Some(vol.id),
            ..advance(BotStatus::VolumeCreated)
        }))
    }

    async fn ensure_machine(&self, rec: &BotRecord) -> Result<Outcome, StepError> {
        let fleet = &self.inner.fleet;
        let Some(volume_id) = rec.bot.volume_id.clone() else {
            return Ok(Outcome::Advance(advance(BotStatus::Requested)));
        };
        let machine = match fleet.find_machine(&rec.bot.id).await? {
            Some(m) => m,
            None => {
                let s = &self.inner.settings;
                let token = self.inner.cipher.open(&rec.token_sealed, &rec.bot.id)?;
                let spec = MachineSpec {
                    name: rec.bot.name.clone(),
                    bot_id: rec.bot.id.clone(),
                    user_id: rec.bot.user_id.clone(),
                    region: rec.bot.region.clone(),
                    volume_id,
                    gateway_token: Secret::new(String::from_utf8_lossy(&token).into_owned()),
                    clawdbot_config: clawdbot_config(
                        &rec.bot.user_id,
                        rec.bot.model.as_deref().unwrap_or(&s.default_model),
                        &s.fallback_models,
                        &s.proxy_url,
                    ),
                    proxy_url: s.proxy_url.clone(),
                };
                // A `NameTaken` here means an attempt whose answer was lost
                // made it: the error is transient and the next attempt's
                // lookup finds that machine.
                fleet.create_machine(&spec).await?
            }
        };
        Ok(Outcome::Advance(StepUpdate {
            gateway_url: Some(fleet.gateway_url(&machine)),
            machine_id: Some(machine.id),
            step_started_at: Some(now_ms()),
            ..advance(BotStatus::MachineCreated)
        }))
    }

    /// The machine, by recorded id or else by the bot's metadata.
    async fn machine(&self, rec: &BotRecord) -> Result<Option<Machine>, FleetError> {
        if let Some(id) = &rec.bot.machine_id {
            if let Some(m) = self.inner.fleet.get_machine(id).await? {
                return Ok(Some(m));
            }
        }
        self.inner.fleet.find_machine(&rec.bot.id).await
    }

    fn deadline_left(&self, rec: &BotRecord) -> Duration {
        let end = rec.step_started_at + millis(self.inner.settings.health_deadline);
        Duration::from_millis(u64::try_from(end - now_ms()).unwrap_or(0))
    }

    async fn ensure_started(&self, rec: &BotRecord) -> Result<Outcome, StepError> {
        let fleet = &self.inner.fleet;
        let s = &self.inner.settings;
        let Some(m) = self.machine(rec).await? else {
            // Destroyed behind our back: make it again.
            return Ok(Outcome::Advance(advance(BotStatus::VolumeCreated)));
        };
        let left = self.deadline_left(rec);
        if left.is_zero() {
            return Err(StepError::GiveUp {
                reason: "boot",
                message: format!(
                    "machine {} did not start within {:?} (state {})",
                    m.id, s.health_deadline, m.state
                ),
            });
        }
        match m.state.as_str() {
            "failed" => {
                return Err(StepError::GiveUp {
                    reason: "boot",
                    message: format!("machine {} failed to boot", m.id),
                })
            }
            "stopped" | "created" | "suspended" => fleet.start_machine(&m.id).await?,
            // A start now would be lost in the stop; start it once stopped.
            "stopping" => return Ok(Outcome::Again(s.poll_interval)),
            _ => {}
        }
        match fleet.wait_started(&m.id, left.min(s.step_timeout)).await {
            Ok(()) => {}
            Err(FleetError::Timeout(_)) => return Ok(Outcome::Again(Duration::ZERO)),
            Err(e) => return Err(e.into()),
        }
        // The private address is only final once started.
        let m = fleet.get_machine(&m.id).await?.unwrap_or(m);
        Ok(Outcome::Advance(StepUpdate {
            gateway_url: Some(fleet.gateway_url(&m)),
            machine_id: Some(m.id),
            ..advance(BotStatus::WaitingHealth)
        }))
    }

    async fn check_health(&self, rec: &BotRecord) -> Result<Outcome, StepError> {
        let s = &self.inner.settings;
        let url = rec.bot.gateway_url.as_deref().unwrap_or_default();
        let problem = match self.probe(url).await {
            Ok(()) => return Ok(Outcome::Advance(advance(BotStatus::Running))),
            Err(p) => p,
        };
        if self.deadline_left(rec).is_zero() {
            return Err(StepError::GiveUp {
                reason: "health",
                message: format!(
                    "bot did not answer GET /status with 200 within {:?} (last: {problem})",
                    s.health_deadline
                ),
            });
        }
        Ok(Outcome::Again(s.poll_interval))
    }

    /// `GET <gateway>/status`: Ok on 200, else what happened.
    async fn probe(&self, gateway_url: &str) -> Result<(), String> {
        let uri =
            status_uri(gateway_url).ok_or_else(|| format!("bad gateway URL {gateway_url:?}"))?;
        let req = hyper::Request::get(uri)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(
            self.inner.settings.step_timeout,
            self.inner.http.request(req),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e}"))?;
        if resp.status() == hyper::StatusCode::OK {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status().as_u16()))
        }
    }

    async fn stop(&self, rec: &BotRecord) -> Result<Outcome, StepError> {
        if let Some(m) = self.machine(rec).await? {
            match m.state.as_str() {
                "stopped" | "created" | "failed" => {}
                // `stopped` means stopped: look again until it is.
                "stopping" => return Ok(Outcome::Again(self.inner.settings.poll_interval)),
                _ => {
                    self.inner.fleet.stop_machine(&m.id).await?;
                    return Ok(Outcome::Again(self.inner.settings.poll_interval));
                }
            }
        }
        Ok(Outcome::Advance(advance(BotStatus::Stopped)))
    }

    async fn start(&self, rec: &BotRecord) -> Result<Outcome, StepError> {
        let Some(m) = self.machine(rec).await? else {
            // Nothing to start: provision again from the volume lookup.
            return Ok(Outcome::Advance(advance(BotStatus::Requested)));
        };
        self.inner.fleet.start_machine(&m.id).await?;
        Ok(Outcome::Advance(StepUpdate {
            machine_id: Some(m.id),
            step_started_at: Some(now_ms()),
            ..advance(BotStatus::MachineCreated)
        }))
    }

    async fn delete(&self, rec: &BotRecord) -> Result<Outcome, StepError> {
        let fleet = &self.inner.fleet;
        // Everything this bot may own: the recorded machine, any machine
        // with its metadata, and every volume with its name.
        while let Some(m) = self.machine(rec).await? {
            fleet.delete_machine(&m.id).await?;
            if fleet.get_machine(&m.id).await?.is_some() {
                // Still destroying: look again later.
                return Ok(Outcome::Again(self.inner.settings.poll_interval));
            }
        }
        for v in fleet.find_volumes(&rec.bot.name).await? {
            fleet.delete_volume(&v.id).await?;
        }
        if let Some(id) = &rec.bot.volume_id {
            fleet.delete_volume(id).await?;
        }
        Ok(Outcome::Advance(advance(BotStatus::Deleted)))
    }
}

/// `http://host:port/status` for a `ws://` or `http://` gateway URL.
fn status_uri(gateway_url: &str) -> Option<hyper::Uri> {
    let rest = gateway_url
        .strip_prefix("ws://")
        .or_else(|| gateway_url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?']).next().filter(|a| !a.is_empty())?;
    format!("http://{authority}/status").parse().ok()
}

/// What the user is told when a step ends in `running` or `failed`
/// (written with the step, in its transaction). One start of the bot is
/// told from the next by the time its current run of steps began.
fn notice(rec: &BotRecord, update: &StepUpdate) -> Option<Box<NewNotification>> {
    let (user, bot, run) = (&rec.bot.user_id, &rec.bot.id, rec.step_started_at);
    let n = match update.status? {
        BotStatus::Running => NewNotification::bot_running(user, bot, run),
        BotStatus::Failed => {
            let error = update.error.clone().flatten().unwrap_or_default();
            NewNotification::bot_failed(user, bot, run, &error)
        }
        _ => return None,
    };
    Some(Box::new(n))
}

/// An update moving to `status` with a clean slate.
fn advance(status: BotStatus) -> StepUpdate {
    StepUpdate {
        status: Some(status),
        error: Some(None),
        attempts: 0,
        next_attempt_at: now_ms(),
        ..StepUpdate::default()
    }
}
