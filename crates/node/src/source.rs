//! The source's driver: carries out what the protocol's source machine
//! (`replaymig_migrate::source`) asks for, one action at a time, and feeds
//! back what happened. Which step comes next, which message is legal and
//! where the commit lies is the machine's; how each step is done (barrier,
//! dump, transfer, log shipping, the commit record, the switch) is here.

use crate::context::{NodeShared, ServiceHost};
use crate::dump_stream::STREAM_POLL;
use crate::migration::{
    ensure_dir, host, quiesce_with_retries, tell_abort, BarrierFor, CatchUp, FailedHolds, Hold,
    HoldSteps, Phases, Plan, ProgressFn, SettledForwarding, Ticker, CATCH_UP_TIMEOUT, STEP_TIMEOUT,
};
use crate::ownership::{Committing, OwnershipRecord};
use crate::precopy;
use crate::process::ServiceProcess;
use crate::report::{ConnectionsClosed, Method, MigrationReport, Phase, Progress};
use crate::telemetry;
use anyhow::{anyhow, bail, Context, Result};
use replaymig_migrate::logship::Shipper;
use replaymig_migrate::source::{Approach, Source, SourceAction, SourceEvent, SourceState};
use replaymig_migrate::Incoming;
use replaymig_peer::{Message, PeerLink};
use replaymig_proxy::{AnswerJournaling, ClosedAtBarrier, Route};
use replaymig_snapshot::delta::BlockIndex;
use replaymig_snapshot::stream::DumpStream;
use replaymig_snapshot::transfer::SnapshotChunks;
use replaymig_snapshot::{Driver, Manifest, Placeholders};
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs a migration of `service` from this node to `to`.
pub async fn migrate_out(
    node: &NodeShared,
    service: &str,
    to: &str,
    method: Method,
    unverified: bool,
    progress: ProgressFn<'_>,
) -> Result<MigrationReport> {
    let host = host(node, service)?;
    let answers_journaled = host.config.journal_responses != AnswerJournaling::Off;
    let replays = matches!(method, Method::Replay);
    if replays && !answers_journaled && !unverified {
        bail!(
            "{service} does not journal its answers (journal_responses = \"off\"), so the \
             destination's replay cannot be checked against what clients were told; set \
             journal_responses = \"digest\" (the default) or pass --unverified"
        );
    }
    let (epoch, pid) = {
        let mut state = host.state.lock().await;
        if state.owner != node.config.name {
            bail!("{service} is owned by {}, not by this node", state.owner);
        }
        if state.migrating {
            bail!("a migration of {service} is already running");
        }
        state.migrating = true;
        (
            state.epoch + 1,
            state.process.as_ref().map(|p| p.snapshot_pid()),
        )
    };
    let registry_read = match &node.fleet {
        Some(fleet) => match fleet
            .read_for_migration(service, &node.config.name, epoch - 1)
            .await
        {
            Ok(read) => Some(read),
            Err(e) => {
                host.state.lock().await.migrating = false;
                return Err(e);
            }
        },
        None => None,
    };
    let plan = Plan {
        to,
        epoch,
        pid,
        method,
        verify_answers: replays && answers_journaled,
        registry_read,
    };
    let outcome = drive(node, host, &plan, progress).await;
    host.state.lock().await.migrating = false;
    match outcome {
        Ok(report) => {
            telemetry::outcome(service, "source", true);
            telemetry::report(&report);
            Ok(report)
        }
        Err(e) => {
            progress(Progress::Phase(Phase::Aborted));
            host.set_phase("source", Phase::Aborted);
            telemetry::outcome(service, "source", false);
            Err(e)
        }
    }
}

