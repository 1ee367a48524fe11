//! Replay migration, both sides (DESIGN.md "Replay migration, A → B").
//!
//! Source (the owner): connect → barrier fixes s → dump → release →
//! ship the snapshot → ship the log from s+1 while the destination
//! replays (catch-up, the source keeps serving) → when the lag is small,
//! hold input again, ship the tail, `HandOver` → on `HandOverDone` switch
//! open connections to tunnels, release, stop the old service. Anything
//! failing before `HandOverDone` aborts: the source keeps ownership and
//! serving, the destination discards its copy.
//!
//! Destination: `MigrateBegin` → receive and verify the snapshot → restore
//! and start the service → journal each shipped record under its LSN and
//! replay it, acknowledging → on `HandOver` take ownership under the new
//! epoch, park the replayed connections for their tunnels.

use crate::handover;
use crate::node::{NodeShared, ServiceHost};
use crate::ownership::{OwnershipRecord, Prepared};
use crate::precopy;
use crate::process::ServiceProcess;
use crate::report::{Method, MigrationReport, Phase, Progress};
use crate::telemetry;
use anyhow::{bail, Context, Result};
use replaymig_migrate::logship::{self, Shipper};
use replaymig_peer::{Message, PeerLink};
use replaymig_proxy::{AnswerJournaling, QuiesceOptions, Route};
use replaymig_replayer::{ReplayOptions, Replayer};
use replaymig_snapshot::delta::BlockIndex;
use replaymig_snapshot::transfer::{self, SnapshotChunks, TransferError};
use replaymig_snapshot::{Driver, Manifest};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The destination may lag this many records when the hand-over starts.
const HANDOVER_LAG_RECORDS: u64 = 64;
/// A lag this small starts the hand-over at once.
const HANDOVER_SMALL_LAG: u64 = 8;
/// Under `HANDOVER_LAG_RECORDS`, the hand-over also starts once the lag
/// has not shrunk for this long (a load the replay only just keeps up with).
const CATCH_UP_SETTLE: Duration = Duration::from_millis(100);
/// A lag that has stopped shrinking is also handed over when the replay,
/// at the rate it has shown, applies it within this long: a service whose
/// own pace bounds the replay (answers that take milliseconds to write)
/// never catches up further, and waiting longer only shifts the same tail.
const TAIL_BUDGET: Duration = Duration::from_millis(50);

/// When catch-up has gone far enough to hold the clients for the rest: the
/// destination acknowledges a record only once the answers the original
/// had before the next one were reproduced, so the tail left for the hold
/// is replayed at the restored service's pace — keep it as short as the
/// load allows.
struct CatchUp {
    best: u64,
    improved: Instant,
    /// When catch-up began and how many records were acknowledged then:
    /// the replay's rate since.
    started: Instant,
    first_acked: Option<u64>,
}

impl CatchUp {
    fn new() -> Self {
        CatchUp {
            best: u64::MAX,
            improved: Instant::now(),
            started: Instant::now(),
            first_acked: None,
        }
    }

    /// Whether to hand over, the destination being `lag` records behind
    /// with `acked` acknowledged in all.
    fn ready(&mut self, lag: u64, acked: u64) -> bool {
        self.ready_at(lag, acked, Instant::now())
    }

    fn ready_at(&mut self, lag: u64, acked: u64, now: Instant) -> bool {
        let first = *self.first_acked.get_or_insert(acked);
        if lag < self.best {
            self.best = lag;
            self.improved = now;
        }
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let rate = if elapsed > 0.0 {
            acked.saturating_sub(first) as f64 / elapsed
        } else {
            0.0
        };
        let tail_fits = lag as f64 <= rate * TAIL_BUDGET.as_secs_f64();
        let stalled = now.duration_since(self.improved) >= CATCH_UP_SETTLE;
        lag <= HANDOVER_SMALL_LAG || (stalled && (lag <= HANDOVER_LAG_RECORDS || tail_fits))
    }
}
/// Bound on catching up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the destination reports replay progress while no batch
/// arrives (the replay goes on between batches).
const ACK_INTERVAL: Duration = Duration::from_millis(2);
/// Bound on each protocol step.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Progress callback: every phase change, and shipping figures.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// Sends shipping figures at most twice a second.
struct Ticker<'a> {
    progress: ProgressFn<'a>,
    last: Instant,
}

