//! The state the proxy's tasks share: per proxy ([`Shared`]) and per
//! journaled connection ([`ConnSlot`]), so the barrier, the hand-over and
//! the journal's ordering can reach a connection without going through
//! its relay task.
//!
//! # Answer counters
//!
//! Four counters follow the service's answers. "Read from the service" is
//! counted when a read of the service side returns (or when bytes arrive
//! with its setup); "delivered" when the write of those bytes to the client
//! starts. A connection's read count runs ahead of its delivered count by
//! what is on its way to the client.
//!
//! | counter | counts | feeds (journal field, or reader) |
//! |---|---|---|
//! | [`ConnSlot::answer_bytes_delivered`] | delivered on this connection, from its answer-stream offset | `data.resp_before`, `closed.resp_total`, `answer.offset` (via the segment cut); the preamble check |
//! | [`Shared::answer_bytes_delivered_all_journaled`] | delivered on every journaled connection while journaled | `data.resp_total_before`; `ProxyControl::answer_bytes` |
//! | [`ConnSlot::answer_bytes_read_from_service`] | read from the service on this connection, from its answer-stream offset | the snapshot marker's per-connection `delivered`; a hand-over's `TunnelRequest::delivered` |
//! | [`Shared::answer_bytes_read_from_service_all_journaled`] | read from the service on every journaled connection while journaled | the snapshot marker's `resp_total`; the barrier's "quiet" watch |
//!
//! Snapshot points and hand-overs use the *read* counts: bytes read from
//! the service reach the client whatever happens next, so a replay or a
//! new owner must not produce them again. Client records use the
//! *delivered* counts: what the client could have seen when it sent.

use crate::answers::{AnswerJournaling, OpenSegment};
use crate::handover::{ServiceHalf, ServiceReader, ServiceWriter};
use crate::metrics::ProxyMetrics;
use crate::route::{RelayOrigin, Route};
use replaymig_journal::{ConnId, Journal, Record};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What every connection of one proxy shares.
pub(crate) struct Shared {
    /// Where client bytes are written before they are forwarded.
    pub journal: Journal,
    /// Where new clients go (owner: local backend; else: a tunnel).
    pub route: std::sync::RwLock<Route>,
    /// Bytes read per client or backend read (the per-direction buffer).
    pub read_buffer: usize,
    /// What the journal keeps of the answers (see `answers`).
    pub journal_responses: AnswerJournaling,
    /// Bound on the backend connect.
    pub connect_timeout: Duration,
    /// Answer bytes delivered (write to the client started) on all
    /// journaled connections while they were journaled, since the proxy
    /// started: each client record's `resp_total_before`, the
    /// cross-connection causality bound replay waits for.
    pub answer_bytes_delivered_all_journaled: AtomicU64,
    /// Answer bytes read from the service on all journaled connections
    /// while they were journaled (they reach their clients even if a
    /// hand-over happens meanwhile): the snapshot marker's `resp_total`,
    /// and the figure whose standing still means "quiet" to the barrier.
    pub answer_bytes_read_from_service_all_journaled: AtomicU64,
    /// Counters.
    pub metrics: ProxyMetrics,
    /// Connections barriers closed since the proxy started, by reason
    /// (the metric's figures, readable: a migration reports its share).
    pub closed_at_barrier: ClosedCounts,
    /// Held shared by each record from its append to the end of its
    /// forward; the quiesce barrier takes it exclusively (see `barrier`).
    pub gate: Arc<tokio::sync::RwLock<()>>,
    /// Open journaled connections: answer counts for snapshot marks, and
    /// the handles a hand-over switches. Touched once per connection
    /// open/close, never per record.
    pub open: std::sync::Mutex<std::collections::HashMap<ConnId, Arc<ConnSlot>>>,
    /// Held while a record's answers are cut and the record is queued for
    /// the journal: the journal's order is the order of the cuts.
    pub order: tokio::sync::Mutex<()>,
    /// Journaled client records are forwarded in LSN order (`ordering`).
    pub forwards: crate::ordering::ForwardOrder,
    /// Connections with answer bytes not yet in a journaled segment (answer
    /// journaling): every client record cuts them first, so each answer the
    /// proxy delivered before it read a record is journaled before that
    /// record — the order replay reproduces across connections.
    pub dirty: std::sync::Mutex<Vec<Arc<ConnSlot>>>,
    /// Connections relayed through a tunnel to another owner, by their
    /// relay id: what an old owner's redirect names (`relay_move`).
    pub relays: std::sync::Mutex<std::collections::HashMap<u64, Arc<ConnSlot>>>,
    /// The next connection's relay id.
    pub next_relay: AtomicU64,
}

/// Connections closed by barriers, by reason (see `barrier`).
#[derive(Default)]
pub(crate) struct ClosedCounts {
    /// Input left unanswered.
    pub unanswered: AtomicU64,
    /// In use before the snapshot.
    pub in_use: AtomicU64,
}

