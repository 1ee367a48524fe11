//! Content comparison of a target's answers against the answer segments the
//! proxy journaled (`--journal-responses digest|full`): `replay --compare`.
//!
//! A connection's answers are one byte stream; the journal cut it into
//! segments at each client record, each with its offset, length and CRC-32
//! (and, in `full` mode, its bytes). The checker consumes the target's answer
//! bytes as they arrive, in order, and gives a verdict per segment as soon as
//! the segment's last byte came. With the bytes kept it names the first
//! differing byte; with a digest only the segment.
//!
//! Pure logic, no I/O: the answer reader feeds it under its lock.

use bytes::Bytes;
use replaymig_journal::Lsn;
use serde::Serialize;
use std::collections::VecDeque;

/// Bytes of each side shown in a divergence.
pub const PREVIEW_BYTES: usize = 48;

/// One journaled answer segment, positioned in the replayed connection's
/// answer stream (offsets relative to the replay's starting point).
#[derive(Debug, Clone)]
pub struct ExpectedSegment {
    /// The last client record on the connection before the segment: the
    /// input these answers respond to.
    pub request_lsn: Lsn,
    /// The answer record's own LSN.
    pub answer_lsn: Lsn,
    /// Where the segment starts in the replayed stream.
    pub offset: u64,
    /// Where it started in the original connection's stream (reported).
    pub original_offset: u64,
    /// Its length.
    pub len: u64,
    /// CRC-32 of the original bytes.
    pub crc32: u32,
    /// The original bytes (`full`), or empty (`digest`).
    pub data: Bytes,
}

/// A segment the target answered differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnswerMismatch {
    /// The client record the answers respond to.
    pub request_lsn: Lsn,
    /// The answer record.
    pub answer_lsn: Lsn,
    /// Byte offset in the original connection's answer stream of the first
    /// differing byte (bytes kept) or of the segment (digest only).
    pub offset: u64,
    /// Whether `offset` is the exact first differing byte.
    pub exact: bool,
    /// The segment's length.
    pub segment_len: u64,
    /// The original's bytes from `offset` (empty when only a digest was kept).
    pub expected_preview: String,
    /// The target's bytes from `offset`.
    pub got_preview: String,
}

/// Checks a connection's answer stream against its expected segments.
#[derive(Default)]
pub struct AnswerChecker {
    queue: VecDeque<ExpectedSegment>,
    /// Bytes of the head segment consumed.
    pos: u64,
    hasher: crc32fast::Hasher,
    /// First differing byte within the head segment (bytes kept).
    mismatch_at: Option<u64>,
    /// The target's bytes from the mismatch (or the segment start).
    got: Vec<u8>,
}

impl AnswerChecker {
    /// Queues a segment; segments must come in stream order.
    pub fn expect(&mut self, segment: ExpectedSegment) {
        if segment.len > 0 {
            self.queue.push_back(segment);
        }
    }

    /// Segments still waiting for their bytes.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Feeds the target's answer bytes at stream position `start`; returns
    /// the segments they completed that differ. Bytes before the head
    /// segment's next position are ignored (already fed), so feeding the
    /// same bytes twice is harmless; a gap (bytes of the head segment that
    /// were never fed) gives that segment up without a verdict.
    pub fn feed(&mut self, start: u64, bytes: &[u8]) -> Vec<AnswerMismatch> {
        let mut found = Vec::new();
        let end = start + bytes.len() as u64;
        while let Some(seg) = self.queue.front() {
            let next = seg.offset + self.pos;
            if next < start {
                self.skip_head();
                continue;
            }
            if next >= end {
                break;
            }
            let from = (next - start) as usize;
            let take = ((seg.len - self.pos) as usize).min(bytes.len() - from);
            let chunk = &bytes[from..from + take];
            self.hasher.update(chunk);
            self.note_difference(chunk);
            self.pos += take as u64;
            if self.pos == self.queue.front().expect("head").len {
                if let Some(m) = self.verdict() {
                    found.push(m);
                }
            }
        }
        found
    }

    /// Compares `chunk` (the next bytes of the head segment) with the kept
    /// original bytes, and keeps the target's bytes for the preview.
    fn note_difference(&mut self, chunk: &[u8]) {
        let seg = self.queue.front().expect("head");
        if self.mismatch_at.is_none() && !seg.data.is_empty() {
            let original = &seg.data[self.pos as usize..self.pos as usize + chunk.len()];
            if let Some(i) = original.iter().zip(chunk).position(|(a, b)| a != b) {
                self.mismatch_at = Some(self.pos + i as u64);
                let from = i;
                let keep = (chunk.len() - from).min(PREVIEW_BYTES);
                self.got.extend_from_slice(&chunk[from..from + keep]);
                return;
            }
        }
        let collecting = self.mismatch_at.is_some() || seg.data.is_empty();
        if collecting && self.got.len() < PREVIEW_BYTES {
            let keep = chunk.len().min(PREVIEW_BYTES - self.got.len());
            self.got.extend_from_slice(&chunk[..keep]);
        }
    }

