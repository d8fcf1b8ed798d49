//! Config snapshots: compiling database state into the data plane's
//! `molt_config::wire::RawSnapshot`, validating it exactly as a data plane
//! would, and publishing it to long-polling data planes.
//!
//! Architecture invariant: nothing is published that
//! `molt_config::DataplaneConfig::from_wire` rejects. A compiled snapshot
//! that fails validation is counted (`molt_cp_snapshot_rejected_total`) and
//! the previous one keeps being served.
//!
//! Versions are persisted and only move forward: a new version is taken
//! from the database whenever the compiled content changes, and once at
//! start-up (so a change committed just before a crash is never hidden
//! behind a version a data plane already has).

use crate::crypto::Cipher;
use crate::domain::BotRecord;
use crate::domain::{now_ms, Millis, Plan, SealedProvider};
use crate::identity::jwks::JwksKeys;
use crate::metrics::Metrics;
use crate::store::{store_trait, SnapshotSource, StoreError, UserLimits};
use bytes::Bytes;
use molt_config::jwks::RawJwks;
use molt_config::limits::{RawLimitSet, RawUserLimits};
use molt_config::wire::{
    RawAuth, RawBot, RawDataplaneConfig, RawJwt, RawKey, RawLimits, RawModel, RawModelPrice,
    RawProvider, RawSnapshot, CONFIG_VERSION,
};
use molt_config::{ConfigErrors, Secret};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

store_trait! {
    /// What the snapshot compiler reads and writes in storage.
    pub trait SnapshotStore: std::fmt::Debug + Send + Sync {
        /// Everything the config snapshot needs, as of `now`, in one read.
        async fn snapshot_source(&self, now: Millis) -> Result<SnapshotSource, StoreError>;
        /// Running bots of active users.
        async fn running_bots(&self) -> Result<Vec<BotRecord>, StoreError>;
        /// Increment and return the persisted config version.
        async fn bump_config_version(&self) -> Result<u64, StoreError>;
    }
}

/// The snapshot as served: its version and its JSON body.
#[derive(Debug, Clone)]
pub struct Published {
    /// 0 means nothing valid has been published yet.
    pub version: u64,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("provider {provider:?}: master keys cannot be decrypted: {source}")]
    Decrypt {
        provider: String,
        source: crate::crypto::CryptoError,
    },
    #[error("compiled config is invalid:\n{0}")]
    Invalid(ConfigErrors),
}

/// How the client JWTs that data planes accept are signed.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    /// HS256 secret, at least 32 bytes.
    pub secret: Secret,
}

/// How the identity provider's tokens are accepted: what a snapshot's
/// `auth.jwks` is compiled from, besides the users linked to the provider.
#[derive(Debug, Clone)]
pub struct IdentityTokens {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub authorized_parties: Vec<String>,
    /// The provider's JWKS as last fetched (`identity::jwks`).
    pub keys: JwksKeys,
}

/// Compiles, validates and publishes snapshots.
#[derive(Debug)]
pub struct Publisher {
    store: Arc<dyn SnapshotStore>,
    cipher: Cipher,
    jwt: JwtSettings,
    /// The identity provider's tokens, if configured.
    tokens: Option<IdentityTokens>,
    /// `[browser]` for every data plane, if configured.
    browser: Option<molt_config::browser::RawBrowser>,
    metrics: Metrics,
    tx: watch::Sender<Arc<Published>>,
    /// The content (with version 0) of the last published snapshot; the
    /// lock also serialises refreshes so versions are taken in order.
    last: Mutex<Option<Bytes>>,
}

impl Publisher {
    /// Take a fresh version and publish the current state (or nothing, if
    /// the state does not validate: data planes then keep what they have).
    pub async fn start(
        store: Arc<dyn SnapshotStore>,
        settings: &crate::service::ServiceSettings,
        metrics: Metrics,
    ) -> Result<Self, SnapshotError> {
        let (tx, _) = watch::channel(Arc::new(Published {
            version: 0,
            body: Bytes::new(),
        }));
        let publisher = Self {
            store,
            cipher: settings.cipher.clone(),
            jwt: settings.jwt.clone(),
            tokens: settings.identity_tokens.clone(),
            browser: settings.browser.clone(),
            metrics,
            tx,
            last: Mutex::new(None),
        };
        match publisher.refresh_inner(true).await {
            Ok(_) => {}
            Err(SnapshotError::Store(e)) => return Err(SnapshotError::Store(e)),
            // An invalid stored state must not keep operators from fixing
            // it through the API; data planes keep their last snapshot.
            Err(e) => {
                tracing::error!(error = %e, "stored state does not compile; nothing published")
            }
        }
        Ok(publisher)
    }