impl Ticker<'_> {
    fn tick(&mut self, snapshot_bytes: u64, log_records: u64, applied_lsn: u64, head_lsn: u64) {
        if self.last.elapsed() >= Duration::from_millis(500) {
            self.last = Instant::now();
            (self.progress)(Progress::Shipping {
                snapshot_bytes,
                log_records,
                applied_lsn,
                head_lsn,
            });
        }
    }
}

/// Splits the hand-over hold into its steps (where the interruption goes).
struct HoldSteps {
    since: Instant,
    done: Vec<(String, f64)>,
}

impl HoldSteps {
    fn new(hold: &replaymig_proxy::Quiesced) -> Self {
        HoldSteps {
            since: hold.held_since,
            done: Vec::new(),
        }
    }

    fn mark(&mut self, step: &str) {
        self.done
            .push((step.to_string(), self.since.elapsed().as_secs_f64()));
        self.since = Instant::now();
    }
}

/// Records phase durations as the state machine moves.
struct Phases<'a> {
    host: &'a ServiceHost,
    current: Phase,
    since: Instant,
    /// The trigger.
    started: Instant,
    done: Vec<(String, f64)>,
    progress: ProgressFn<'a>,
}

impl<'a> Phases<'a> {
    fn new(host: &'a ServiceHost, progress: ProgressFn<'a>) -> Self {
        progress(Progress::Phase(Phase::Connecting));
        telemetry::started(&host.config.name, "source");
        host.set_phase("source", Phase::Connecting);
        Phases {
            host,
            current: Phase::Connecting,
            since: Instant::now(),
            started: Instant::now(),
            done: Vec::new(),
            progress,
        }
    }

    /// Moves to the next phase; only the transitions of `Phase::next`.
    fn advance(&mut self, to: Phase) {
        assert!(
            self.current.can_advance_to(to),
            "migration phases go in order ({:?} -> {to:?})",
            self.current
        );
        let name = phase_name(self.current);
        self.host.set_phase("source", to);
        self.done.push((name, self.since.elapsed().as_secs_f64()));
        self.current = to;
        self.since = Instant::now();
        (self.progress)(Progress::Phase(to));
    }
}

fn phase_name(p: Phase) -> String {
    p.name().to_string()
}

fn host<'a>(node: &'a NodeShared, service: &str) -> Result<&'a Arc<ServiceHost>> {
    node.services
        .get(service)
        .with_context(|| format!("no service {service:?} on this node"))
}

/// Settled forwarding on the source's proxy while a replay migration runs;
/// off again however the source's steps end.
/// (A service with the `none` driver forwards settled all the time.)
struct SettledForwarding<'a> {
    proxy: &'a replaymig_proxy::ProxyControl,
    was: bool,
}

impl<'a> SettledForwarding<'a> {
    fn on(proxy: &'a replaymig_proxy::ProxyControl) -> Self {
        let was = proxy.settled_forwarding();
        proxy.set_settled_forwarding(true);
        SettledForwarding { proxy, was }
    }
}

impl Drop for SettledForwarding<'_> {
    fn drop(&mut self) {
        self.proxy.set_settled_forwarding(self.was);
    }
}

