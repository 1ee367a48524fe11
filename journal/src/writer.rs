//! The single writer: one task takes every append, assigns contiguous LSNs,
//! encodes whatever queued up meanwhile into one segment, makes it durable
//! per the `Durability` mode (staging log write, plus fdatasync in `sync`),
//! inserts it into sled, and only then answers the callers (group commit).
//!
//! It runs as a task on the caller's runtime rather than on a thread of its
//! own: on a two-core machine shared with the service and its clients, the
//! cross-thread wake-ups of a dedicated writer thread cost more than the
//! short `write` it does inline. The slow calls (`fdatasync`, checkpoints)
//! go to the blocking pool.
//!
//! A full disk is handled here, by the explicit [`Health`] state: the
//! writer refuses appends (writing nothing, spending no LSN) while free
//! space is under the reserve (`space`), and if sled failed a write anyway
//! (it then refuses every later one) it refuses appends and reopens the
//! storage in place every `REOPEN_EVERY` until that works — the process
//! keeps running and serves again as soon as space returns.

use crate::durability::Durability;
use crate::error::{JournalError, Result};
use crate::names;
use crate::record::Record;
use crate::segment;
use crate::space::{LowSpace, SpaceGuard};
use crate::staging::StagingLog;
use crate::store::Store;
use crate::Lsn;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Upper bound on requests folded into one group commit, so one group's
/// latency stays bounded under a flood.
const MAX_GROUP_REQUESTS: usize = 1024;
/// Upper bound on one group's encoded bytes (one sled value).
pub(crate) const MAX_GROUP_BYTES: usize = 4 << 20;
/// How often sled is flushed + fsynced and covered staging files dropped.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// A staging file this large triggers a checkpoint early.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// A group this large is staged and stored on a blocking thread; a
/// smaller one inline (unless it is fdatasynced), where the hand-off would
/// cost more than it frees.
pub(crate) const OFFLOAD_BYTES: usize = 8 << 10;
/// How often a failed storage is reopened.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Whether the writer takes appends.
#[derive(Debug)]
enum Health {
    /// Appends are staged and stored.
    Healthy,
    /// Free space is under the reserve: appends are refused, nothing is
    /// written, sled is untouched; each new group measures again.
    LowSpace(LowSpace),
    /// sled failed a write or a checkpoint (and refuses every later
    /// write): appends are refused and the storage is reopened (staging
    /// log replayed) every `REOPEN_EVERY` until that succeeds.
    Faulted {
        error: String,
        since: Instant,
        last_attempt: Option<Instant>,
    },
}

impl Health {
    /// The label value of the refusing gauge and counter.
    fn reason(&self) -> Option<&'static str> {
        match self {
            Health::Healthy => None,
            Health::LowSpace(_) => Some("low_space"),
            Health::Faulted { .. } => Some("storage_failed"),
        }
    }
}

/// Whether an error means sled itself failed (and must be reopened).
fn poisons_storage(e: &JournalError) -> bool {
    matches!(e, JournalError::Storage(_) | JournalError::Reopening)
}

/// The records of one append call: most calls carry one, so avoid a Vec.
pub(crate) enum Records {
    One(Record),
    Many(Vec<Record>),
}

impl Records {
    fn len(&self) -> usize {
        match self {
            Records::One(_) => 1,
            Records::Many(v) => v.len(),
        }
    }
    fn iter(&self) -> impl Iterator<Item = &Record> {
        let (one, many) = match self {
            Records::One(r) => (Some(r), &[][..]),
            Records::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter())
    }
}