    /// The head segment is complete: pops it and says whether it differed.
    fn verdict(&mut self) -> Option<AnswerMismatch> {
        let crc = std::mem::take(&mut self.hasher).finalize();
        let mismatch_at = self.mismatch_at.take();
        let got = std::mem::take(&mut self.got);
        self.pos = 0;
        let seg = self.queue.pop_front().expect("head");
        if crc == seg.crc32 && mismatch_at.is_none() {
            return None;
        }
        let at = mismatch_at.unwrap_or(0);
        let expected = if seg.data.is_empty() {
            &[][..]
        } else {
            let from = at as usize;
            &seg.data[from..(from + PREVIEW_BYTES).min(seg.data.len())]
        };
        Some(AnswerMismatch {
            request_lsn: seg.request_lsn,
            answer_lsn: seg.answer_lsn,
            offset: seg.original_offset + at,
            exact: mismatch_at.is_some(),
            segment_len: seg.len,
            expected_preview: preview(expected),
            got_preview: preview(&got),
        })
    }

    fn skip_head(&mut self) {
        self.queue.pop_front();
        self.pos = 0;
        self.hasher = crc32fast::Hasher::new();
        self.mismatch_at = None;
        self.got.clear();
    }
}

/// Bytes as readable text: printable ASCII as is, the rest escaped.
pub fn preview(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(offset: u64, original: &[u8], keep: bool) -> ExpectedSegment {
        ExpectedSegment {
            request_lsn: 10 + offset,
            answer_lsn: 11 + offset,
            offset,
            original_offset: 100 + offset,
            len: original.len() as u64,
            crc32: crc32fast::hash(original),
            data: if keep {
                Bytes::copy_from_slice(original)
            } else {
                Bytes::new()
            },
        }
    }

    #[test]
    fn equal_answers_fed_in_any_pieces_give_no_verdict() {
        let mut c = AnswerChecker::default();
        c.expect(segment(0, b"+OK\r\n", true));
        c.expect(segment(5, b":42\r\n", false));
        assert!(c.feed(0, b"+O").is_empty());
        assert!(c.feed(2, b"K\r\n:4").is_empty());
        assert!(
            c.feed(0, b"+OK\r\n:4").is_empty(),
            "bytes fed twice are ignored"
        );
        assert!(c.feed(7, b"2\r\n").is_empty());
        assert_eq!(c.waiting(), 0);
    }

    #[test]
    fn kept_bytes_name_the_first_differing_byte() {
        let mut c = AnswerChecker::default();
        c.expect(segment(0, b"$5\r\nhello\r\n", true));
        let found = c.feed(0, b"$5\r\nhellO\r\n");
        assert_eq!(found.len(), 1);
        let m = &found[0];
        assert_eq!((m.offset, m.exact, m.segment_len), (108, true, 11));
        assert_eq!(m.expected_preview, "o\\r\\n");
        assert_eq!(m.got_preview, "O\\r\\n");
        assert_eq!((m.request_lsn, m.answer_lsn), (10, 11));
    }

    #[test]
    fn a_digest_names_the_segment_and_shows_what_came() {
        let mut c = AnswerChecker::default();
        c.expect(segment(0, b":1\r\n", false));
        c.expect(segment(4, b":2\r\n", false));
        let found = c.feed(0, b":1\r\n:7\r\n");
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].offset, found[0].exact), (104, false));
        assert_eq!(found[0].expected_preview, "");
        assert_eq!(found[0].got_preview, ":7\\r\\n");
    }

    #[test]
    fn a_segment_whose_start_was_never_fed_is_given_up() {
        let mut c = AnswerChecker::default();
        c.expect(segment(0, b"abcd", false));
        c.expect(segment(4, b"efgh", false));
        assert!(c.feed(4, b"efgh").is_empty());
        assert_eq!(c.waiting(), 0, "the first given up, the second checked");
        c.expect(segment(8, b"ijkl", false));
        assert!(c.feed(10, b"XX").is_empty(), "a gap: no verdict");
        assert_eq!(c.waiting(), 0);
    }
}
