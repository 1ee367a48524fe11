//! The node agent: one journaling proxy per configured service, the
//! service process while this node owns it, the authenticated peer
//! listener (migrations and tunnels arrive there) and the loopback admin
//! listener (`replaymig migrate` / `status`).

use crate::config::{NodeConfig, ServiceConfig};
use crate::listener::{self, Limits};
use crate::ownership::{OwnershipFile, OwnershipRecord, Prepared};
use crate::process::{wait_ready, ServiceProcess};
use crate::{admin, handover, tunnel};
use anyhow::{Context, Result};
use bytes::Bytes;
use replaymig_journal::{ConnId, Journal, JournalOptions};
use replaymig_peer::{Authenticator, Message, PeerLink};
use replaymig_proxy::{Proxy, ProxyConfig, ProxyControl, Route};
use replaymig_snapshot::Placeholders;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
}

impl ServiceHost {
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
}

impl ServiceState {
    /// What [`ServiceHost::ownership`] should say.
    pub fn record(&self) -> OwnershipRecord {
        OwnershipRecord {
            owner: self.owner.clone(),
            epoch: self.epoch,
            prepared: self.prepared.clone(),
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
        vars
    }

    /// The route to the node that owns a service under `epoch` (tunnels
    /// carry the epoch, so a stale owner refuses them).
    pub fn route_to(&self, owner: &str, epoch: u64, service: &ServiceConfig) -> Result<Route> {
        if owner == self.config.name {
            return Ok(Route::Owner {
                backend: service.backend,
            });
        }
        let addr = *self
            .config
            .peers
            .get(owner)
            .with_context(|| format!("unknown node {owner:?}"))?;
        Ok(Route::Remote {
            dial: tunnel::dialer(self.auth.clone(), addr, service.name.clone(), epoch),
        })
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
            tokio::time::sleep(Duration::from_millis(50)).await;
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

/// A running node agent.
pub struct Node {
    pub(crate) shared: Arc<NodeShared>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Node {
    /// Opens the journals, binds every listener, starts the services this
    /// node owns, and serves until [`Node::shutdown`].
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let auth = Authenticator::new(config.name.clone(), config.secret()?);
        crate::telemetry::register(&config);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut services = BTreeMap::new();
        let mut proxies = Vec::new();
        for service in &config.services {
            let options = JournalOptions {
                min_free_bytes: service.journal_min_free,
                ..JournalOptions::default()
            };
            let journal = Journal::open_for(&service.journal, options, &service.name)
                .with_context(|| format!("cannot open the journal of {}", service.name))?;
            let ownership = OwnershipFile::beside(&service.journal);
            let record = ownership.load()?.unwrap_or_else(|| OwnershipRecord {
                owner: service.owner.clone(),
                epoch: 1,
                prepared: None,
            });
            let mut proxy_config = ProxyConfig::new(service.listen, service.backend);
            proxy_config.journal_responses = service.journal_responses;
            proxy_config.service = service.name.clone();
            let proxy = Proxy::bind(proxy_config, journal.clone()).await?;
            if matches!(service.snapshot.driver(), replaymig_snapshot::Driver::None) {
                // Its whole journal is replayed by a migration, so all of
                // it is forwarded settled (docs/fidelity.md).
                proxy.control().set_settled_forwarding(true);
            }
            let host = Arc::new(ServiceHost {
                config: service.clone(),
                journal,
                proxy: proxy.control(),
                ownership,
                phase: std::sync::Mutex::new(None),
                state: Mutex::new(ServiceState {
                    owner: record.owner,
                    epoch: record.epoch,
                    process: None,
                    parked: HashMap::new(),
                    // A hand-over prepared before a restart is resolved
                    // below; no migration starts meanwhile.
                    migrating: record.prepared.is_some(),
                    prepared: record.prepared,
                }),
            });
            services.insert(service.name.clone(), host);
            proxies.push(proxy);
        }
        let admin_token = config.admin_token()?;
        let shared = Arc::new(NodeShared {
            config,
            auth,
            services,
            admin_token,
        });
        for (proxy, host) in proxies.into_iter().zip(shared.services.values()) {
            let (owner, epoch, prepared) = {
                let state = host.state.lock().await;
                (state.owner.clone(), state.epoch, state.prepared.clone())
            };
            let owned = owner == shared.config.name;
            crate::telemetry::ownership(&host.config.name, epoch, owned);
            host.proxy
                .set_route(shared.route_to(&owner, epoch, &host.config)?);
            if owned {
                let process = shared.start_service(&host.config).await?;
                host.state.lock().await.process = Some(process);
            }
            if let Some(prepared) = prepared {
                tracing::warn!(service = %host.config.name, epoch = prepared.epoch, from = %prepared.from, "restarted with a prepared hand-over; asking its source");
                tasks.spawn(handover::recover_after_restart(
                    shared.clone(),
                    host.clone(),
                    prepared,
                    shutdown.clone(),
                ));
            }
            tasks.spawn({
                let stop = shutdown.clone();
                async move {
                    proxy.run(stop).await;
                }
            });
        }
        let peer = TcpListener::bind(shared.config.peer_listen)
            .await
            .with_context(|| format!("cannot listen for peers on {}", shared.config.peer_listen))?;
        let admin = TcpListener::bind(shared.config.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for the admin on {}",
                    shared.config.admin_listen
                )
            })?;
        tasks.spawn(serve_peers(peer, shared.clone(), shutdown.clone()));
        tasks.spawn(admin::serve(
            admin,
            ADMIN_LISTENER,
            shared.clone(),
            shutdown.clone(),
        ));
        tracing::info!(node = %shared.config.name, peer = %shared.config.peer_listen, admin = %shared.config.admin_listen, "node serving");
        Ok(Node {
            shared,
            shutdown,
            tasks,
        })
    }

    /// Moves `service` to node `to` by replay (this node must own it).
    pub async fn migrate(&self, service: &str, to: &str) -> Result<crate::MigrationReport> {
        self.migrate_by(service, to, crate::Method::Replay).await
    }

    /// Moves `service` to node `to` by `method`.
    pub async fn migrate_by(
        &self,
        service: &str,
        to: &str,
        method: crate::Method,
    ) -> Result<crate::MigrationReport> {
        crate::source::migrate_out(&self.shared, service, to, method, false, &|_| {}).await
    }

    /// Services, owners, epochs, journal heads.
    pub async fn status(&self) -> Vec<ServiceStatus> {
        status(&self.shared).await
    }

    /// Stops the node, in this order, so that nothing can append to a
    /// journal once it is closed:
    /// 1. stop accepting: the proxies, the peer and the admin listeners
    ///    stop accepting, and a prepared hand-over stops asking its source;
    /// 2. drain: wait for every task of the node. Each listener waits up to
    ///    [`DRAIN_TIMEOUT`] for its running requests — a migration in or
    ///    out, a hand-over being settled — and aborts the rest; each proxy
    ///    drains its client connections (its own drain timeout);
    /// 3. stop the local services;
    /// 4. close the journals (the final flush).
    pub async fn shutdown(mut self) {
        // 1. Stop accepting, everywhere at once.
        self.shutdown.cancel();
        // 2. Drain: the listeners and proxies return only once their
        // connections ended or were aborted.
        while self.tasks.join_next().await.is_some() {}
        // 3 and 4, service by service.
        for host in self.shared.services.values() {
            if let Some(process) = host.state.lock().await.process.take() {
                process.stop().await;
            }
            if let Err(e) = host.journal.close().await {
                tracing::error!(service = %host.config.name, error = %e, "final journal flush failed");
            }
        }
    }
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

/// Bounds of the peer listener: peer connections in their handshake or
/// request at once. A tunnel's ends as soon as the proxy adopts it;
/// migrations and owner queries are few.
const PEER_LISTENER: Limits = Limits {
    name: "peer",
    max_connections: 1024,
    drain_timeout: DRAIN_TIMEOUT,
};

/// Bounds of the admin listener: `replaymig status` and `migrate`
/// connections at once (a `migrate` holds its own for the whole migration).
const ADMIN_LISTENER: Limits = Limits {
    name: "admin",
    max_connections: 64,
    drain_timeout: DRAIN_TIMEOUT,
};

/// How long a shutdown waits for running peer and admin requests (a
/// migration in or out, a hand-over being settled) before aborting them.
/// Each migration step has its own, longer bound; an aborted migration is
/// a crash of this node to the other side, which the protocol survives
/// (see `handover`).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer listener: authenticates each connection and dispatches on its
/// first message (see `listener` for the bound, backoff and drain).
async fn serve_peers(listener: TcpListener, shared: Arc<NodeShared>, stop: CancellationToken) {
    listener::serve(listener, PEER_LISTENER, stop, move |stream, addr, stop| {
        peer_connection(stream, addr, shared.clone(), stop)
    })
    .await;
}

/// One peer connection: the handshake and the first message (dropped if
/// the node shuts down before they are through), then the request.
async fn peer_connection(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<NodeShared>,
    stop: CancellationToken,
) {
    let request = async {
        let mut link = match PeerLink::accept(stream, &shared.auth).await {
            Ok(link) => {
                crate::telemetry::peer_link(link.peer_node(), true);
                link
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "peer refused");
                return None;
            }
        };
        match link.recv_timeout(Duration::from_secs(10)).await {
            Ok(first) => Some((link, first)),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "peer sent no request");
                None
            }
        }
    };
    let (link, first) = tokio::select! {
        request = request => match request {
            Some(request) => request,
            None => return,
        },
        _ = stop.cancelled() => return,
    };
    let outcome = match first {
        Message::MigrateBegin {
            service,
            epoch,
            verify_answers,
        } => {
            crate::destination::migrate_in(&shared, link, service, epoch, verify_answers, stop)
                .await
        }
        Message::TunnelOpen {
            service,
            conn,
            delivered,
            client,
            epoch,
        } => {
            let request = tunnel::Request {
                service,
                conn,
                delivered,
                client,
                epoch,
            };
            tunnel::accept(&shared, link, request).await
        }
        Message::OwnerQuery { service } => {
            handover::answer_owner_query(&shared, link, &service).await
        }
        other => Err(anyhow::anyhow!("unexpected first message {}", other.name())),
    };
    if let Err(e) = outcome {
        tracing::warn!(%addr, error = %format!("{e:#}"), "peer request failed");
    }
}
