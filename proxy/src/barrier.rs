//! The quiesce barrier: a consistent snapshot point. Every client record
//! is journaled *and* forwarded while holding a shared permit of the
//! forward gate; the barrier takes the gate exclusively, so when it holds
//! the gate no record is between journal and service, and the records the
//! service has received are exactly LSNs `..= s` (a prefix). It then waits
//! until the service has gone quiet (no answer bytes for an idle window),
//! journals a `snapshot` marker naming `s`, and keeps the gate until the
//! caller's snapshot point is fixed. Client input waits meanwhile (in
//! socket buffers, nothing dropped); releasing the hold resumes it.
//!
//! "Quiet" needs both: every journaled connection has had answer bytes
//! since its last forwarded input (so a service that is merely slow to
//! answer is waited for), and no answer bytes at all for an idle window
//! (so a multi-part answer is complete).
//!
//! # Connections the barrier closes
//!
//! Some connections cannot be waited for or carried: input that gets no
//! answer (memcached `noreply`, half of a request still being sent, a
//! command blocked until another client acts), or — at a snapshot the
//! destination restores from — a connection already in use, whose
//! server-side state (`SELECT`, `AUTH`, a subscription, an open `MULTI`)
//! a fresh connection at the destination would lack. With
//! [`CloseAtBarrier`] the barrier closes them instead of failing (once all
//! else is quiet, so answers the service wrote to them for others' input —
//! a message published to a subscriber — have reached them), the way
//! a restarting server would: no more client input is taken (what the
//! client sent meanwhile is neither journaled nor forwarded), the service
//! side gets end of input, and the barrier waits — within its bound —
//! until the service has closed its side. The service closing proves it
//! consumed everything it was sent (a partial request is dropped with the
//! connection, a blocked command is cancelled) and every answer it wrote
//! reaches the client before the client sees the close. The connection's
//! `closed` record is journaled before the marker, so nothing of it is
//! after the snapshot point. Without closing, such a barrier times out and
//! the migration fails safely.

use crate::shared::{ConnSlot, Shared};
use replaymig_journal::marker::{Preambles, SnapshotMark};
use replaymig_journal::ConnId;
use replaymig_journal::Lsn;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedRwLockWriteGuard;

/// How the barrier waits.
#[derive(Debug, Clone, Copy)]
pub struct QuiesceOptions {
    /// The service counts as quiet after this long without answer bytes.
    pub idle: Duration,
    /// Give up (and resume forwarding) if not quiet within this long.
    pub timeout: Duration,
    /// Which connections it closes rather than waits for or carries.
    pub close: CloseAtBarrier,
    /// The snapshot carries every connection itself, with its server-side
    /// state and unread bytes (CRIU with the socket holder,
    /// the proxy's `carry` module): input without an answer is not waited for.
    pub carried: bool,
}

/// Which connections a barrier closes (see the module doc). Off by
/// default: a barrier that closes nothing only waits.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloseAtBarrier {
    /// Connections whose last input has no answer once everything else
    /// has been quiet for the idle window. (A migration allows it from its
    /// second attempt on: a request still being sent or a slow answer is
    /// done after the first attempt's release.)
    pub unanswered: bool,
    /// Connections answered beyond their greeting: for a snapshot a
    /// destination restores and then continues connections from.
    pub in_use: bool,
}

/// How many connections a barrier closed, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClosedAtBarrier {
    /// Closed with input left unanswered.
    pub unanswered: usize,
    /// Closed because they were in use before the snapshot.
    pub in_use: usize,
}

/// How often the barrier samples the answer counter.
const POLL: Duration = Duration::from_millis(1);

impl Default for QuiesceOptions {
    fn default() -> Self {
        QuiesceOptions {
            idle: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            close: CloseAtBarrier::default(),
            carried: false,
        }
    }
}

/// Why a quiesce failed; forwarding has resumed in every case.
#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    /// In-flight forwards did not finish in time.
    #[error("could not stop forwarding within {0:?} (a forward is stuck)")]
    GateTimeout(Duration),
    /// The service kept answering past the timeout.
    #[error("service did not go quiet within {0:?}")]
    NotQuiet(Duration),
    /// Connections it closed were still open at the timeout (the service
    /// had not closed its side); they stay closed for the client.
    #[error("{0} connections closed by the barrier were not closed by the service within {1:?}")]
    NotDrained(usize, Duration),
    /// The snapshot marker could not be journaled.
    #[error("cannot journal the snapshot marker: {0}")]
    Journal(#[from] replaymig_journal::JournalError),
}

/// A held barrier: the service has received exactly LSNs `..= lsn` and is
/// quiet. Dropping it resumes forwarding.
pub struct Quiesced {
    /// The snapshot point: last client record the service received.
    pub lsn: Lsn,
    /// The full snapshot point (per-connection answer counts).
    pub mark: SnapshotMark,
    /// LSN of the `snapshot` marker journaled for it.
    pub marker_lsn: Lsn,
    /// When the hold began: when the gate was asked for (client input has
    /// waited since).
    pub held_since: Instant,
    /// Connections it closed (see the module doc).
    pub closed: ClosedAtBarrier,
    _gate: OwnedRwLockWriteGuard<()>,
}

impl Quiesced {
    /// How long client input has been held so far.
    pub fn held_for(&self) -> Duration {
        self.held_since.elapsed()
    }
}

