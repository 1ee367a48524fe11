//! The destination's driver: carries out what the protocol's destination
//! machine (`replaymig_migrate::destination`) asks for and feeds back what
//! happened. Whether to accept, which message is legal and that a prepared
//! hand-over waits for the source's decision is the machine's; receiving
//! the snapshot, restoring, replaying with every answer checked, and the
//! durable prepare/commit/discard are here (with handover.rs).

use crate::context::{NodeShared, ServiceHost};
use crate::handover;
use crate::migration::{ensure_dir, host, restore_service, tell_abort, STEP_TIMEOUT};
use crate::ownership::{Prepared, Resolution};
use crate::report::Phase;
use crate::telemetry;
use anyhow::{anyhow, bail, Result};
use replaymig_migrate::destination::{
    Decision, Destination, DestinationAction, DestinationEvent, DestinationState, Here,
};
use replaymig_migrate::logship;
use replaymig_migrate::Incoming;
use replaymig_peer::{Message, PeerLink};
use replaymig_replayer::{ReplayError, ReplayOptions, Replayer};
use replaymig_snapshot::transfer::{self, TransferError};
use replaymig_snapshot::Manifest;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the destination waits for the commit before asking.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the destination reports replay progress while no batch
/// arrives (the replay goes on between batches).
const ACK_INTERVAL: Duration = Duration::from_millis(2);

/// The destination's side, after `MigrateBegin` (the peer listener read it).
pub(crate) async fn migrate_in(
    node: &NodeShared,
    link: PeerLink,
    service: String,
    epoch: u64,
    verify_answers: bool,
    stop: CancellationToken,
) -> Result<()> {
    let host = host(node, &service)?;
    let mut run = DestinationRun::new(node, host, link, verify_answers, stop);
    // The offer is decided, and the service marked as migrating, under one
    // lock: two offers cannot both be accepted.
    let (mut machine, actions) = {
        let mut state = host.state.lock().await;
        let here = Here {
            owns: state.owner == node.config.name,
            migrating: state.migrating,
            epoch: state.epoch,
        };
        let (machine, actions) = Destination::default()
            .on(DestinationEvent::Offered { epoch, here })
            .map_err(|e| anyhow!(e))?;
        if actions.contains(&DestinationAction::Accept) {
            state.migrating = true;
        }
        (machine, actions)
    };
    let accepted = actions.contains(&DestinationAction::Accept);
    if accepted {
        telemetry::started(&service, "destination");
        run.follow(&machine.state);
    }
    let mut actions = VecDeque::from(actions);
    let mut event = None;
    loop {
        if let Some(e) = event.take() {
            let was_failure = matches!(e, DestinationEvent::Failed { .. });
            match machine.clone().on(e) {
                Ok((next, more)) => {
                    run.follow(&next.state);
                    machine = next;
                    actions.extend(more);
                }
                // A failure the machine cannot take while the hand-over is
                // being decided (this node shuts down): stop driving; the
                // durable record says prepared, and a restart settles it.
                Err(refused) if was_failure => {
                    let e = run.error.take().unwrap_or_else(|| anyhow!("{refused}"));
                    if accepted {
                        host.state.lock().await.migrating = false;
                    }
                    return Err(e.context("the hand-over stays prepared until the node restarts"));
                }
                Err(refused) => {
                    event = Some(run.failed(anyhow!(refused)));
                    continue;
                }
            }
        }
        let Some(action) = actions.pop_front() else {
            break;
        };
        event = match run.carry_out(&machine, action).await {
            Ok(next) => next,
            Err(e) => Some(run.failed(e)),
        };
    }
    let outcome = match machine.state {
        DestinationState::Done => Ok(()),
        DestinationState::Aborted { reason } => Err(run.error.take().unwrap_or(anyhow!(reason))),
        other => Err(anyhow!(
            "the migration stopped in {} with nothing left to do",
            other.name()
        )),
    };
    if accepted {
        host.state.lock().await.migrating = false;
        telemetry::outcome(&service, "destination", outcome.is_ok());
        telemetry::replay_lag(&service, 0, 0.0);
        let ended = if outcome.is_ok() {
            Phase::Done
        } else {
            Phase::Aborted
        };
        host.set_phase("destination", ended);
    }
    outcome
}