/// What the rest of the proxy can reach of one connection (registered in
/// [`Shared::open`] while it is journaled).
pub(crate) struct ConnSlot {
    /// The journaled connection (0 when not journaled).
    pub conn: ConnId,
    /// Answer bytes delivered to the client (counted as the write to it
    /// starts), starting from what it had before this proxy served it (an
    /// adopted connection continues another owner's). Moved under
    /// `segment`'s lock when answers are journaled, so a segment always
    /// ends at the next record's `resp_before`.
    pub answer_bytes_delivered: AtomicU64,
    /// Answer bytes read from the service side (including those that came
    /// with its setup), starting from the same offset as
    /// `answer_bytes_delivered` and ≥ it: the rest is on its way to the
    /// client. What a snapshot point and a hand-over record, because the
    /// client gets those bytes whatever happens next.
    pub answer_bytes_read_from_service: AtomicU64,
    /// What the service said before any client input was forwarded (a
    /// greeting): recorded at snapshot points, so a connection re-created
    /// at a new owner can consume and check it instead of taking it for an
    /// answer.
    pub preamble: std::sync::Mutex<Preamble>,
    /// The answers since the last client record (answer journaling).
    pub segment: std::sync::Mutex<OpenSegment>,
    /// The client's address.
    pub client: String,
    /// Cleared by a hand-over: the new owner journals from then on.
    pub journaling: AtomicBool,
    /// The service side's writing half (client→service); a hand-over
    /// switches it (see `handover`), a move replaces it (`relay_move`).
    pub service_write: ServiceHalf<ServiceWriter>,
    /// The service side's reading half (service→client); a hand-over
    /// switches it (see `handover`).
    pub service_read: ServiceHalf<ServiceReader>,
    /// Client reads forwarded to the service so far.
    pub forwarded: AtomicU64,
    /// Value of `forwarded` when answer bytes last came back: equal to
    /// `forwarded` once the service answered after the last forward. The
    /// barrier waits for that on every connection, not only for silence,
    /// so a slow answer is not mistaken for a quiet service.
    pub answered_after: AtomicU64,
    /// Cancelled by a barrier that closes this connection (see
    /// `barrier`): client input stops at once, unjournaled, and the
    /// service side's end of input lets the service finish and close.
    pub evict: tokio_util::sync::CancellationToken,
    /// This proxy's id of the connection while it is relayed through a
    /// tunnel (named in a redirect, see `relay_move`).
    pub relay: u64,
    /// The node that relays this connection to this proxy, if it can move
    /// it to a later owner itself (see `handover`).
    pub origin: Option<RelayOrigin>,
    /// Client bytes forwarded to the service side since this proxy took
    /// the connection: at a hand-over, the tunnel bytes this owner
    /// journaled (a redirect's `consumed`). Counted only when `origin` is
    /// set (nothing else reads it).
    pub input_bytes_forwarded: AtomicU64,
    /// Set by a move in progress: the answers direction reports the
    /// answer count at which the old tunnel ended, then waits for the new
    /// one (see `relay_move`).
    pub tunnel_end: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<u64>>>,
    /// The answers direction has ended: nothing will report a tunnel's end
    /// any more, so a move is refused.
    pub answers_ended: AtomicBool,
    /// Set before `evict` by a redirect: the input direction reads and
    /// drops what the relaying node still sends until its end, so the
    /// socket is not closed with unread input (which would reset it and
    /// discard the last answers on their way).
    pub drain_on_evict: AtomicBool,
    /// The connection is being closed because a move failed: the client
    /// gets a reset, not an end of stream that could pass for a complete
    /// answer.
    pub reset_client: AtomicBool,
}

/// The answer bytes of a connection before its first forwarded input,
/// kept so a new owner can tell a greeting from an answer.
#[derive(Default)]
pub(crate) struct Preamble {
    /// Their length.
    pub len: u64,
    hasher: crc32fast::Hasher,
}

impl Preamble {
    /// CRC-32 of the bytes so far.
    pub fn crc32(&self) -> u32 {
        self.hasher.clone().finalize()
    }

    /// Adds greeting bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.hasher.update(bytes);
    }
}

impl Shared {
    /// The journaled connections open now (a copy of the set: the lock is
    /// not held while the caller works on them).
    pub fn open_slots(&self) -> Vec<Arc<ConnSlot>> {
        self.open
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect()
    }
}

impl ConnSlot {
    /// The service has answered since the last input forwarded to it: the
    /// barrier's per-connection half of "quiet".
    pub fn answered_last_input(&self) -> bool {
        self.answered_after.load(Ordering::Acquire) >= self.forwarded.load(Ordering::Acquire)
    }

    /// The service has answered this connection beyond its greeting (or
    /// it continues another owner's): it was used before, so it may hold
    /// state a fresh connection lacks (the replayer's `carried_state`).
    pub fn in_use(&self) -> bool {
        let greeting = self.preamble.lock().expect("poisoned").len;
        self.answer_bytes_read_from_service.load(Ordering::Acquire) > greeting
    }

    /// Ends the connection's answer segment at a client record: the record
    /// that journals it (if answers are journaled and any came) and the
    /// answer bytes delivered so far (the client record's `resp_before`).
    pub fn cut_answers(&self, shared: &Shared) -> (Option<Record>, u64) {
        // Nothing was folded (answers not journaled, or not on this
        // connection): no lock on the per-read path.
        if shared.journal_responses == AnswerJournaling::Off
            || !self.journaling.load(Ordering::Acquire)
        {
            return (None, self.answer_bytes_delivered.load(Ordering::Acquire));
        }
        let (record, delivered) = self
            .segment
            .lock()
            .expect("poisoned")
            .cut(self.conn, shared.journal_responses);
        if record.is_some() {
            shared.metrics.answer_segments.increment(1);
        }
        (record, delivered)
    }
}
