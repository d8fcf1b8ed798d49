//! Hot reload: on SIGHUP, when the config file changes, or when the control
//! plane pushes a snapshot ([`crate::sync`]), build a new runtime and swap
//! it in; a bad config is rejected and the old one keeps serving.
//!
//! Both triggers take the same path: the file's wire config, with the last
//! accepted control-plane snapshot merged over it
//! (`RawDataplaneConfig::with_snapshot`), validated, prepared, swapped, and
//! the limiter updated. One lock serialises them, so a file reload never
//! swaps back to an older snapshot.
//!
//! Listener settings (addresses, TLS file paths, threads) are bound at start
//! and need a restart; a reload that changes them applies the rest and says
//! so. The certificate *in* those files is reloaded on its own, when the
//! files change or on SIGHUP ([`crate::tls::watch`]).

use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeHandle};
use async_trait::async_trait;
use molt_config::dataplane::ProcessEnv;
use molt_config::wire::{RawDataplaneConfig, RawSnapshot};
use molt_config::DataplaneConfig;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct ConfigReloader {
    pub path: PathBuf,
    pub runtime: RuntimeHandle,
    pub metrics: Arc<Metrics>,
    /// Given the new limits on every reload; its counters carry over.
    pub limiter: crate::limits::Limiter,
    pub version: Arc<AtomicU64>,
    /// The control plane's last accepted snapshot, merged over the file on
    /// every reload. Held for the whole reload so reloads run one at a time.
    pub snapshot: Mutex<Option<RawSnapshot>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid config:\n{0}")]
    Invalid(molt_config::ConfigErrors),
    #[error(transparent)]
    Build(#[from] crate::runtime::BuildError),
}

impl ConfigReloader {
    /// Load the file, merge the current snapshot, validate and prepare,
    /// then swap it in. Blocking (reads the file, resolves hosts).
    pub fn reload_now(&self) -> Result<u64, ReloadError> {
        // A poisoned lock means a reload panicked midway; the snapshot it
        // guards was only replaced after a successful swap, so it is sound.
        let snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let raw = DataplaneConfig::load_raw(&self.path).map_err(ReloadError::Invalid)?;
        self.swap_in(merge(raw, snapshot.as_ref()))
    }

    /// Merge `snap` over the file's config and swap it in; on success it
    /// becomes the snapshot later file reloads merge. Blocking.
    pub fn apply_snapshot_now(&self, snap: RawSnapshot) -> Result<u64, ReloadError> {
        let mut current = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let raw = DataplaneConfig::load_raw(&self.path).map_err(ReloadError::Invalid)?;
        let version = self.swap_in(merge(raw, Some(&snap)))?;
        *current = Some(snap);
        Ok(version)
    }

    /// Validate, prepare and swap one wire config, then give the limiter
    /// its limits. The caller holds the `snapshot` lock.
    fn swap_in(&self, raw: RawDataplaneConfig) -> Result<u64, ReloadError> {
        let config = DataplaneConfig::from_wire(raw, &ProcessEnv).map_err(ReloadError::Invalid)?;
        let old = self.runtime.load();
        if config.server != old.config.server || config.admin_listen != old.config.admin_listen {
            tracing::warn!("listener settings changed; they take effect on restart");
        }
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let limits = config.limits.clone();
        let rt = Runtime::build(config, version)?;
        self.runtime.swap(rt);
        self.limiter.update(&limits);
        Ok(version)
    }

    async fn reload(self: &Arc<Self>, why: &str) {
        self.run_blocking(why, |me| me.reload_now()).await;
    }

    /// [`Self::apply_snapshot_now`] off the async runtime, counted and
    /// logged like any reload. Returns the runtime version on success.
    pub async fn apply_snapshot(self: &Arc<Self>, snap: RawSnapshot) -> Option<u64> {
        self.run_blocking("control plane", move |me| me.apply_snapshot_now(snap))
            .await
    }

    async fn run_blocking(
        self: &Arc<Self>,
        why: &str,
        op: impl FnOnce(&Self) -> Result<u64, ReloadError> + Send + 'static,
    ) -> Option<u64> {
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || op(&me)).await;
        match result {
            Ok(Ok(version)) => {
                self.metrics.config_reloads.inc();
                self.metrics.config_version.set(version as i64);
                tracing::info!(version, trigger = why, "config reloaded");
                Some(version)
            }
            Ok(Err(e)) => {
                self.metrics.config_reload_failures.inc();
                tracing::error!(trigger = why, error = %e, "config reload rejected; still serving the previous config");
                None
            }
            Err(e) => {
                self.metrics.config_reload_failures.inc();
                tracing::error!(error = %e, "config reload task failed");
                None
            }
        }
    }
}

/// The file's config with `snap` (if any) over its managed sections.
pub fn merge(raw: RawDataplaneConfig, snap: Option<&RawSnapshot>) -> RawDataplaneConfig {
    match snap {
        Some(s) => raw.with_snapshot(s.clone()),
        None => raw,
    }
}

/// The symlink the kubelet swaps to update a mounted ConfigMap or Secret.
const KUBELET_DATA_LINK: &str = "..data";

/// Runs the reload triggers as a Pingora background service.
pub struct ReloadService(pub Arc<ConfigReloader>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let reloader = self.0.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        // Watch the directory, not the file: editors and config managers
        // replace files by renaming, which a file watch would miss. A
        // Kubernetes ConfigMap (or Secret) mounted as a directory changes
        // without any event on the file's name: the file is a symlink
        // through `..data`, and an update renames a new `..data` over it.
        let file_name = reloader.path.file_name().map(|n| n.to_owned());
        let kubelet_swap = Some(std::ffi::OsStr::new(KUBELET_DATA_LINK));
        let dir = reloader
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        let watcher = {
            use notify::Watcher;
            let tx = tx.clone();
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    let ours = ev.paths.iter().any(|p| {
                        p.file_name() == file_name.as_deref() || p.file_name() == kubelet_swap
                    });
                    if ours && (ev.kind.is_modify() || ev.kind.is_create()) {
                        let _ = tx.try_send(());
                    }
                }
            })
            .and_then(|mut w| {
                w.watch(&dir, notify::RecursiveMode::NonRecursive)
                    .map(|()| w)
            })
        };
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
                None
            }
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        loop {
            tokio::select! {
                _ = async { match &mut hup { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                    reloader.reload("SIGHUP").await;
                }
                Some(()) = rx.recv() => {
                    // Let a burst of write events settle before reading.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while rx.try_recv().is_ok() {}
                    reloader.reload("file change").await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