/// What callers send the writer.
pub(crate) enum Request {
    /// Append these records; answer with the LSN of the first.
    Append {
        records: Records,
        enqueued: Instant,
        reply: oneshot::Sender<Result<Lsn>>,
    },
    /// Append these records under LSNs starting at `first` (records
    /// shipped from another node keep their LSNs); answer with `first`.
    AppendAt {
        first: Lsn,
        records: Vec<Record>,
        enqueued: Instant,
        reply: oneshot::Sender<Result<Lsn>>,
    },
    /// Finish what is queued, checkpoint, stop.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// A request that ends the current group: it is handled on its own after
/// the group is committed.
enum Interrupt {
    AppendAt {
        first: Lsn,
        records: Vec<Record>,
        enqueued: Instant,
        reply: oneshot::Sender<Result<Lsn>>,
    },
    Close(oneshot::Sender<Result<()>>),
}

/// An append waiting in the current group: its records, when it was asked
/// for (for the latency histogram) and whom to answer.
type Pending = (Records, Instant, oneshot::Sender<Result<Lsn>>);

/// Files a request into the current group; anything else is returned so
/// the loop commits the group first and then handles it.
fn sort(req: Request, group: &mut Vec<Pending>) -> Option<Interrupt> {
    match req {
        Request::Append {
            records,
            enqueued,
            reply,
        } => {
            group.push((records, enqueued, reply));
            None
        }
        Request::AppendAt {
            first,
            records,
            enqueued,
            reply,
        } => Some(Interrupt::AppendAt {
            first,
            records,
            enqueued,
            reply,
        }),
        Request::Close { reply } => Some(Interrupt::Close(reply)),
    }
}

/// About how many bytes a group's segment will take.
fn group_bytes(group: &[Pending]) -> usize {
    group
        .iter()
        .flat_map(|(records, _, _)| records.iter())
        .map(|r| r.encoded_len_hint() + 4)
        .sum()
}

/// Metric handles, registered once so the per-record path does no lookups.
struct WriterMetrics {
    appends: Counter,
    bytes: Counter,
    latency: Histogram,
    group: Histogram,
    last_lsn: Gauge,
    first_lsn: Gauge,
    size: Gauge,
    errors: Counter,
    free: Gauge,
    /// Per reason: `low_space`, `storage_failed`.
    refusing: [Gauge; 2],
    refused: [Counter; 2],
    reopened: Counter,
    reopen_failed: Counter,
}

/// The `reason` label values, in the order of the per-reason handles.
const REFUSAL_REASONS: [&str; 2] = ["low_space", "storage_failed"];

impl WriterMetrics {
    /// Handles labelled with the journal's service.
    fn new(service: &str) -> Self {
        let s = || service.to_string();
        WriterMetrics {
            appends: counter!(names::APPENDS_TOTAL, "service" => s()),
            bytes: counter!(names::APPEND_BYTES_TOTAL, "service" => s()),
            latency: histogram!(names::APPEND_DURATION_SECONDS, "service" => s()),
            group: histogram!(names::BATCH_RECORDS, "service" => s()),
            last_lsn: gauge!(names::LAST_LSN, "service" => s()),
            first_lsn: gauge!(names::FIRST_LSN, "service" => s()),
            size: gauge!(names::SIZE_BYTES, "service" => s()),
            errors: counter!(names::ERRORS_TOTAL, "service" => s(), "kind" => "journal_write"),
            free: gauge!(names::FREE_BYTES, "service" => s()),
            refusing: REFUSAL_REASONS
                .map(|r| gauge!(names::REFUSING, "service" => s(), "reason" => r)),
            refused: REFUSAL_REASONS
                .map(|r| counter!(names::REFUSED_RECORDS_TOTAL, "service" => s(), "reason" => r)),
            reopened: counter!(names::REOPENS_TOTAL, "service" => s(), "outcome" => "ok"),
            reopen_failed: counter!(names::REOPENS_TOTAL, "service" => s(), "outcome" => "failed"),
        }
    }

    /// Sets the refusing gauges to the state (one at 1 at most).
    fn show(&self, health: &Health) {
        let reason = health.reason();
        for (gauge, r) in self.refusing.iter().zip(REFUSAL_REASONS) {
            gauge.set(if reason == Some(r) { 1.0 } else { 0.0 });
        }
    }

