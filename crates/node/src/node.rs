//! The node agent: one journaling proxy per configured service, the
//! service process while this node owns it, the authenticated peer
//! listener (migrations and tunnels arrive there) and the loopback admin
//! listener (`replaymig migrate` / `status`).

use crate::config::NodeConfig;
use crate::context::{status, NodeShared, ServiceHost, ServiceState, ServiceStatus};
use crate::listener::Limits;
use crate::ownership::{OwnershipFile, OwnershipRecord};
use crate::{admin, handover};
use anyhow::{Context, Result};
use replaymig_journal::{Journal, JournalOptions};
use replaymig_peer::Authenticator;
use replaymig_proxy::{Proxy, ProxyConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
        let fleet = match &config.fleet {
            Some(fleet) => Some(crate::fleet::Fleet::start(&config, fleet)?),
            None => None,
        };
        for service in &config.services {
            let options = JournalOptions {
                min_free_bytes: service.journal_min_free,
                ..JournalOptions::default()
            };
            let journal = Journal::open_for(&service.journal, options, &service.name)
                .with_context(|| format!("cannot open the journal of {}", service.name))?;
            let ownership = OwnershipFile::beside(&service.journal);
            let saved = ownership.load()?;
            let from_file = saved.is_some();
            let mut record = saved.unwrap_or_else(|| OwnershipRecord {
                owner: service.owner.clone(),
                epoch: 1,
                prepared: None,
                committing: None,
            });
            if let Some(fleet) = &fleet {
                // The registry is the truth; the file, what this node knew.
                let known = record.clone();
                record = fleet
                    .reconcile_at_start(&service.name, record, from_file)
                    .await?;
                if record != known {
                    tracing::info!(service = %service.name, owner = %record.owner, epoch = record.epoch, "ownership taken from the registry");
                    ownership.save(&record)?;
                }
            }
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
                retiring: std::sync::Mutex::new(Vec::new()),
                state: Mutex::new(ServiceState {
                    owner: record.owner,
                    epoch: record.epoch,
                    process: None,
                    parked: HashMap::new(),
                    // A hand-over prepared before a restart is resolved
                    // below; no migration starts meanwhile.
                    migrating: record.prepared.is_some(),
                    rebuilding: record.prepared.is_some(),
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
            fleet,
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
        tasks.spawn(crate::peers::serve(peer, shared.clone(), shutdown.clone()));
        if shared.fleet.is_some() {
            tasks.spawn(crate::fleet_view::follow_owners(
                shared.clone(),
                shutdown.clone(),
            ));
        }
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
    ///    [`crate::listener::DRAIN_TIMEOUT`] for its running requests — a migration in or
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
        if let Some(fleet) = &self.shared.fleet {
            fleet.leave().await;
        }
        // 3 and 4, service by service.
        for host in self.shared.services.values() {
            host.retired().await;
            if let Some(process) = host.state.lock().await.process.take() {
                process.stop().await;
            }
            if let Err(e) = host.journal.close().await {
                tracing::error!(service = %host.config.name, error = %e, "final journal flush failed");
            }
        }
    }
}

/// Bounds of the admin listener: `replaymig status` and `migrate`
/// connections at once (a `migrate` holds its own for the whole migration).
const ADMIN_LISTENER: Limits = Limits {
    name: "admin",
    max_connections: 64,
    drain_timeout: crate::listener::DRAIN_TIMEOUT,
};
