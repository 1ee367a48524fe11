//! Which applied records have really reached the target. `apply` only
//! queues a record for its connection's task, which may still wait for
//! answers it depends on; a migration must acknowledge (and hand over on)
//! what was *sent*, not what was queued, or the hand-over would inherit the
//! queued backlog inside its hold.

use replaymig_journal::Lsn;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// Applied records still queued for their connection's task.
#[derive(Default)]
pub(crate) struct InFlight {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Queued, not yet handed to the target.
    queued: BTreeSet<Lsn>,
    /// The highest LSN applied.
    applied: Lsn,
}

impl InFlight {
    /// `lsn` was applied (queued or not).
    pub(crate) fn applied(&self, lsn: Lsn) {
        let mut s = self.state.lock().expect("poisoned");
        s.applied = s.applied.max(lsn);
    }

    /// `lsn` waits in a connection's queue.
    pub(crate) fn queued(&self, lsn: Lsn) {
        self.state.lock().expect("poisoned").queued.insert(lsn);
    }

    /// `lsn` left its queue: written to the target, or given up.
    pub(crate) fn done(&self, lsn: Lsn) {
        self.state.lock().expect("poisoned").queued.remove(&lsn);
    }

    /// Every applied record up to this LSN has left its queue.
    pub(crate) fn replayed(&self) -> Lsn {
        let s = self.state.lock().expect("poisoned");
        match s.queued.first() {
            Some(first) => first - 1,
            None => s.applied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_stops_below_the_oldest_queued_record() {
        let f = InFlight::default();
        assert_eq!(f.replayed(), 0);
        for lsn in 1..=5 {
            f.applied(lsn);
        }
        f.queued(3);
        f.queued(5);
        assert_eq!(f.replayed(), 2);
        f.done(5);
        assert_eq!(f.replayed(), 2, "out of order completion does not skip 3");
        f.done(3);
        assert_eq!(f.replayed(), 5);
    }
}
