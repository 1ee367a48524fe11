//! The destination's end of a hand-over: prepare durably, then commit or
//! discard — on the source's word (`HandOverCommit` / `MigrateAbort`, or a
//! tunnel under the new epoch), or, when that word is lost, by asking the
//! source who owns the service until it answers. A prepared destination
//! never decides alone: the source may have committed, so discarding could
//! leave nobody owning; it may have aborted, so owning could leave two.
//!
//! A node restarted while prepared has lost its restored copy; if the
//! source committed, it rebuilds the service from the kept snapshot and
//! its own journal (which holds every shipped record under its LSN).

use crate::migration::restore_service;
use crate::node::{NodeShared, ServiceHost};
use crate::ownership::{resolve, Prepared, Resolution};
use crate::telemetry;
use anyhow::{bail, Context, Result};
use replaymig_peer::{Message, PeerLink};
use replaymig_proxy::Route;
use replaymig_replayer::{ReplayOptions, Replayer};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Between two questions to an unreachable or undecided source.
const ASK_INTERVAL: Duration = Duration::from_millis(500);
/// Bound on one question.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Records `prepared` durably, with the replayed connections parked; from
/// here on only the source's decision (the destination driver, a tunnel
/// under the new epoch, or [`recover_after_restart`]) ends it.
pub(crate) async fn prepare(host: &ServiceHost, prepared: Prepared) -> Result<()> {
    let mut state = host.state.lock().await;
    state.prepared = Some(prepared);
    if let Err(e) = host.ownership.save(&state.record()) {
        state.prepared = None;
        state.parked.clear();
        return Err(e.context("cannot record the prepared hand-over"));
    }
    Ok(())
}

/// Makes this node the owner under `epoch` (after the source's commit);
/// nothing if that hand-over is not the one prepared here.
pub(crate) async fn commit_ownership(node: &NodeShared, host: &ServiceHost, epoch: u64) {
    let mut state = host.state.lock().await;
    let Some(prepared) = state.prepared.take_if(|p| p.epoch == epoch) else {
        return;
    };
    state.owner = node.config.name.clone();
    state.epoch = epoch;
    host.proxy.set_route(Route::Owner {
        backend: host.config.backend,
    });
    if let Err(e) = host.ownership.save(&state.record()) {
        // The source gave the service up: own it regardless. After a
        // restart the record still says prepared, and the source answers
        // "committed", so ownership comes back the same.
        tracing::error!(service = %host.config.name, error = %format!("{e:#}"), "ownership not recorded");
    }
    drop(state);
    remove_kept_snapshot(&prepared);
    telemetry::ownership(&host.config.name, epoch, true);
    tracing::info!(service = %host.config.name, epoch, "took ownership");
}

/// Drops a prepared hand-over: the parked connections, the restored copy,
/// the kept snapshot; the record says the source still owns.
pub(crate) async fn discard_prepared(host: &ServiceHost) {
    let mut state = host.state.lock().await;
    let Some(prepared) = state.prepared.take() else {
        return;
    };
    state.parked.clear();
    let restored = state.process.take();
    if let Err(e) = host.ownership.save(&state.record()) {
        tracing::error!(service = %host.config.name, error = %format!("{e:#}"), "discard not recorded");
    }
    drop(state);
    if let Some(p) = restored {
        p.stop().await;
    }
    remove_kept_snapshot(&prepared);
    tracing::warn!(service = %host.config.name, epoch = prepared.epoch, "prepared hand-over discarded");
}

/// Deletes the kept snapshot off the hand-over's path: unlinking a large
/// image takes tens of milliseconds that clients' tunnels would wait for.
fn remove_kept_snapshot(prepared: &Prepared) {
    let dir = prepared.snapshot_dir.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "kept snapshot not removed");
            }
        }
    });
}

