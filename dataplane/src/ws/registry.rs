//! The open WebSocket connections: per-user counts (for the connection
//! cap), and per connection the bot and where it was reached, so that after
//! a config reload the connections whose bot moved or was deleted can be
//! told to close with 1012 while every other connection is left alone.
//!
//! The registry is touched only when a connection opens or closes and when
//! the config version changes, never per message.

use crate::runtime::RuntimeHandle;
use molt_config::dataplane::Bot;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// How often the watcher looks for a new config version. A reload is rare
/// and a moved bot's connections are already failing, so a second of delay
/// costs nothing; one task per process does the polling, not one per
/// connection.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Why a connection is asked to close from outside its relay loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    Shutdown,
    BotMoved,
}

/// The signal a relay loop waits on, next to its sockets.
#[derive(Debug, Default)]
pub struct KickSignal {
    /// 0 none, 1 shutdown, 2 bot moved.
    reason: AtomicU8,
    notify: Notify,
}

impl KickSignal {
    fn kick(&self, k: Kick) {
        let v = match k {
            Kick::Shutdown => 1,
            Kick::BotMoved => 2,
        };
        // The first reason wins: a connection already closing for one
        // reason keeps it.
        let _ = self
            .reason
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
        // `notify_one` stores a permit if the loop isn't waiting right now,
        // so a kick is never lost.
        self.notify.notify_one();
    }

    /// Resolves when the connection has been kicked.
    pub async fn kicked(&self) -> Kick {
        loop {
            if let Some(k) = self.reason() {
                return k;
            }
            self.notify.notified().await;
        }
    }

    pub fn reason(&self) -> Option<Kick> {
        match self.reason.load(Ordering::Acquire) {
            1 => Some(Kick::Shutdown),
            2 => Some(Kick::BotMoved),
            _ => None,
        }
    }
}

/// What a connection was opened against; a reload that changes it moves
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    bot: Arc<str>,
    user: Arc<str>,
    url: String,
}

impl Target {
    fn of(bot: &Bot) -> Self {
        Self {
            bot: Arc::from(bot.id.as_str()),
            user: Arc::from(bot.user.as_str()),
            url: bot.gateway_url.ws_url(),
        }
    }
}

struct Entry {
    /// `None` for a connection not tied to a bot (a Realtime session),
    /// which a reload never moves.
    target: Option<Target>,
    signal: Arc<KickSignal>,
}

#[derive(Default)]
struct State {
    conns: HashMap<u64, Entry>,
    per_user: HashMap<Arc<str>, u32>,
    shutting_down: bool,
}

/// Every open relay in this process.
#[derive(Default)]
pub struct ConnRegistry {
    state: Mutex<State>,
    next_id: AtomicU64,
    watcher: OnceLock<()>,
}

impl std::fmt::Debug for ConnRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnRegistry").finish_non_exhaustive()
    }
}

/// A registered connection; dropping it unregisters.
pub struct ConnGuard {
    registry: Arc<ConnRegistry>,
    id: u64,
    user: Arc<str>,
    pub signal: Arc<KickSignal>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut st = self.registry.lock();
        st.conns.remove(&self.id);
        if let Some(n) = st.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                st.per_user.remove(&self.user);
            }
        }
    }
}

/// Why a connection could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    TooMany,
    ShuttingDown,
}

