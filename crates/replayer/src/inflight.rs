//! Which applied records have really reached the target, and whose turn it
//! is. `apply` only queues a record for its connection's task, which may
//! still wait for answers it depends on; a migration must acknowledge (and
//! hand over on) what was *sent*, not what was queued, or the hand-over
//! would inherit the queued backlog inside its hold.
//!
//! It is also the replay's sequencer: a connection task hands a record to
//! the target only when it is the oldest queued one (`wait_turn`), so the
//! target receives input in LSN order across connections — the order in
//! which the original service received it — and an answer the original had
//! seen before a record (an `Await` in the queue) holds every later record
//! back, not only its own connection's.

use replaymig_journal::Lsn;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Applied records still queued for their connection's task.
#[derive(Default)]
pub(crate) struct InFlight {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Queued, not yet handed to the target, with the waker of the task
    /// that holds each.
    queued: BTreeMap<Lsn, Arc<Notify>>,
    /// The highest LSN applied.
    applied: Lsn,
}

impl InFlight {
    /// `lsn` was applied (queued or not).
    pub(crate) fn applied(&self, lsn: Lsn) {
        let mut s = self.state.lock().expect("poisoned");
        s.applied = s.applied.max(lsn);
    }

    /// `lsn` waits in the queue of the task woken through `turn`.
    pub(crate) fn queued(&self, lsn: Lsn, turn: Arc<Notify>) {
        self.state
            .lock()
            .expect("poisoned")
            .queued
            .insert(lsn, turn);
    }

    /// `lsn` left its queue: written to the target, or given up. Wakes the
    /// task whose record is now the oldest.
    pub(crate) fn done(&self, lsn: Lsn) {
        let mut s = self.state.lock().expect("poisoned");
        let was_first = s.queued.first_key_value().is_some_and(|(l, _)| *l == lsn);
        s.queued.remove(&lsn);
        if was_first {
            if let Some((_, next)) = s.queued.first_key_value() {
                next.notify_one();
            }
        }
    }

    /// Waits until `lsn` is the oldest queued record (every record applied
    /// before it has left its queue). `turn` is the waker given to `queued`.
    pub(crate) async fn wait_turn(&self, lsn: Lsn, turn: &Notify) {
        loop {
            let first = self
                .state
                .lock()
                .expect("poisoned")
                .queued
                .first_key_value()
                .map(|(l, _)| *l);
            match first {
                Some(first) if first < lsn => turn.notified().await,
                _ => return,
            }
        }
    }

    /// Every applied record up to this LSN has left its queue.
    pub(crate) fn replayed(&self) -> Lsn {
        let s = self.state.lock().expect("poisoned");
        match s.queued.first_key_value() {
            Some((first, _)) => first - 1,
            None => s.applied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_watermark_stops_below_the_oldest_queued_record() {
        let f = InFlight::default();
        assert_eq!(f.replayed(), 0);
        for lsn in 1..=5 {
            f.applied(lsn);
        }
        let turn = Arc::new(Notify::new());
        f.queued(3, turn.clone());
        f.queued(5, turn);
        assert_eq!(f.replayed(), 2);
        f.done(5);
        assert_eq!(f.replayed(), 2, "out of order completion does not skip 3");
        f.done(3);
        assert_eq!(f.replayed(), 5);
    }

    #[tokio::test]
    async fn a_record_waits_for_every_older_one_and_is_woken_by_the_last() {
        let f = Arc::new(InFlight::default());
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        f.queued(1, a.clone());
        f.queued(2, a.clone());
        f.queued(3, b.clone());
        let waiter = {
            let (f, b) = (f.clone(), b.clone());
            tokio::spawn(async move { f.wait_turn(3, &b).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "1 and 2 are still queued");
        f.done(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "2 is still queued");
        f.done(2);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken when its turn came")
            .unwrap();
        f.wait_turn(1, &a).await; // nothing older: at once
    }
}
