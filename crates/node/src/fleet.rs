//! Fleet mode in the node (`[fleet]` in its configuration): the node
//! registers in etcd under a lease, finds peers there, keeps the owner map
//! the registry's watch feeds, and takes every ownership decision through
//! the registry's compare-and-swap — the registry, not the local file, is
//! the truth; the local file is the last state this node knew, for
//! restarts.
//!
//! The rules (issue #17):
//! * A migration's commit point is the registry transaction. The source
//!   records its intent locally first (`OwnershipRecord::committing`), so a
//!   crash between the two is settled from the registry at the restart.
//! * An unknown outcome (etcd did not answer) is settled by
//!   `Registry::pin` before the source serves again; until then the clients
//!   stay held — never served by two owners.
//! * A node that cannot reach etcd never takes ownership and never gives
//!   it up on its own: it keeps what its file says, and refuses to start a
//!   service whose hand-over it cannot settle.

use crate::config::{FleetConfig, NodeConfig};
use crate::ownership::{Committing, OwnershipRecord};
use anyhow::{bail, Context, Result};
use replaymig_fleet::{
    CommitOutcome, Etcd, EtcdOptions, FleetError, MemberMap, Membership, NodeInfo, Owned,
    OwnerEntry, OwnerMap, Registry,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bound on one registry request on a migration's path or at start.
pub(crate) const REGISTRY_STEP: Duration = Duration::from_secs(2);
/// How long a start waits for the registry before keeping the local
/// record (or, with a hand-over to settle, refusing to start).
const START_WAIT: Duration = Duration::from_secs(10);
/// Between two tries to settle an unknown outcome.
const SETTLE_PAUSE: Duration = Duration::from_millis(200);

/// The node's view of its fleet.
pub(crate) struct Fleet {
    /// The registry.
    pub registry: Registry,
    /// Services and owners, as the watch last said.
    pub owners: OwnerMap,
    /// Registered nodes, as the watch last said.
    pub members: MemberMap,
    /// This node's registration (dropped: the lease lapses).
    membership: std::sync::Mutex<Option<Membership>>,
    /// Peer addresses last seen registered: a node whose lease lapsed (cut
    /// off from etcd) is still reachable, and still answers for what it
    /// owns — membership is liveness, not ownership.
    last_known: std::sync::Mutex<std::collections::HashMap<String, SocketAddr>>,
}

impl Fleet {
    /// Connects to the registry, registers this node and starts the maps.
    pub(crate) fn start(node: &NodeConfig, fleet: &FleetConfig) -> Result<Fleet> {
        let etcd = Etcd::new(EtcdOptions::new(fleet.etcd.clone()))?;
        let registry = Registry::new(etcd, &fleet.prefix);
        let info = NodeInfo {
            name: node.name.clone(),
            peer: fleet.peer_address(node).to_string(),
            admin: Some(node.admin_listen.to_string()),
        };
        let membership = registry.register(info, Duration::from_secs(fleet.lease_ttl_secs));
        Ok(Fleet {
            owners: registry.owner_map(),
            members: registry.member_map(),
            registry,
            membership: std::sync::Mutex::new(Some(membership)),
            last_known: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Where node `name` listens for peers: as registered, or as last seen
    /// registered.
    pub(crate) fn peer(&self, name: &str) -> Option<SocketAddr> {
        let mut known = self.last_known.lock().expect("poisoned");
        match self
            .members
            .get(name)
            .and_then(|m| m.value.peer.parse().ok())
        {
            Some(now) => {
                known.insert(name.to_string(), now);
                Some(now)
            }
            None => known.get(name).copied(),
        }
    }

    /// Notes every registered node's address (see `peer`).
    pub(crate) fn remember_members(&self) {
        let mut known = self.last_known.lock().expect("poisoned");
        for (name, member) in self.members.all() {
            if let Ok(addr) = member.value.peer.parse() {
                known.insert(name, addr);
            }
        }
    }

    /// Leaves the member list now (at shutdown).
    pub(crate) async fn leave(&self) {
        let membership = self.membership.lock().expect("poisoned").take();
        if let Some(membership) = membership {
            if let Err(e) = membership.leave().await {
                tracing::warn!(error = %e, "could not leave the fleet; the lease will lapse");
            }
        }
    }

    /// The ownership a node should start `service` with: what the registry
    /// says (creating the entry from `local` if it has none), `local` when
    /// the registry cannot be reached, and a hand-over recorded before a
    /// restart settled first.
    pub(crate) async fn reconcile_at_start(
        &self,
        service: &str,
        mut local: OwnershipRecord,
        from_file: bool,
    ) -> Result<OwnershipRecord> {
        if let Some(committing) = local.committing.take() {
            let (read, next) = committing.entries();
            let outcome = self
                .settle(service, &read, &next, START_WAIT)
                .await
                .with_context(|| {
                    format!(
                        "{service}: a hand-over to {} (epoch {}) was being committed when this \
                         node stopped, and the registry cannot say whether it was: not starting \
                         (start again once etcd answers)",
                        next.owner, next.epoch
                    )
                })?;
            let (owner, epoch) = match &outcome {
                CommitOutcome::Committed => (next.owner.clone(), next.epoch),
                CommitOutcome::Superseded { now } => (now.entry.owner.clone(), now.entry.epoch),
                CommitOutcome::NotCommitted { .. } => (local.owner.clone(), local.epoch),
            };
            tracing::info!(service, %owner, epoch, "hand-over recorded before the restart settled");
            local.owner = owner;
            local.epoch = epoch;
        }
        // A prepared hand-over is settled by its own recovery (which asks
        // the registry first): owning the service now would serve it from
        // a copy not yet rebuilt.
        if local.prepared.is_some() {
            return Ok(local);
        }
        let initial = OwnerEntry {
            owner: local.owner.clone(),
            epoch: local.epoch,
            handover_lsn: 0,
        };
        let now = match self.registry.claim(service, &initial, START_WAIT).await {
            Ok(now) => now.entry,
            // The last ownership this node knew: it keeps what it had and
            // takes nothing new.
            Err(e @ FleetError::Unreachable { .. }) if from_file => {
                tracing::warn!(service, error = %e, owner = %local.owner, epoch = local.epoch, "the registry is unreachable: starting with the last ownership this node knew");
                return Ok(local);
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "{service}: this node has no ownership record of its own and the registry \
                     does not say who owns the service: not starting"
                )))
            }
        };
        if now.epoch < local.epoch {
            bail!(
                "{service}: the registry says {} owns it under epoch {}, but this node already \
                 knew epoch {} ({}): the registry lost history; not starting (fix the entry by hand)",
                now.owner,
                now.epoch,
                local.epoch,
                local.owner
            );
        }
        local.owner = now.owner;
        local.epoch = now.epoch;
        Ok(local)
    }

    /// The registry's entry for a service this node is about to migrate
    /// away: it must say this node owns it under `epoch`.
    pub(crate) async fn read_for_migration(
        &self,
        service: &str,
        me: &str,
        epoch: u64,
    ) -> Result<Owned> {
        let read = self
            .registry
            .owner(service, REGISTRY_STEP)
            .await
            .context("the registry (etcd) does not answer; a migration cannot commit without it")?
            .with_context(|| format!("{service} has no entry in the registry"))?;
        if read.entry.owner != me || read.entry.epoch != epoch {
            bail!(
                "the registry says {} owns {service} under epoch {}, this node thinks it owns \
                 it under epoch {epoch}: not migrating",
                read.entry.owner,
                read.entry.epoch
            );
        }
        Ok(read)
    }

    /// The hand-over's commit point in the registry. `Ok` once the entry
    /// says the new owner; an error if it definitely does not (nothing
    /// changed: abort). An unknown outcome is settled first, however long
    /// etcd takes to answer — the clients stay held meanwhile, which is
    /// logged — because serving on before knowing could leave two owners.
    pub(crate) async fn commit(
        &self,
        service: &str,
        read: &Owned,
        next: &OwnerEntry,
    ) -> Result<()> {
        // Fault injection (tests): etcd's answer lost, or the request
        // never sent — both look the same here: no answer.
        let committed = if fail::eval("fleet-commit-not-sent", |_| ()).is_some() {
            Err(injected("the commit was never sent"))
        } else {
            let committed = self
                .registry
                .commit(service, read, next, REGISTRY_STEP)
                .await;
            match fail::eval("fleet-commit-answer-lost", |_| ()) {
                Some(()) => Err(injected("the commit's answer was lost")),
                None => committed,
            }
        };
        let outcome = match committed {
            Ok(outcome) => outcome,
            // Refused before it could be proposed (no member reachable, or
            // no leader): known not to have happened.
            Err(e) if !e.outcome_unknown() => {
                return Err(anyhow::Error::from(e).context(
                    "the registry (etcd) did not take the hand-over; keeping the service",
                ))
            }
            Err(e) => {
                tracing::warn!(service, error = %e, "the registry commit's outcome is unknown: settling it before serving again (clients stay held)");
                crate::telemetry::fleet_commit_unknown(service);
                self.settle(service, read, next, Duration::MAX).await?
            }
        };
        match outcome {
            CommitOutcome::Committed => Ok(()),
            // Applied, and the service moved on since: this node must not
            // serve it; the owner map routes to where it is now.
            CommitOutcome::Superseded { now } => {
                tracing::warn!(service, owner = %now.entry.owner, epoch = now.entry.epoch, "the hand-over applied while its answer was lost, and the service moved on since");
                Ok(())
            }
            CommitOutcome::NotCommitted { now } => bail!(
                "the registry did not take the hand-over: it says {}; keeping the service",
                describe(now.as_ref())
            ),
        }
    }

    /// Settles a commit of `next` over `read` whose outcome is unknown,
    /// trying until `patience` has passed.
    async fn settle(
        &self,
        service: &str,
        read: &Owned,
        next: &OwnerEntry,
        patience: Duration,
    ) -> Result<CommitOutcome> {
        let started = Instant::now();
        let mut last_said = Instant::now();
        // Fault injection (tests/fleet.rs): etcd stays silent this long
        // (ms) first, so the source is a stale owner meanwhile.
        if let Some(ms) = fail::eval("fleet-before-settle", |ms| ms) {
            let ms = ms.and_then(|m| m.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        loop {
            match self.registry.pin(service, read, next, REGISTRY_STEP).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) if started.elapsed() >= patience => {
                    return Err(e).context("the registry did not answer")
                }
                Err(e) => {
                    if last_said.elapsed() >= Duration::from_secs(5) {
                        tracing::warn!(service, error = %e, waited_s = started.elapsed().as_secs(), "still settling the hand-over with the registry; clients held");
                        last_said = Instant::now();
                    }
                }
            }
            tokio::time::sleep(SETTLE_PAUSE).await;
        }
    }
}

/// A fault injected by a fail point (tests): etcd "did not answer".
fn injected(what: &str) -> FleetError {
    FleetError::Unreachable {
        what: format!("fail point: {what}"),
        waited_ms: 0,
        last: "injected".into(),
        maybe_applied: true,
    }
}

/// An entry for messages.
fn describe(owned: Option<&Owned>) -> String {
    match owned {
        Some(o) => format!("{} owns it under epoch {}", o.entry.owner, o.entry.epoch),
        None => "nothing (no entry)".into(),
    }
}

impl Committing {
    /// The entry the source read and the one it commits.
    pub(crate) fn entries(&self) -> (Owned, OwnerEntry) {
        (
            Owned {
                entry: OwnerEntry {
                    owner: self.from.clone(),
                    epoch: self.from_epoch,
                    handover_lsn: self.from_handover_lsn,
                },
                revision: self.read_revision,
            },
            OwnerEntry {
                owner: self.to.clone(),
                epoch: self.epoch,
                handover_lsn: self.handover_lsn,
            },
        )
    }
}