    fn count_refused(&self, health: &Health, records: u64) {
        if let Some(i) = REFUSAL_REASONS
            .iter()
            .position(|r| health.reason() == Some(r))
        {
            self.refused[i].increment(records);
        }
    }
}

/// Sets the storage gauges (extent and size on disk) from the store.
fn storage_gauges(store: &Store, first_lsn: &Gauge, size: &Gauge) {
    if let Ok(first) = store.first_lsn() {
        first_lsn.set(first.unwrap_or(0) as f64);
    }
    if let Ok(bytes) = store.size_on_disk() {
        size.set(bytes as f64);
    }
}

/// State owned by the writer task.
pub(crate) struct Writer {
    store: Store,
    durability: Durability,
    /// Absent in `none` mode.
    staging: Option<StagingLog>,
    next_lsn: Lsn,
    head: watch::Sender<Lsn>,
    /// Group commits done, readable through `Journal::group_commits`.
    groups: Arc<AtomicU64>,
    /// The checkpoint running in the blocking pool, if any.
    checkpoint: Option<JoinHandle<Result<()>>>,
    last_checkpoint: Instant,
    /// Reused encoding buffer.
    segment: Vec<u8>,
    metrics: WriterMetrics,
    /// Takes appends, refuses them for low space, or reopens the storage.
    health: Health,
    space: SpaceGuard,
    /// Segment bytes appended since the last checkpoint started, and
    /// those the running checkpoint is making durable: what sled still
    /// has to write (the space guard counts it).
    unflushed: u64,
    checkpointing: u64,
}

impl Writer {
    pub(crate) fn new(
        store: Store,
        durability: Durability,
        head: watch::Sender<Lsn>,
        groups: Arc<AtomicU64>,
        service: &str,
        min_free_bytes: Option<u64>,
    ) -> Result<Self> {
        let next_lsn = store.next_lsn()?;
        // Recovery on open emptied the staging dir; start afresh.
        let staging = new_staging(&store, durability)?;
        let metrics = WriterMetrics::new(service);
        metrics.last_lsn.set((next_lsn - 1) as f64);
        storage_gauges(&store, &metrics.first_lsn, &metrics.size);
        let space = SpaceGuard::new(&store.dir, min_free_bytes);
        gauge!(names::MIN_FREE_BYTES, "service" => service.to_string()).set(space.reserve as f64);
        metrics.show(&Health::Healthy);
        if let Some(free) = space.free() {
            metrics.free.set(free as f64);
        }
        Ok(Writer {
            health: Health::Healthy,
            space,
            unflushed: 0,
            checkpointing: 0,
            store,
            durability,
            staging,
            next_lsn,
            head,
            groups,
            checkpoint: None,
            last_checkpoint: Instant::now(),
            segment: Vec::new(),
            metrics,
        })
    }

