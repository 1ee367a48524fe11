//! The journal's order: answers against input, across connections.
//!
//! Replay reproduces the order in which the original service received and
//! answered input (see the replayer): it sends each client record just
//! before the answer segment it leads to and lets nothing journaled after
//! an answer segment overtake it. That only works if the journal itself is
//! in the order the proxy saw things: every answer delivered before a
//! client record was read must be journaled before that record. So each
//! client record first cuts the answer segments of every connection that
//! got answers since its last cut (in the order those answers began), then
//! its own, and queues all of them with the record for the journal — all
//! under one lock, because the journal numbers appends in the order they
//! are queued, not in the order their cuts happened.

use crate::answers::AnswerJournaling;
use crate::connection::{cut_answers, ConnSlot, Shared};
use replaymig_journal::{Appending, JournalError, Lsn, Record, MAX_APPEND_BYTES};
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
        // Loaded before the pending segments are taken: every answer byte
        // it counts was folded (and its connection marked pending) first.
        let resp_total_before = shared.resp_total.load(Ordering::Acquire);
        let mut records = Vec::new();
        let mut own = None;
        if flush_others && shared.journal_responses != AnswerJournaling::Off {
            let dirty = std::mem::take(&mut *shared.dirty.lock().expect("poisoned"));
            for other in dirty {
                let (segment, delivered) = cut_answers(&other, shared);
                if Arc::ptr_eq(&other, slot) {
                    own = Some(delivered);
                }
                records.extend(segment);
            }
        }
        let resp_before = match own {
            Some(delivered) => delivered,
            None => {
                let (segment, delivered) = cut_answers(slot, shared);
                records.extend(segment);
                delivered
            }
        };
        records.push(make(resp_before, resp_total_before));
        records
    })
    .await
}

/// Queues the records `build` makes (under the order lock, so nothing is
/// cut or queued in between) and waits until they are durable; returns
/// the LSN of the last one. Records past the journal's group limit go in
/// several appends, in order.
pub(crate) async fn journal_in_order(
    shared: &Shared,
    build: impl FnOnce(&Shared) -> Vec<Record>,
) -> Result<Lsn, JournalError> {
    let appends = {
        let _order = shared.order.lock().await;
        let records = build(shared);
        let mut appends: Vec<(Appending, usize)> = Vec::new();
        for group in groups(records) {
            let len = group.len();
            appends.push((shared.journal.enqueue(group).await?, len));
        }
        appends
    };
    let mut last = 0;
    for (append, len) in appends {
        last = append.durable().await? + len as Lsn - 1;
    }
    Ok(last)
}

/// Splits `records` into runs that fit one append.
fn groups(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for record in records {
        let len = record.encoded_len_hint();
        if !current.is_empty() && bytes + len > MAX_APPEND_BYTES {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(record);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn records_past_one_append_are_split_in_order() {
        let big = || Record::data(1, 0, 0, Bytes::from(vec![0u8; 1 << 20]));
        let records: Vec<Record> = (0..9).map(|_| big()).collect();
        let split = groups(records);
        assert!(split.len() >= 3, "{} groups", split.len());
        assert_eq!(split.iter().map(Vec::len).sum::<usize>(), 9);
        for g in &split {
            let bytes: usize = g.iter().map(Record::encoded_len_hint).sum();
            assert!(bytes <= MAX_APPEND_BYTES);
        }
        assert_eq!(groups(vec![Record::half_closed(1)]).len(), 1);
    }
}
