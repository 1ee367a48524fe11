//! The destination's end of a hand-over: prepare durably, then commit or
//! discard — on the source's word (`HandOverCommit` / `MigrateAbort`, or a
//! tunnel under the new epoch), or, when that word is lost, by asking the
//! source who owns the service until it answers. A prepared destination
//! never decides alone: the source may have committed, so discarding could
//! leave nobody owning; it may have aborted, so owning could leave two.
//!
//! A node restarted while prepared has lost its restored copy; if the
//! source committed, it rebuilds the service from the kept snapshot and
//! its own journal (which holds every shipped record under its LSN),
//! replaying as the migration's destination did; a divergence then is an
//! error it reports but cannot refuse.

use crate::config::ServiceConfig;
use crate::context::{NodeShared, ServiceHost};
use crate::migration::restore_service;
use crate::ownership::{resolve, Prepared, Resolution};
use crate::telemetry;
use anyhow::{bail, Context, Result};
use replaymig_journal::Lsn;
use replaymig_peer::{Message, PeerLink};
use replaymig_proxy::{AnswerJournaling, Route};
use replaymig_replayer::feed::feed_range;
use replaymig_replayer::{ReplayOptions, ReplayReport, Replayer};
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
    // A live hand-over: its replayed copy runs here, and a tunnel under
    // its epoch is the source's commit.
    state.rebuilding = false;
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
    // Fault injection (tests/fleet.rs): the destination dies right after
    // the source's commit, as it is told to own the service.
    fail::fail_point!("destination-crash-at-commit", |_| {
        tracing::error!("fail point: crashing at the commit");
        std::process::abort()
    });
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
        if let Some(decision) = ask_registry(node, host, prepared).await {
            telemetry::resolved(&host.config.name, decision.name());
            tracing::info!(service = %host.config.name, outcome = decision.name(), "the registry decided the hand-over");
            return Some(decision);
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

/// Fleet mode: the registry's word on a prepared hand-over, when it has
/// one — it names this node under the prepared epoch (committed), or an
/// epoch at or past it for someone else (moved on). While it still names
/// the source under the old epoch, only the source can say whether it is
/// still committing or gave up.
async fn ask_registry(
    node: &NodeShared,
    host: &ServiceHost,
    prepared: &Prepared,
) -> Option<Resolution> {
    let fleet = node.fleet.as_ref()?;
    let now = fleet
        .registry
        .owner(&host.config.name, crate::fleet::REGISTRY_STEP)
        .await
        .ok()??
        .entry;
    if now.owner == node.config.name && now.epoch == prepared.epoch {
        Some(Resolution::Commit)
    } else if now.epoch >= prepared.epoch {
        Some(Resolution::Discard)
    } else {
        None
    }
}

/// One `OwnerQuery` to node `from`.
async fn ask_owner(node: &NodeShared, from: &str, service: &str) -> Result<(String, u64, bool)> {
    let addr = node.peer_addr(from)?;
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
                // Committed by the rebuild itself, before tunnels may.
                host.state.lock().await.rebuilding = false;
                commit_ownership(&node, &host, prepared.epoch).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Some(_) => {
            discard_prepared(&host).await;
            host.state.lock().await.rebuilding = false;
            Ok(())
        }
        None => Ok(()),
    };
    if let Err(e) = outcome {
        // Owned by the source's word, but not servable here: stay prepared
        // (the record says so) for an operator; clients are refused.
        tracing::error!(service = %host.config.name, error = %format!("{e:#}"), "cannot rebuild the service after a restart");
    }
    // A failed rebuild (or a shutdown before the decision) stays
    // `rebuilding`: no tunnel may commit a half-rebuilt hand-over.
    host.state.lock().await.migrating = false;
}

