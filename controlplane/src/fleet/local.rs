//! [`LocalFleet`]: bots as in-process mock bot gateways
//! ([`molt_loadtest::mock_bot`]) on loopback, for `molt dev` and tests,
//! with no external service.
//!
//! Volumes and machines are kept in memory, so after a restart nothing
//! "exists" and the provisioner simply makes them again; that is the right
//! behaviour for a dev box whose bots are throwaway.

use super::{Fleet, FleetError, Machine, MachineSpec, Volume, VolumeSpec};
use molt_loadtest::mock_bot::{MockBot, MockBotOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;

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
#[derive(Clone, Default)]
pub struct LocalFleet {
    st: Arc<Mutex<State>>,
}

impl std::fmt::Debug for LocalFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFleet").finish_non_exhaustive()
    }
}

impl LocalFleet {
    pub fn new() -> Self {
        Self::default()
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
        let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
            FleetError::Transport(format!("local bot cannot listen on {bind}: {e}"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| FleetError::Transport(e.to_string()))?;
        let bot = MockBot::new(MockBotOptions {
            token,
            ..MockBotOptions::default()
        });
        let task = tokio::spawn(async move {
            if let Err(error) = bot.serve(listener).await {
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
