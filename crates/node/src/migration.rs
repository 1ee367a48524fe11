//! What both migration drivers share: the catch-up rule, the barrier with
//! retries, restoring a service, progress and phase reporting, the peer
//! abort, the replay-lag gauge. The protocol itself is two pure machines in
//! `replaymig_migrate` (docs/protocol.md); `source.rs` and
//! `destination.rs` carry out their actions.

use crate::config::{ConnectionState, ServiceConfig};
use crate::context::{NodeShared, ServiceHost};
use crate::process::ServiceProcess;
use crate::report::{Method, Phase, Progress};
use crate::telemetry;
use anyhow::{Context, Result};
use replaymig_migrate::logship;
use replaymig_peer::{Message, PeerLink};
use replaymig_proxy::{CloseAtBarrier, QuiesceOptions};
use replaymig_replayer::Replayer;
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
/// A lag that has not shrunk for this long is handed over when the replay
/// applies it within `PATIENT_TAIL_BUDGET`: a load the replay only matches
/// (the source forwards settled too) would otherwise be caught up only
/// when it stops. The hand-over's hold stays bounded by `max_handover_ms`.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(1);
/// See `CATCH_UP_PATIENCE`.
const PATIENT_TAIL_BUDGET: Duration = Duration::from_millis(150);

/// When catch-up has gone far enough to hold the clients for the rest: the
/// destination acknowledges a record only once the answers the original
/// had before the next one were reproduced, so the tail left for the hold
/// is replayed at the restored service's pace — keep it as short as the
/// load allows.
pub(crate) struct CatchUp {
    best: u64,
    improved: Instant,
    /// The LSN the destination's acknowledgements start from: the
    /// snapshot point (everything up to it is in the snapshot, and the
    /// first acknowledgement jumps past it — no replay).
    base: u64,
    /// When the replay first acknowledged a record past `base`, and that
    /// acknowledgement: its rate is measured from there, leaving out the
    /// restore before it.
    replaying_since: Option<(Instant, u64)>,
}

impl CatchUp {
    /// Catch-up of a destination restored at `snapshot_lsn`.
    pub(crate) fn new(snapshot_lsn: u64) -> Self {
        CatchUp {
            best: u64::MAX,
            improved: Instant::now(),
            base: snapshot_lsn,
            replaying_since: None,
        }
    }

