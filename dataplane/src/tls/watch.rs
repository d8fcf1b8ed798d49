//! When the served certificate is reloaded: its files changed on disk (a
//! watch on their directories, which also sees Kubernetes' secret volumes
//! swapping a `..data` symlink, and a check once a minute for file systems
//! whose changes inotify never reports), or SIGHUP. Each trigger runs
//! [`CertReloader::reload`] off the async runtime and logs the result.

use super::cert::{CertReloader, Reloaded};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Let a burst of file events (two files replaced one after the other)
/// settle before reading them.
const SETTLE: Duration = Duration::from_millis(200);
/// The files are also compared once a minute, whatever the watch says.
const POLL: Duration = Duration::from_secs(60);

/// Runs the certificate reload triggers as a Pingora background service.
pub struct CertWatchService(pub Arc<CertReloader>);

#[async_trait]
impl BackgroundService for CertWatchService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let reloader = self.0.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let _watcher = watch_dirs(&reloader, tx);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS certificate reloads only when its files change");
                None
            }
        };
        let mut poll = tokio::time::interval(POLL);
        poll.tick().await;
        loop {
            tokio::select! {
                _ = async { match &mut hup { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                    reload(&reloader, "SIGHUP", true).await;
                }
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    reload(&reloader, "file change", false).await;
                }
                _ = poll.tick() => reload(&reloader, "periodic check", false).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Watch the directories holding the certificate and key; any event there
/// asks for a check (the reloader compares the bytes, so events about other
/// files cost one read of two small files).
fn watch_dirs(
    reloader: &CertReloader,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let files = reloader.files();
    let mut dirs: Vec<PathBuf> = [&files.cert, &files.key]
        .into_iter()
        .map(|p| parent_dir(p))
        .collect();
    dirs.dedup();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|ev| !ev.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })
    .and_then(|mut w| {
        for dir in &dirs {
            w.watch(dir, notify::RecursiveMode::NonRecursive)?;
        }
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the TLS certificate's files; they are checked once a minute and on SIGHUP");
            None
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

async fn reload(reloader: &Arc<CertReloader>, trigger: &'static str, force: bool) {
    let me = reloader.clone();
    let files = reloader.files().clone();
    match tokio::task::spawn_blocking(move || me.reload(force)).await {
        Ok(Ok(Reloaded::Swapped(cert))) => tracing::info!(
            trigger,
            fingerprint_sha256 = %cert.fingerprint,
            not_after = cert.not_after,
            chain_len = cert.chain_len,
            "serving a new TLS certificate to new connections"
        ),
        Ok(Ok(Reloaded::Unchanged)) => {
            tracing::debug!(trigger, "TLS certificate files unchanged");
        }
        Ok(Err(e)) => tracing::error!(
            trigger,
            cert_file = %files.cert.display(),
            key_file = %files.key.display(),
            error = %e,
            "TLS certificate reload rejected; still serving the previous certificate"
        ),
        Err(e) => tracing::error!(error = %e, "TLS certificate reload task failed"),
    }
}
