//! replaymig's write-ahead input journal.
//!
//! Every byte a client sends to a journaled service is appended here, under a
//! log sequence number (LSN), before the proxy forwards it. LSNs are `u64`,
//! start at 1, are contiguous and are never reused (not even after
//! truncation). Records are versioned and checksummed ([`record`]); a record
//! that fails its checksum is an error naming its LSN, never skipped.
//!
//! Appends go through one writer task that groups concurrent appends into
//! one flush (group commit) and answers only once the group is as durable as
//! the [`Durability`] mode promises. Readers get verified ranges, a live
//! [`Tail`] (what log shipping uses) and, in other processes, the same
//! live feed over a socket ([`follow`]).
//!
//! This crate is storage only: the inspection tools (dump rendering,
//! statistics, pcap export, the follow client) live in
//! `replaymig-journal-inspect`, on this crate's public read API.
//!
//! The public API has no sled types: the storage can change underneath.

pub mod allocator;
pub mod durability;
pub mod error;
pub mod fault;
pub mod follow;
pub mod marker;
pub mod names;
pub mod record;
mod segment;
pub mod space;
mod staging;
mod store;
mod tail;
mod writer;

pub use durability::Durability;
pub use error::{JournalError, Result};
pub use record::{ConnId, Record};
pub use store::{Entry, OpenMode, CACHE_CAPACITY_BYTES};
pub use tail::Tail;

/// An append the writer has queued (see [`Journal::enqueue`]).
#[must_use = "an append is only known durable once awaited"]
pub struct Appending(oneshot::Receiver<Result<Lsn>>);

impl Appending {
    /// The first LSN of the append, once it is durable per the mode.
    pub async fn durable(self) -> Result<Lsn> {
        self.0.await.map_err(|_| JournalError::Closed)?
    }
}

/// Most encoded bytes one multi-record append may carry (one group
/// commit): see [`split_for_append`].
pub const MAX_APPEND_BYTES: usize = writer::MAX_GROUP_BYTES;

/// Splits `items` (records, or entries holding them) into consecutive runs
/// whose encoded size stays within one append ([`MAX_APPEND_BYTES`]), in
/// order; `record` reaches each item's record. A record larger than the
/// limit on its own is a run by itself (the journal refuses it, with its
/// reason).
pub fn split_for_append<T>(items: Vec<T>, record: impl Fn(&T) -> &Record) -> Vec<Vec<T>> {
    let mut runs = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        let len = record(&item).encoded_len_hint();
        if !current.is_empty() && bytes + len > MAX_APPEND_BYTES {
            runs.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(item);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use store::Store;
use tokio::sync::{mpsc, oneshot, watch};
use writer::{Records, Request, Writer};

/// A log sequence number: a record's position in the journal.
pub type Lsn = u64;

/// How many appends may wait for the writer before callers are slowed down.
const WRITER_QUEUE: usize = 8192;

/// How to open a journal.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// What an append promises before it returns.
    pub durability: Durability,
    /// Whether a missing journal is created.
    pub mode: OpenMode,
    /// Appends are refused while the journal's filesystem has less free
    /// space than this (see [`space`]); `None`: 5% of the filesystem,
    /// 4–16 MiB.
    pub min_free_bytes: Option<u64>,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            durability: Durability::Batch,
            mode: OpenMode::CreateIfMissing,
            min_free_bytes: None,
        }
    }
}

/// A handle to an open journal; cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    durability: Durability,
    /// Appends and the close request go to the writer task through here.
    requests: mpsc::Sender<Request>,
    /// The last durable LSN (0 when empty); tails wait on it.
    head: watch::Receiver<Lsn>,
    /// Awaited by `close` so the storage lock is released when it returns.
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Group commits the writer has done (benchmarks report group sizes).
    groups: Arc<AtomicU64>,
}

impl Journal {
    /// Opens (or, per `options.mode`, creates) the journal in `dir` and
    /// starts its writer. Checks the format mark (and, when opened for
    /// appending, the last record), so a foreign or corrupt directory is
    /// refused here rather than mid-run.
    pub fn open(dir: impl AsRef<Path>, options: JournalOptions) -> Result<Journal> {
        Self::open_for(dir, options, "default")
    }

