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
//! (so a multi-part answer is complete). A protocol whose requests get no
//! answer cannot be quiesced this way: the barrier times out and the
//! migration fails safely.

use crate::shared::Shared;
use replaymig_journal::marker::{Preambles, SnapshotMark};
use replaymig_journal::Lsn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedRwLockWriteGuard;

/// How the barrier waits.
#[derive(Debug, Clone, Copy)]
pub struct QuiesceOptions {
    /// The service counts as quiet after this long without answer bytes.
    pub idle: Duration,
    /// Give up (and resume forwarding) if not quiet within this long.
    pub timeout: Duration,
}

/// How often the barrier samples the answer counter.
const POLL: Duration = Duration::from_millis(1);

impl Default for QuiesceOptions {
    fn default() -> Self {
        QuiesceOptions {
            idle: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
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
    /// When the hold began (client input has waited since).
    pub held_since: Instant,
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
    let held_since = Instant::now();
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
            let all_answered = shared
                .open
                .lock()
                .expect("poisoned")
                .values()
                .all(|slot| slot.answered_last_input());
            if all_answered {
                break;
            }
        }
        if started.elapsed() > options.timeout {
            return Err(QuiesceError::NotQuiet(options.timeout));
        }
    }
    let open: Vec<_> = shared
        .open
        .lock()
        .expect("poisoned")
        .values()
        .cloned()
        .collect();
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
        _gate: gate,
    })
}