/// Restores the kept snapshot and replays this node's journal after it,
/// as a migration's destination replays (see [`rebuild_options`]). The
/// source already gave the service up, so a divergence can no longer
/// refuse it: every record is still applied, the service is kept, and each
/// divergence is reported as an error ([`report_rebuild`]).
async fn rebuild(node: &NodeShared, host: &ServiceHost, prepared: &Prepared) -> Result<()> {
    let snapshot = prepared.snapshot_dir.join("snapshot");
    restore_service(node, host, &snapshot)
        .await
        .with_context(|| format!("cannot restore {}", snapshot.display()))?;
    let (from, head) = (prepared.snapshot_lsn + 1, host.journal.last_lsn());
    let mut replayer = Replayer::new(rebuild_options(&host.config));
    feed_range(
        &host.journal,
        from..=head,
        &mut replayer,
        &CancellationToken::new(),
        |_| {},
    )
    .await?;
    // No hand-over message tells what the clients had received: what the
    // journal holds of their answers (a migration's `set_delivered`).
    replayer.deliver_journaled_answers();
    // The clients of the connections still open then are gone with the
    // restart: their replayed connections close here.
    let (report, _open) = replayer.finish().await;
    report_rebuild(&host.config.name, report, from, head);
    Ok(())
}

/// A rebuild replays as the destination of a migration does
/// (the destination driver, destination.rs): answers are checked against the
/// journaled ones whenever the service journals them, and input is sent
/// settled, as the source forwarded it. Unlike a migration it does not stop
/// at the first divergence: there is nobody left to give the service back
/// to, so the replay applies everything it faithfully can.
fn rebuild_options(service: &ServiceConfig) -> ReplayOptions {
    let mut options = ReplayOptions::new(service.backend);
    options.verify_answers = service.journal_responses != AnswerJournaling::Off;
    options.settle = Some(replaymig_proxy::SETTLE_WAIT);
    options.stop_on_divergence = false;
    options.stateless_connections =
        service.connection_state == crate::config::ConnectionState::None;
    options
}

/// Divergences of a rebuild logged one by one (all are counted).
const LOGGED_DIVERGENCES: usize = 20;

/// Says how a rebuild went; a diverged one is never silent: each
/// divergence is an error line (LSN, connection, kind) and the replay
/// counts once in `replaymig_replay_divergences_total`.
fn report_rebuild(service: &str, mut report: ReplayReport, from: Lsn, to: Lsn) {
    let records = report.records;
    if report.divergences.is_empty() {
        tracing::info!(
            service = %service,
            records,
            from,
            to,
            divergences = 0,
            "rebuilt from the kept snapshot and the journal"
        );
        return;
    }
    telemetry::divergence(service);
    report.divergences.sort_by_key(|d| (d.lsn, d.conn));
    for d in report.divergences.iter().take(LOGGED_DIVERGENCES) {
        tracing::error!(service = %service, lsn = d.lsn, conn = d.conn, kind = %d.kind, "the rebuild's replay diverged from the journal");
    }
    tracing::error!(
        service = %service,
        records,
        from,
        to,
        divergences = report.divergences.len(),
        logged = report.divergences.len().min(LOGGED_DIVERGENCES),
        "rebuilt from the kept snapshot and the journal WITH DIVERGENCES: the service is owned \
         and served here (the source gave it up), but it may not hold what its clients were told"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(journal_responses: &str) -> ServiceConfig {
        toml::from_str(&format!(
            r#"
            name = "redis"
            listen = "127.0.0.1:6380"
            backend = "127.0.0.1:6379"
            journal = "/nonexistent/journal"
            owner = "a"
            journal_responses = "{journal_responses}"
            snapshot = {{ driver = "none" }}
            "#
        ))
        .unwrap()
    }

    #[test]
    fn a_rebuild_replays_like_a_destination_but_does_not_stop_at_a_divergence() {
        for (answers, verified) in [("digest", true), ("full", true), ("off", false)] {
            let options = rebuild_options(&service(answers));
            assert_eq!(options.verify_answers, verified, "{answers}");
            assert_eq!(options.settle, Some(replaymig_proxy::SETTLE_WAIT));
            assert!(!options.stop_on_divergence);
            assert_eq!(options.target, "127.0.0.1:6379".parse().unwrap());
            assert!(options.only.is_none() && options.speed.is_none());
        }
    }
}