/// What the destination's driver keeps between actions.
struct DestinationRun<'a> {
    node: &'a NodeShared,
    host: &'a ServiceHost,
    link: PeerLink,
    verify_answers: bool,
    /// The snapshot's directory (kept once prepared).
    dir: Option<tempfile::TempDir>,
    manifest: Option<Manifest>,
    /// Log batches that came with the snapshot, replayed after the restore.
    early: Vec<(u64, u32, Vec<u8>)>,
    rounds: u32,
    replayer: Option<Replayer>,
    restore_started: Option<Instant>,
    restore: Duration,
    restored_at: Option<Instant>,
    replay: Duration,
    /// What the source delivered per connection at the hand-over.
    delivered: Vec<(u64, u64)>,
    /// The failure that aborted the migration, with its full chain.
    error: Option<anyhow::Error>,
    /// The node shuts down: a prepared hand-over stops asking its source.
    stop: CancellationToken,
}

impl<'a> DestinationRun<'a> {
    fn new(
        node: &'a NodeShared,
        host: &'a ServiceHost,
        link: PeerLink,
        verify_answers: bool,
        stop: CancellationToken,
    ) -> Self {
        DestinationRun {
            node,
            host,
            link,
            verify_answers,
            dir: None,
            manifest: None,
            early: Vec::new(),
            rounds: 0,
            replayer: None,
            restore_started: None,
            restore: Duration::ZERO,
            restored_at: None,
            replay: Duration::ZERO,
            delivered: Vec::new(),
            error: None,
            stop,
        }
    }

    /// The operator-visible phase follows the machine.
    fn follow(&self, state: &DestinationState) {
        if !state.finished() {
            self.host.set_phase("destination", state.phase());
        }
    }

    /// A failure, as the machine hears it; the error itself is kept for
    /// the caller (and a divergence counted).
    fn failed(&mut self, e: anyhow::Error) -> DestinationEvent {
        if e.downcast_ref::<ReplayError>().is_some() {
            telemetry::divergence(&self.host.config.name);
        }
        let reason = format!("{e:#}");
        self.error = Some(e);
        DestinationEvent::Failed { reason }
    }