    /// Serves requests until the journal is closed or every sender is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut group: Vec<Pending> = Vec::new();
        let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                req = rx.recv() => req,
                _ = ticker.tick() => {
                    self.maybe_reopen().await;
                    self.maybe_checkpoint(false);
                    continue;
                }
            };
            let Some(first) = first else {
                // Every handle is gone: nobody to tell, so log a failure.
                if let Err(e) = self.final_checkpoint().await {
                    tracing::error!(error = %e, "final journal checkpoint failed; staging files kept");
                }
                return;
            };
            let mut close = sort(first, &mut group);
            let mut bytes = group_bytes(&group);
            while close.is_none() && group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(req) => {
                        close = sort(req, &mut group);
                        bytes += group
                            .last()
                            .map_or(0, |p| group_bytes(std::slice::from_ref(p)));
                    }
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit(&mut group).await;
            }
            match close {
                Some(Interrupt::Close(reply)) => {
                    let _ = reply.send(self.final_checkpoint().await);
                    return;
                }
                Some(Interrupt::AppendAt {
                    first,
                    records,
                    enqueued,
                    reply,
                }) => self.import(first, records, enqueued, reply).await,
                None => {}
            }
            self.maybe_checkpoint(false);
        }
    }

    /// Appends records at the LSNs they already have: they must continue
    /// the journal exactly, except that an empty journal may start anywhere
    /// (a node receiving a service's log after its snapshot point).
    async fn import(
        &mut self,
        first: Lsn,
        records: Vec<Record>,
        enqueued: Instant,
        reply: oneshot::Sender<Result<Lsn>>,
    ) {
        if first != self.next_lsn {
            let empty = matches!(self.store.last_lsn(), Ok(None));
            if !(empty && first > self.next_lsn) {
                let _ = reply.send(Err(JournalError::Invalid(format!(
                    "records for LSN {first} do not continue this journal (next LSN is {})",
                    self.next_lsn
                ))));
                return;
            }
            if let Err(e) = self.store.truncate_before(first) {
                let _ = reply.send(Err(e));
                return;
            }
            self.next_lsn = first;
        }
        let mut group = vec![(Records::Many(records), enqueued, reply)];
        self.commit(&mut group).await;
    }

    /// Encodes, stages, stores one group; answers its callers.
    async fn commit(&mut self, group: &mut Vec<Pending>) {
        if let Err(refusal) = self.admit(group_bytes(group) as u64) {
            let records: usize = group.iter().map(|(r, _, _)| r.len()).sum();
            self.metrics.count_refused(&self.health, records as u64);
            for (_, _, reply) in group.drain(..) {
                let _ = reply.send(Err(JournalError::Refusing(refusal.clone())));
            }
            return;
        }
        let first_lsn = self.next_lsn;
        let mut lsn = first_lsn;
        self.segment.clear();
        for (records, _, _) in group.iter() {
            for record in records.iter() {
                segment::push(&mut self.segment, lsn, record);
                lsn += 1;
            }
        }
        let outcome = self.persist(first_lsn).await;
        if !matches!(outcome, Err(Failure::BeforeStaging(_))) {
            // Staged (or stored): these LSNs are spent even if a later step
            // failed, so they are never handed out twice.
            self.next_lsn = lsn;
        }
        let records = lsn - first_lsn;
        match outcome {
            Ok(()) => {
                let last = lsn - 1;
                self.head.send_replace(last);
                self.groups.fetch_add(1, Ordering::Relaxed);
                self.metrics.appends.increment(records);
                self.metrics.bytes.increment(self.segment.len() as u64);
                self.unflushed += self.segment.len() as u64;
                self.metrics.group.record(records as f64);
                self.metrics.last_lsn.set(last as f64);
                let mut next = first_lsn;
                for (records, enqueued, reply) in group.drain(..) {
                    self.metrics
                        .latency
                        .record(enqueued.elapsed().as_secs_f64());
                    let _ = reply.send(Ok(next));
                    next += records.len() as u64;
                }
            }
            Err(Failure::BeforeStaging(e) | Failure::AfterStaging(e)) => {
                tracing::error!(error = %e, first_lsn, records, "journal write failed");
                self.metrics.errors.increment(1);
                if poisons_storage(&e) {
                    self.fault(e.to_string());
                }
                let msg = e.to_string();
                for (_, _, reply) in group.drain(..) {
                    let _ = reply.send(Err(JournalError::GroupFailed(msg.clone())));
                }
            }
        }
    }

    /// Staging write (+ fdatasync), then the sled insert — on a blocking
    /// thread for a large group or any fdatasync: they are a fifth of a
    /// busy proxy's thread (sled's encoding and fresh buffers), and while
    /// they run the proxy relays on and the next group fills up; a small
    /// group without fdatasync inline, where the hand-off would cost more.
    /// One hand-off per group, not per record. Once
    /// the group is staged it is also inserted even if the fdatasync
    /// failed, so a later checkpoint never deletes the only copy of LSNs
    /// already spent (which would leave a gap); the callers still get the
    /// error.
    async fn persist(&mut self, first_lsn: Lsn) -> Result<(), Failure> {
        let sync = self.durability == Durability::Sync;
        // An fdatasync never runs on the relay's thread, whatever the size.
        if !sync && self.segment.len() < OFFLOAD_BYTES {
            let staging = self.staging.as_mut();
            return persist_segment(&self.store, staging, sync, first_lsn, &self.segment);
        }
        let mut staging = self.staging.take();
        let segment = std::mem::take(&mut self.segment);
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let outcome = persist_segment(&store, staging.as_mut(), sync, first_lsn, &segment);
            (outcome, staging, segment)
        })
        .await;
        match stored {
            Ok((outcome, staging, segment)) => {
                self.staging = staging;
                self.segment = segment;
                outcome
            }
            // The staging log went with the panicked task: no append may
            // go unstaged, so the storage is reopened (with a new one).
            Err(e) => {
                let error = format!("journal store task failed: {e}");
                self.fault(error.clone());
                Err(Failure::AfterStaging(JournalError::Io(
                    std::io::Error::other(error),
                )))
            }
        }
    }

    /// Starts a background checkpoint when one is due and none is running:
    /// rotate the staging file, then flush + fsync sled and delete the
    /// finished file.
    fn maybe_checkpoint(&mut self, force: bool) {
        if self.checkpoint.as_ref().is_some_and(|c| !c.is_finished()) {
            return;
        }
        if let Some(done) = self.checkpoint.take() {
            self.checkpointing = 0;
            let failure = match futures_now(done) {
                Some(Ok(Err(e))) => Some(e.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(e) = failure {
                tracing::error!(error = %e, "journal checkpoint failed; staging files kept");
                self.metrics.errors.increment(1);
                // sled could not make what it holds durable: it will not
                // take more either. Reopen it from the staging log.
                self.fault(e);
            }
        }
        if matches!(self.health, Health::Faulted { .. }) {
            return;
        }
        let Some(staging) = self.staging.as_mut() else {
            // `none`: sled flushes on its own every 500 ms.
            if self.last_checkpoint.elapsed() >= 4 * CHECKPOINT_EVERY {
                self.unflushed = 0;
                self.last_checkpoint = Instant::now();
            }
            return;
        };
        let due = staging.bytes > 0
            && (force
                || staging.bytes >= CHECKPOINT_BYTES
                || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY);
        if !due {
            return;
        }
        let finished: PathBuf = match staging.rotate() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot rotate the journal staging file");
                self.metrics.errors.increment(1);
                return;
            }
        };
        self.last_checkpoint = Instant::now();
        self.checkpointing = std::mem::take(&mut self.unflushed);
        let store = self.store.clone();
        let (first_lsn, size) = (self.metrics.first_lsn.clone(), self.metrics.size.clone());
        self.checkpoint = Some(tokio::task::spawn_blocking(move || {
            store.make_durable()?;
            std::fs::remove_file(&finished)?;
            storage_gauges(&store, &first_lsn, &size);
            Ok(())
        }));
    }

    /// Whether a group of `bytes` may be written now. Moves between
    /// `Healthy` and `LowSpace` as free space crosses the reserve; a
    /// `Faulted` storage refuses until it has been reopened.
    fn admit(&mut self, bytes: u64) -> Result<(), String> {
        if let Health::Faulted { error, .. } = &self.health {
            return Err(format!(
                "its storage failed ({error}); reopening it every {}s, nothing from LSN {} on is written until then",
                REOPEN_EVERY.as_secs(),
                self.next_lsn
            ));
        }
        let admitted = self.space.admit(bytes, self.unflushed + self.checkpointing);
        if let Some(free) = self.space.free() {
            self.metrics.free.set(free as f64);
        }
        match (admitted, &self.health) {
            (Ok(()), Health::LowSpace(low)) => {
                tracing::info!(
                    free = self.space.free(),
                    reserve = low.reserve,
                    "journal has space again: taking appends"
                );
                self.set_health(Health::Healthy);
                Ok(())
            }
            (Ok(()), _) => Ok(()),
            (Err(low), health) => {
                if !matches!(health, Health::LowSpace(_)) {
                    tracing::error!(free = low.free, reserve = low.reserve, dir = %self.store.dir.display(), "journal disk under its free-space reserve: refusing appends until space is freed");
                    self.metrics.errors.increment(1);
                }
                self.set_health(Health::LowSpace(low));
                Err(low.reason(self.next_lsn))
            }
        }
    }

    fn set_health(&mut self, health: Health) {
        self.metrics.show(&health);
        self.health = health;
    }

    /// sled failed: refuse appends until the storage is reopened.
    fn fault(&mut self, error: String) {
        if matches!(self.health, Health::Faulted { .. }) {
            return;
        }
        tracing::error!(error = %error, dir = %self.store.dir.display(), "journal storage failed: refusing appends and reopening it every {}s", REOPEN_EVERY.as_secs());
        self.set_health(Health::Faulted {
            error,
            since: Instant::now(),
            last_attempt: None,
        });
    }

    /// While faulted and the last attempt is `REOPEN_EVERY` old: closes
    /// the staging file, reopens the storage (which replays the staging
    /// log into it and makes it durable) and starts a new staging file.
    async fn maybe_reopen(&mut self) {
        let Health::Faulted {
            since,
            last_attempt,
            ..
        } = &mut self.health
        else {
            return;
        };
        if last_attempt.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return;
        }
        *last_attempt = Some(Instant::now());
        let since = *since;
        if let Some(running) = self.checkpoint.take() {
            let _ = running.await;
        }
        self.checkpointing = 0;
        // Recovery replays and then removes every staging file, the
        // current one included: close it first.
        self.staging = None;
        let store = self.store.clone();
        let durability = self.durability;
        let reopened =
            tokio::task::spawn_blocking(move || -> Result<(usize, Lsn, Option<StagingLog>)> {
                let restored = store.reopen()?;
                Ok((
                    restored,
                    store.next_lsn()?,
                    new_staging(&store, durability)?,
                ))
            })
            .await
            .map_err(|e| JournalError::Io(std::io::Error::other(e)))
            .and_then(|r| r);
        match reopened {
            Ok((restored, next_lsn, staging)) => {
                self.metrics.reopened.increment(1);
                tracing::info!(restored, next_lsn, down_for = ?since.elapsed(), "journal storage reopened: taking appends again");
                if next_lsn != self.next_lsn {
                    tracing::warn!(writer = self.next_lsn, storage = next_lsn, "next LSN after reopening differs from the writer's; continuing from the storage's");
                }
                self.next_lsn = next_lsn;
                self.staging = staging;
                self.unflushed = 0;
                self.last_checkpoint = Instant::now();
                storage_gauges(&self.store, &self.metrics.first_lsn, &self.metrics.size);
                self.set_health(Health::Healthy);
            }
            Err(e) => {
                self.metrics.reopen_failed.increment(1);
                tracing::warn!(error = %e, down_for = ?since.elapsed(), "journal storage still failing; retrying in {}s", REOPEN_EVERY.as_secs());
            }
        }
    }

    /// On close: wait for a running checkpoint, make everything durable in
    /// sled, remove the staging files. A failed storage gets one more
    /// reopen first, so a disk that has space again closes cleanly.
    async fn final_checkpoint(&mut self) -> Result<()> {
        if let Some(running) = self.checkpoint.take() {
            match running.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "journal checkpoint failed; staging files kept");
                    self.fault(e.to_string());
                }
                Err(e) => tracing::error!(error = %e, "journal checkpoint task failed"),
            }
        }
        if let Health::Faulted { last_attempt, .. } = &mut self.health {
            *last_attempt = None;
            self.maybe_reopen().await;
            if let Health::Faulted { error, .. } = &self.health {
                return Err(JournalError::Refusing(format!(
                    "its storage failed ({error}) and could not be reopened; the staging files keep what was acknowledged"
                )));
            }
        }
        let store = self.store.clone();
        let current = self.staging.as_ref().map(|s| s.current_path());
        tokio::task::spawn_blocking(move || {
            store.make_durable()?;
            if let Some(path) = current {
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        })
        .await
        .map_err(|e| JournalError::Io(std::io::Error::other(e)))?
    }
}