/// The machine's loop: each action carried out, each outcome fed back,
/// until the migration is done or aborted.
async fn drive(
    node: &NodeShared,
    host: &ServiceHost,
    plan: &Plan<'_>,
    progress: ProgressFn<'_>,
) -> Result<MigrationReport> {
    let approach = match plan.method {
        Method::Replay => Approach::Replay,
        Method::Iterative { .. } => Approach::Iterative,
    };
    let mut machine = Source::new(approach, plan.epoch);
    let mut run = SourceRun::new(node, host, plan, progress);
    let mut actions = VecDeque::new();
    let mut event = Some(match run.link_up().await {
        Ok(()) => SourceEvent::Linked,
        Err(e) => run.failed(e),
    });
    loop {
        if let Some(e) = event.take() {
            let was_failure = matches!(e, SourceEvent::Failed { .. });
            match machine.clone().on(e) {
                Ok((next, more)) => {
                    run.follow(&next.state);
                    machine = next;
                    actions.extend(more);
                }
                // A failure the machine cannot take any more (after the
                // commit): the destination owns the service; say so.
                Err(refused) if was_failure => {
                    return Err(anyhow!(refused).context(format!(
                        "the service was handed over to {} (epoch {})",
                        plan.to, plan.epoch
                    )))
                }
                // An illegal message or step: abort with it while we can.
                Err(refused) => {
                    event = Some(run.failed(anyhow!(refused)));
                    continue;
                }
            }
        }
        let Some(action) = actions.pop_front() else {
            break;
        };
        event = match run.carry_out(&machine.state, action).await {
            Ok(next) => next,
            Err(e) => Some(run.failed(e)),
        };
    }
    match machine.state {
        SourceState::Done => Ok(run.finish()),
        // A refused migration held the clients too: say how long in all.
        SourceState::Aborted { reason } => Err(anyhow!("{reason}{}", run.held_in_all())),
        other => Err(anyhow!(
            "the migration stopped in {} with nothing left to do",
            other.name()
        )),
    }
}

/// What the source's driver keeps between actions.
struct SourceRun<'a> {
    node: &'a NodeShared,
    host: &'a ServiceHost,
    plan: &'a Plan<'a>,
    started: Instant,
    phases: Phases<'a>,
    ticker: Ticker<'a>,
    report: MigrationReport,
    vars: Placeholders,
    driver: Driver,
    link: Option<PeerLink>,
    /// Iterative: the destination's copy, the base of the final delta.
    held_at_destination: Option<BlockIndex>,
    /// The current hold of client input.
    hold: Option<Hold>,
    /// Barrier attempts that gave up (their holds count in the interruption).
    failed_holds: FailedHolds,
    /// How long the snapshot barrier held input (replay).
    snapshot_hold: Duration,
    /// The proxy's count of connections barriers closed, at the start
    /// (the migration reports what its barriers added).
    closed_before: ClosedAtBarrier,
    /// The hand-over hold's steps (iterative: from its only barrier).
    steps: Option<HoldSteps>,
    settled: Option<SettledForwarding<'a>>,
    dir: Option<tempfile::TempDir>,
    manifest: Option<Manifest>,
    /// The files sent while the dump was written (`ExecDriver::stream`,
    /// `CriuDriver::stream`).
    streamed: Option<DumpStream>,
    shipper: Option<Shipper>,
    dial: Option<Route>,
    process: Option<ServiceProcess>,
}

impl<'a> SourceRun<'a> {
    fn new(
        node: &'a NodeShared,
        host: &'a ServiceHost,
        plan: &'a Plan<'a>,
        progress: ProgressFn<'a>,
    ) -> Self {
        let service = &host.config;
        let mut vars = node.placeholders(service);
        if let Some(pid) = plan.pid {
            vars.insert("pid".into(), pid.to_string());
        }
        SourceRun {
            node,
            host,
            plan,
            started: Instant::now(),
            phases: Phases::new(host, progress),
            ticker: Ticker {
                progress,
                last: Instant::now(),
            },
            report: MigrationReport {
                service: service.name.clone(),
                method: plan.method.name().to_string(),
                epoch: plan.epoch,
                ..Default::default()
            },
            vars,
            driver: service.snapshot.driver(),
            link: None,
            held_at_destination: None,
            hold: None,
            failed_holds: FailedHolds::default(),
            snapshot_hold: Duration::ZERO,
            closed_before: host.proxy.closed_at_barrier(),
            steps: None,
            settled: None,
            dir: None,
            manifest: None,
            streamed: None,
            shipper: None,
            dial: None,
            process: None,
        }
    }

