//! A live reader that follows the journal's durable head: what log shipping
//! and `journal dump --follow` read from.

use crate::error::{JournalError, Result};
use crate::store::{Entry, Store};
use crate::Lsn;
use std::collections::VecDeque;
use tokio::sync::watch;

/// Records read per storage scan while catching up.
const SCAN_CHUNK: u64 = 256;

/// Yields every record from a start LSN on, in order and without gaps,
/// waiting for new ones at the head. Only durable records are yielded.
pub struct Tail {
    store: Store,
    head: watch::Receiver<Lsn>,
    next: Lsn,
    buffered: VecDeque<Entry>,
}

impl Tail {
    pub(crate) fn new(store: Store, head: watch::Receiver<Lsn>, from: Lsn) -> Self {
        Tail {
            store,
            head,
            next: from,
            buffered: VecDeque::new(),
        }
    }

    /// The LSN the next call will yield.
    pub fn position(&self) -> Lsn {
        self.next
    }

    /// The next record, waiting for it if needed; `None` once the journal
    /// is closed and everything durable was yielded.
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                self.next = entry.lsn + 1;
                return Ok(Some(entry));
            }
            let head = *self.head.borrow_and_update();
            if self.next <= head {
                let to = head.min(self.next + SCAN_CHUNK - 1);
                for (expected, entry) in (self.next..).zip(self.store.range(self.next, to)) {
                    let entry = entry?;
                    if entry.lsn != expected {
                        return Err(JournalError::Malformed {
                            lsn: expected,
                            reason: format!("missing record (next stored is {})", entry.lsn),
                        });
                    }
                    self.buffered.push_back(entry);
                }
                if self.buffered.is_empty() {
                    return Err(JournalError::Malformed {
                        lsn: self.next,
                        reason: "missing record below the durable head".into(),
                    });
                }
                continue;
            }
            if self.head.changed().await.is_err() && *self.head.borrow() < self.next {
                return Ok(None);
            }
        }
    }
}
