//! Which applied records have really reached the target, and when a record
//! may go out. `apply` only queues (or defers) a record for its
//! connection's task, which may still wait for answers it depends on; a
//! migration must acknowledge (and hand over on) what was *sent* — and
//! answered, where the original had an answer before later input — not
//! what was queued, or the hand-over would inherit the backlog inside its
//! hold.
//!
//! It is also the replay's sequencer, with two orders:
//! - *Sends* go out one after another in dispatch order (`queue`), which
//!   the replayer makes the order in which the original's answers began:
//!   the order in which the original service executed the requests.
//! - *Awaits* are answer segments the original proxy had delivered before
//!   it journaled later input: a send may go out only once every await
//!   journaled before it (lower LSN) was reproduced by the target
//!   (`wait_ready`). Awaits are met by the answer readers, not by a queue,
//!   so input the original sent before an answer arrived is not held back
//!   by it.

use replaymig_journal::Lsn;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Applied records not yet handed to the target, the send queue, and the
/// awaits not yet met.
#[derive(Default)]
pub(crate) struct InFlight {
    state: Mutex<State>,
    /// Settled sending: the connection the last record went to, and the
    /// answer bytes it had read before that record.
    last_sent: Mutex<Option<(Arc<crate::answers::AnswerReader>, u64)>>,
}

#[derive(Default)]
struct State {
    /// Queued sends by dispatch number, with the waker of the task that
    /// holds each.
    sends: BTreeMap<u64, Arc<Notify>>,
    /// Answer segments (by LSN) the target has not reproduced yet.
    awaits: BTreeSet<Lsn>,
    /// Applied records not yet handed to the target or reproduced (queued
    /// or deferred sends, unmet awaits).
    held: BTreeSet<Lsn>,
    /// The next dispatch number.
    next: u64,
    /// The highest LSN applied.
    applied: Lsn,
}

impl State {
    /// Wakes the task whose send is next.
    fn wake_head(&self) {
        if let Some((_, head)) = self.sends.first_key_value() {
            head.notify_one();
        }
    }
}

impl InFlight {
    /// `lsn` was applied (queued, deferred or neither).
    pub(crate) fn applied(&self, lsn: Lsn) {
        let mut s = self.state.lock().expect("poisoned");
        s.applied = s.applied.max(lsn);
    }

    /// `lsn` is not handed to the target yet (queued or deferred).
    pub(crate) fn hold(&self, lsn: Lsn) {
        self.state.lock().expect("poisoned").held.insert(lsn);
    }

    /// Queues a send for the task woken through `turn`: its dispatch number.
    pub(crate) fn queue(&self, turn: Arc<Notify>) -> u64 {
        let mut s = self.state.lock().expect("poisoned");
        let seq = s.next;
        s.next += 1;
        s.sends.insert(seq, turn);
        seq
    }

    /// Send `seq` (record `lsn`) left its queue: handed to the target, or
    /// given up. Wakes the task whose send is now the oldest.
    pub(crate) fn done(&self, seq: u64, lsn: Lsn) {
        let mut s = self.state.lock().expect("poisoned");
        s.held.remove(&lsn);
        let was_first = s.sends.first_key_value().is_some_and(|(q, _)| *q == seq);
        s.sends.remove(&seq);
        if was_first {
            s.wake_head();
        }
    }

    /// The answer segment journaled at `lsn` must be reproduced before any
    /// later record goes out.
    pub(crate) fn await_pending(&self, lsn: Lsn) {
        let mut s = self.state.lock().expect("poisoned");
        s.awaits.insert(lsn);
        s.held.insert(lsn);
    }

    /// The target reproduced the answer segment journaled at `lsn`.
    pub(crate) fn await_done(&self, lsn: Lsn) {
        let mut s = self.state.lock().expect("poisoned");
        s.held.remove(&lsn);
        let was_oldest = s.awaits.first() == Some(&lsn);
        s.awaits.remove(&lsn);
        if was_oldest {
            s.wake_head();
        }
    }