    /// `open`, with the journal's metrics labelled `service` (a node runs
    /// one journal per service; one proxy process names its service).
    pub fn open_for(
        dir: impl AsRef<Path>,
        options: JournalOptions,
        service: &str,
    ) -> Result<Journal> {
        let store = Store::open(dir.as_ref(), options.mode)?;
        // A writer must not append after a record it cannot read; an
        // inspector opens anyway and reports the first bad LSN it meets.
        if options.mode == OpenMode::CreateIfMissing {
            if let Some(last) = store.last_lsn()? {
                store.get(last)?;
            }
        }
        let head_lsn = store.next_lsn()? - 1;
        let (head_tx, head_rx) = watch::channel(head_lsn);
        let groups = Arc::new(AtomicU64::new(0));
        let writer = Writer::new(
            store.clone(),
            options.durability,
            head_tx,
            groups.clone(),
            service,
            options.min_free_bytes,
        )?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            JournalError::Invalid("a journal must be opened inside a tokio runtime".into())
        })?;
        let task = runtime.spawn(writer.run(rx));
        Ok(Journal {
            inner: Arc::new(Inner {
                store,
                durability: options.durability,
                requests: tx,
                head: head_rx,
                writer_task: Mutex::new(Some(task)),
                groups,
            }),
        })
    }

    /// Appends one record; returns its LSN once it is durable per the mode.
    pub async fn append(&self, record: Record) -> Result<Lsn> {
        record.validate()?;
        self.submit(Records::One(record)).await
    }

    /// Appends records as one unit under contiguous LSNs; returns the LSN of
    /// the first. All or none become durable.
    pub async fn append_batch(&self, records: Vec<Record>) -> Result<Lsn> {
        check_batch(&records)?;
        self.submit(Records::Many(records)).await
    }

    /// Hands records to the writer as one unit (like `append_batch`) and
    /// returns once they are queued, before they are durable: appends
    /// enqueued one after another get LSNs in that order, so a caller that
    /// enqueues under its own lock fixes the journal's order by it. The
    /// returned [`Appending`] resolves to the first LSN once durable.
    pub async fn enqueue(&self, mut records: Vec<Record>) -> Result<Appending> {
        let records = if records.len() == 1 {
            let record = records.pop().expect("one");
            record.validate()?;
            Records::One(record)
        } else {
            check_batch(&records)?;
            Records::Many(records)
        };
        let answer = self
            .send(|enqueued, reply| Request::Append {
                records,
                enqueued,
                reply,
            })
            .await?;
        Ok(Appending(answer))
    }

    /// Appends records under the LSNs they already have, starting at
    /// `first` (log shipping: the receiving node keeps the sender's LSNs).
    /// They must continue this journal exactly; an empty journal may start
    /// at any LSN (LSNs below it count as spent).
    pub async fn append_at(&self, first: Lsn, records: Vec<Record>) -> Result<Lsn> {
        check_batch(&records)?;
        self.request(|enqueued, reply| Request::AppendAt {
            first,
            records,
            enqueued,
            reply,
        })
        .await
    }

    async fn submit(&self, records: Records) -> Result<Lsn> {
        self.request(|enqueued, reply| Request::Append {
            records,
            enqueued,
            reply,
        })
        .await
    }

    /// Hands one append request to the writer and waits for its answer.
    async fn request(
        &self,
        make: impl FnOnce(Instant, oneshot::Sender<Result<Lsn>>) -> Request,
    ) -> Result<Lsn> {
        Appending(self.send(make).await?).durable().await
    }

    /// Hands one append request to the writer; its answer comes on the
    /// returned channel.
    async fn send(
        &self,
        make: impl FnOnce(Instant, oneshot::Sender<Result<Lsn>>) -> Request,
    ) -> Result<oneshot::Receiver<Result<Lsn>>> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(make(Instant::now(), reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        Ok(answer)
    }

    /// The last durable LSN, 0 if nothing was ever appended.
    pub fn last_lsn(&self) -> Lsn {
        *self.inner.head.borrow()
    }

    /// The first LSN still stored (after truncation), if any.
    pub fn first_lsn(&self) -> Result<Option<Lsn>> {
        self.inner.store.first_lsn()
    }

    /// The verified record at `lsn`, if stored.
    pub fn get(&self, lsn: Lsn) -> Result<Option<Entry>> {
        self.inner.store.get(lsn)
    }

    /// Verified records with LSN in `[from, to]`, in LSN order.
    pub fn read_range(&self, from: Lsn, to: Lsn) -> impl Iterator<Item = Result<Entry>> {
        self.inner.store.range(from, to)
    }

    /// A live stream of records from `from` on: first what is stored, then
    /// each record as soon as it is durable. Ends when the journal closes.
    pub fn tail(&self, from: Lsn) -> Result<Tail> {
        if let Some(first) = self.first_lsn()? {
            if from < first {
                return Err(JournalError::Invalid(format!(
                    "LSN {from} was truncated (first kept LSN is {first})"
                )));
            }
        }
        Ok(Tail::new(
            self.inner.store.clone(),
            self.inner.head.clone(),
            from.max(1),
        ))
    }

    /// Drops every record below `lsn` (retention after a shipped snapshot).
    /// LSNs below it are never handed out again. Returns records removed.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        let limit = self.last_lsn() + 1;
        if lsn > limit {
            return Err(JournalError::Invalid(format!(
                "cannot truncate before LSN {lsn}: the journal ends at {}",
                limit - 1
            )));
        }
        self.inner.store.truncate_before(lsn)
    }

    /// Finishes queued appends, flushes, and stops the writer; later
    /// appends fail with [`JournalError::Closed`]. Idempotent.
    pub async fn close(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .inner
            .requests
            .send(Request::Close { reply })
            .await
            .is_ok();
        let task = self.inner.writer_task.lock().expect("poisoned").take();
        let flushed = match answer.await {
            Ok(result) => result,
            // Already closed by an earlier call: it reported the outcome.
            Err(_) if !sent && task.is_none() => Ok(()),
            Err(_) => Err(JournalError::GroupFailed(
                "the journal writer stopped unexpectedly".into(),
            )),
        };
        if let Some(task) = task {
            if let Err(e) = task.await {
                return Err(JournalError::GroupFailed(format!(
                    "the journal writer failed: {e}"
                )));
            }
        }
        flushed
    }

    /// Group commits done since open: records appended / this = mean group size.
    pub fn group_commits(&self) -> u64 {
        self.inner.groups.load(Ordering::Relaxed)
    }

    /// The durability mode this journal was opened with.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// The journal's directory.
    pub fn dir(&self) -> PathBuf {
        self.inner.store.dir.clone()
    }

    /// Bytes used on disk (sled needs 1.4–3.4× the logical size).
    pub fn size_on_disk(&self) -> Result<u64> {
        self.inner.store.size_on_disk()
    }
}

/// Decodes one stored segment (the records of one group commit, first LSN
/// `first`) as reading the journal does: each record verified, a bad one
/// an error naming its LSN. For fuzzing and tools; never panics on any
/// input.
pub fn decode_segment(first: Lsn, value: &[u8]) -> Vec<Result<Entry>> {
    segment::entries(first, value).collect()
}

/// What every multi-record append must satisfy: not empty, each record
/// valid, and the whole small enough for one group commit.
fn check_batch(records: &[Record]) -> Result<()> {
    if records.is_empty() {
        return Err(JournalError::Invalid("empty batch".into()));
    }
    let mut bytes = 0;
    for r in records {
        r.validate()?;
        bytes += r.encoded_len_hint();
    }
    if bytes > writer::MAX_GROUP_BYTES {
        return Err(JournalError::Invalid(format!(
            "a batch of {bytes} bytes exceeds {} (split it)",
            writer::MAX_GROUP_BYTES
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