    /// Moves the operator-visible phase along with the machine (an abort
    /// is reported by `migrate_out`).
    fn follow(&mut self, state: &SourceState) {
        let phase = state.phase();
        if phase != self.phases.current && phase != Phase::Aborted {
            self.phases.advance(phase);
        }
    }

    /// How long this migration held client input so far, in words for a
    /// refusal (empty if it never held it): every barrier attempt that gave
    /// up, the snapshot's hold, and a hold still in place.
    fn held_in_all(&self) -> String {
        let now = self
            .hold
            .as_ref()
            .map_or(0.0, |h| h.held_for().as_secs_f64());
        let total = self.failed_holds.seconds + self.snapshot_hold.as_secs_f64() + now;
        if total == 0.0 {
            return String::new();
        }
        let closed = self.closed_so_far();
        format!(
            " (clients' input was held {:.3} s in all, {} barrier attempts gave up, {} connections closed)",
            total,
            self.failed_holds.count,
            closed.unanswered + closed.in_use
        )
    }

    /// Connections this migration's barriers closed so far, failed
    /// attempts included.
    fn closed_so_far(&self) -> ConnectionsClosed {
        let now = self.host.proxy.closed_at_barrier();
        ConnectionsClosed {
            unanswered: now.unanswered - self.closed_before.unanswered,
            in_use: now.in_use - self.closed_before.in_use,
        }
    }

    /// A failure, as the machine hears it.
    fn failed(&self, e: anyhow::Error) -> SourceEvent {
        SourceEvent::Failed {
            reason: format!("{e:#}"),
        }
    }

    fn link(&mut self) -> &mut PeerLink {
        self.link.as_mut().expect("linked before any message")
    }

    fn mark(&mut self, step: &str) {
        if let Some(steps) = self.steps.as_mut() {
            steps.mark(step);
        }
    }