/// What the source runs: where to, under which epoch, how.
struct Plan<'a> {
    to: &'a str,
    epoch: u64,
    /// The service process to snapshot (CRIU).
    pid: Option<u32>,
    method: Method,
    /// The destination checks every replayed answer (answers journaled).
    verify_answers: bool,
}

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
    let plan = Plan {
        to,
        epoch,
        pid,
        method,
        verify_answers: replays && answers_journaled,
    };
    let outcome = run_source(node, host, &plan, progress).await;
    let mut state = host.state.lock().await;
    state.migrating = false;
    match outcome {
        Ok((report, process)) => {
            telemetry::ownership(service, state.epoch, false);
            drop(state);
            if let Some(p) = process {
                p.stop().await;
            }
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

async fn run_source(
    node: &NodeShared,
    host: &ServiceHost,
    plan: &Plan<'_>,
    progress: ProgressFn<'_>,
) -> Result<(MigrationReport, Option<ServiceProcess>)> {
    let (to, epoch) = (plan.to, plan.epoch);
    let started = Instant::now();
    let service = &host.config;
    let mut phases = Phases::new(host, progress);
    let peer = *node
        .config
        .peers
        .get(to)
        .with_context(|| format!("unknown node {to:?}"))?;
    let linked = PeerLink::connect(peer, &node.auth).await;
    telemetry::peer_link(to, linked.is_ok());
    let mut link = linked?;
    link.send(Message::MigrateBegin {
        service: service.name.clone(),
        epoch,
        verify_answers: plan.verify_answers,
    })
    .await?;
    expect(&mut link, "migrate_ready", |m| {
        matches!(m, Message::MigrateReady)
    })
    .await?;
    let result = source_steps(node, host, &mut link, &mut phases, plan).await;
    match result {
        Ok((mut report, process)) => {
            report.from = node.config.name.clone();
            report.to = to.to_string();
            report.total_seconds = started.elapsed().as_secs_f64();
            phases.advance(Phase::Done);
            report.phase_seconds = phases.done;
            Ok((report, process))
        }
        Err(e) => {
            let e = e.context(format!("{} failed", phase_name(phases.current)));
            tell_abort(&mut link, &e).await;
            Err(e)
        }
    }
}

async fn source_steps(
    node: &NodeShared,
    host: &ServiceHost,
    link: &mut PeerLink,
    phases: &mut Phases<'_>,
    plan: &Plan<'_>,
) -> Result<(MigrationReport, Option<ServiceProcess>)> {
    let (to, epoch) = (plan.to, plan.epoch);
    let service = &host.config;
    let driver: Driver = service.snapshot.driver();
    let mut report = MigrationReport {
        service: service.name.clone(),
        method: plan.method.name().to_string(),
        epoch,
        ..Default::default()
    };
    let mut vars = node.placeholders(service);
    if let Some(pid) = plan.pid {
        vars.insert("pid".into(), pid.to_string());
    }
    ensure_dir(&node.config.work_dir)?;
    let mut ticker = Ticker {
        progress: phases.progress,
        last: Instant::now(),
    };

    // Iterative: pre-copy rounds first; the destination's copy is the base
    // of the final delta.
    let mut held_at_destination = None;
    if let Method::Iterative {
        dirty_threshold_bytes_per_second,
        max_iterations,
    } = plan.method
    {
        phases.advance(Phase::PreCopying);
        let head = host.journal.last_lsn();
        let limits = (dirty_threshold_bytes_per_second, max_iterations);
        let mut tick = |sent| ticker.tick(sent, 0, 0, head);
        let pre = precopy::run(node, host, link, &vars, limits, &mut tick).await?;
        report.snapshot_bytes = pre.rounds.iter().map(|r| r.sent_bytes).sum();
        report.snapshot_raw_bytes = pre.rounds.iter().map(|r| r.dirty_bytes).sum();
        report.iterations = pre.rounds;
        held_at_destination = Some(pre.held);
    }
    let iterative = held_at_destination.is_some();

    phases.advance(Phase::Quiescing);
    let hold = quiesce_with_retries(host).await?;
    report.snapshot_lsn = hold.lsn;
    // From the snapshot point on, the service holds one unanswered record
    // at a time, so it executes them in LSN order — the order the
    // destination replays them in, the same way (docs/fidelity.md).
    let _settled = (!iterative).then(|| SettledForwarding::on(&host.proxy));
    // `none`: the service keeps no state of its own, so the "snapshot" is
    // the empty service at LSN 0 and the destination replays the whole
    // history — which the journal must still hold.
    let stateless = matches!(driver, Driver::None);
    if stateless {
        report.snapshot_lsn = 0;
        match host.journal.first_lsn()? {
            Some(first) if first > 1 => bail!(
                "snapshot driver none replays from LSN 1, but this journal starts at LSN {first} \
                 (older records were truncated): use a driver that dumps state"
            ),
            _ => {}
        }
    }
    // Iterative: this hold lasts to the hand-over; its steps are timed
    // from here.
    let mut final_steps = iterative.then(|| HoldSteps::new(&hold));
    let mut step = |name: &str| {
        if let Some(steps) = final_steps.as_mut() {
            steps.mark(name);
        }
    };
    step("quiesce");

    phases.advance(Phase::Dumping);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-out-", service.name))
        .tempdir_in(&node.config.work_dir)?;
    driver.fix_point(dir.path(), &vars).await?;
    let snapshot_hold = hold.held_for();
    // Replay releases the input once the point is fixed; iterative keeps
    // holding it until the destination owns the service.
    let mut final_hold = None;
    if iterative {
        final_hold = Some(hold);
    } else {
        drop(hold);
    }
    driver.finish_dump(dir.path(), &vars).await?;
    let manifest = Manifest::build(
        dir.path(),
        &service.name,
        driver.name(),
        report.snapshot_lsn,
    )?;
    step("dump");

    phases.advance(Phase::Transferring);
    // The log after s travels with the snapshot: between chunks, whatever
    // the journal holds by then is shipped too.
    let mut shipper = Shipper::new(&host.journal, report.snapshot_lsn + 1)?;
    let mut chunks = match &held_at_destination {
        Some(held) => {
            let index = BlockIndex::of(dir.path(), &manifest)?;
            let (ranges, _) = index.changed_since(&manifest, Some(held));
            SnapshotChunks::delta(dir.path(), &manifest, true, ranges)
        }
        None => SnapshotChunks::new(dir.path(), &manifest, true),
    };
    let before = report.snapshot_bytes;
    while let Some(msg) = chunks.next_message()? {
        link.send(msg).await?;
        shipper.ship_ready(link, 4).await?;
        let head = host.journal.last_lsn();
        ticker.tick(
            before + chunks.stats.wire_bytes,
            shipper.stats.records,
            0,
            head,
        );
    }
    report.snapshot_bytes += chunks.stats.wire_bytes;
    report.snapshot_raw_bytes += chunks.stats.raw_bytes;
    step("transfer");

    phases.advance(Phase::CatchingUp);
    let journal = host.journal.clone();
    let mut lag = CatchUp::new();
    tokio::time::timeout(
        CATCH_UP_TIMEOUT,
        shipper.run_until(link, |s| {
            let head = journal.last_lsn();
            ticker.tick(report.snapshot_bytes, s.records, s.acked, head);
            lag.ready(head.saturating_sub(s.acked), s.acked)
        }),
    )
    .await
    .context("the destination did not catch up in time")??;
    step("restore");

    phases.advance(Phase::HandingOver);
    let (hold, mut steps) = match (final_hold, final_steps) {
        (Some(hold), Some(steps)) => (hold, steps),
        _ => {
            let hold = quiesce_with_retries(host).await?;
            let mut steps = HoldSteps::new(&hold);
            steps.mark("quiesce");
            (hold, steps)
        }
    };
    let head = host.journal.last_lsn();
    tokio::time::timeout(STEP_TIMEOUT, shipper.run_until(link, |s| s.acked >= head))
        .await
        .context("the destination did not apply the tail in time")??;
    steps.mark("tail");
    report.handover_lsn = head;
    report.log_bytes = shipper.stats.wire_bytes;
    report.log_raw_bytes = shipper.stats.bytes;
    report.log_records = shipper.stats.records;
    // Everything that can fail is done before the commit point.
    let Route::Remote { dial } = node.route_to(to, epoch, service)? else {
        bail!("the new owner cannot be this node");
    };
    link.send(Message::HandOver {
        epoch,
        delivered: hold.mark.delivered.iter().map(|(c, d)| (*c, *d)).collect(),
    })
    .await?;
    match link.recv_timeout(STEP_TIMEOUT).await? {
        Message::HandOverDone {
            epoch: e,
            restore_micros,
            replay_micros,
        } if e == epoch => {
            report.destination_restore_seconds = restore_micros as f64 / 1e6;
            report.destination_replay_seconds = replay_micros as f64 / 1e6;
        }
        Message::MigrateAbort { reason } => bail!("the peer aborted: {reason}"),
        other => bail!("expected hand_over_done, got {}", other.name()),
    }
    steps.mark("prepare");
    // Commit point: this node gives the service up — durably first, so a
    // restart cannot take it back; the destination owns it from its commit
    // (this message, the first tunnel below, or its question after a loss).
    let process = {
        let mut state = host.state.lock().await;
        host.ownership
            .save(&OwnershipRecord {
                owner: to.to_string(),
                epoch,
                prepared: None,
            })
            .context("cannot record the hand-over; keeping the service")?;
        fail::fail_point!("source-after-commit-record", |_| {
            tracing::error!("fail point: crashing after the commit record");
            std::process::abort()
        });
        state.owner = to.to_string();
        state.epoch = epoch;
        state.process.take()
    };
    if let Err(e) = link.send(Message::HandOverCommit { epoch }).await {
        tracing::warn!(error = %e, "hand-over commit not sent; the tunnels will carry it");
    }
    steps.mark("commit");
    report.connections_handed_over = host.proxy.hand_over(&hold, dial).await;
    steps.mark("switch");
    report.handover_hold_seconds = hold.held_for().as_secs_f64();
    report.handover_steps = steps.done;
    drop(hold);
    report.interruption_seconds = if iterative {
        // One hold, from the final dump's barrier to here.
        report.handover_hold_seconds
    } else {
        snapshot_hold.as_secs_f64() + report.handover_hold_seconds
    };
    report.jitter_seconds =
        (phases.started.elapsed().as_secs_f64() - report.interruption_seconds).max(0.0);
    let wire = link.wire_bytes();
    report.control_bytes =
        (wire.sent + wire.received).saturating_sub(report.snapshot_bytes + report.log_bytes);
    phases.advance(Phase::Stopping);
    Ok((report, process))
}

/// Restores the service from the snapshot in `dir` and starts it; the
/// process is kept in the state, where an error path finds (and stops) it.
pub(crate) async fn restore_service(
    node: &NodeShared,
    host: &ServiceHost,
    dir: &std::path::Path,
) -> Result<()> {
    let service = &host.config;
    let vars = node.placeholders(service);
    let restored = service.snapshot.driver().restore(dir, &vars, None).await?;
    match restored.pid {
        Some(pid) => {
            host.state.lock().await.process = Some(ServiceProcess::adopt(pid));
            node.wait_service_ready(service).await?;
        }
        None => {
            let process = node.start_service(service).await?;
            host.state.lock().await.process = Some(process);
        }
    }
    Ok(())
}

/// The barrier, tried a few times (a burst of answers can keep a service
/// from going quiet once); forwarding resumes between tries.
async fn quiesce_with_retries(host: &ServiceHost) -> Result<replaymig_proxy::Quiesced> {
    const TRIES: usize = 3;
    let mut last = None;
    for attempt in 1..=TRIES {
        let options = QuiesceOptions {
            idle: Duration::from_millis(host.config.quiet_ms),
            ..QuiesceOptions::default()
        };
        match host.proxy.quiesce(options).await {
            Ok(hold) => return Ok(hold),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "barrier failed; retrying");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(last.expect("at least one try").into())
}

/// Tells the peer why this side gives up (best effort, briefly: the link
/// may be what failed).
async fn tell_abort(link: &mut PeerLink, e: &anyhow::Error) {
    let reason = format!("{e:#}");
    let _ = link
        .send_timeout(Message::MigrateAbort { reason }, Duration::from_secs(2))
        .await;
}

fn ensure_dir(dir: &std::path::Path) -> Result<&std::path::Path> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Waits for the peer's next message, which must match; an abort or
/// anything else is an error.
async fn expect(link: &mut PeerLink, what: &str, ok: impl Fn(&Message) -> bool) -> Result<()> {
    match link.recv_timeout(STEP_TIMEOUT).await? {
        m if ok(&m) => Ok(()),
        Message::MigrateAbort { reason } => bail!("the peer aborted: {reason}"),
        other => bail!("expected {what}, got {}", other.name()),
    }
}

/// The destination's side, after `MigrateBegin`.
pub(crate) async fn migrate_in(
    node: &NodeShared,
    mut link: PeerLink,
    service: String,
    epoch: u64,
    verify_answers: bool,
) -> Result<()> {
    let host = host(node, &service)?;
    {
        let mut state = host.state.lock().await;
        let refusal = if state.owner == node.config.name {
            Some("this node already owns the service".to_string())
        } else if state.migrating {
            Some("a migration is already running here".to_string())
        } else if epoch <= state.epoch {
            Some(format!("stale epoch {epoch} (current is {})", state.epoch))
        } else {
            None
        };
        if let Some(reason) = refusal {
            drop(state);
            let _ = link
                .send(Message::MigrateAbort {
                    reason: reason.clone(),
                })
                .await;
            bail!("migration of {service} refused: {reason}");
        }
        state.migrating = true;
    }
    telemetry::started(&service, "destination");
    host.set_phase("destination", Phase::Transferring);
    link.send(Message::MigrateReady).await?;
    let outcome = destination_steps(node, host, &mut link, epoch, verify_answers).await;
    let mut state = host.state.lock().await;
    state.migrating = false;
    telemetry::outcome(&service, "destination", outcome.is_ok());
    telemetry::replay_lag(&service, 0, 0.0);
    let ended = if outcome.is_ok() {
        Phase::Done
    } else {
        Phase::Aborted
    };
    host.set_phase("destination", ended);
    if let Err(e) = &outcome {
        if e.downcast_ref::<replaymig_replayer::ReplayError>()
            .is_some()
        {
            telemetry::divergence(&service);
        }
    }
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => {
            // Discard: stop the restored copy (never the owner's), and do
            // not hold the state across the stop or the send below.
            let restored = if state.owner != node.config.name {
                state.process.take()
            } else {
                None
            };
            drop(state);
            if let Some(p) = restored {
                p.stop().await;
            }
            tell_abort(&mut link, &e).await;
            // Closing with the source's batches unread would reset the
            // connection before it reads why: read them away briefly.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while link.recv().await.is_ok() {}
            })
            .await;
            Err(e)
        }
    }
}

