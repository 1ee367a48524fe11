//! What a fleet node does with the registry's maps beyond migrations:
//! follows the owner map (routes move to the new owner; a fenced owner
//! stops its copy) and reports the fleet (`replaymig status --fleet`).

use crate::context::{NodeShared, ServiceHost};
use anyhow::Result;
use replaymig_fleet::{NodeInfo, OwnerEntry};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How often the owner map is checked again without a change.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps every service's route where the registry says its owner is: a
/// node that takes no part in a hand-over learns of it here (its new
/// client connections go to the new owner; its open tunnels were handed
/// over by the old owner). An owner the registry moved on from without
/// it — fenced — stops its copy.
pub(crate) async fn follow_owners(node: Arc<NodeShared>, stop: CancellationToken) {
    let fleet = node.fleet.as_ref().expect("fleet mode");
    let mut changes = fleet.owners.changes();
    loop {
        fleet.remember_members();
        for host in node.services.values() {
            let Some(now) = fleet.owners.owner(&host.config.name) else {
                continue;
            };
            if let Err(e) = follow_one(&node, host, &now.entry).await {
                tracing::warn!(service = %host.config.name, error = %format!("{e:#}"), "could not follow the registry's owner");
            }
        }
        // A change skipped while a hand-over ran here is taken up at the
        // next tick.
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Moves one service's route to the registry's owner, if it is newer than
/// what this node knows and no hand-over runs here.
async fn follow_one(node: &NodeShared, host: &ServiceHost, now: &OwnerEntry) -> Result<()> {
    let me = node.config.name.as_str();
    let mut state = host.state.lock().await;
    if now.epoch <= state.epoch || state.migrating || state.prepared.is_some() {
        return Ok(());
    }
    if now.owner == me {
        // Ownership comes with a restored service, by a hand-over only.
        tracing::error!(service = %host.config.name, epoch = now.epoch, "the registry says this node owns the service, but no hand-over brought it here; not serving it");
        return Ok(());
    }
    let fenced = state.owner == me;
    let route = node.route_to(&now.owner, now.epoch, &host.config)?;
    state.owner = now.owner.clone();
    state.epoch = now.epoch;
    let process = state.process.take();
    host.ownership.save(&state.record())?;
    host.proxy.set_route(route);
    drop(state);
    crate::telemetry::ownership(&host.config.name, now.epoch, false);
    if fenced {
        tracing::error!(service = %host.config.name, owner = %now.owner, epoch = now.epoch, "fenced: the registry gave the service to another node; stopping this copy");
    } else {
        tracing::info!(service = %host.config.name, owner = %now.owner, epoch = now.epoch, "following the registry: new owner");
    }
    if let Some(process) = process {
        process.stop().await;
    }
    Ok(())
}

/// `replaymig status --fleet`: the registry's view, as this node's maps
/// hold it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FleetStatus {
    /// Registered (alive) nodes.
    pub nodes: Vec<NodeInfo>,
    /// Every service in the registry.
    pub services: Vec<FleetService>,
    /// The etcd revision the maps reflect.
    pub revision: i64,
}

/// One service in [`FleetStatus`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FleetService {
    /// Its name.
    pub name: String,
    /// Its owner, per the registry.
    pub owner: String,
    /// Whether the owner is registered (alive) now.
    pub owner_alive: bool,
    /// The ownership epoch.
    pub epoch: u64,
    /// The LSN of its last hand-over (0: never moved).
    pub handover_lsn: u64,
    /// The owner's journal of it (first and last LSN): read here when
    /// this node owns it, asked of the owner otherwise; `None` when the
    /// owner did not answer.
    pub journal: Option<(u64, u64)>,
}

/// Bound on asking an owner for its journal range.
const ASK_JOURNAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The fleet's status from this node's maps, with each service's journal
/// range from its owner.
pub(crate) async fn status(node: &NodeShared) -> Option<FleetStatus> {
    let fleet = node.fleet.as_ref()?;
    let members = fleet.members.all();
    let mut nodes: Vec<NodeInfo> = members.values().map(|m| m.value.clone()).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut services = Vec::new();
    for (name, owned) in fleet.owners.all() {
        let owner = owned.value.owner;
        let journal = if owner == node.config.name {
            node.services
                .get(&name)
                .map(|host| journal_range(&host.journal))
        } else {
            match ask_journal(node, &owner, &name).await {
                Ok(range) => Some(range),
                Err(e) => {
                    tracing::debug!(service = %name, %owner, error = %format!("{e:#}"), "no journal range from the owner");
                    None
                }
            }
        };
        services.push(FleetService {
            owner_alive: members.contains_key(&owner),
            owner,
            epoch: owned.value.epoch,
            handover_lsn: owned.value.handover_lsn,
            journal,
            name,
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Some(FleetStatus {
        nodes,
        services,
        revision: fleet.owners.revision(),
    })
}

fn journal_range(journal: &replaymig_journal::Journal) -> (u64, u64) {
    let first = journal.first_lsn().ok().flatten().unwrap_or(0);
    (first, journal.last_lsn())
}

/// One `JournalQuery` to node `owner`.
async fn ask_journal(node: &NodeShared, owner: &str, service: &str) -> Result<(u64, u64)> {
    let addr = node.peer_addr(owner)?;
    let ask = async {
        let mut link = replaymig_peer::PeerLink::connect(addr, &node.auth).await?;
        link.send(replaymig_peer::Message::JournalQuery {
            service: service.to_string(),
        })
        .await?;
        match link.recv_timeout(ASK_JOURNAL).await? {
            replaymig_peer::Message::JournalIs { first, last } => Ok((first, last)),
            other => anyhow::bail!("{owner} answered {}", other.name()),
        }
    };
    tokio::time::timeout(ASK_JOURNAL, ask).await?
}

/// Answers a `JournalQuery` with this node's journal range of the service.
pub(crate) async fn answer_journal_query(
    node: &NodeShared,
    mut link: replaymig_peer::PeerLink,
    service: &str,
) -> Result<()> {
    let Some(host) = node.services.get(service) else {
        anyhow::bail!("journal query for unknown service {service:?}");
    };
    let (first, last) = journal_range(&host.journal);
    link.send(replaymig_peer::Message::JournalIs { first, last })
        .await?;
    Ok(())
}
