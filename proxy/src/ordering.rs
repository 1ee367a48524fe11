//! The journal's order: answers against input, across connections — and
//! the service's: input forwarded in LSN order.
//!
//! Replay sends records in LSN order, so the original must have forwarded
//! them in that order too: a single-threaded service then executes them in
//! the same order both times (it reads its sockets in the order data
//! arrived). Every client record queued for the journal takes a
//! [`ForwardTicket`] under the same lock, and forwards only when every
//! older ticket has forwarded — bounded: a forward that waits longer than
//! `FORWARD_ORDER_WAIT` goes anyway and is counted, and a replay that then
//! differs is caught by its answer check.
//!
//! Replay also lets nothing journaled after an answer segment overtake it
//! (see the replayer), which only works if the journal is in the order the
//! proxy saw things: every answer delivered before a client record was
//! read must be journaled before that record. So each
//! client record first cuts the answer segments of every connection that
//! got answers since its last cut (in the order those answers began), then
//! its own, and queues all of them with the record for the journal — all
//! under one lock, because the journal numbers appends in the order they
//! are queued, not in the order their cuts happened.
//!
//! While a migration catches up, forwarding is also *settled* (see
//! [`ForwardOrder::set_settled`]).

use crate::answers::AnswerJournaling;
use crate::shared::{ConnSlot, Shared};
use replaymig_journal::{split_for_append, Appending, JournalError, Lsn, Record};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Longest a forward waits for older ones before it goes out of order.
const FORWARD_ORDER_WAIT: Duration = Duration::from_millis(50);

/// In settled mode, how long a forward waits for the service to answer
/// the one before before it goes anyway (a request without an answer).
pub const SETTLE_WAIT: Duration = Duration::from_millis(2);

/// Tickets of client records journaled but not forwarded yet.
#[derive(Default)]
pub(crate) struct ForwardOrder {
    state: Mutex<ForwardState>,
    changed: Notify,
    /// Settled mode (a migration is catching up): one unanswered record at
    /// a time (see [`ForwardTicket::turn`]).
    settled: std::sync::atomic::AtomicBool,
    /// Told when answer bytes arrive while in settled mode.
    answered: Notify,
}

#[derive(Default)]
struct ForwardState {
    next: u64,
    pending: BTreeSet<u64>,
    /// The last record forwarded: its connection and the connection's
    /// forward count after it (answered once `answered_after` reaches it).
    last: Option<(Arc<ConnSlot>, u64)>,
}

impl ForwardOrder {
    /// Turns settled mode on or off. In it, a record is forwarded only once
    /// the service answered the record forwarded before it (or after
    /// `SETTLE_WAIT`): the service then holds at most one unanswered
    /// record, so it executes them in LSN order whatever order its poll
    /// would pick — the order a migration's replay reproduces the same
    /// way. Costs one service round trip per record while on.
    pub(crate) fn set_settled(&self, on: bool) {
        self.settled.store(on, Ordering::Release);
        self.answered.notify_waiters();
    }

    /// Whether settled mode is on.
    pub(crate) fn settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Answer bytes arrived (settled mode): wakes a forward waiting for
    /// the one before it to be answered.
    pub(crate) fn answered(&self) {
        self.answered.notify_waiters();
    }

    /// Record the one just forwarded on `slot` (settled mode).
    pub(crate) fn forwarded(&self, slot: &Arc<ConnSlot>) {
        let count = slot.forwarded.load(Ordering::Acquire);
        self.state.lock().expect("poisoned").last = Some((slot.clone(), count));
    }

    /// Whether the last record forwarded was answered (or its connection
    /// is gone from the journal).
    fn last_answered(&self) -> bool {
        let s = self.state.lock().expect("poisoned");
        match &s.last {
            None => true,
            Some((slot, count)) => {
                slot.answered_after.load(Ordering::Acquire) >= *count
                    || !slot.journaling.load(Ordering::Acquire)
                    || Arc::strong_count(slot) == 1
            }
        }
    }

    /// A ticket for the next record (taken under the journal order lock).
    fn ticket(&self) -> ForwardTicket<'_> {
        let mut s = self.state.lock().expect("poisoned");
        let seq = s.next;
        s.next += 1;
        s.pending.insert(seq);
        ForwardTicket { order: self, seq }
    }
}

/// A journaled client record's place in the forwarding order; dropping it
/// (forwarded, or given up) lets the next one go.
pub(crate) struct ForwardTicket<'a> {
    order: &'a ForwardOrder,
    seq: u64,
}