    /// The latest published snapshot, and a way to wait for the next one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    pub fn current_version(&self) -> u64 {
        self.tx.borrow().version
    }

    /// Recompile from the database; publish under a new version if the
    /// content changed. Returns the version being served.
    pub async fn refresh(&self) -> Result<u64, SnapshotError> {
        self.refresh_inner(false).await
    }

    async fn refresh_inner(&self, force: bool) -> Result<u64, SnapshotError> {
        let mut last = self.last.lock().await;
        let snap = match self.compile(now_ms()).await {
            Ok(snap) => snap,
            Err(e) => {
                if matches!(e, SnapshotError::Invalid(_)) {
                    self.metrics.snapshot_rejected.inc();
                }
                return Err(e);
            }
        };
        let content = Bytes::from(to_json(&snap));
        if !force && last.as_ref() == Some(&content) {
            return Ok(self.current_version());
        }
        let version = self.store.bump_config_version().await?;
        let body = Bytes::from(to_json(&RawSnapshot { version, ..snap }));
        *last = Some(content);
        self.metrics
            .snapshot_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.tx.send_replace(Arc::new(Published { version, body }));
        tracing::info!(version, "published config snapshot");
        Ok(version)
    }

    /// The snapshot the database describes at `now` (version 0), validated.
    pub async fn compile(&self, now: Millis) -> Result<RawSnapshot, SnapshotError> {
        let snap = self.compile_unchecked(now).await?;
        validate(&snap).map_err(SnapshotError::Invalid)?;
        Ok(snap)
    }

    /// Would the current state with `change` applied still validate? Used
    /// before a write, so an invalid change is refused and never stored.
    pub async fn check(&self, change: impl FnOnce(&mut RawSnapshot)) -> Result<(), SnapshotError> {
        let mut snap = self.compile_unchecked(now_ms()).await?;
        change(&mut snap);
        validate(&snap).map_err(SnapshotError::Invalid)
    }

    /// Would the current state with `change` applied to what the snapshot
    /// is compiled from still validate? For changes below the compiled
    /// form: the limits document, plans, users' plans and overrides.
    pub async fn check_source(
        &self,
        change: impl FnOnce(&mut SnapshotSource),
    ) -> Result<(), SnapshotError> {
        let snap = self.compile_with(now_ms(), change).await?;
        validate(&snap).map_err(SnapshotError::Invalid)
    }

    async fn compile_unchecked(&self, now: Millis) -> Result<RawSnapshot, SnapshotError> {
        self.compile_with(now, |_| {}).await
    }

    /// Compile from the stored state with `change` applied to it.
    async fn compile_with(
        &self,
        now: Millis,
        change: impl FnOnce(&mut SnapshotSource),
    ) -> Result<RawSnapshot, SnapshotError> {
        let mut source = self.store.snapshot_source(now).await?;
        change(&mut source);
        let SnapshotSource {
            keys,
            providers,
            models,
            prices,
            mut limits,
            plans,
            user_limits,
            identities,
        } = source;
        let prices: HashMap<String, RawModelPrice> = prices
            .into_iter()
            .map(|v| (v.model, v.price.to_wire()))
            .collect();
        // Redis is each data plane's own; a snapshot never carries it.
        limits.redis = None;
        apply_user_limits(&mut limits, &plans, &user_limits);
        let providers = providers
            .iter()
            .map(|p| self.raw_provider(p))
            .collect::<Result<_, _>>()?;
        let bots = self.raw_bots().await?;
        Ok(RawSnapshot {
            version: 0,
            auth: RawAuth {
                jwt: Some(RawJwt {
                    issuer: self.jwt.issuer.clone(),
                    algorithm: "HS256".into(),
                    secret: Some(self.jwt.secret.expose().to_owned()),
                    secret_env: None,
                    public_key_file: None,
                    audience: None,
                    leeway: None,
                }),
                jwks: self.tokens.as_ref().map(|t| RawJwks {
                    issuer: t.issuer.clone(),
                    audiences: t.audiences.clone(),
                    authorized_parties: t.authorized_parties.clone(),
                    keys: t.keys.current().to_vec(),
                    users: identities.into_iter().collect(),
                    leeway: None,
                }),
            },
            keys: keys
                .into_iter()
                .map(|k| RawKey {
                    id: k.id,
                    user: k.user_id,
                    sha256: k.sha256,
                    models: k.models,
                })
                .collect(),
            providers,
            models: models
                .into_iter()
                .map(|m| RawModel {
                    price: prices.get(&m.name).cloned(),
                    name: m.name,
                    provider: m.provider,
                    upstream_name: m.upstream_name,
                    aliases: m.aliases,
                    fallbacks: m.fallbacks,
                })
                .collect(),
            limits,
            bots,
            browser: self.browser.clone(),
        })
    }

    /// Running bots with their gateway tokens opened. A bot whose token
    /// does not open is left out (and logged) rather than blocking every
    /// other change from reaching the data planes.
    async fn raw_bots(&self) -> Result<Vec<RawBot>, SnapshotError> {
        let bots = self.store.running_bots().await?;
        Ok(bots
            .into_iter()
            .filter_map(|r| {
                let url = r.bot.gateway_url?;
                match self.cipher.open(&r.token_sealed, &r.bot.id) {
                    Ok(token) => Some(RawBot {
                        id: r.bot.id,
                        user: r.bot.user_id,
                        gateway_url: url,
                        gateway_token: String::from_utf8_lossy(&token).into_owned(),
                    }),
                    Err(error) => {
                        tracing::error!(bot = r.bot.id, %error, "bot token does not open; bot left out");
                        None
                    }
                }
            })
            .collect())
    }

    fn raw_provider(&self, p: &SealedProvider) -> Result<RawProvider, SnapshotError> {
        let keys = open_keys(&self.cipher, p).map_err(|source| SnapshotError::Decrypt {
            provider: p.provider.name.clone(),
            source,
        })?;
        Ok(RawProvider {
            name: p.provider.name.clone(),
            kind: p.provider.kind.as_str().to_owned(),
            base_url: p.provider.base_url.clone(),
            keys,
            keys_env: Vec::new(),
            anthropic_version: None,
        })
    }
}

