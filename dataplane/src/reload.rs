//! Hot reload: on SIGHUP or when the config file changes, build a new
//! runtime and swap it in; a bad config is rejected and the old one keeps
//! serving.
//!
//! Listener settings (addresses, TLS files, threads) are bound at start and
//! need a restart; a reload that changes them applies the rest and says so.

use crate::metrics::Metrics;
use crate::runtime::{Runtime, RuntimeHandle};
use async_trait::async_trait;
use molt_config::dataplane::ProcessEnv;
use molt_config::DataplaneConfig;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct ConfigReloader {
    pub path: PathBuf,
    pub runtime: RuntimeHandle,
    pub metrics: Arc<Metrics>,
    /// Given the new limits on every reload; its counters carry over.
    pub limiter: crate::limits::Limiter,
    pub version: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid config:\n{0}")]
    Invalid(molt_config::ConfigErrors),
    #[error(transparent)]
    Build(#[from] crate::runtime::BuildError),
}

impl ConfigReloader {
    /// Load, validate and prepare the file's config, then swap it in.
    /// Blocking (reads the file, resolves hosts).
    pub fn reload_now(&self) -> Result<u64, ReloadError> {
        let config =
            DataplaneConfig::load(&self.path, &ProcessEnv).map_err(ReloadError::Invalid)?;
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
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || me.reload_now()).await;
        match result {
            Ok(Ok(version)) => {
                self.metrics.config_reloads.inc();
                self.metrics.config_version.set(version as i64);
                tracing::info!(version, trigger = why, "config reloaded");
            }
            Ok(Err(e)) => {
                self.metrics.config_reload_failures.inc();
                tracing::error!(trigger = why, error = %e, "config reload rejected; still serving the previous config");
            }
            Err(e) => {
                self.metrics.config_reload_failures.inc();
                tracing::error!(error = %e, "config reload task failed");
            }
        }
    }
}

/// Runs the reload triggers as a Pingora background service.
pub struct ReloadService(pub Arc<ConfigReloader>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let reloader = self.0.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        // Watch the directory, not the file: editors and config managers
        // replace files by renaming, which a file watch would miss.
        let file_name = reloader.path.file_name().map(|n| n.to_owned());
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
                    let ours = ev
                        .paths
                        .iter()
                        .any(|p| p.file_name() == file_name.as_deref());
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
