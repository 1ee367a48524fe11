//! Feeding a stored journal range into a [`Replayer`]: the loop that
//! `replaymig replay` and a node rebuilding a service after a restart
//! share, so both read, verify and apply the same way.
//!
//! The range is read in slices of [`SLICE`] records: the journal's range
//! iterator must not live across the replayer's awaits, and a bounded
//! slice keeps memory flat however long the range is. Each record is
//! verified (checksum, format) as the journal reads it; a bad one stops the
//! feed before any record of its slice is applied. This lives with the
//! replayer, not the journal: the journal knows nothing of replaying.

use crate::{ReplayError, Replayer};
use replaymig_journal::{Entry, Journal, JournalError, Lsn};
use std::ops::RangeInclusive;
use tokio_util::sync::CancellationToken;

/// Records read from the journal at a time.
pub const SLICE: u64 = 1024;

/// Why a feed stopped before the end of its range.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// A record could not be read or failed verification (the journal's
    /// error names its LSN).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The replay diverged and its options say to stop there.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// How a feed that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// Every record of the range was applied.
    All,
    /// `stop` fired: records before this LSN were applied, none from it on.
    Stopped {
        /// The first LSN not applied.
        at: Lsn,
    },
}

/// Applies every record of `range` (both ends included) from `journal` to
/// `replayer`, in LSN order. `stop` is checked before each record (Ctrl-C
/// of the replay tool; a token nobody cancels feeds it all). `slice_done`
/// is called with the last LSN of each slice once it was applied (a
/// progress bar). The replayer is not finished here: the caller decides
/// what to do with the connections left open.
pub async fn feed_range(
    journal: &Journal,
    range: RangeInclusive<Lsn>,
    replayer: &mut Replayer,
    stop: &CancellationToken,
    mut slice_done: impl FnMut(Lsn),
) -> Result<Fed, FeedError> {
    let (mut next, to) = (*range.start(), *range.end());
    while next <= to {
        let end = to.min(next.saturating_add(SLICE - 1));
        let slice = read_slice(journal, next, end)?;
        for entry in &slice {
            if stop.is_cancelled() {
                return Ok(Fed::Stopped { at: entry.lsn });
            }
            replayer.apply(entry).await?;
        }
        slice_done(end);
        match end.checked_add(1) {
            Some(after) => next = after,
            None => break,
        }
    }
    Ok(Fed::All)
}

/// One slice, read (and so verified) whole before any of it is applied.
fn read_slice(journal: &Journal, from: Lsn, to: Lsn) -> Result<Vec<Entry>, JournalError> {
    journal.read_range(from, to).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReplayOptions;
    use bytes::Bytes;
    use replaymig_journal::{Durability, JournalOptions, Record};
    use std::net::SocketAddr;

    /// A journal of `n` markers (LSN 1 ..= n): the replayer counts them
    /// and connects nowhere, so the feed itself is what is tested.
    async fn journal_of_markers(dir: &std::path::Path, n: u64) -> Journal {
        let options = JournalOptions {
            durability: Durability::None,
            ..JournalOptions::default()
        };
        let journal = Journal::open(dir, options).unwrap();
        let marker = |i| Record::Marker {
            time_us: i,
            mark: "test".into(),
            lsn_ref: 0,
            payload: Bytes::new(),
        };
        let records: Vec<Record> = (0..n).map(marker).collect();
        for batch in records.chunks(64) {
            journal.append_batch(batch.to_vec()).await.unwrap();
        }
        journal
    }

    fn nowhere() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[tokio::test]
    async fn feeds_the_whole_range_in_slices_of_at_most_slice_records() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_of_markers(dir.path(), SLICE * 2 + 5).await;
        let mut replayer = Replayer::new(ReplayOptions::new(nowhere()));
        let mut slices = Vec::new();
        let fed = feed_range(
            &journal,
            3..=SLICE * 2 + 4,
            &mut replayer,
            &CancellationToken::new(),
            |end| slices.push(end),
        )
        .await
        .unwrap();
        assert_eq!(fed, Fed::All);
        assert_eq!(slices, vec![SLICE + 2, SLICE * 2 + 2, SLICE * 2 + 4]);
        assert_eq!(replayer.report().records, SLICE * 2 + 2);
        assert_eq!(replayer.report().last_lsn, Some(SLICE * 2 + 4));
        journal.close().await.unwrap();
    }

    #[tokio::test]
    async fn an_empty_range_feeds_nothing_and_a_cancelled_stop_names_the_first_lsn_left() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_of_markers(dir.path(), 10).await;
        let mut replayer = Replayer::new(ReplayOptions::new(nowhere()));
        let never = CancellationToken::new();
        // A rebuild whose snapshot point is the journal's head: from > to.
        let (head, from) = (10, 11);
        let fed = feed_range(&journal, from..=head, &mut replayer, &never, |_| {}).await;
        assert_eq!(fed.unwrap(), Fed::All);
        assert_eq!(replayer.report().records, 0);

        let stopped = CancellationToken::new();
        stopped.cancel();
        let fed = feed_range(&journal, 4..=10, &mut replayer, &stopped, |_| {}).await;
        assert_eq!(fed.unwrap(), Fed::Stopped { at: 4 });
        assert_eq!(replayer.report().records, 0);
        journal.close().await.unwrap();
    }
}
