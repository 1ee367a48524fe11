//! The reading side of one replayed connection. It reads the target's
//! answers as they come (so cross-connection waits can never deadlock on an
//! unread socket), counts them, and drops those the original client is
//! known to have received (up to the *watermark*, raised as records are
//! applied). Answers beyond the watermark are kept, bounded, as `pending`:
//! a migration that takes the connection over forwards exactly those.
//! With `--compare`, every byte also goes through the connection's
//! [`AnswerChecker`] before it may be dropped.

use crate::compare::{AnswerChecker, ExpectedSegment, Finding};
use crate::{Divergence, DivergenceKind};
use bytes::{Buf, Bytes, BytesMut};
use replaymig_journal::ConnId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Answers kept beyond the watermark before the reader pauses (and so
/// slows the target, like a slow client would).
const MAX_PENDING: usize = 16 << 20;

/// Shared by every connection of one replay: answer bytes read in total.
#[derive(Default)]
pub(crate) struct TotalAnswers {
    bytes: AtomicU64,
    changed: Notify,
}

impl TotalAnswers {
    /// Waits until at least `bytes` were read over all connections.
    pub(crate) async fn wait_for(&self, bytes: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.bytes.load(Ordering::Acquire) >= bytes {
                return;
            }
            notified.await;
        }
    }

    /// Answer bytes read so far over all connections.
    pub(crate) fn get(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct State {
    /// Answer bytes read.
    got: u64,
    /// Answer bytes the original client had: dropped, not kept.
    watermark: u64,
    /// Answer bytes read beyond the watermark, in order.
    pending: BytesMut,
    /// The target closed or failed the connection.
    ended: bool,
    /// Journaled answer segments to compare against (`--compare`).
    checker: AnswerChecker,
    /// Whether answers are compared at all.
    comparing: bool,
    /// The latest answer record expected (where an unchecked range is
    /// reported).
    last_lsn: replaymig_journal::Lsn,
    /// The greeting still to consume (a connection re-created at a new
    /// owner), not counted as answers.
    greeting: Option<Greeting>,
    /// Answer segments (their LSNs) met once `got` reaches the key.
    awaits: std::collections::BTreeMap<u64, Vec<replaymig_journal::Lsn>>,
}

impl State {
    /// Runs `bytes` (at stream position `start`) through the checker;
    /// differences become divergences.
    fn check(&mut self, start: u64, bytes: &[u8], shared: &Shared) {
        if !self.comparing {
            return;
        }
        let found = self.checker.feed(start, bytes);
        self.report(found, shared);
    }

    fn report(&self, found: Vec<Finding>, shared: &Shared) {
        for f in found {
            let (lsn, kind) = match f {
                Finding::Mismatch(m) => (m.request_lsn, DivergenceKind::AnswerMismatch(m)),
                Finding::Unchecked(u) => (self.last_lsn, DivergenceKind::UncheckedAnswer(u)),
            };
            let d = Divergence {
                lsn,
                conn: shared.conn,
                kind,
            };
            crate::log_divergence(shared.warn, &d);
            shared.failures.lock().expect("poisoned").push(d);
        }
    }
}

struct Shared {
    conn: ConnId,
    /// Told when an awaited answer segment is reproduced.
    inflight: Arc<crate::inflight::InFlight>,
    /// Divergences are warnings (the replay stops at them).
    warn: bool,
    failures: Arc<Mutex<Vec<Divergence>>>,
    state: Mutex<State>,
    changed: Notify,
    stop: Notify,
}

/// Handle to a connection's answer reader.
pub(crate) struct AnswerReader {
    shared: Arc<Shared>,
    task: JoinHandle<Option<OwnedReadHalf>>,
}

impl AnswerReader {
    pub(crate) fn spawn(
        read: OwnedReadHalf,
        total: Arc<TotalAnswers>,
        conn: ConnId,
        failures: Arc<Mutex<Vec<Divergence>>>,
        inflight: Arc<crate::inflight::InFlight>,
        check: Checking,
    ) -> AnswerReader {
        let state = State {
            checker: AnswerChecker::new(check.strict),
            comparing: check.compare,
            greeting: check.greeting.map(|(len, crc32)| Greeting {
                left: len,
                len,
                crc32,
                hasher: crc32fast::Hasher::new(),
                seen: Vec::new(),
            }),
            ..State::default()
        };
        let shared = Arc::new(Shared {
            conn,
            inflight,
            warn: check.warn,
            failures,
            state: Mutex::new(state),
            changed: Notify::new(),
            stop: Notify::new(),
        });
        let task = tokio::spawn(read_answers(read, shared.clone(), total));
        AnswerReader { shared, task }
    }

    /// The original client had received `bytes` answer bytes in all: drop
    /// them (never lowers the watermark).
    pub(crate) fn raise_watermark(&self, bytes: u64) {
        let mut s = self.shared.state.lock().expect("poisoned");
        if bytes <= s.watermark {
            return;
        }
        let kept_from = s.got - s.pending.len() as u64;
        let drop = (bytes.min(s.got).saturating_sub(kept_from)) as usize;
        s.pending.advance(drop);
        s.watermark = bytes;
        drop_guard(s);
        self.shared.changed.notify_waiters();
    }

    /// Compares the target's answers at `segment` with the journaled ones
    /// (the checker keeps the bytes until they are compared).
    pub(crate) fn expect(&self, segment: ExpectedSegment) {
        let mut s = self.shared.state.lock().expect("poisoned");
        if !s.comparing {
            return;
        }
        s.last_lsn = segment.answer_lsn;
        let found = s.checker.expect(segment);
        s.report(found, &self.shared);
    }

    /// The answer segment journaled at `lsn` ends at `upto` answer bytes:
    /// tells the sequencer once the target produced that many.
    pub(crate) fn await_bytes(&self, upto: u64, lsn: replaymig_journal::Lsn) {
        let mut s = self.shared.state.lock().expect("poisoned");
        if s.got >= upto {
            drop_guard(s);
            self.shared.inflight.await_done(lsn);
            return;
        }
        s.awaits.entry(upto).or_default().push(lsn);
    }

    /// Strict checking: every answer byte before `upto` must have been
    /// compared with a journaled segment; what was not is a divergence.
    pub(crate) fn require_checked(&self, upto: u64) {
        let mut s = self.shared.state.lock().expect("poisoned");
        if !s.comparing {
            return;
        }
        let found = s.checker.require_checked(upto);
        s.report(found, &self.shared);
    }

    /// Answer bytes the original client is known to have received.
    pub(crate) fn watermark(&self) -> u64 {
        self.shared.state.lock().expect("poisoned").watermark
    }

    /// Answer bytes read so far.
    pub(crate) fn got(&self) -> u64 {
        self.shared.state.lock().expect("poisoned").got
    }

    /// Waits until at least `bytes` were read; false if the target closed
    /// the connection first.
    pub(crate) async fn wait_for(&self, bytes: u64) -> bool {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.shared.state.lock().expect("poisoned");
                if s.got >= bytes {
                    return true;
                }
                if s.ended {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// Stops reading; gives back the read half (unless the target closed
    /// it) and the answers read beyond the watermark.
    pub(crate) async fn stop(self) -> (Option<OwnedReadHalf>, Bytes) {
        self.shared.stop.notify_one();
        let read = self.task.await.unwrap_or(None);
        let pending = std::mem::take(&mut self.shared.state.lock().expect("poisoned").pending);
        (read, pending.freeze())
    }
}

/// How a connection's answers are checked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Checking {
    /// Compare with the journaled answer segments.
    pub compare: bool,
    /// Every byte must be covered by a segment (migration).
    pub strict: bool,
    /// Divergences are warnings.
    pub warn: bool,
    /// The greeting (length, CRC-32) a re-created connection starts with.
    pub greeting: Option<(u64, u32)>,
}

/// A greeting being consumed before the answers.
struct Greeting {
    left: u64,
    len: u64,
    crc32: u32,
    hasher: crc32fast::Hasher,
    seen: Vec<u8>,
}

impl Greeting {
    /// Takes the greeting's bytes from the front of `bytes`; returns how
    /// many, and a divergence once it is complete and differs.
    fn take(&mut self, bytes: &[u8]) -> (usize, Option<DivergenceKind>) {
        let n = (self.left as usize).min(bytes.len());
        self.hasher.update(&bytes[..n]);
        let room = crate::compare::PREVIEW_BYTES.saturating_sub(self.seen.len());
        self.seen.extend_from_slice(&bytes[..n.min(room)]);
        self.left -= n as u64;
        if self.left > 0 || self.hasher.clone().finalize() == self.crc32 {
            return (n, None);
        }
        let kind = DivergenceKind::GreetingMismatch {
            len: self.len,
            got_preview: crate::compare::preview(&self.seen),
        };
        (n, Some(kind))
    }
}

/// Ends a lock's scope explicitly before notifying.
fn drop_guard<T>(_guard: T) {}

async fn read_answers(
    mut read: OwnedReadHalf,
    shared: Arc<Shared>,
    total: Arc<TotalAnswers>,
) -> Option<OwnedReadHalf> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let full = {
            let s = shared.state.lock().expect("poisoned");
            s.pending.len() >= MAX_PENDING
        };
        if full {
            // Wait for the watermark to move (or a stop) before reading more.
            let changed = shared.changed.notified();
            tokio::select! {
                _ = changed => continue,
                _ = shared.stop.notified() => return Some(read),
            }
        }
        let n = tokio::select! {
            n = read.read(&mut buf) => n,
            _ = shared.stop.notified() => return Some(read),
        };
        let mut s = shared.state.lock().expect("poisoned");
        let mut from = 0;
        if let (Ok(n), Some(greeting)) = (&n, s.greeting.as_mut()) {
            let (taken, diverged) = greeting.take(&buf[..*n]);
            from = taken;
            if greeting.left == 0 {
                s.greeting = None;
            }
            if let Some(kind) = diverged {
                let d = Divergence {
                    lsn: 0,
                    conn: shared.conn,
                    kind,
                };
                crate::log_divergence(shared.warn, &d);
                shared.failures.lock().expect("poisoned").push(d);
            }
            if taken == *n && *n > 0 {
                continue; // all greeting
            }
        }
        match n {
            Ok(n) if n > 0 => {
                let buf = &buf[from..n];
                let n = buf.len();
                let start = s.got;
                s.check(start, &buf[..n], &shared);
                s.got += n as u64;
                // Only the part above the watermark is kept.
                let skip = s.watermark.saturating_sub(start).min(n as u64) as usize;
                s.pending.extend_from_slice(&buf[skip..n]);
                let above = s.got + 1;
                let rest = s.awaits.split_off(&above);
                let met = std::mem::replace(&mut s.awaits, rest);
                drop_guard(s);
                for lsn in met.into_values().flatten() {
                    shared.inflight.await_done(lsn);
                }
                total.bytes.fetch_add(n as u64, Ordering::AcqRel);
                total.changed.notify_waiters();
                shared.changed.notify_waiters();
            }
            _ => {
                s.ended = true;
                drop_guard(s);
                shared.changed.notify_waiters();
                return None;
            }
        }
    }
}