/// Compile each user's effective limits into the document's `users`
/// entries. Layers, each field of a later one winning: the user's plan,
/// the document's own entry for the user (an operator's per-user line in
/// the limits document), the user's own overrides (`users.limits`). The
/// data plane merges an entry over the document's defaults, so a field no
/// layer sets is the deployment default, and a user with neither plan nor
/// overrides gets no entry (the defaults).
pub fn apply_user_limits(limits: &mut RawLimits, plans: &[Plan], users: &[UserLimits]) {
    let plans: HashMap<&str, &RawLimitSet> =
        plans.iter().map(|p| (p.name.as_str(), &p.limits)).collect();
    // The document's own entries by user (the first, should one be
    // duplicated: validation reports that), so compiling stays linear in
    // the number of users.
    let mut in_document: HashMap<String, usize> = HashMap::with_capacity(limits.users.len());
    for (i, e) in limits.users.iter().enumerate() {
        in_document.entry(e.user.clone()).or_insert(i);
    }
    for u in users {
        let plan = u
            .plan
            .as_deref()
            .and_then(|name| plans.get(name))
            .map_or_else(RawLimitSet::default, |l| **l);
        match in_document.get(u.user_id.as_str()) {
            Some(&i) => {
                let entry = &mut limits.users[i];
                let set = plan.merged(&entry.limit_set()).merged(&u.overrides);
                *entry = RawUserLimits::new(u.user_id.clone(), &set);
            }
            None => {
                let set = plan.merged(&u.overrides);
                if !set.is_empty() {
                    limits
                        .users
                        .push(RawUserLimits::new(u.user_id.clone(), &set));
                }
            }
        }
    }
}

/// Seal a provider's master keys (a JSON list) bound to its id.
pub fn seal_keys(
    cipher: &Cipher,
    provider_id: &str,
    keys: &[String],
) -> Result<String, crate::crypto::CryptoError> {
    cipher.seal(&to_json(&keys), provider_id)
}

/// The master keys [`seal_keys`] sealed.
pub fn open_keys(
    cipher: &Cipher,
    p: &SealedProvider,
) -> Result<Vec<String>, crate::crypto::CryptoError> {
    let plain = cipher.open(&p.keys_sealed, &p.provider.id)?;
    serde_json::from_slice(&plain).map_err(|_| crate::crypto::CryptoError::Malformed)
}

/// Validate a snapshot exactly as a data plane would: merged into a local
/// config with a placeholder server section, through `from_wire`.
pub fn validate(snap: &RawSnapshot) -> Result<(), ConfigErrors> {
    // Built from JSON so every section the contract adds later takes its
    // default here without this code changing.
    let local: RawDataplaneConfig = serde_json::from_value(serde_json::json!({
        "version": CONFIG_VERSION,
        "server": {"listen": "127.0.0.1:0", "threads": 1},
    }))
    .map_err(|e| {
        ConfigErrors(vec![molt_config::ConfigError {
            path: "<placeholder>".into(),
            message: e.to_string(),
        }])
    })?;
    let local = local.with_snapshot(snap.clone());
    // No environment: a snapshot carries every secret inline.
    let env: HashMap<&str, &str> = HashMap::new();
    molt_config::DataplaneConfig::from_wire(local, &env).map(drop)
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // The wire types are plain structs of strings, numbers and lists;
    // serialising them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}