    async fn carry_out(
        &mut self,
        machine: &Destination,
        action: DestinationAction,
    ) -> Result<Option<DestinationEvent>> {
        use DestinationAction as A;
        use DestinationEvent as E;
        Ok(match action {
            A::Accept => {
                self.link.send(Message::MigrateReady).await?;
                None
            }
            A::Refuse { reason } => {
                let _ = self
                    .link
                    .send(Message::MigrateAbort {
                        reason: reason.clone(),
                    })
                    .await;
                self.error = Some(anyhow!(
                    "migration of {} refused: {reason}",
                    self.host.config.name
                ));
                None
            }
            A::ReceiveSnapshot => Some(self.receive_snapshot(&machine.state).await?),
            A::Restore => {
                self.restore().await?;
                Some(E::Restored)
            }
            A::CatchUp => Some(self.catch_up().await?),
            A::FinishReplay => {
                self.finish_replay().await?;
                Some(E::ReplayFinished)
            }
            A::Prepare => {
                self.prepare(machine.epoch).await?;
                Some(E::Prepared)
            }
            A::SendDone => Some(self.send_done(machine.epoch).await),
            A::AskSource => match self.ask_source().await {
                Some(decision) => Some(E::Decided(decision)),
                None => bail!("the node shuts down while the hand-over is undecided"),
            },
            A::Own => {
                handover::commit_ownership(self.node, self.host, machine.epoch).await;
                Some(E::Owned)
            }
            A::Discard => {
                handover::discard_prepared(self.host).await;
                Some(E::Discarded)
            }
            A::StopRestored => {
                // Stop the restored copy (never the owner's), without
                // holding the state across the stop.
                let restored = {
                    let mut state = self.host.state.lock().await;
                    if state.owner != self.node.config.name {
                        state.process.take()
                    } else {
                        None
                    }
                };
                if let Some(p) = restored {
                    p.stop().await;
                }
                None
            }
            A::TellAbort { reason } => {
                tell_abort(&mut self.link, &anyhow!(reason)).await;
                // Closing with the source's batches unread would reset the
                // connection before it reads why: read them away briefly.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while self.link.recv().await.is_ok() {}
                })
                .await;
                None
            }
        })
    }

    /// One snapshot (a pre-copy round, or the one to restore); log batches
    /// arriving meanwhile wait in `early`. Which messages may come is the
    /// machine's word.
    async fn receive_snapshot(&mut self, state: &DestinationState) -> Result<DestinationEvent> {
        let service = &self.host.config;
        if self.dir.is_none() {
            self.dir = Some(
                tempfile::Builder::new()
                    .prefix(&format!("{}-in-", service.name))
                    .tempdir_in(ensure_dir(&self.node.config.work_dir)?)?,
            );
        }
        let into = self
            .dir
            .as_ref()
            .expect("made above")
            .path()
            .join("snapshot");
        let early = &mut self.early;
        let (manifest, _stats) = transfer::receive_with(&mut self.link, &into, |msg| {
            let incoming = Incoming::from(&msg);
            match msg {
                Message::LogBatch {
                    first_lsn,
                    count,
                    packed,
                } if state.accepts(&incoming) => {
                    early.push((first_lsn, count, packed));
                    Ok(())
                }
                other => Err(TransferError::Protocol(format!(
                    "unexpected {} during the snapshot",
                    other.name()
                ))),
            }
        })
        .await?;
        self.rounds += 1;
        let precopy = manifest.precopy;
        if precopy {
            tracing::info!(service = %service.name, round = self.rounds, "pre-copy round received");
        }
        self.manifest = Some(manifest);
        Ok(DestinationEvent::SnapshotReceived { precopy })
    }

    /// Checks the snapshot, restores the service, replays the early batches.
    async fn restore(&mut self) -> Result<()> {
        let service = &self.host.config;
        let driver = service.snapshot.driver();
        let manifest = self.manifest.as_ref().expect("received");
        if manifest.service != service.name || manifest.driver != driver.name() {
            bail!(
                "snapshot is of {} by {}, expected {} by {}",
                manifest.service,
                manifest.driver,
                service.name,
                driver.name()
            );
        }
        // This node's journal continues at s+1: drop what an earlier
        // ownership left (it is older than s), keeping LSNs below s+1 spent.
        let last = self.host.journal.last_lsn();
        if last > manifest.lsn {
            bail!(
                "this node's journal ends at LSN {last}, past the snapshot point {}",
                manifest.lsn
            );
        }
        if last > 0 {
            self.host.journal.truncate_before(last + 1)?;
        }
        let started = Instant::now();
        self.restore_started = Some(started);
        let into = self.dir.as_ref().expect("received").path().join("snapshot");
        restore_service(self.node, self.host, &into).await?;
        let restored_at = Instant::now();
        self.restore = restored_at - started;
        self.restored_at = Some(restored_at);

        let mut options = ReplayOptions::new(service.backend);
        // Every reproduced answer is checked against the journaled
        // digests, and the first difference aborts before any commit.
        options.verify_answers = self.verify_answers;
        // As the source forwarded them since the snapshot point.
        options.settle = Some(replaymig_proxy::SETTLE_WAIT);
        // A connection in use before the snapshot continues on a fresh one
        // only if the service keeps nothing per connection.
        options.stateless_connections =
            service.connection_state == crate::config::ConnectionState::None;
        // Paused, not quiet, at the hand-over: an answer may be half out.
        options.answers_continue = service.carries_connections();
        let mut replayer = Replayer::new(options);
        if service.carries_connections() {
            let restored = crate::carry::take_restored(&service.name).await?;
            tracing::info!(
                connections = restored.len(),
                "continuing the carried connections"
            );
            replayer.carry(
                restored
                    .into_iter()
                    .map(|(conn, fd)| (conn, std::net::TcpStream::from(fd))),
            );
        }
        for (first_lsn, count, packed) in std::mem::take(&mut self.early) {
            let entries =
                logship::journal_packed(&self.host.journal, first_lsn, count, &packed).await?;
            for entry in &entries {
                replayer.apply(entry).await?;
            }
        }
        self.replayer = Some(replayer);
        Ok(())
    }

    /// Journals and replays log batches, acknowledging what the replay
    /// really sent to the service (not just queued) as it goes — so the
    /// source's lag figure is the replay's, and the hand-over starts when
    /// the service is nearly caught up — until another message comes.
    async fn catch_up(&mut self) -> Result<DestinationEvent> {
        let replayer = self.replayer.as_mut().expect("restored");
        let mut acked = 0;
        let mut tick = tokio::time::interval(ACK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let mut lag = crate::migration::LagGauge::default();
        loop {
            let message = tokio::select! {
                m = self.link.recv() => m?,
                _ = tick.tick() => {
                    if heard.elapsed() > STEP_TIMEOUT {
                        bail!("the source sent nothing for {STEP_TIMEOUT:?}");
                    }
                    acked = crate::migration::ack_progress(&mut self.link, replayer, acked).await?;
                    lag.update(self.host, replayer);
                    continue;
                }
            };
            heard = Instant::now();
            match message {
                Message::LogBatch {
                    first_lsn,
                    count,
                    packed,
                } => {
                    let entries =
                        logship::journal_packed(&self.host.journal, first_lsn, count, &packed)
                            .await?;
                    for entry in &entries {
                        replayer.apply(entry).await?;
                    }
                    acked = crate::migration::ack_progress(&mut self.link, replayer, acked).await?;
                }
                other => {
                    if let Message::HandOver { delivered, .. } = &other {
                        self.delivered = delivered.clone();
                    }
                    return Ok(DestinationEvent::Received(Incoming::from(&other)));
                }
            }
        }
    }

    /// The replay up to what the source delivered on each connection, every
    /// answer checked; the connections left open are parked for the clients.
    async fn finish_replay(&mut self) -> Result<()> {
        let handover_started = Instant::now();
        self.replay = self
            .restored_at
            .map(|at| handover_started - at)
            .unwrap_or_default();
        let mut replayer = self.replayer.take().expect("restored");
        for (conn, d) in std::mem::take(&mut self.delivered) {
            replayer.ensure_open(conn, d).await?;
            replayer.set_delivered(conn, d);
        }
        let (report, open) = replayer.finish().await;
        let finish_ms = handover_started.elapsed().as_secs_f64() * 1000.0;
        if let Some(d) = report.divergences.first() {
            telemetry::divergence(&self.host.config.name);
            bail!(
                "replay diverged at LSN {} (connection {}): {}",
                d.lsn,
                d.conn,
                d.kind
            );
        }
        tracing::info!(
            records = report.records,
            answer_bytes = report.answer_bytes,
            open = open.len(),
            finish_ms,
            "replay caught up; preparing to own"
        );
        let mut state = self.host.state.lock().await;
        for c in open {
            if let Some(stream) = c.stream {
                state.parked.insert(c.conn, (stream, c.pending));
            }
        }
        Ok(())
    }

    /// Records the prepared hand-over durably; the snapshot stays until
    /// the hand-over is settled.
    async fn prepare(&mut self, epoch: u64) -> Result<()> {
        let started = Instant::now();
        let dir = self.dir.as_ref().expect("received");
        let manifest = self.manifest.as_ref().expect("received");
        handover::prepare(
            self.host,
            Prepared {
                epoch,
                from: self.link.peer_node().to_string(),
                snapshot_dir: dir.path().to_path_buf(),
                snapshot_lsn: manifest.lsn,
            },
        )
        .await?;
        tracing::info!(
            prepare_ms = started.elapsed().as_secs_f64() * 1000.0,
            "hand-over prepared"
        );
        let _kept = self.dir.take().expect("received").keep();
        Ok(())
    }

    /// Tells the source the hand-over is prepared; its word, or `NoWord`.
    async fn send_done(&mut self, epoch: u64) -> DestinationEvent {
        let done = Message::HandOverDone {
            epoch,
            restore_micros: self.restore.as_micros() as u64,
            replay_micros: self.replay.as_micros() as u64,
        };
        let word = match self.link.send(done).await {
            Ok(()) => self.link.recv_timeout(COMMIT_TIMEOUT).await.ok(),
            Err(e) => {
                tracing::warn!(error = %e, "hand-over done not sent");
                None
            }
        };
        match word {
            Some(Message::MigrateAbort { reason }) => {
                self.error = Some(anyhow!("the source aborted the hand-over: {reason}"));
                DestinationEvent::Received(Incoming::Abort { reason })
            }
            Some(m) => DestinationEvent::Received(Incoming::from(&m)),
            None => {
                tracing::warn!("no hand-over commit; asking the source");
                DestinationEvent::NoWord
            }
        }
    }

    /// Asks the source until it decides; `None` if the node shuts down
    /// first (the hand-over stays prepared, for the restart to settle).
    async fn ask_source(&mut self) -> Option<Decision> {
        let Some(prepared) = self.host.state.lock().await.prepared.clone() else {
            return Some(Decision::Settled);
        };
        let decided =
            handover::ask_until_decided(self.node, self.host, &prepared, &self.stop).await;
        Some(match decided {
            Some(Resolution::Commit) => Decision::Commit,
            Some(_) => {
                self.error = Some(anyhow!("the source kept the service"));
                Decision::Keep
            }
            None if self.stop.is_cancelled() => return None,
            // Settled meanwhile by a tunnel under the new epoch.
            None => Decision::Settled,
        })
    }
}