impl ConnRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere mid-update; the maps
        // are still consistent enough to serve and to unregister from.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take one of `user`'s connection slots for a relay to `bot`.
    pub fn register(
        self: &Arc<Self>,
        user: &str,
        bot: &Bot,
        cap: u32,
    ) -> Result<ConnGuard, RegisterError> {
        self.register_target(user, Some(Target::of(bot)), cap)
    }

    /// Take one of `user`'s connection slots for a relay to a model
    /// provider (a Realtime session): it counts against the same cap and
    /// is closed on shutdown, but no bot move concerns it.
    pub fn register_session(
        self: &Arc<Self>,
        user: &str,
        cap: u32,
    ) -> Result<ConnGuard, RegisterError> {
        self.register_target(user, None, cap)
    }

    fn register_target(
        self: &Arc<Self>,
        user: &str,
        target: Option<Target>,
        cap: u32,
    ) -> Result<ConnGuard, RegisterError> {
        let user: Arc<str> = Arc::from(user);
        let signal = Arc::new(KickSignal::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        if st.shutting_down {
            return Err(RegisterError::ShuttingDown);
        }
        let n = st.per_user.entry(user.clone()).or_insert(0);
        if *n >= cap {
            return Err(RegisterError::TooMany);
        }
        *n += 1;
        st.conns.insert(
            id,
            Entry {
                target,
                signal: signal.clone(),
            },
        );
        drop(st);
        Ok(ConnGuard {
            registry: self.clone(),
            id,
            user,
            signal,
        })
    }

    /// Ask every open connection to close with 1001, and refuse new ones.
    pub fn begin_shutdown(&self) {
        let mut st = self.lock();
        if st.shutting_down {
            return;
        }
        st.shutting_down = true;
        for e in st.conns.values() {
            e.signal.kick(Kick::Shutdown);
        }
    }

    pub fn open_connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// Kick the connections whose bot is gone or now somewhere else (other
    /// URL or owner); returns how many.
    pub fn apply_bots(&self, bots: &[Bot]) -> usize {
        let index: HashMap<&str, &Bot> = bots.iter().map(|b| (b.id.as_str(), b)).collect();
        let st = self.lock();
        let mut kicked = 0;
        for e in st.conns.values() {
            let Some(target) = &e.target else { continue };
            let still = index
                .get(&*target.bot)
                .is_some_and(|b| Target::of(b) == *target);
            if !still {
                e.signal.kick(Kick::BotMoved);
                kicked += 1;
            }
        }
        kicked
    }

    /// Start the one task that applies config reloads to open connections
    /// (idempotent). It stops when the registry is dropped.
    pub fn ensure_watcher(self: &Arc<Self>, runtime: RuntimeHandle) {
        self.watcher.get_or_init(|| {
            let weak: Weak<Self> = Arc::downgrade(self);
            tokio::spawn(watch(weak, runtime));
        });
    }
}

async fn watch(registry: Weak<ConnRegistry>, runtime: RuntimeHandle) {
    let mut seen = runtime.load().version;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // SIGTERM starts Pingora's graceful shutdown; hearing it here lets every
    // open relay send 1001 at once instead of when its next timer fires.
    // Tokio delivers a signal to every listener, so Pingora still gets it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let got_term = async {
            match term.as_mut() {
                Some(s) => s.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            true = got_term => {
                if let Some(r) = registry.upgrade() {
                    r.begin_shutdown();
                }
            }
        }
        let Some(reg) = registry.upgrade() else {
            return;
        };
        let rt = runtime.load();
        if rt.version != seen {
            seen = rt.version;
            let kicked = reg.apply_bots(&rt.config.bots);
            if kicked > 0 {
                tracing::info!(
                    version = seen,
                    kicked,
                    "config reload moved or removed bots; closing their connections with 1012"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_config::dataplane::BotUrl;
    use molt_config::Secret;

    fn bot(id: &str, port: u16) -> Bot {
        Bot {
            id: id.into(),
            user: "u".into(),
            gateway_url: BotUrl {
                host: "127.0.0.1".into(),
                port,
                path: "/".into(),
            },
            gateway_token: Secret::new("t"),
        }
    }

    #[test]
    fn cap_and_moves() {
        let reg = Arc::new(ConnRegistry::default());
        let a = reg.register("u", &bot("a", 1), 2).unwrap();
        let b = reg.register("u", &bot("b", 1), 2).unwrap();
        assert_eq!(
            reg.register("u", &bot("a", 1), 2).err(),
            Some(RegisterError::TooMany)
        );
        // "a" moved, "b" untouched.
        assert_eq!(reg.apply_bots(&[bot("a", 2), bot("b", 1)]), 1);
        assert_eq!(a.signal.reason(), Some(Kick::BotMoved));
        assert_eq!(b.signal.reason(), None);
        drop(a);
        let s = reg.register_session("u", 2).unwrap();
        assert_eq!(
            reg.register_session("u", 2).err(),
            Some(RegisterError::TooMany)
        );
        // A session is no bot's: a reload never kicks it.
        assert_eq!(reg.apply_bots(&[bot("b", 1)]), 0);
        assert_eq!(s.signal.reason(), None);
        drop(s);
        assert!(reg.register("u", &bot("b", 1), 2).is_ok());
        reg.begin_shutdown();
        assert_eq!(b.signal.reason(), Some(Kick::Shutdown));
        assert_eq!(
            reg.register("v", &bot("b", 1), 2).err(),
            Some(RegisterError::ShuttingDown)
        );
    }
}