async fn destination_steps(
    node: &NodeShared,
    host: &ServiceHost,
    link: &mut PeerLink,
    epoch: u64,
    verify_answers: bool,
) -> Result<()> {
    let service = &host.config;
    let driver = service.snapshot.driver();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-in-", service.name))
        .tempdir_in(ensure_dir(&node.config.work_dir)?)?;
    let into = dir.path().join("snapshot");
    // Log batches arriving with the snapshot wait here until the service
    // is restored.
    let mut early = Vec::new();
    // Iterative migrations first send pre-copy rounds into the same
    // directory (each patching the last); the restorable snapshot is the
    // first round that is not a pre-copy.
    let mut rounds = 0;
    let manifest = loop {
        let (manifest, _stats) = transfer::receive_with(link, &into, |msg| match msg {
            Message::LogBatch {
                first_lsn,
                count,
                packed,
            } => {
                early.push((first_lsn, count, packed));
                Ok(())
            }
            other => Err(TransferError::Protocol(format!(
                "unexpected {} during the snapshot",
                other.name()
            ))),
        })
        .await?;
        rounds += 1;
        if !manifest.precopy {
            break manifest;
        }
        tracing::info!(service = %service.name, round = rounds, "pre-copy round received");
    };
    if manifest.service != service.name || manifest.driver != driver.name() {
        bail!(
            "snapshot is of {} by {}, expected {} by {}",
            manifest.service,
            manifest.driver,
            service.name,
            driver.name()
        );
    }
    // This node's journal continues at s+1: drop what an earlier ownership
    // left (it is older than s), keeping LSNs below s+1 spent.
    let last = host.journal.last_lsn();
    if last > manifest.lsn {
        bail!(
            "this node's journal ends at LSN {last}, past the snapshot point {}",
            manifest.lsn
        );
    }
    if last > 0 {
        host.journal.truncate_before(last + 1)?;
    }
    let restore_started = Instant::now();
    host.set_phase("destination", Phase::CatchingUp);
    restore_service(node, host, &into).await?;
    let restored_at = Instant::now();
    let restore = restored_at - restore_started;

    let mut options = ReplayOptions::new(service.backend);
    // Every reproduced answer is checked against the journaled digests,
    // and the first difference aborts before any commit.
    options.verify_answers = verify_answers;
    // As the source forwarded them since the snapshot point.
    options.settle = Some(replaymig_proxy::SETTLE_WAIT);
    let mut replayer = Replayer::new(options);
    for (first_lsn, count, packed) in early {
        let entries = logship::journal_packed(&host.journal, first_lsn, count, &packed).await?;
        for entry in &entries {
            replayer.apply(entry).await?;
        }
    }
    // Acknowledged: what the replay really sent to the service (not just
    // queued), as it goes — so the source's lag figure is the replay's,
    // and the hand-over starts when the service is nearly caught up.
    let mut acked = 0;
    let mut tick = tokio::time::interval(ACK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut lag = LagGauge::default();
    loop {
        let message = tokio::select! {
            m = link.recv() => m?,
            _ = tick.tick() => {
                if heard.elapsed() > STEP_TIMEOUT {
                    bail!("the source sent nothing for {STEP_TIMEOUT:?}");
                }
                acked = ack_progress(link, &replayer, acked).await?;
                lag.update(host, &replayer);
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
                    logship::journal_packed(&host.journal, first_lsn, count, &packed).await?;
                for entry in &entries {
                    replayer.apply(entry).await?;
                }
                acked = ack_progress(link, &replayer, acked).await?;
            }
            Message::HandOver {
                epoch: e,
                delivered,
            } if e == epoch => {
                host.set_phase("destination", Phase::HandingOver);
                let handover_started = Instant::now();
                for (conn, d) in delivered {
                    replayer.ensure_open(conn, d).await?;
                    replayer.set_delivered(conn, d);
                }
                let (report, open) = replayer.finish().await;
                let finish_ms = handover_started.elapsed().as_secs_f64() * 1000.0;
                if let Some(d) = report.divergences.first() {
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
                {
                    let mut state = host.state.lock().await;
                    for c in open {
                        if let Some(stream) = c.stream {
                            state.parked.insert(c.conn, (stream, c.pending));
                        }
                    }
                }
                handover::prepare(
                    host,
                    Prepared {
                        epoch,
                        from: link.peer_node().to_string(),
                        snapshot_dir: dir.path().to_path_buf(),
                        snapshot_lsn: manifest.lsn,
                    },
                )
                .await?;
                tracing::info!(
                    prepare_ms = handover_started.elapsed().as_secs_f64() * 1000.0,
                    "hand-over prepared"
                );
                // The snapshot stays until the hand-over is settled.
                let _kept = dir.keep();
                let timings = handover::DestinationTimings {
                    restore,
                    replay: handover_started - restored_at,
                };
                return handover::settle(node, host, link, timings).await;
            }
            Message::MigrateAbort { reason } => bail!("the source aborted: {reason}"),
            other => bail!("unexpected {} during catch-up", other.name()),
        }
    }
}

/// Acknowledges the replay's progress if it moved past `acked`; returns
/// what is acknowledged now.
/// The replay-lag gauges, refreshed at most every `LAG_EVERY` (it reads
/// one journal record).
#[derive(Default)]
struct LagGauge {
    last: Option<Instant>,
}

const LAG_EVERY: Duration = Duration::from_millis(100);

impl LagGauge {
    fn update(&mut self, host: &ServiceHost, replayer: &Replayer) {
        if self.last.is_some_and(|t| t.elapsed() < LAG_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let head = host.journal.last_lsn();
        let replayed = replayer.replayed_lsn();
        let behind = head.saturating_sub(replayed);
        let seconds = match host.journal.get(replayed + 1) {
            Ok(Some(entry)) if behind > 0 => {
                let now = replaymig_journal::record::now_us();
                now.saturating_sub(entry.record.time_us()) as f64 / 1e6
            }
            _ => 0.0,
        };
        telemetry::replay_lag(&host.config.name, behind, seconds);
    }
}

async fn ack_progress(link: &mut PeerLink, replayer: &Replayer, acked: u64) -> Result<u64> {
    let replayed = replayer.replayed_lsn();
    if replayed > acked {
        logship::ack(link, replayed).await?;
        return Ok(replayed);
    }
    Ok(acked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_lag_hands_over_at_once() {
        let mut c = CatchUp::new();
        assert!(c.ready_at(HANDOVER_SMALL_LAG, 0, c.started));
        assert!(!c.ready_at(HANDOVER_SMALL_LAG + 1, 0, c.started));
    }

    #[test]
    fn a_lag_that_stopped_shrinking_hands_over_if_short_or_quick_to_replay() {
        let mut c = CatchUp::new();
        let t0 = c.started;
        let at = |ms| t0 + Duration::from_millis(ms);
        // 300 behind, replaying 3,000 records/s: the tail takes 100 ms,
        // over the budget, so catch-up goes on while the lag shrinks...
        assert!(!c.ready_at(400, 0, t0));
        assert!(!c.ready_at(300, 300, at(100)));
        // ...and still, once stalled, while the tail is too long.
        assert!(!c.ready_at(300, 600, at(250)));
        // At 10,000 records/s the same tail fits in 50 ms: go.
        assert!(c.ready_at(300, 2_500, at(250)));

        let mut c = CatchUp::new();
        let t0 = c.started;
        // A lag within HANDOVER_LAG_RECORDS goes once it stalls, however
        // slow the replay.
        assert!(!c.ready_at(HANDOVER_LAG_RECORDS, 0, t0));
        assert!(!c.ready_at(HANDOVER_LAG_RECORDS, 1, t0 + Duration::from_millis(50)));
        assert!(c.ready_at(HANDOVER_LAG_RECORDS, 2, t0 + CATCH_UP_SETTLE));
    }
}