/// Asks the source until it decides (or the hand-over was settled some
/// other way, e.g. by a tunnel: then `None`), or `stop` fires.
pub(crate) async fn ask_until_decided(
    node: &NodeShared,
    host: &ServiceHost,
    prepared: &Prepared,
    stop: &CancellationToken,
) -> Option<Resolution> {
    let mut asked = 0u64;
    loop {
        if host.state.lock().await.prepared_epoch() != Some(prepared.epoch) {
            return None;
        }
        match ask_owner(node, &prepared.from, &host.config.name).await {
            Ok((owner, epoch, migrating)) => {
                let decision = resolve(&node.config.name, prepared.epoch, &owner, epoch, migrating);
                if decision != Resolution::Wait {
                    let outcome = if decision == Resolution::Commit {
                        "commit"
                    } else {
                        "discard"
                    };
                    telemetry::resolved(&host.config.name, outcome);
                    tracing::info!(service = %host.config.name, %owner, epoch, outcome, "the source decided the hand-over");
                    return Some(decision);
                }
            }
            Err(e) if asked.is_multiple_of(20) => {
                tracing::warn!(service = %host.config.name, source = %prepared.from, error = %format!("{e:#}"), "cannot ask the source; still prepared");
            }
            Err(_) => {}
        }
        asked += 1;
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(ASK_INTERVAL) => {}
        }
    }
}

/// One `OwnerQuery` to node `from`.
async fn ask_owner(node: &NodeShared, from: &str, service: &str) -> Result<(String, u64, bool)> {
    let addr = *node
        .config
        .peers
        .get(from)
        .with_context(|| format!("unknown node {from:?}"))?;
    let linked = PeerLink::connect(addr, &node.auth).await;
    crate::telemetry::peer_link(from, linked.is_ok());
    let mut link = linked?;
    link.send(Message::OwnerQuery {
        service: service.to_string(),
    })
    .await?;
    match link.recv_timeout(ASK_TIMEOUT).await? {
        Message::OwnerIs {
            owner,
            epoch,
            migrating,
        } => Ok((owner, epoch, migrating)),
        other => bail!("expected owner_is, got {}", other.name()),
    }
}

/// Answers a peer's `OwnerQuery` from this node's state.
pub(crate) async fn answer_owner_query(
    node: &NodeShared,
    mut link: PeerLink,
    service: &str,
) -> Result<()> {
    let host = node
        .services
        .get(service)
        .with_context(|| format!("owner query for unknown service {service:?}"))?;
    let answer = {
        let state = host.state.lock().await;
        Message::OwnerIs {
            owner: state.owner.clone(),
            epoch: state.epoch,
            migrating: state.migrating,
        }
    };
    link.send(answer).await?;
    Ok(())
}

/// A node restarted while prepared: asks the source; on its commit,
/// rebuilds the service (kept snapshot + journal replay) and owns it; on
/// its refusal, discards.
pub(crate) async fn recover_after_restart(
    node: Arc<NodeShared>,
    host: Arc<ServiceHost>,
    prepared: Prepared,
    stop: CancellationToken,
) {
    let decision = ask_until_decided(&node, &host, &prepared, &stop).await;
    let outcome = match decision {
        Some(Resolution::Commit) => match rebuild(&node, &host, &prepared).await {
            Ok(()) => {
                commit_ownership(&node, &host, prepared.epoch).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Some(_) => {
            discard_prepared(&host).await;
            Ok(())
        }
        None => Ok(()),
    };
    if let Err(e) = outcome {
        // Owned by the source's word, but not servable here: stay prepared
        // (the record says so) for an operator; clients are refused.
        tracing::error!(service = %host.config.name, error = %format!("{e:#}"), "cannot rebuild the service after a restart");
    }
    host.state.lock().await.migrating = false;
}

/// Restores the kept snapshot and replays this node's journal after it.
async fn rebuild(node: &NodeShared, host: &ServiceHost, prepared: &Prepared) -> Result<()> {
    let snapshot = prepared.snapshot_dir.join("snapshot");
    restore_service(node, host, &snapshot)
        .await
        .with_context(|| format!("cannot restore {}", snapshot.display()))?;
    let head = host.journal.last_lsn();
    let mut replayer = Replayer::new(ReplayOptions::new(host.config.backend));
    let mut next = prepared.snapshot_lsn + 1;
    while next <= head {
        // In slices: the journal's reader is not held across an await.
        let to = head.min(next + 1023);
        let slice = host
            .journal
            .read_range(next, to)
            .collect::<Result<Vec<_>, _>>()?;
        for entry in &slice {
            replayer.apply(entry).await?;
        }
        next = to + 1;
    }
    // The clients of the connections still open then are gone with the
    // restart: their replayed connections close here.
    let (report, _open) = replayer.finish().await;
    tracing::info!(service = %host.config.name, records = report.records, from = prepared.snapshot_lsn + 1, to = head, divergences = report.divergences.len(), "rebuilt from the kept snapshot and the journal");
    Ok(())
}
