//! [`LocalFleet`]: bots as in-process gateways on loopback, for `molt dev`
//! and tests, with no external service.
//!
//! The fleet keeps the books (volumes, machines, their states and ports)
//! and the tasks; what answers on a bot's port comes from a [`BotLauncher`]
//! given when the fleet is made. The `molt` binary's launcher serves the
//! mock bot gateway of `molt-fakes`, which this crate does not depend on.
//!
//! Volumes and machines are kept in memory, so after a restart nothing
//! "exists" and the provisioner simply makes them again; that is the right
//! behaviour for a dev box whose bots are throwaway.

use super::{Fleet, FleetError, Machine, MachineSpec, Volume, VolumeSpec};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A bot gateway being served; it stops when dropped.
pub type BotGateway = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// Serves a bot's gateway for the local fleet: the WebSocket chat and
/// `GET /status` a bot container answers on its internal port.
pub trait BotLauncher: Send + Sync + 'static {
    /// The gateway of a bot that demands `gateway_token` as
    /// `Authorization: Bearer`, served on `listener` (already bound, on
    /// loopback) until the returned future ends or is dropped.
    fn launch(&self, listener: TcpListener, gateway_token: &str) -> BotGateway;
}

struct LocalMachine {
    machine: Machine,
    bot_id: String,
    token: String,
    addr: Option<SocketAddr>,
    task: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    volumes: BTreeMap<String, Volume>,
    machines: BTreeMap<String, LocalMachine>,
    next: u64,
}

/// In-process bots on loopback.
#[derive(Clone)]
pub struct LocalFleet {
    st: Arc<Mutex<State>>,
    launcher: Arc<dyn BotLauncher>,
}

impl std::fmt::Debug for LocalFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFleet").finish_non_exhaustive()
    }
}

impl LocalFleet {
    /// A fleet whose bots are served by `launcher`.
    pub fn new(launcher: Arc<dyn BotLauncher>) -> Self {
        Self {
            st: Arc::default(),
            launcher,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Inserts and removals leave the maps consistent even if a holder
        // panicked, so a poisoned lock is safe to reuse.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start the machine's bot: on its old port if it had one, so its
    /// gateway URL stays valid across stop/start.
    async fn boot(&self, id: &str) -> Result<(), FleetError> {
        let (token, addr) = {
            let st = self.lock();
            let m = st
                .machines
                .get(id)
                .ok_or_else(|| not_found("machine", id))?;
            if m.task.is_some() {
                return Ok(());
            }
            (m.token.clone(), m.addr)
        };
        let bind = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(bind).await.map_err(|e| {
            FleetError::Transport(format!("local bot cannot listen on {bind}: {e}"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| FleetError::Transport(e.to_string()))?;
        let gateway = self.launcher.launch(listener, &token);
        let task = tokio::spawn(async move {
            if let Err(error) = gateway.await {
                tracing::warn!(%error, "local bot stopped");
            }
        });
        let mut st = self.lock();
        if let Some(m) = st.machines.get_mut(id) {
            m.addr = Some(addr);
            m.task = Some(task);
            "started".clone_into(&mut m.machine.state);
        } else {
            task.abort();
        }
        Ok(())
    }
}

fn not_found(kind: &str, id: &str) -> FleetError {
    FleetError::Api {
        status: 404,
        message: format!("{kind} {id} not found"),
        kind: None,
    }
}

#[async_trait::async_trait]
impl Fleet for LocalFleet {
    async fn find_volumes(&self, name: &str) -> Result<Vec<Volume>, FleetError> {
        Ok(self
            .lock()
            .volumes
            .values()
            .filter(|v| v.name == name)
            .cloned()
            .collect())
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, FleetError> {
        let mut st = self.lock();
        st.next += 1;
        let v = Volume {
            id: format!("vol_local{}", st.next),
            name: spec.name.clone(),
            state: "created".into(),
        };
        st.volumes.insert(v.id.clone(), v.clone());
        Ok(v)
    }

    async fn delete_volume(&self, id: &str) -> Result<(), FleetError> {
        self.lock().volumes.remove(id);
        Ok(())
    }

    async fn find_machine(&self, bot_id: &str) -> Result<Option<Machine>, FleetError> {
        Ok(self
            .lock()
            .machines
            .values()
            .find(|m| m.bot_id == bot_id)
            .map(|m| m.machine.clone()))
    }

    async fn create_machine(&self, spec: &MachineSpec) -> Result<Machine, FleetError> {
        let id = {
            let mut st = self.lock();
            if st.machines.values().any(|m| m.machine.name == spec.name) {
                return Err(FleetError::NameTaken(spec.name.clone()));
            }
            st.next += 1;
            let id = format!("local{:08}", st.next);
            st.machines.insert(
                id.clone(),
                LocalMachine {
                    machine: Machine {
                        id: id.clone(),
                        name: spec.name.clone(),
                        state: "starting".into(),
                        private_ip: "127.0.0.1".into(),
                    },
                    bot_id: spec.bot_id.clone(),
                    token: spec.gateway_token.expose().to_owned(),
                    addr: None,
                    task: None,
                },
            );
            id
        };
        self.boot(&id).await?;
        self.get_machine(&id)
            .await?
            .ok_or_else(|| not_found("machine", &id))
    }

    async fn get_machine(&self, id: &str) -> Result<Option<Machine>, FleetError> {
        Ok(self.lock().machines.get(id).map(|m| m.machine.clone()))
    }

    async fn wait_started(&self, id: &str, _timeout: Duration) -> Result<(), FleetError> {
        match self.get_machine(id).await? {
            Some(m) if m.state == "started" => Ok(()),
            Some(_) => Err(FleetError::Timeout("started")),
            None => Err(not_found("machine", id)),
        }
    }

    async fn start_machine(&self, id: &str) -> Result<(), FleetError> {
        self.boot(id).await
    }

    async fn stop_machine(&self, id: &str) -> Result<(), FleetError> {
        let mut st = self.lock();
        let m = st
            .machines
            .get_mut(id)
            .ok_or_else(|| not_found("machine", id))?;
        if let Some(t) = m.task.take() {
            t.abort();
        }
        "stopped".clone_into(&mut m.machine.state);
        Ok(())
    }

    async fn delete_machine(&self, id: &str) -> Result<(), FleetError> {
        if let Some(mut m) = self.lock().machines.remove(id) {
            if let Some(t) = m.task.take() {
                t.abort();
            }
        }
        Ok(())
    }

    fn gateway_url(&self, m: &Machine) -> String {
        let st = self.lock();
        match st.machines.get(&m.id).and_then(|l| l.addr) {
            Some(addr) => format!("http://{addr}/"),
            // Not booted yet: a URL that refuses, so health fails clearly.
            None => "http://127.0.0.1:9/".to_owned(),
        }
    }
}