    /// Records the replay has acknowledged per second since it began
    /// (what a tail of a given lag is expected to cost); 0 until then.
    pub(crate) fn rate_at(&self, acked: u64, now: Instant) -> f64 {
        match self.replaying_since {
            Some((since, first)) if now > since => {
                acked.saturating_sub(first) as f64 / now.duration_since(since).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Whether to hand over, the destination being `lag` records behind
    /// with `acked` acknowledged in all.
    pub(crate) fn ready(&mut self, lag: u64, acked: u64) -> bool {
        self.ready_at(lag, acked, Instant::now())
    }

    fn ready_at(&mut self, lag: u64, acked: u64, now: Instant) -> bool {
        if acked > self.base && self.replaying_since.is_none() {
            self.replaying_since = Some((now, acked));
        }
        if lag < self.best {
            self.best = lag;
            self.improved = now;
        }
        let rate = self.rate_at(acked, now);
        let fits = |budget: Duration| lag as f64 <= rate * budget.as_secs_f64();
        let stalled_for = now.duration_since(self.improved);
        let stalled = stalled_for >= CATCH_UP_SETTLE;
        lag <= HANDOVER_SMALL_LAG
            || (stalled && (lag <= HANDOVER_LAG_RECORDS || fits(TAIL_BUDGET)))
            || (stalled_for >= CATCH_UP_PATIENCE && fits(PATIENT_TAIL_BUDGET))
    }
}

/// Bound on catching up.
pub(crate) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on each protocol step.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Progress callback: every phase change, and shipping figures.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// Sends shipping figures at most twice a second.
pub(crate) struct Ticker<'a> {
    pub(crate) progress: ProgressFn<'a>,
    pub(crate) last: Instant,
}

impl Ticker<'_> {
    pub(crate) fn tick(
        &mut self,
        snapshot_bytes: u64,
        log_records: u64,
        applied_lsn: u64,
        head_lsn: u64,
    ) {
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
pub(crate) struct HoldSteps {
    since: Instant,
    pub(crate) done: Vec<(String, f64)>,
}

impl HoldSteps {
    pub(crate) fn new(hold: &replaymig_proxy::Quiesced) -> Self {
        HoldSteps {
            since: hold.held_since,
            done: Vec::new(),
        }
    }

    pub(crate) fn mark(&mut self, step: &str) {
        self.done
            .push((step.to_string(), self.since.elapsed().as_secs_f64()));
        self.since = Instant::now();
    }
}

/// Records phase durations as the state machine moves.
pub(crate) struct Phases<'a> {
    host: &'a ServiceHost,
    pub(crate) current: Phase,
    since: Instant,
    /// The trigger.
    pub(crate) started: Instant,
    pub(crate) done: Vec<(String, f64)>,
    progress: ProgressFn<'a>,
}

impl<'a> Phases<'a> {
    pub(crate) fn new(host: &'a ServiceHost, progress: ProgressFn<'a>) -> Self {
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
    pub(crate) fn advance(&mut self, to: Phase) {
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

pub(crate) fn host<'a>(node: &'a NodeShared, service: &str) -> Result<&'a Arc<ServiceHost>> {
    node.services
        .get(service)
        .with_context(|| format!("no service {service:?} on this node"))
}

/// Settled forwarding on the source's proxy while a replay migration runs;
/// off again however the source's steps end.
/// (A service with the `none` driver forwards settled all the time.)
pub(crate) struct SettledForwarding<'a> {
    proxy: &'a replaymig_proxy::ProxyControl,
    was: bool,
}

impl<'a> SettledForwarding<'a> {
    pub(crate) fn on(proxy: &'a replaymig_proxy::ProxyControl) -> Self {
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
pub(crate) struct Plan<'a> {
    pub(crate) to: &'a str,
    pub(crate) epoch: u64,
    /// The service process to snapshot (CRIU).
    pub(crate) pid: Option<u32>,
    pub(crate) method: Method,
    /// The destination checks every replayed answer (answers journaled).
    pub(crate) verify_answers: bool,
    /// Fleet mode: the registry's entry when the migration started (the
    /// commit compares against it).
    pub(crate) registry_read: Option<replaymig_fleet::Owned>,
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
            if service.carries_connections() {
                crate::carry::resume_restored(pid)?;
            }
            node.wait_service_ready(service).await?;
        }
        None => {
            let process = node.start_service(service).await?;
            host.state.lock().await.process = Some(process);
        }
    }
    Ok(())
}

/// Client input held by a migration's barrier. Released when dropped, and
/// then its length goes to the hold histogram — whatever ends it.
pub(crate) struct Hold {
    inner: replaymig_proxy::Quiesced,
    service: String,
    /// The service, paused at a barrier of a migration that carries the
    /// connections (`carry::pause_and_drain`); resumed with the release.
    _paused: Option<crate::carry::PausedService>,
}

impl std::ops::Deref for Hold {
    type Target = replaymig_proxy::Quiesced;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        telemetry::hold(&self.service, "held", self.inner.held_for().as_secs_f64());
    }
}

/// Barrier attempts that gave up, and how long they held client input:
/// part of the interruption clients saw, failed or not.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FailedHolds {
    pub(crate) count: u32,
    pub(crate) seconds: f64,
}

/// The first barrier of a back-off series waits this long after a failed
/// attempt, doubling each time: the service serves in between.
const HOLD_BACKOFF: Duration = Duration::from_millis(100);

/// What a barrier fixes, which decides the connections it may close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BarrierFor {
    /// A snapshot the destination restores and continues the connections
    /// open at it from (replay's first barrier, iterative's only one).
    Snapshot,
    /// A point every connection since the last snapshot was replayed
    /// from its start up to (replay's hand-over), or a snapshot of a
    /// service replayed from nothing (driver `none`): no connection
    /// continues without its whole input.
    Replayed,
}