impl ForwardTicket<'_> {
    /// Waits until every older record was forwarded; false if that took
    /// longer than `FORWARD_ORDER_WAIT` (it goes out of order then).
    pub(crate) async fn turn(&self) -> bool {
        let in_order = self.turn_in_line().await;
        if self.order.settled() {
            self.settle().await;
        }
        in_order
    }

    /// Settled mode: waits (at most `SETTLE_WAIT`) until the service
    /// answered the record forwarded before this one.
    async fn settle(&self) {
        let wait = async {
            loop {
                let answered = self.order.answered.notified();
                tokio::pin!(answered);
                answered.as_mut().enable();
                if self.order.last_answered() || !self.order.settled() {
                    return;
                }
                answered.await;
            }
        };
        let _ = tokio::time::timeout(SETTLE_WAIT, wait).await;
    }

    /// Waits until every older record was forwarded.
    async fn turn_in_line(&self) -> bool {
        let wait = async {
            loop {
                let changed = self.order.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let first = self
                    .order
                    .state
                    .lock()
                    .expect("poisoned")
                    .pending
                    .first()
                    .copied();
                if first.is_none_or(|f| f >= self.seq) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(FORWARD_ORDER_WAIT, wait).await.is_ok()
    }
}

impl Drop for ForwardTicket<'_> {
    fn drop(&mut self) {
        let mut s = self.order.state.lock().expect("poisoned");
        let was_first = s.pending.first() == Some(&self.seq);
        s.pending.remove(&self.seq);
        drop(s);
        if was_first {
            self.order.changed.notify_waiters();
        }
    }
}

/// Journals a client record (data or end of input) like [`journal_record`]
/// with every pending answer segment first, and gives it its place in the
/// forwarding order.
pub(crate) async fn journal_input<'a>(
    shared: &'a Shared,
    slot: &Arc<ConnSlot>,
    make: impl FnOnce(u64, u64) -> Record,
) -> Result<ForwardTicket<'a>, JournalError> {
    let (_, ticket) = journal_built(shared, |locked| {
        let records = cut_for_record(locked, slot, true, make);
        (records, shared.forwards.ticket())
    })
    .await?;
    Ok(ticket)
}

/// Journals the record `make` builds for `slot` from its `resp_before` and
/// `resp_total_before`, preceded by its answer segment and (with
/// `flush_others`) every other connection's pending one. Returns the
/// record's LSN once durable.
pub(crate) async fn journal_record(
    shared: &Shared,
    slot: &Arc<ConnSlot>,
    flush_others: bool,
    make: impl FnOnce(u64, u64) -> Record,
) -> Result<Lsn, JournalError> {
    journal_in_order(shared, |shared| {
        cut_for_record(shared, slot, flush_others, make)
    })
    .await
}

/// The records for one client record: the answer segments it ends (with
/// `flush_others`, every connection's pending one, in the order their
/// answers began), then the record `make` builds.
fn cut_for_record(
    shared: &Shared,
    slot: &Arc<ConnSlot>,
    flush_others: bool,
    make: impl FnOnce(u64, u64) -> Record,
) -> Vec<Record> {
    // Loaded before the pending segments are taken: every answer byte it
    // counts was folded (and its connection marked pending) first.
    let resp_total_before = shared
        .answer_bytes_delivered_all_journaled
        .load(Ordering::Acquire);
    let mut records = Vec::new();
    let mut own = None;
    if flush_others && shared.journal_responses != AnswerJournaling::Off {
        let dirty = std::mem::take(&mut *shared.dirty.lock().expect("poisoned"));
        for other in dirty {
            let (segment, delivered) = other.cut_answers(shared);
            if Arc::ptr_eq(&other, slot) {
                own = Some(delivered);
            }
            records.extend(segment);
        }
    }
    let resp_before = match own {
        Some(delivered) => delivered,
        None => {
            let (segment, delivered) = slot.cut_answers(shared);
            records.extend(segment);
            delivered
        }
    };
    records.push(make(resp_before, resp_total_before));
    records
}

/// Queues the records `build` makes (under the order lock, so nothing is
/// cut or queued in between) and waits until they are durable; returns
/// the LSN of the last one. Records past the journal's group limit go in
/// several appends, in order.
pub(crate) async fn journal_in_order(
    shared: &Shared,
    build: impl FnOnce(&Shared) -> Vec<Record>,
) -> Result<Lsn, JournalError> {
    Ok(journal_built(shared, |shared| (build(shared), ())).await?.0)
}

/// [`journal_in_order`], also giving back what `build` made beside the
/// records (under the same lock).
async fn journal_built<T>(
    shared: &Shared,
    build: impl FnOnce(&Shared) -> (Vec<Record>, T),
) -> Result<(Lsn, T), JournalError> {
    let (appends, made) = {
        let _order = shared.order.lock().await;
        let (records, made) = build(shared);
        let mut appends: Vec<(Appending, usize)> = Vec::new();
        for group in split_for_append(records, |r| r) {
            let len = group.len();
            appends.push((shared.journal.enqueue(group).await?, len));
        }
        (appends, made)
    };
    let mut last = 0;
    for (append, len) in appends {
        last = append.durable().await? + len as Lsn - 1;
    }
    Ok((last, made))
}
