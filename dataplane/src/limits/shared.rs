//! The limiter's shared state: the prepared config, the mode (local,
//! global through Redis, or the local fallback while Redis is away) and the
//! sharded maps of per-user and per-provider scopes.

use super::*;

impl Shared {
    pub(super) fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Global,
            2 => Mode::Fallback,
            _ => Mode::LocalOnly,
        }
    }

    pub(super) fn set_mode(&self, mode: Mode) {
        let prev = self.mode.swap(mode as u8, Ordering::AcqRel);
        self.metrics
            .redis_fallback
            .set(i64::from(mode == Mode::Fallback));
        if prev == Mode::Fallback as u8 && mode == Mode::Global {
            tracing::info!("limits: Redis reachable again; limits are global");
        }
    }

    /// Switch to local decisions after a Redis failure; logs once per
    /// transition, not once per failed attempt.
    pub(super) fn set_mode_fallback(&self, error: &str) {
        let prev = self.mode.swap(Mode::Fallback as u8, Ordering::AcqRel);
        self.metrics.redis_fallback.set(1);
        if prev != Mode::Fallback as u8 {
            tracing::warn!(
                error,
                "limits: Redis unreachable; enforcing limit / replicas locally until it returns"
            );
        }
    }

    pub(super) fn redis_url(&self) -> Option<String> {
        self.cfg
            .load()
            .limits
            .redis
            .as_ref()
            .map(|r| r.url.expose().to_owned())
    }

    pub(super) fn redis_prefix_and_replicas(&self) -> (String, u64) {
        let cfg = self.cfg.load();
        match &cfg.limits.redis {
            Some(r) => (r.key_prefix.clone(), u64::from(r.replicas.get())),
            None => (String::new(), 1),
        }
    }

    pub(super) fn leases(&self) -> Vec<Arc<Lease>> {
        let mut reg = self.lease_registry.lock();
        // Leases no meter holds any more (limit removed) are dropped here.
        reg.retain(|l| Arc::strong_count(l) > 1);
        reg.clone()
    }

    pub(super) fn clear_all_pending(&self) {
        for l in self.lease_registry.lock().iter() {
            l.clear_pending();
        }
    }

    pub(super) fn user(&self, user: &str) -> Arc<Mutex<UserState>> {
        if let Some(u) = self.users.get(user) {
            return Arc::clone(u.value());
        }
        // First request of this user: the only allocation on this path.
        Arc::clone(
            self.users
                .entry(user.into())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(UserState {
                        name: user.into(),
                        // Forces `apply` on first use.
                        generation: u64::MAX,
                        main: Meters::default(),
                        models: Vec::new(),
                        anomaly: AnomalyState::default(),
                    }))
                })
                .value(),
        )
    }

    pub(super) fn provider(
        &self,
        name: &str,
        set: &LimitSet,
        cfg: &Prepared,
    ) -> Arc<Mutex<Meters>> {
        let p = match self.providers.get(name) {
            Some(p) => Arc::clone(p.value()),
            None => Arc::clone(
                self.providers
                    .entry(name.into())
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(Meters {
                            generation: u64::MAX,
                            ..Meters::default()
                        }))
                    })
                    .value(),
            ),
        };
        {
            let mut m = p.lock();
            if m.generation != cfg.generation {
                m.apply(set, cfg, self, &scope_key("p", name, None));
            }
        }
        p
    }

    pub(super) fn reject(&self, r: Refusal, headers: RateLimitHeaders) -> Rejection {
        self.metrics.rejected(r.kind);
        let what = r.kind.describe();
        let reason = match (r.kind, r.scope) {
            (LimitKind::Anomaly, _) => "unusual token usage".to_owned(),
            (LimitKind::UnpricedModel, _) => format!(
                "the model has no price, and a monthly dollar budget of ${} applies",
                budget::usd(r.limit)
            ),
            (LimitKind::MonthlyDollarBudget, ScopeKind::Model) => format!(
                "monthly dollar budget of ${} for this model reached",
                budget::usd(r.limit)
            ),
            (LimitKind::MonthlyDollarBudget, _) => {
                format!("monthly dollar budget of ${} reached", budget::usd(r.limit))
            }
            (_, ScopeKind::Model) => format!("{what} limit of {} for this model reached", r.limit),
            (_, ScopeKind::Provider) => {
                format!(
                    "the provider's {what} ceiling of {} is reached; try again shortly",
                    r.limit
                )
            }
            _ => format!("{what} limit of {} reached", r.limit),
        };
        Rejection {
            kind: r.kind,
            // HTTP `retry-after` is whole seconds; never tell a client 0.
            retry_after: r.retry_after.max(Duration::from_millis(1)),
            reason,
            headers,
        }
    }

    pub(super) fn register(&self, lease: &Arc<Lease>) {
        self.lease_registry.lock().push(Arc::clone(lease));
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("mode", &self.mode())
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Prepared {
    pub(super) fn new(cfg: &LimitsConfig, generation: u64) -> Prepared {
        Prepared {
            generation,
            limits: cfg.clone(),
            share: cfg
                .redis
                .as_ref()
                .map_or(1, |r| u64::from(r.replicas.get())),
        }
    }
}