/// Which connections a barrier for `purpose` closes (see
/// `ServiceConfig::close_connections`).
pub(crate) fn close_at_barrier(config: &ServiceConfig, purpose: BarrierFor) -> CloseAtBarrier {
    if config.carries_connections() {
        // The snapshot carries every connection as it is.
        return CloseAtBarrier::default();
    }
    let close = config.close_connections;
    CloseAtBarrier {
        unanswered: close,
        in_use: close
            && purpose == BarrierFor::Snapshot
            && config.connection_state == ConnectionState::Unknown,
    }
}

/// The quiet window of a barrier that pauses the service: only a guard
/// against pausing it mid-answer (which fails the attempt, never the
/// migration), since the pause itself makes the point exact.
const CARRIED_QUIET: Duration = Duration::from_millis(1);

/// The barrier, tried up to `hold_attempts` times, each holding client
/// input at most `max_hold_ms` (a burst of answers, a large request in
/// flight or a slow answer can keep a service from going quiet at one
/// moment); forwarding resumes between tries, for a doubling back-off.
/// Every failed attempt is counted in `failed` (and the hold histogram).
pub(crate) async fn quiesce_with_retries(
    host: &ServiceHost,
    purpose: BarrierFor,
    pause_group: Option<u32>,
    failed: &mut FailedHolds,
) -> Result<Hold> {
    let service = &host.config.name;
    let attempts = host.config.hold_attempts.max(1);
    let mut backoff = HOLD_BACKOFF;
    let mut last = None;
    for attempt in 1..=attempts {
        let mut close = close_at_barrier(&host.config, purpose);
        // Input without an answer is given one release first: a request
        // still being sent, or a slow answer, is done after the back-off;
        // what is still unanswered at the next attempt is closed.
        close.unanswered &= attempt > 1 || attempt == attempts;
        // Every connection continues as it is, unanswered input included
        // (carried by the snapshot, or opened since at the hand-over): the
        // service is paused at the point instead of waited for, so no
        // answer comes from both sides (`carry::pause_and_drain`).
        let carried = host.config.carries_connections();
        let options = QuiesceOptions {
            idle: if carried {
                CARRIED_QUIET
            } else {
                Duration::from_millis(host.config.quiet_ms)
            },
            timeout: Duration::from_millis(host.config.max_hold_ms),
            close,
            carried,
        };
        let started = Instant::now();
        let attempt_result = match host.proxy.quiesce(options).await {
            Ok(inner) => match (carried, pause_group) {
                (true, Some(group)) => crate::carry::pause_and_drain(host, &inner, group)
                    .await
                    .map(|paused| (inner, Some(paused))),
                (true, None) => Err(anyhow::anyhow!(
                    "the service's process is unknown, so it cannot be paused at the barrier"
                )),
                (false, _) => Ok((inner, None)),
            },
            Err(e) => Err(e.into()),
        };
        match attempt_result {
            Ok((inner, paused)) => {
                return Ok(Hold {
                    inner,
                    service: service.clone(),
                    _paused: paused,
                })
            }
            Err(e) => {
                let held = started.elapsed().as_secs_f64();
                failed.count += 1;
                failed.seconds += held;
                telemetry::hold(service, "not_quiet", held);
                tracing::warn!(
                    attempt,
                    attempts,
                    held_ms = held * 1000.0,
                    error = %e,
                    "barrier gave up; input released"
                );
                last = Some(e);
                if attempt < attempts {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
    let e = last.expect("at least one attempt");
    Err(e.context(format!(
        "the barrier did not go quiet in {attempts} attempts of at most {} ms (clients held {:.3} s in all)",
        host.config.max_hold_ms, failed.seconds
    )))
}

/// Tells the peer why this side gives up (best effort, briefly: the link
/// may be what failed).
pub(crate) async fn tell_abort(link: &mut PeerLink, e: &anyhow::Error) {
    let reason = format!("{e:#}");
    let _ = link
        .send_timeout(Message::MigrateAbort { reason }, Duration::from_secs(2))
        .await;
}

pub(crate) fn ensure_dir(dir: &std::path::Path) -> Result<&std::path::Path> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Acknowledges the replay's progress if it moved past `acked`; returns
/// what is acknowledged now.
/// The replay-lag gauges, refreshed at most every `LAG_EVERY` (it reads
/// one journal record).
#[derive(Default)]
pub(crate) struct LagGauge {
    last: Option<Instant>,
}

const LAG_EVERY: Duration = Duration::from_millis(100);

impl LagGauge {
    pub(crate) fn update(&mut self, host: &ServiceHost, replayer: &Replayer) {
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

pub(crate) async fn ack_progress(
    link: &mut PeerLink,
    replayer: &Replayer,
    acked: u64,
) -> Result<u64> {
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
        let mut c = CatchUp::new(0);
        assert!(c.ready_at(HANDOVER_SMALL_LAG, 0, c.improved));
        assert!(!c.ready_at(HANDOVER_SMALL_LAG + 1, 0, c.improved));
    }

    #[test]
    fn a_lag_that_stopped_shrinking_hands_over_if_short_or_quick_to_replay() {
        let mut c = CatchUp::new(0);
        let t0 = c.improved;
        let at = |ms| t0 + Duration::from_millis(ms);
        // 300 behind, replaying 3,000 records/s (measured from its first
        // acknowledgement): the tail takes 100 ms, over the budget, so
        // catch-up goes on while the lag shrinks...
        assert!(!c.ready_at(400, 0, t0));
        assert!(!c.ready_at(300, 300, at(100)));
        // ...and still, once stalled, while the tail is too long.
        assert!(!c.ready_at(300, 750, at(250)));
        // At 10,000 records/s the same tail fits in 50 ms: go.
        assert!(c.ready_at(300, 1_800, at(250)));

        let mut c = CatchUp::new(0);
        let t0 = c.improved;
        // A lag within HANDOVER_LAG_RECORDS goes once it stalls, however
        // slow the replay.
        assert!(!c.ready_at(HANDOVER_LAG_RECORDS, 0, t0));
        assert!(!c.ready_at(HANDOVER_LAG_RECORDS, 1, t0 + Duration::from_millis(50)));
        assert!(c.ready_at(HANDOVER_LAG_RECORDS, 2, t0 + CATCH_UP_SETTLE));
    }

    #[test]
    fn the_replay_rate_counts_from_the_snapshot_point_not_from_zero() {
        // The first acknowledgement jumps to the snapshot point (50,000):
        // that is no replay. Counted from 0, 10,000 records "replayed" in
        // 100 ms let a 1,000-record lag look like a 10 ms tail (seen:
        // rates of 270,000–610,000 records/s and tails of 135–290 ms).
        let mut c = CatchUp::new(50_000);
        let t0 = c.improved;
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!c.ready_at(1_000, 0, t0));
        assert!(
            !c.ready_at(1_000, 50_000, at(50)),
            "restored, not replaying yet"
        );
        assert!(!c.ready_at(1_000, 50_100, at(100)));
        assert!(!c.ready_at(1_000, 50_300, at(300)), "1,000 s⁻¹: a 1 s tail");
        assert!((c.rate_at(50_300, at(300)) - 1_000.0).abs() < 1.0);
    }

    #[test]
    fn a_lag_stalled_for_a_second_goes_if_its_tail_is_short_enough() {
        // 210 behind at 3,000 records/s (a load the replay only matches):
        // a 70 ms tail, over 50 ms, so not at 100 ms of stall; at 1 s of
        // stall a tail up to 150 ms goes; 600 behind (200 ms) never does.
        let mut c = CatchUp::new(0);
        let t0 = c.improved;
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!c.ready_at(210, 1, t0));
        assert!(!c.ready_at(210, 601, at(200)));
        assert!(!c.ready_at(210, 2_701, at(900)));
        assert!(c.ready_at(210, 3_001, at(1_000)));
        let mut c = CatchUp::new(0);
        assert!(!c.ready_at(600, 1, t0));
        assert!(!c.ready_at(600, 3_001, at(1_000)));
    }
}