pub(crate) async fn quiesce(
    shared: &Arc<Shared>,
    options: QuiesceOptions,
) -> Result<Quiesced, QuiesceError> {
    let started = Instant::now();
    let gate = tokio::time::timeout(options.timeout, shared.gate.clone().write_owned())
        .await
        .map_err(|_| QuiesceError::GateTimeout(options.timeout))?;
    // Clients wait from the request on, not from its grant: the lock is
    // fair, so new forwards queue behind it while in-flight ones finish.
    let held_since = started;
    let mut closing = Closing::default();
    // Quiet = every connection answered its last input, and the answer
    // counter has stood still for a whole idle window since it last moved
    // (sampled finely, so the hold ends one window after the last answer,
    // not on the next multiple of the window).
    let mut last = shared
        .answer_bytes_read_from_service_all_journaled
        .load(Ordering::Acquire);
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let now = shared
            .answer_bytes_read_from_service_all_journaled
            .load(Ordering::Acquire);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if last_change.elapsed() >= options.idle {
            let open = shared.open_slots();
            let unanswered: Vec<_> = open
                .iter()
                .filter(|slot| {
                    !options.carried && !closing.has(slot) && !slot.answered_last_input()
                })
                .cloned()
                .collect();
            // Closed only once everything else is quiet: answers the
            // service wrote to it for others' input (a message published
            // to a subscriber) have reached it by then.
            let in_use: Vec<_> = open
                .iter()
                .filter(|slot| {
                    options.close.in_use
                        && !closing.has(slot)
                        && slot.answered_last_input()
                        && slot.in_use()
                })
                .cloned()
                .collect();
            let draining = open.iter().filter(|slot| closing.has(slot)).count();
            if unanswered.is_empty() && in_use.is_empty() && draining == 0 {
                break;
            }
            // Input this barrier may not close keeps it from completing:
            // closing the connections in use would then be for nothing
            // (their clients would be in use again at the next attempt).
            if unanswered.is_empty() || options.close.unanswered {
                for slot in in_use {
                    closing.close(shared, slot, Reason::InUse).await;
                }
                for slot in unanswered {
                    closing.close(shared, slot, Reason::Unanswered).await;
                }
            }
        }
        if started.elapsed() > options.timeout {
            let draining = shared
                .open_slots()
                .iter()
                .filter(|slot| closing.has(slot))
                .count();
            return Err(if draining > 0 {
                QuiesceError::NotDrained(draining, options.timeout)
            } else {
                QuiesceError::NotQuiet(options.timeout)
            });
        }
    }
    let open = shared.open_slots();
    // Journaled with the mark, after the point: every connection's answers
    // so far as a segment (a replay from here compares what follows from
    // the right offset, and a hand-over here checks every answer up to
    // it), and each connection's greeting, which a connection re-created
    // at the new owner will get again before any answer.
    let mut fixed = None;
    let marker_lsn = crate::ordering::journal_in_order(shared, |shared| {
        let mut records: Vec<_> = open
            .iter()
            .filter_map(|slot| slot.cut_answers(shared).0)
            .collect();
        let mark = SnapshotMark {
            lsn: shared.journal.last_lsn(),
            // Bytes read from the service: the client gets them whatever
            // happens next, so replay from s+1 must not expect them again.
            resp_total: shared
                .answer_bytes_read_from_service_all_journaled
                .load(Ordering::Acquire),
            delivered: open
                .iter()
                .map(|slot| {
                    (
                        slot.conn,
                        slot.answer_bytes_read_from_service.load(Ordering::Acquire),
                    )
                })
                .collect(),
        };
        let preambles = Preambles(
            open.iter()
                .filter_map(|slot| {
                    let p = slot.preamble.lock().expect("poisoned");
                    (p.len > 0).then(|| (slot.conn, p.len, p.crc32()))
                })
                .collect(),
        );
        if !preambles.0.is_empty() {
            records.push(preambles.to_record(mark.lsn));
        }
        records.push(mark.to_record());
        fixed = Some(mark);
        records
    })
    .await?;
    let mark = fixed.expect("built under the order lock");
    Ok(Quiesced {
        lsn: mark.lsn,
        mark,
        marker_lsn,
        held_since,
        closed: closing.counts,
        _gate: gate,
    })
}

/// Why a barrier closed a connection.
#[derive(Debug, Clone, Copy)]
enum Reason {
    Unanswered,
    InUse,
}

/// The connections one barrier has closed: each leaves `Shared::open`
/// once its service side has closed and its `closed` record is journaled.
#[derive(Default)]
struct Closing {
    conns: HashMap<ConnId, Reason>,
    counts: ClosedAtBarrier,
}

impl Closing {
    /// Whether `slot` is being closed: by this barrier, or by an earlier
    /// attempt whose service had not closed its side yet (waited for
    /// here, not closed or counted again).
    fn has(&self, slot: &ConnSlot) -> bool {
        self.conns.contains_key(&slot.conn) || slot.evict.is_cancelled()
    }

    /// Closes `slot` (the gate is held, so no forward is in progress and
    /// its service side's writing half is free): client input stops, the
    /// service gets end of input.
    async fn close(&mut self, shared: &Shared, slot: Arc<ConnSlot>, reason: Reason) {
        slot.evict.cancel();
        let _ = slot.service_write.lock().await.half.shutdown().await;
        let (count, metric, total) = match reason {
            Reason::Unanswered => (
                &mut self.counts.unanswered,
                &shared.metrics.closed_unanswered,
                &shared.closed_at_barrier.unanswered,
            ),
            Reason::InUse => (
                &mut self.counts.in_use,
                &shared.metrics.closed_in_use,
                &shared.closed_at_barrier.in_use,
            ),
        };
        *count += 1;
        metric.increment(1);
        total.fetch_add(1, Ordering::AcqRel);
        tracing::info!(conn = slot.conn, client = %slot.client, ?reason, "barrier closes the connection");
        self.conns.insert(slot.conn, reason);
    }
}