    /// Whether send `seq` of record `lsn` may go out now; else the await
    /// that holds it back, if one does.
    fn ready(&self, seq: u64, lsn: Lsn) -> Result<(), Option<Lsn>> {
        let s = self.state.lock().expect("poisoned");
        if s.sends.first_key_value().is_some_and(|(q, _)| *q < seq) {
            return Err(None);
        }
        match s.awaits.first() {
            Some(a) if *a < lsn => Err(Some(*a)),
            _ => Ok(()),
        }
    }

    /// Waits until send `seq` (record `lsn`) is the oldest queued and
    /// every await journaled before `lsn` was met. `turn` is the waker
    /// given to `queue`. After `timeout` without progress, the await that
    /// holds it back (the target never reproduced it), if any, is returned.
    pub(crate) async fn wait_ready(
        &self,
        seq: u64,
        lsn: Lsn,
        turn: &Notify,
        timeout: Duration,
    ) -> Result<(), Option<Lsn>> {
        loop {
            let blocked = match self.ready(seq, lsn) {
                Ok(()) => return Ok(()),
                Err(blocked) => blocked,
            };
            match blocked {
                // Held back by an answer: that is what may never come.
                Some(_) => {
                    if tokio::time::timeout(timeout, turn.notified())
                        .await
                        .is_err()
                    {
                        return self.ready(seq, lsn).map_err(|b| b.or(blocked));
                    }
                }
                // Behind an older send, which reports its own failures.
                None => turn.notified().await,
            }
        }
    }

    /// A record went out on the connection `answers` reads, which had read
    /// `answered` bytes before it (settled sending).
    pub(crate) fn sent(&self, answers: Arc<crate::answers::AnswerReader>, answered: u64) {
        *self.last_sent.lock().expect("poisoned") = Some((answers, answered));
    }

    /// Drops the last record's connection (the replay is finishing).
    pub(crate) fn forget_last_sent(&self) {
        self.last_sent.lock().expect("poisoned").take();
    }

    /// The last record's connection and what it had read before it.
    pub(crate) fn last_sent(&self) -> Option<(Arc<crate::answers::AnswerReader>, u64)> {
        self.last_sent.lock().expect("poisoned").clone()
    }

    /// Every applied record up to this LSN has been handed to the target
    /// (and every answer segment up to it reproduced).
    pub(crate) fn replayed(&self) -> Lsn {
        let s = self.state.lock().expect("poisoned");
        match s.held.first() {
            Some(first) => first - 1,
            None => s.applied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(5);

    #[test]
    fn the_watermark_stops_below_the_oldest_held_record() {
        let f = InFlight::default();
        assert_eq!(f.replayed(), 0);
        for lsn in 1..=6 {
            f.applied(lsn);
        }
        let turn = Arc::new(Notify::new());
        f.hold(3);
        f.hold(5);
        f.await_pending(6);
        // Dispatched in another order than applied (5 before 3).
        let five = f.queue(turn.clone());
        let three = f.queue(turn);
        assert_eq!(f.replayed(), 2);
        f.done(five, 5);
        assert_eq!(f.replayed(), 2, "out of order completion does not skip 3");
        f.done(three, 3);
        assert_eq!(f.replayed(), 5, "the answer at 6 is not reproduced yet");
        f.await_done(6);
        assert_eq!(f.replayed(), 6);
    }

    #[tokio::test]
    async fn a_send_waits_for_older_sends_and_for_earlier_answers_only() {
        let f = Arc::new(InFlight::default());
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        f.await_pending(5);
        // Record 4 was read before the answer at 5: it does not wait for it.
        let four = f.queue(a.clone());
        f.wait_ready(four, 4, &a, LONG).await.unwrap();
        // Record 7 was read after it: it does.
        let seven = f.queue(b.clone());
        let waiter = {
            let (f, b) = (f.clone(), b.clone());
            tokio::spawn(async move { f.wait_ready(seven, 7, &b, LONG).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "behind send 4");
        f.done(four, 4);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "behind the answer at 5");
        f.await_done(5);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken when the answer came")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn an_answer_that_never_comes_is_named() {
        let f = InFlight::default();
        let turn = Arc::new(Notify::new());
        f.await_pending(3);
        let seq = f.queue(turn.clone());
        let r = f.wait_ready(seq, 9, &turn, Duration::from_millis(30)).await;
        assert_eq!(r, Err(Some(3)));
    }
}
