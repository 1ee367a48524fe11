//! Answer journaling (`--journal-responses`): what the service said back on
//! a connection between two of its client records, kept as one `answer`
//! record so `replay --compare` can check a target's answers by content.
//!
//! The answers direction folds each delivered chunk into the connection's
//! open segment (a running CRC-32, plus the bytes in `full` mode); the
//! input direction cuts the segment when it journals the next client record
//! (or the close), and appends it in the same journal call. Both sides hold
//! the segment's lock only for that fold or cut, and the delivered count
//! moves under the same lock, so a segment always ends exactly at the next
//! record's `resp_before`.

use bytes::BytesMut;
use replaymig_journal::record::MAX_DATA_LEN;
use replaymig_journal::{ConnId, Record};
use std::sync::atomic::{AtomicU64, Ordering};

/// How much of the service's answers the journal keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerJournaling {
    /// Only the answer byte counts every record already carries.
    Off,
    /// A CRC-32 and a length per answer segment (~40 bytes a segment).
    #[default]
    Digest,
    /// The answer bytes themselves (a segment over 1 MiB keeps its digest
    /// only), for `export --pcap` with both directions and exact offsets.
    Full,
}

impl AnswerJournaling {
    /// The name used on the command line, in configs and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerJournaling::Off => "off",
            AnswerJournaling::Digest => "digest",
            AnswerJournaling::Full => "full",
        }
    }
}

impl std::str::FromStr for AnswerJournaling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(AnswerJournaling::Off),
            "digest" => Ok(AnswerJournaling::Digest),
            "full" => Ok(AnswerJournaling::Full),
            other => Err(format!("{other:?}: expected off, digest or full")),
        }
    }
}

/// The answers since the connection's last client record.
pub(crate) struct OpenSegment {
    /// Answer bytes delivered on the connection before the segment.
    start: u64,
    len: u64,
    hasher: crc32fast::Hasher,
    /// The bytes (full mode) while they fit in one record.
    bytes: Option<BytesMut>,
}

impl OpenSegment {
    /// A segment starting after `delivered` answer bytes.
    pub(crate) fn new(delivered: u64, mode: AnswerJournaling) -> Self {
        OpenSegment {
            start: delivered,
            len: 0,
            hasher: crc32fast::Hasher::new(),
            bytes: (mode == AnswerJournaling::Full).then(BytesMut::new),
        }
    }

    /// No answer bytes since the last cut.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds delivered answer bytes and moves `delivered` (the connection's
    /// answer-bytes-delivered counter) under the same lock as the cut, so
    /// the two always agree.
    pub(crate) fn fold(&mut self, chunk: &[u8], delivered: &AtomicU64) {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        if let Some(bytes) = &mut self.bytes {
            if self.len as usize <= MAX_DATA_LEN {
                bytes.extend_from_slice(chunk);
            } else {
                // Too big for one record: the digest stands for it.
                self.bytes = None;
            }
        }
        delivered.fetch_add(chunk.len() as u64, Ordering::AcqRel);
    }

    /// Ends the segment: its record (none if no answer came) and where the
    /// next segment starts (= the next client record's `resp_before`).
    pub(crate) fn cut(&mut self, conn: ConnId, mode: AnswerJournaling) -> (Option<Record>, u64) {
        let end = self.start + self.len;
        let done = std::mem::replace(self, OpenSegment::new(end, mode));
        if done.len == 0 {
            return (None, end);
        }
        let data = done.bytes.map(BytesMut::freeze).unwrap_or_default();
        let record = Record::answer(conn, done.start, done.len, done.hasher.finalize(), data);
        (Some(record), end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parts(record: Option<Record>) -> (u64, u64, u32, Bytes) {
        match record {
            Some(Record::Answer {
                offset,
                len,
                crc32,
                data,
                ..
            }) => (offset, len, crc32, data),
            other => panic!("not an answer record: {other:?}"),
        }
    }

    #[test]
    fn segments_are_contiguous_and_end_at_the_delivered_count() {
        let delivered = AtomicU64::new(7);
        let mut seg = OpenSegment::new(7, AnswerJournaling::Digest);
        seg.fold(b"+OK", &delivered);
        seg.fold(b"\r\n", &delivered);
        let (record, next) = seg.cut(3, AnswerJournaling::Digest);
        assert_eq!(next, delivered.load(Ordering::Acquire));
        assert_eq!(
            parts(record),
            (7, 5, crc32fast::hash(b"+OK\r\n"), Bytes::new())
        );
        let (none, next) = seg.cut(3, AnswerJournaling::Digest);
        assert!(none.is_none(), "no answer: no record");
        assert_eq!(next, 12);
        seg.fold(b":1\r\n", &delivered);
        assert_eq!(parts(seg.cut(3, AnswerJournaling::Digest).0).0, 12);
    }

    #[test]
    fn full_keeps_bytes_until_a_segment_outgrows_a_record() {
        let delivered = AtomicU64::new(0);
        let mut seg = OpenSegment::new(0, AnswerJournaling::Full);
        seg.fold(b"$1\r\na\r\n", &delivered);
        let (_, _, _, data) = parts(seg.cut(1, AnswerJournaling::Full).0);
        assert_eq!(&data[..], b"$1\r\na\r\n");
        let big = vec![b'x'; MAX_DATA_LEN];
        seg.fold(&big, &delivered);
        seg.fold(b"y", &delivered);
        let record = seg.cut(1, AnswerJournaling::Full).0.unwrap();
        record.validate().unwrap();
        let (offset, len, crc, data) = parts(Some(record));
        assert_eq!((offset, len), (7, MAX_DATA_LEN as u64 + 1));
        let mut h = crc32fast::Hasher::new();
        h.update(&big);
        h.update(b"y");
        assert_eq!(crc, h.finalize());
        assert!(data.is_empty(), "over the limit: digest only");
    }
}
