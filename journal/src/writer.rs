//! The single writer: one thread takes every append, assigns contiguous
//! LSNs, writes whatever queued up meanwhile as one sled batch, makes it
//! durable per the `Durability` mode, and only then answers the callers
//! (group commit). Sled's flush blocks, so this is a plain thread, not a
//! task on the async runtime.

use crate::durability::Durability;
use crate::error::{JournalError, Result};
use crate::names;
use crate::record::Record;
use crate::store::Store;
use crate::Lsn;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

/// Upper bound on requests folded into one group commit, so one batch's
/// latency stays bounded under a flood.
const MAX_BATCH_REQUESTS: usize = 1024;

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
    /// Finish what is queued, flush, stop.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// An append waiting in the current group: its records, when it was
/// asked for (for the latency histogram) and whom to answer.
type Pending = (Records, Instant, oneshot::Sender<Result<Lsn>>);

/// Files a request into the current group; a close request is returned so
/// the loop commits the group first and then stops.
fn sort(req: Request, batch: &mut Vec<Pending>) -> Option<oneshot::Sender<Result<()>>> {
    match req {
        Request::Append {
            records,
            enqueued,
            reply,
        } => {
            batch.push((records, enqueued, reply));
            None
        }
        Request::Close { reply } => Some(reply),
    }
}

/// Metric handles, registered once so the per-record path does no lookups.
struct WriterMetrics {
    appends: Counter,
    bytes: Counter,
    latency: Histogram,
    batch: Histogram,
    last_lsn: Gauge,
    errors: Counter,
}

impl WriterMetrics {
    fn new() -> Self {
        WriterMetrics {
            appends: counter!(names::APPENDS_TOTAL),
            bytes: counter!(names::APPEND_BYTES_TOTAL),
            latency: histogram!(names::APPEND_DURATION_SECONDS),
            batch: histogram!(names::BATCH_RECORDS),
            last_lsn: gauge!(names::LAST_LSN),
            errors: counter!(names::ERRORS_TOTAL, "kind" => "journal_write"),
        }
    }
}

/// State owned by the writer thread.
pub(crate) struct Writer {
    store: Store,
    durability: Durability,
    /// Opened once for `sync` mode's per-batch fdatasync.
    data_file: Option<File>,
    next_lsn: Lsn,
    head: watch::Sender<Lsn>,
    /// Group commits done, readable through `Journal::group_commits`.
    groups: Arc<AtomicU64>,
    metrics: WriterMetrics,
}

impl Writer {
    pub(crate) fn new(
        store: Store,
        durability: Durability,
        head: watch::Sender<Lsn>,
        groups: Arc<AtomicU64>,
    ) -> Result<Self> {
        let next_lsn = store.next_lsn()?;
        let data_file = match durability {
            Durability::Sync => Some(store.data_file()?),
            _ => None,
        };
        let metrics = WriterMetrics::new();
        metrics.last_lsn.set((next_lsn - 1) as f64);
        Ok(Writer {
            store,
            durability,
            data_file,
            next_lsn,
            head,
            groups,
            metrics,
        })
    }

    /// Serves requests until the journal is closed or every sender is gone.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch: Vec<Pending> = Vec::new();
        loop {
            let Some(first) = rx.blocking_recv() else {
                let _ = self.flush();
                return;
            };
            let mut close = sort(first, &mut batch);
            while close.is_none() && batch.len() < MAX_BATCH_REQUESTS {
                match rx.try_recv() {
                    Ok(req) => close = sort(req, &mut batch),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if let Some(reply) = close {
                let _ = reply.send(self.flush());
                return;
            }
        }
    }

    /// Writes one group, makes it durable, answers its callers.
    fn commit(&mut self, batch: &mut Vec<Pending>) {
        let first_lsn = self.next_lsn;
        let mut lsn = first_lsn;
        let mut sled_batch = sled::Batch::default();
        let mut bytes = 0u64;
        for (records, _, _) in batch.iter() {
            for record in records.iter() {
                let encoded = record.encode(lsn);
                bytes += encoded.len() as u64;
                sled_batch.insert(&lsn.to_be_bytes(), encoded);
                lsn += 1;
            }
        }
        let applied = self.store.log.apply_batch(sled_batch);
        if applied.is_ok() {
            // The records are in sled now: their LSNs are spent even if the
            // flush below fails, so they are never handed out twice.
            self.next_lsn = lsn;
        }
        let outcome = applied
            .map_err(JournalError::from)
            .and_then(|()| self.make_durable());
        let records = lsn - first_lsn;
        match outcome {
            Ok(()) => {
                let last = lsn - 1;
                self.head.send_replace(last);
                self.groups.fetch_add(1, Ordering::Relaxed);
                self.metrics.appends.increment(records);
                self.metrics.bytes.increment(bytes);
                self.metrics.batch.record(records as f64);
                self.metrics.last_lsn.set(last as f64);
                let mut next = first_lsn;
                for (records, enqueued, reply) in batch.drain(..) {
                    self.metrics
                        .latency
                        .record(enqueued.elapsed().as_secs_f64());
                    let _ = reply.send(Ok(next));
                    next += records.len() as u64;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, first_lsn, records, "journal write failed");
                self.metrics.errors.increment(1);
                let msg = e.to_string();
                for (_, _, reply) in batch.drain(..) {
                    let _ = reply.send(Err(JournalError::Io(std::io::Error::other(msg.clone()))));
                }
            }
        }
    }

    fn make_durable(&self) -> Result<()> {
        match self.durability {
            Durability::None => Ok(()),
            Durability::Batch => self.flush(),
            Durability::Sync => {
                self.flush()?;
                let file = self.data_file.as_ref().expect("opened in sync mode");
                Ok(file.sync_data()?)
            }
        }
    }

    fn flush(&self) -> Result<()> {
        self.store.db.flush()?;
        Ok(())
    }
}
