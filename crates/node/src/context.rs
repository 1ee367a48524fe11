//! What the node's tasks share: per service its configuration, journal,
//! proxy, ownership and process (`ServiceHost`), the node's own settings
//! and peers (`NodeShared`), and the status `replaymig status` shows. The
//! bottom layer of the node crate: the migration drivers, tunnels, the
//! listeners and the node itself build on it, never the other way round.

use crate::config::{NodeConfig, ServiceConfig};
use crate::ownership::{OwnershipFile, OwnershipRecord, Prepared};
use crate::process::{wait_ready, ServiceProcess};
use anyhow::{Context, Result};
use bytes::Bytes;
use replaymig_journal::{ConnId, Journal};
use replaymig_peer::Authenticator;
use replaymig_proxy::{Dialer, ProxyControl, Route};
use replaymig_snapshot::Placeholders;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// What a node knows and runs for one service.
pub(crate) struct ServiceHost {
    pub config: ServiceConfig,
    pub journal: Journal,
    pub proxy: ProxyControl,
    /// The durable copy of `state`'s owner, epoch and prepared hand-over.
    pub ownership: OwnershipFile,
    pub state: Mutex<ServiceState>,
    /// The phase of the migration running here, or of the last one, with
    /// this node's role in it (`status` shows it; the metric mirrors it).
    pub phase: std::sync::Mutex<Option<(&'static str, crate::Phase)>>,
    /// Copies given up by migrations, being stopped in the background.
    pub retiring: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ServiceHost {
    /// Stops a copy this node gave up, in the background (see
    /// [`ServiceHost::retired`]).
    pub(crate) fn retire(&self, process: ServiceProcess) {
        let stopping = tokio::spawn(process.stop());
        let mut retiring = self.retiring.lock().expect("poisoned");
        retiring.retain(|t| !t.is_finished());
        retiring.push(stopping);
    }

    /// Waits until every retired copy has exited.
    pub(crate) async fn retired(&self) {
        let stopping = std::mem::take(&mut *self.retiring.lock().expect("poisoned"));
        for task in stopping {
            let _ = task.await;
        }
    }

    /// Enters `phase` of a migration in which this node is `role`.
    pub(crate) fn set_phase(&self, role: &'static str, phase: crate::Phase) {
        *self.phase.lock().expect("poisoned") = Some((role, phase));
        crate::telemetry::phase(&self.config.name, role, phase);
    }
}

/// Ownership and what goes with it; changed only by migrations.
pub(crate) struct ServiceState {
    /// The node that owns the service (its input is journaled there).
    pub owner: String,
    /// Ownership epoch: grows by one per hand-over; a node that is not the
    /// owner of the current epoch never feeds its own service.
    pub epoch: u64,
    /// The local service, while this node owns it (or is restoring it).
    pub process: Option<ServiceProcess>,
    /// Replayed connections waiting for their client's tunnel after a
    /// hand-over to this node.
    pub parked: HashMap<ConnId, (TcpStream, Bytes)>,
    /// A migration of this service is running here.
    pub migrating: bool,
    /// This node prepared to own the service (replay done, connections
    /// parked) and waits for the source's commit: it does not serve as
    /// owner before that, so a lost message cannot split ownership.
    pub prepared: Option<Prepared>,
    /// The prepared hand-over came from the record at a restart: its
    /// replayed copy is gone, so only its rebuild (restore + replay of the
    /// journal, `handover::recover_after_restart`) may commit it — not a
    /// tunnel under its epoch, which would serve a half-rebuilt service.
    pub rebuilding: bool,
}

impl ServiceState {
    /// What [`ServiceHost::ownership`] should say.
    pub fn record(&self) -> OwnershipRecord {
        OwnershipRecord {
            owner: self.owner.clone(),
            epoch: self.epoch,
            prepared: self.prepared.clone(),
            committing: None,
        }
    }

    /// The epoch this node prepared to own, if any.
    pub fn prepared_epoch(&self) -> Option<u64> {
        self.prepared.as_ref().map(|p| p.epoch)
    }
}

/// Shared by the node's tasks.
pub(crate) struct NodeShared {
    pub config: NodeConfig,
    pub auth: Authenticator,
    pub services: BTreeMap<String, Arc<ServiceHost>>,
    /// Every admin request must carry it, when set (see `admin`).
    pub admin_token: Option<replaymig_peer::Secret>,
    /// Fleet mode: the registry, its maps and this node's registration.
    pub fleet: Option<crate::fleet::Fleet>,
}

impl NodeShared {
    /// Placeholders for a service's commands on this node.
    pub fn placeholders(&self, service: &ServiceConfig) -> Placeholders {
        let mut vars = Placeholders::new();
        vars.insert("port".into(), service.backend.port().to_string());
        vars.insert("backend".into(), service.backend.to_string());
        if let Some(dir) = &service.data_dir {
            vars.insert("data_dir".into(), dir.display().to_string());
        }
        // The socket holder (CRIU carrying connections): this binary's
        // `holder` command, the service command following it.
        if let Ok(exe) = std::env::current_exe() {
            let exe = shlex::try_quote(&exe.display().to_string())
                .map(|q| q.into_owned())
                .unwrap_or_default();
            let name = shlex::try_quote(&service.name)
                .map(|q| q.into_owned())
                .unwrap_or_default();
            vars.insert("holder".into(), format!("{exe} holder --name {name} --"));
        }
        vars
    }

    /// Where node `name` listens for peers: its `[peers]` entry, or in
    /// fleet mode its registration.
    pub fn peer_addr(&self, name: &str) -> Result<std::net::SocketAddr> {
        if let Some(addr) = self.config.peers.get(name) {
            return Ok(*addr);
        }
        match &self.fleet {
            Some(fleet) => fleet.peer(name).with_context(|| {
                format!("node {name:?} is not registered in the fleet (not alive, or never joined)")
            }),
            None => anyhow::bail!("unknown node {name:?} (not in [peers])"),
        }
    }

    /// The route to the node that owns a service under `epoch` (tunnels
    /// carry the epoch, so a stale owner refuses them).
    pub fn route_to(&self, owner: &str, epoch: u64, service: &ServiceConfig) -> Result<Route> {
        if owner == self.config.name {
            return Ok(Route::Owner {
                backend: service.backend,
            });
        }
        Ok(Route::Remote {
            dial: self.tunnels_to(owner, epoch, &service.name)?,
        })
    }

    /// A dialer of tunnels for `service` to node `owner` under `epoch` —
    /// this node's own peer listener when it is `owner` (a relayed
    /// connection moving to this node as the new owner).
    pub fn tunnels_to(&self, owner: &str, epoch: u64, service: &str) -> Result<Dialer> {
        let addr = if owner == self.config.name {
            crate::dial::PeerAddress::Fixed(self.own_peer_addr())
        } else {
            match (self.config.peers.get(owner), &self.fleet) {
                (Some(addr), _) => crate::dial::PeerAddress::Fixed(*addr),
                (None, Some(fleet)) => crate::dial::PeerAddress::registered(owner, &fleet.members),
                (None, None) => anyhow::bail!("unknown node {owner:?} (not in [peers])"),
            }
        };
        Ok(crate::dial::dialer(
            self.auth.clone(),
            addr,
            service.to_string(),
            epoch,
        ))
    }

    /// Where this node reaches its own peer listener (a wildcard listen
    /// address on loopback).
    pub fn own_peer_addr(&self) -> std::net::SocketAddr {
        let mut addr = match &self.config.fleet {
            Some(fleet) => fleet.peer_address(&self.config),
            None => self.config.peer_listen,
        };
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        addr
    }

    /// Every node this one can dial now, itself included, by name: for
    /// tasks that cannot borrow the node (a hand-over's redirects).
    pub fn peer_book(&self) -> HashMap<String, std::net::SocketAddr> {
        let mut book: HashMap<String, std::net::SocketAddr> =
            self.config.peers.clone().into_iter().collect();
        if let Some(fleet) = &self.fleet {
            for name in fleet.members.all().into_keys() {
                if let Some(addr) = fleet.peer(&name) {
                    book.entry(name).or_insert(addr);
                }
            }
        }
        book.insert(self.config.name.clone(), self.own_peer_addr());
        book
    }

    /// Starts the service's process from its `start` command.
    pub async fn start_service(&self, service: &ServiceConfig) -> Result<ServiceProcess> {
        let template = service
            .start
            .as_deref()
            .with_context(|| format!("service {} has no start command", service.name))?;
        let command = replaymig_snapshot::substitute(template, &self.placeholders(service))?;
        let process = ServiceProcess::start(&command)?;
        self.wait_service_ready(service).await?;
        Ok(process)
    }

    /// Waits until the service accepts connections and, if configured,
    /// its `ready` command succeeds.
    pub async fn wait_service_ready(&self, service: &ServiceConfig) -> Result<()> {
        wait_ready(service.backend, Duration::from_secs(30)).await?;
        let Some(template) = &service.ready else {
            return Ok(());
        };
        let command = replaymig_snapshot::substitute(template, &self.placeholders(service))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ok = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "service {} not ready: `{command}` kept failing",
                    service.name
                );
            }
            // Each try is a process; 10 ms keeps a restore from waiting
            // on the poll rather than on the service.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Status of one service, for `replaymig status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service.
    pub name: String,
    /// Who owns it.
    pub owner: String,
    /// The ownership epoch.
    pub epoch: u64,
    /// This node's journal head.
    pub last_lsn: u64,
    /// A migration is in flight here.
    pub migrating: bool,
    /// This node prepared to own the service under this epoch and waits
    /// for the source's commit.
    #[serde(default)]
    pub prepared: Option<u64>,
    /// Answer bytes the proxy delivered on journaled connections.
    pub answer_bytes: u64,
    /// The journal's oldest stored LSN (0 while empty).
    #[serde(default)]
    pub first_lsn: u64,
    /// Bytes the journal occupies on disk.
    #[serde(default)]
    pub journal_bytes: u64,
    /// Client connections this node journals now.
    #[serde(default)]
    pub journaled_connections: u64,
    /// The running (or last) migration here: `role:phase`, e.g.
    /// `source:catching_up`, `destination:done`.
    #[serde(default)]
    pub migration: Option<String>,
}

pub(crate) async fn status(shared: &NodeShared) -> Vec<ServiceStatus> {
    let mut out = Vec::new();
    for host in shared.services.values() {
        let state = host.state.lock().await;
        out.push(ServiceStatus {
            name: host.config.name.clone(),
            owner: state.owner.clone(),
            epoch: state.epoch,
            last_lsn: host.journal.last_lsn(),
            migrating: state.migrating,
            prepared: state.prepared_epoch(),
            answer_bytes: host.proxy.answer_bytes(),
            first_lsn: host.journal.first_lsn().ok().flatten().unwrap_or(0),
            journal_bytes: host.journal.size_on_disk().unwrap_or(0),
            journaled_connections: host.proxy.journaled_connections() as u64,
            migration: host
                .phase
                .lock()
                .expect("poisoned")
                .map(|(role, phase)| format!("{role}:{}", phase.name())),
        });
    }
    out
}
