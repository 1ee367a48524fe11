//! A segment: the records of one group commit, stored as one sled value
//! under the big-endian LSN of its first record. Sled costs several
//! microseconds of CPU per insert, so one insert per group instead of per
//! record is what lets the journal keep up with a proxy on two cores.
//!
//! Layout: repeated `[u32 length][record]`, record `i` having LSN
//! `key + i`. Each record keeps its own checksum (over its LSN), so a
//! corrupt byte is still reported with the LSN of the record it hit.

use crate::error::{JournalError, Result};
use crate::record::Record;
use crate::store::Entry;
use crate::Lsn;

/// Appends `record` (LSN `lsn`) to the segment being built in `out`.
pub(crate) fn push(out: &mut Vec<u8>, lsn: Lsn, record: &Record) {
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    record.encode_into(lsn, out);
    let len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Walks a segment's records without decoding them: `(lsn, offset of the
/// length prefix, record bytes)`.
pub(crate) fn raw(first: Lsn, value: &[u8]) -> impl Iterator<Item = Result<(Lsn, usize, &[u8])>> {
    let mut offset = 0;
    let mut lsn = first;
    let mut past_max = false;
    std::iter::from_fn(move || {
        if offset == value.len() {
            return None;
        }
        if past_max {
            offset = value.len();
            return Some(Err(malformed(lsn, "records numbered past LSN u64::MAX")));
        }
        let at = offset;
        let item = (|| {
            let len_bytes = value
                .get(offset..offset + 4)
                .ok_or_else(|| malformed(lsn, "segment ends inside a length prefix"))?;
            let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
            let body = value
                .get(offset + 4..offset + 4 + len)
                .ok_or_else(|| malformed(lsn, "record length runs past the segment"))?;
            Ok((lsn, at, body))
        })();
        match &item {
            Ok((_, _, body)) => {
                offset += 4 + body.len();
                match lsn.checked_add(1) {
                    Some(next) => lsn = next,
                    // No LSN after u64::MAX: what follows cannot be numbered.
                    None => past_max = true,
                }
            }
            // Stop after reporting: the rest of the segment cannot be framed.
            Err(_) => offset = value.len(),
        }
        Some(item)
    })
}

/// The verified records of a segment.
pub(crate) fn entries(first: Lsn, value: &[u8]) -> impl Iterator<Item = Result<Entry>> + '_ {
    raw(first, value).map(|item| {
        let (lsn, _, body) = item?;
        Ok(Entry {
            lsn,
            record: Record::decode(lsn, body)?,
        })
    })
}

/// Number of records in a segment (framing only).
pub(crate) fn count(first: Lsn, value: &[u8]) -> Result<u64> {
    let mut n = 0;
    for item in raw(first, value) {
        item?;
        n += 1;
    }
    Ok(n)
}

fn malformed(lsn: Lsn, reason: &str) -> JournalError {
    JournalError::Malformed {
        lsn,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_past_the_last_lsn_are_an_error_not_an_overflow() {
        // Found by the journal_segment fuzz target: key u64::MAX, two
        // empty records (fuzz/regressions/journal_segment/crash-lsn-overflow).
        let value = [0u8, 0, 0, 0, 0, 0, 0, 0];
        let items: Vec<_> = raw(Lsn::MAX, &value).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().0, Lsn::MAX);
        assert!(items[1].is_err());
    }

    #[test]
    fn records_get_consecutive_lsns_and_bad_framing_names_the_lsn() {
        let mut seg = Vec::new();
        for (i, conn) in [5u64, 6, 7].iter().enumerate() {
            push(&mut seg, 10 + i as u64, &Record::half_closed(*conn));
        }
        let got: Vec<_> = entries(10, &seg).map(|e| e.unwrap().lsn).collect();
        assert_eq!(got, vec![10, 11, 12]);
        assert_eq!(count(10, &seg).unwrap(), 3);
        let cut = &seg[..seg.len() - 3];
        let last = entries(10, cut).last().unwrap().unwrap_err();
        assert!(last.to_string().contains("LSN 12"), "{last}");
    }
}
