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

use crate::durability::Durability;
use crate::error::{JournalError, Result};
use crate::names;
use crate::record::Record;
use crate::segment;
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
}

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
}

impl Writer {
    pub(crate) fn new(
        store: Store,
        durability: Durability,
        head: watch::Sender<Lsn>,
        groups: Arc<AtomicU64>,
        service: &str,
    ) -> Result<Self> {
        let next_lsn = store.next_lsn()?;
        let staging = match durability {
            Durability::None => None,
            // Recovery on open emptied the staging dir; start afresh.
            mode => Some(StagingLog::create(
                &store.staging_dir(),
                0,
                mode == Durability::Sync,
            )?),
        };
        let metrics = WriterMetrics::new(service);
        metrics.last_lsn.set((next_lsn - 1) as f64);
        storage_gauges(&store, &metrics.first_lsn, &metrics.size);
        Ok(Writer {
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
                let msg = e.to_string();
                for (_, _, reply) in group.drain(..) {
                    let _ = reply.send(Err(JournalError::GroupFailed(msg.clone())));
                }
            }
        }
    }

    /// Staging write (+ fdatasync), then the sled insert. Once the group is
    /// staged it is also inserted even if the fdatasync failed, so a later
    /// checkpoint never deletes the only copy of LSNs already spent (which
    /// would leave a gap); the callers still get the error.
    async fn persist(&mut self, first_lsn: Lsn) -> Result<(), Failure> {
        let mut synced = Ok(());
        if let Some(staging) = self.staging.as_mut() {
            staging
                .append(first_lsn, &self.segment)
                .map_err(Failure::BeforeStaging)?;
            if self.durability == Durability::Sync {
                synced = match staging.file_handle() {
                    Ok(file) => tokio::task::spawn_blocking(move || file.sync_data())
                        .await
                        .map_err(|e| JournalError::Io(std::io::Error::other(e)))
                        .and_then(|r| r.map_err(JournalError::from)),
                    Err(e) => Err(e),
                };
            }
        }
        let inserted = self.store.insert_segment(first_lsn, &self.segment);
        match (self.staging.is_some(), inserted, synced) {
            // Without a staging log nothing is spent until sled has it.
            (false, Err(e), _) => Err(Failure::BeforeStaging(e)),
            (true, Err(e), _) | (_, Ok(()), Err(e)) => Err(Failure::AfterStaging(e)),
            (_, Ok(()), Ok(())) => Ok(()),
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
            let failure = match futures_now(done) {
                Some(Ok(Err(e))) => Some(e.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(e) = failure {
                tracing::error!(error = %e, "journal checkpoint failed; staging files kept");
                self.metrics.errors.increment(1);
            }
        }
        let Some(staging) = self.staging.as_mut() else {
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
        let store = self.store.clone();
        let (first_lsn, size) = (self.metrics.first_lsn.clone(), self.metrics.size.clone());
        self.checkpoint = Some(tokio::task::spawn_blocking(move || {
            store.make_durable()?;
            std::fs::remove_file(&finished)?;
            storage_gauges(&store, &first_lsn, &size);
            Ok(())
        }));
    }

    /// On close: wait for a running checkpoint, make everything durable in
    /// sled, remove the staging files.
    async fn final_checkpoint(&mut self) -> Result<()> {
        if let Some(running) = self.checkpoint.take() {
            match running.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "journal checkpoint failed; staging files kept")
                }
                Err(e) => tracing::error!(error = %e, "journal checkpoint task failed"),
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