    /// Carries out `action` (the machine is in `state`); the event it led
    /// to, if any.
    async fn carry_out(
        &mut self,
        state: &SourceState,
        action: SourceAction,
    ) -> Result<Option<SourceEvent>> {
        use SourceAction as A;
        use SourceEvent as E;
        Ok(match action {
            A::SendBegin => {
                let begin = Message::MigrateBegin {
                    service: self.host.config.name.clone(),
                    epoch: self.plan.epoch,
                    verify_answers: self.plan.verify_answers,
                };
                self.link().send(begin).await?;
                Some(self.receive().await?)
            }
            A::PreCopy => {
                self.pre_copy().await?;
                Some(E::PreCopied)
            }
            A::Quiesce => {
                // Connections open at the snapshot continue at the
                // destination; at replay's hand-over (or with driver
                // `none`) every one was replayed from its start.
                let fixes_snapshot =
                    *state == SourceState::Quiescing || self.plan.method != Method::Replay;
                let purpose = if fixes_snapshot && !matches!(self.driver, Driver::None) {
                    BarrierFor::Snapshot
                } else {
                    BarrierFor::Replayed
                };
                let hold =
                    quiesce_with_retries(self.host, purpose, self.plan.pid, &mut self.failed_holds)
                        .await?;
                if *state == SourceState::Quiescing {
                    self.report.snapshot_lsn = hold.lsn;
                }
                // Iterative: its only hold lasts to the hand-over; replay:
                // the hand-over's own barrier. Both are timed from here.
                if *state == SourceState::Holding || self.plan.method != Method::Replay {
                    let mut steps = HoldSteps::new(&hold);
                    steps.mark("quiesce");
                    self.steps = Some(steps);
                }
                self.hold = Some(hold);
                Some(E::Quiesced)
            }
            A::ForwardSettled => {
                // From the snapshot point on, the service holds one
                // unanswered record at a time, so it executes them in LSN
                // order — the order the destination replays them in, the
                // same way (docs/fidelity.md).
                self.settled = Some(SettledForwarding::on(&self.host.proxy));
                None
            }
            A::FixPoint => {
                self.fix_point().await?;
                Some(E::PointFixed)
            }
            A::ReleaseInput => {
                self.release_input(state);
                None
            }
            A::FinishDump => {
                self.finish_dump().await?;
                Some(E::Dumped)
            }
            A::Transfer => {
                self.transfer().await?;
                Some(E::Transferred)
            }
            A::CatchUp => {
                self.catch_up().await?;
                Some(E::CaughtUp)
            }
            A::ShipTail => {
                self.ship_tail().await?;
                Some(E::TailApplied)
            }
            A::SendHandOver => Some(self.hand_over().await?),
            A::RecordCommit => {
                self.record_commit().await?;
                Some(E::CommitRecorded)
            }
            A::SendCommit => {
                let epoch = self.plan.epoch;
                if let Err(e) = self.link().send(Message::HandOverCommit { epoch }).await {
                    tracing::warn!(error = %e, "hand-over commit not sent; the tunnels will carry it");
                }
                self.mark("commit");
                None
            }
            A::SwitchConnections => {
                let hold = self.hold.as_ref().expect("held to the switch");
                let Some(Route::Remote { dial }) = self.dial.take() else {
                    bail!("no route to the new owner");
                };
                let (to, epoch) = (self.plan.to, self.plan.epoch);
                let redirect =
                    crate::redirect::redirector(self.node, &self.host.config.name, to, epoch);
                let done = self.host.proxy.hand_over(hold, dial, Some(redirect)).await;
                self.report.connections_handed_over = done.switched;
                self.report.connections_redirected = done.redirected;
                self.report.connections_closed_at_switch = done.closed;
                self.mark("switch");
                Some(E::Switched)
            }
            A::StopService => {
                let service = &self.host.config.name;
                telemetry::ownership(service, self.plan.epoch, false);
                // Clients already reach the new owner: the old copy gets no
                // input, so the migration does not wait for it to exit
                // (Redis, for one, acts on SIGTERM at its next 10 Hz
                // tick). The node waits for it before it shuts down.
                if let Some(p) = self.process.take() {
                    self.host.retire(p);
                }
                Some(E::Stopped)
            }
            A::TellAbort { reason } => {
                if let Some(link) = self.link.as_mut() {
                    tell_abort(link, &anyhow!(reason)).await;
                }
                None
            }
        })
    }

    /// Reads the destination's next message, as the machine sees it (the
    /// fields it needs beyond that are taken here).
    async fn receive(&mut self) -> Result<SourceEvent> {
        let bound = self.step_bound();
        let message = match self.link().recv_timeout(bound).await {
            Err(e @ replaymig_peer::LinkError::Timeout(_)) => {
                return Err(
                    anyhow::Error::from(e).context(self.bound_exceeded("the destination's answer"))
                )
            }
            other => other?,
        };
        if let Message::HandOverDone {
            restore_micros,
            replay_micros,
            ..
        } = &message
        {
            self.report.destination_restore_seconds = *restore_micros as f64 / 1e6;
            self.report.destination_replay_seconds = *replay_micros as f64 / 1e6;
        }
        Ok(SourceEvent::Received(Incoming::from(&message)))
    }

    async fn link_up(&mut self) -> Result<()> {
        let to = self.plan.to;
        let peer = self.node.peer_addr(to)?;
        let linked = PeerLink::connect(peer, &self.node.auth).await;
        telemetry::peer_link(to, linked.is_ok());
        self.link = Some(linked?);
        Ok(())
    }