/// A staging log for `durability` (none in `none` mode), first generation.
fn new_staging(store: &Store, durability: Durability) -> Result<Option<StagingLog>> {
    match durability {
        Durability::None => Ok(None),
        mode => Ok(Some(StagingLog::create(
            &store.staging_dir(),
            0,
            mode == Durability::Sync,
        )?)),
    }
}

/// [`Writer::persist`]'s work: stage `segment` (and fdatasync it with
/// `sync`), then insert it into sled.
fn persist_segment(
    store: &Store,
    staging: Option<&mut StagingLog>,
    sync: bool,
    first_lsn: Lsn,
    segment: &[u8],
) -> Result<(), Failure> {
    let staged = staging.is_some();
    let mut synced = Ok(());
    if let Some(staging) = staging {
        staging
            .append(first_lsn, segment)
            .map_err(Failure::BeforeStaging)?;
        if sync {
            synced = staging
                .file_handle()
                .and_then(|file| file.sync_data().map_err(JournalError::from));
        }
    }
    let inserted = store.insert_segment(first_lsn, segment);
    match (staged, inserted, synced) {
        // Without a staging log nothing is spent until sled has it.
        (false, Err(e), _) => Err(Failure::BeforeStaging(e)),
        (true, Err(e), _) | (_, Ok(()), Err(e)) => Err(Failure::AfterStaging(e)),
        (_, Ok(()), Ok(())) => Ok(()),
    }
}

/// Which side of the staging write a failure happened on.
enum Failure {
    /// Nothing was written: LSNs are not spent.
    BeforeStaging(JournalError),
    /// The group is staged (and so will be recovered) but the append failed.
    AfterStaging(JournalError),
}

/// The result of a finished task, without awaiting.
fn futures_now<T>(handle: JoinHandle<T>) -> Option<Result<T, tokio::task::JoinError>> {
    use std::future::Future;
    use std::task::{Context, Poll};
    let mut handle = handle;
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    match std::pin::Pin::new(&mut handle).poll(&mut cx) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}