    async fn pre_copy(&mut self) -> Result<()> {
        let Method::Iterative {
            dirty_threshold_bytes_per_second,
            max_iterations,
        } = self.plan.method
        else {
            bail!("pre-copy is for the iterative method");
        };
        ensure_dir(&self.node.config.work_dir)?;
        let head = self.host.journal.last_lsn();
        let limits = (dirty_threshold_bytes_per_second, max_iterations);
        let ticker = &mut self.ticker;
        let mut tick = |sent| ticker.tick(sent, 0, 0, head);
        let link = self.link.as_mut().expect("linked");
        let pre = precopy::run(self.node, self.host, link, &self.vars, limits, &mut tick).await?;
        self.report.snapshot_bytes = pre.rounds.iter().map(|r| r.sent_bytes).sum();
        self.report.snapshot_raw_bytes = pre.rounds.iter().map(|r| r.dirty_bytes).sum();
        self.report.iterations = pre.rounds;
        self.held_at_destination = Some(pre.held);
        Ok(())
    }

    async fn fix_point(&mut self) -> Result<()> {
        // `none`: the service keeps no state of its own, so the "snapshot"
        // is the empty service at LSN 0 and the destination replays the
        // whole history — which the journal must still hold.
        if matches!(self.driver, Driver::None) {
            self.report.snapshot_lsn = 0;
            match self.host.journal.first_lsn()? {
                Some(first) if first > 1 => bail!(
                    "snapshot driver none replays from LSN 1, but this journal starts at LSN \
                     {first} (older records were truncated): use a driver that dumps state"
                ),
                _ => {}
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-out-", self.host.config.name))
            .tempdir_in(ensure_dir(&self.node.config.work_dir)?)?;
        let (host, driver, vars, at) = (self.host, &self.driver, &self.vars, dir.path());
        let dump = async {
            match self.hold.as_ref() {
                Some(hold) if host.config.carries_connections() => {
                    crate::carry::dump_carrying(host, hold, driver, at, vars).await
                }
                _ => driver
                    .fix_point(at, vars)
                    .await
                    .map(|()| 0)
                    .map_err(Into::into),
            }
        };
        // CRIU's dump holds the clients: its files go over the link while
        // it writes them (never delaying its end), not after it.
        let carried = if driver.streams_fix_point() && self.held_at_destination.is_none() {
            let link = self.link.as_mut().expect("linked");
            let (carried, streamed) = crate::dump_stream::stream_while(dump, at, link).await?;
            self.streamed = Some(streamed);
            carried
        } else {
            dump.await?
        };
        self.report.connections_carried = carried;
        self.dir = Some(dir);
        Ok(())
    }

    /// Drops the hold, recording how long it held input: the snapshot's
    /// (replay, the point is fixed) or the hand-over's (after the switch).
    fn release_input(&mut self, state: &SourceState) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        if *state == SourceState::FinishingDump {
            self.snapshot_hold = hold.held_for();
            return;
        }
        self.report.handover_hold_seconds = hold.held_for().as_secs_f64();
        self.report.handover_steps = self.steps.take().map(|s| s.done).unwrap_or_default();
        drop(hold);
        self.settled = None;
        let held = match self.plan.method {
            // One hold, from the final dump's barrier to here.
            Method::Iterative { .. } => self.report.handover_hold_seconds,
            Method::Replay => self.snapshot_hold.as_secs_f64() + self.report.handover_hold_seconds,
        };
        // Barrier attempts that gave up held the clients too.
        self.report.failed_holds = self.failed_holds.count;
        self.report.failed_hold_seconds = self.failed_holds.seconds;
        self.report.connections_closed = self.closed_so_far();
        self.report.interruption_seconds = held + self.failed_holds.seconds;
        self.report.jitter_seconds = (self.phases.started.elapsed().as_secs_f64()
            - self.report.interruption_seconds)
            .max(0.0);
        let wire = self.link().wire_bytes();
        self.report.control_bytes = (wire.sent + wire.received)
            .saturating_sub(self.report.snapshot_bytes + self.report.log_bytes);
    }

    async fn finish_dump(&mut self) -> Result<()> {
        let dir = self
            .dir
            .as_ref()
            .expect("the point is fixed")
            .path()
            .to_path_buf();
        if self.streamed.is_some() {
            // Streamed under the hold (CRIU): the piece the link had not
            // taken when the dump ended goes now that clients are released.
            self.link().flush().await?;
        } else if self.driver.streams_dump() && self.held_at_destination.is_none() {
            self.dump_streaming(&dir).await?;
        } else {
            self.driver.finish_dump(&dir, &self.vars).await?;
        }
        self.manifest = Some(Manifest::build(
            &dir,
            &self.host.config.name,
            self.driver.name(),
            self.report.snapshot_lsn,
        )?);
        self.mark("dump");
        Ok(())
    }

    /// The rest of the dump, its files sent as they grow meanwhile (with
    /// the log after the snapshot point between pieces).
    async fn dump_streaming(&mut self, dir: &Path) -> Result<()> {
        let (driver, vars, at) = (self.driver.clone(), self.vars.clone(), dir.to_path_buf());
        // A failed send ends this step: the dump's commands die with it.
        let mut dump = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            driver.finish_dump(&at, &vars).await
        }));
        let mut stream = DumpStream::new(dir, true);
        let mut shipper = Shipper::new(&self.host.journal, self.report.snapshot_lsn + 1)?;
        let link = self.link.as_mut().expect("linked");
        while !dump.is_finished() {
            let Some(msg) = stream.next_message()? else {
                shipper.ship_ready(link, 4).await?;
                tokio::time::sleep(STREAM_POLL).await;
                continue;
            };
            link.send(msg).await?;
            shipper.ship_ready(link, 4).await?;
            let head = self.host.journal.last_lsn();
            let sent = stream.stats.wire_bytes;
            self.ticker.tick(sent, shipper.stats.records, 0, head);
        }
        (&mut dump).await.context("the dump task failed")??;
        self.shipper = Some(shipper);
        self.streamed = Some(stream);
        Ok(())
    }

    async fn transfer(&mut self) -> Result<()> {
        let dir = self.dir.as_ref().expect("dumped").path().to_path_buf();
        let manifest = self.manifest.as_ref().expect("dumped");
        // The log after s travels with the snapshot: between chunks,
        // whatever the journal holds by then is shipped too.
        let mut shipper = match self.shipper.take() {
            Some(shipper) => shipper,
            None => Shipper::new(&self.host.journal, self.report.snapshot_lsn + 1)?,
        };
        let link = self.link.as_mut().expect("linked");
        let mut chunks = match (&self.held_at_destination, self.streamed.as_mut()) {
            (Some(held), _) => {
                let index = BlockIndex::of(&dir, manifest)?;
                let (ranges, _) = index.changed_since(manifest, Some(held));
                SnapshotChunks::delta(&dir, manifest, true, ranges)
            }
            (None, Some(streamed)) => {
                let settled = streamed.settle(manifest)?;
                self.report.snapshot_bytes += streamed.stats.wire_bytes;
                self.report.snapshot_raw_bytes += streamed.stats.raw_bytes;
                self.report.snapshot_streamed_bytes = streamed.stats.raw_bytes;
                tracing::info!(
                    streamed = streamed.stats.raw_bytes,
                    stale = settled.stale_bytes,
                    "snapshot streamed while dumping; the rest follows"
                );
                link.send(Message::SnapshotStreamsNamed {
                    names: settled.names,
                })
                .await?;
                SnapshotChunks::delta(&dir, manifest, true, settled.ranges)
            }
            (None, None) => SnapshotChunks::new(&dir, manifest, true),
        };
        let before = self.report.snapshot_bytes;
        while let Some(msg) = chunks.next_message()? {
            link.send(msg).await?;
            shipper.ship_ready(link, 4).await?;
            let head = self.host.journal.last_lsn();
            self.ticker.tick(
                before + chunks.stats.wire_bytes,
                shipper.stats.records,
                0,
                head,
            );
        }
        self.report.snapshot_bytes += chunks.stats.wire_bytes;
        self.report.snapshot_raw_bytes += chunks.stats.raw_bytes;
        self.shipper = Some(shipper);
        self.mark("transfer");
        Ok(())
    }

    async fn catch_up(&mut self) -> Result<()> {
        let journal = self.host.journal.clone();
        let mut lag = CatchUp::new(self.report.snapshot_lsn);
        let snapshot_bytes = self.report.snapshot_bytes;
        let ticker = &mut self.ticker;
        let shipper = self.shipper.as_mut().expect("transferred");
        let link = self.link.as_mut().expect("linked");
        tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            shipper.run_until(link, |s| {
                let head = journal.last_lsn();
                ticker.tick(snapshot_bytes, s.records, s.acked, head);
                lag.ready(head.saturating_sub(s.acked), s.acked)
            }),
        )
        .await
        .context("the destination did not catch up in time")??;
        let acked = shipper.stats.acked;
        tracing::info!(
            lag = journal.last_lsn().saturating_sub(acked),
            rate = lag.rate_at(acked, Instant::now()),
            "caught up; the hand-over starts"
        );
        self.mark("restore");
        Ok(())
    }

    async fn ship_tail(&mut self) -> Result<()> {
        let head = self.host.journal.last_lsn();
        let bound = self.step_bound();
        let exceeded = self.bound_exceeded("the tail");
        let shipper = self.shipper.as_mut().expect("transferred");
        let link = self.link.as_mut().expect("linked");
        let (acked_before, tail_started) = (shipper.stats.acked, Instant::now());
        let applied =
            tokio::time::timeout(bound, shipper.run_until(link, |s| s.acked >= head)).await;
        let Ok(applied) = applied else {
            bail!(
                "{exceeded}: the destination had applied up to LSN {} of {head} (a replay \
                 waiting for answers that do not come looks like this too)",
                shipper.stats.acked
            );
        };
        applied?;
        tracing::info!(
            records = head.saturating_sub(acked_before),
            ms = tail_started.elapsed().as_secs_f64() * 1000.0,
            "tail applied"
        );
        self.report.handover_lsn = head;
        self.report.log_bytes = shipper.stats.wire_bytes;
        self.report.log_raw_bytes = shipper.stats.bytes;
        self.report.log_records = shipper.stats.records;
        self.mark("tail");
        Ok(())
    }

    /// How long the next step may take: a replay's hand-over hold has
    /// what is left of `max_handover_ms`; anything else `STEP_TIMEOUT`.
    fn step_bound(&self) -> Duration {
        match (&self.steps, &self.hold, self.plan.method) {
            (Some(_), Some(hold), Method::Replay) => {
                let bound = Duration::from_millis(self.host.config.max_handover_ms);
                bound
                    .saturating_sub(hold.held_for())
                    .max(Duration::from_millis(1))
            }
            _ => STEP_TIMEOUT,
        }
    }

    /// What a step that overran its bound says.
    fn bound_exceeded(&self, what: &str) -> String {
        match (&self.steps, self.plan.method) {
            (Some(_), Method::Replay) => format!(
                "{what} did not come within the hand-over's bound (max_handover_ms = {}); \
                 the input is given back",
                self.host.config.max_handover_ms
            ),
            _ => format!("{what} did not come in time ({STEP_TIMEOUT:?})"),
        }
    }

    /// Everything that can fail is done before the commit point: the route
    /// to the new owner, then `HandOver` and its answer.
    async fn hand_over(&mut self) -> Result<SourceEvent> {
        let (to, epoch) = (self.plan.to, self.plan.epoch);
        let route = self.node.route_to(to, epoch, &self.host.config)?;
        if !matches!(route, Route::Remote { .. }) {
            bail!("the new owner cannot be this node");
        }
        self.dial = Some(route);
        let hold = self.hold.as_ref().expect("held for the hand-over");
        let delivered = hold.mark.delivered.iter().map(|(c, d)| (*c, *d)).collect();
        self.link()
            .send(Message::HandOver { epoch, delivered })
            .await?;
        let answer = self.receive().await?;
        self.mark("prepare");
        Ok(answer)
    }

    /// The commit point: this node gives the service up — durably first,
    /// so a restart cannot take it back; the destination owns it from its
    /// commit (the next message, the first tunnel, or its question after a
    /// loss). In fleet mode the commit point is the registry's transaction,
    /// with the intent recorded locally before it (see `fleet`).
    async fn record_commit(&mut self) -> Result<()> {
        let (to, epoch) = (self.plan.to, self.plan.epoch);
        let (host, node, plan) = (self.host, self.node, self.plan);
        let service = &host.config.name;
        let mut state = host.state.lock().await;
        if let (Some(fleet), Some(read)) = (&node.fleet, &plan.registry_read) {
            let next = replaymig_fleet::OwnerEntry {
                owner: to.to_string(),
                epoch,
                handover_lsn: self.report.handover_lsn,
            };
            let intent = Committing {
                to: to.to_string(),
                epoch,
                handover_lsn: next.handover_lsn,
                from: read.entry.owner.clone(),
                from_epoch: read.entry.epoch,
                from_handover_lsn: read.entry.handover_lsn,
                read_revision: read.revision,
            };
            let mut record = state.record();
            record.committing = Some(intent);
            host.ownership
                .save(&record)
                .context("cannot record the hand-over's intent; keeping the service")?;
            // The state stays this node's meanwhile (`migrating` keeps other
            // changes out), but unlocked: the registry may take long, and
            // tunnels, owner queries and the owner map need the lock.
            drop(state);
            // Fault injection (tools/fleet-demo.sh PARTITION=1): a pause
            // here, in which the test cuts this node off from etcd.
            if let Some(ms) = fail::eval("fleet-before-registry-commit", |ms| ms) {
                let ms = ms.and_then(|m| m.parse().ok()).unwrap_or(1000);
                tracing::warn!(ms, "fail point: pausing before the registry commit");
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let committed = fleet.commit(service, read, &next).await;
            state = host.state.lock().await;
            if let Err(e) = committed {
                // Definitely not committed: nothing changed anywhere.
                if let Err(save) = host.ownership.save(&state.record()) {
                    tracing::error!(error = %format!("{save:#}"), "could not clear the hand-over's intent; a restart settles it from the registry");
                }
                return Err(e);
            }
            self.mark("registry");
            fail::fail_point!("fleet-after-registry-commit", |_| {
                tracing::error!("fail point: crashing after the registry commit");
                std::process::abort()
            });
        }
        let saved = host
            .ownership
            .save(&OwnershipRecord {
                owner: to.to_string(),
                epoch,
                prepared: None,
                committing: None,
            })
            .context("cannot record the hand-over; keeping the service");
        match saved {
            // Two-node mode: the local record is the commit point.
            Err(e) if node.fleet.is_none() => return Err(e),
            // Fleet mode: the registry's commit was the commit point, and
            // the recorded intent settles it at a restart; giving up now
            // would leave the service to nobody.
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "hand-over committed in the registry but not recorded here; a restart settles it from the intent")
            }
            Ok(()) => {}
        }
        fail::fail_point!("source-after-commit-record", |_| {
            tracing::error!("fail point: crashing after the commit record");
            std::process::abort()
        });
        state.owner = to.to_string();
        state.epoch = epoch;
        self.process = state.process.take();
        Ok(())
    }

    /// The report of a migration that is done.
    fn finish(mut self) -> MigrationReport {
        self.settled = None;
        self.report.from = self.node.config.name.clone();
        self.report.to = self.plan.to.to_string();
        self.report.total_seconds = self.started.elapsed().as_secs_f64();
        self.report.phase_seconds = std::mem::take(&mut self.phases.done);
        self.report
    }
}
