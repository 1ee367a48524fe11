//! Content comparison of a target's answers against the answer segments the
//! proxy journaled (`--journal-responses digest|full`): `replay --compare`.
//!
//! A connection's answers are one byte stream; the journal cut it into
//! segments (at each client record, and at each snapshot barrier), each with
//! its offset, length and CRC-32 (and, in `full` mode, its bytes). The
//! checker keeps the target's answer bytes until a segment covering them is
//! verified and gives a verdict per segment as soon as both are there. With
//! the bytes kept it names the first differing byte; with a digest only the
//! segment. Migration uses it strictly: every answer byte up to a hand-over
//! must be covered and equal, or the hand-over is refused.
//!
//! Pure logic, no I/O: the answer reader feeds it under its lock.

use bytes::{Buf, Bytes, BytesMut};
use replaymig_journal::Lsn;
use serde::Serialize;
use std::collections::BTreeMap;

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

/// Answer bytes of the target that could not be checked against the
/// journal: a migration cannot prove them equal to what the original
/// client received, so it must not hand the connection over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UncheckedAnswer {
    /// Where the unchecked range starts in the original connection's
    /// answer stream.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Why it could not be checked.
    pub why: String,
}

/// What the checker found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A segment's bytes differ.
    Mismatch(AnswerMismatch),
    /// A range could not be checked (strict mode only).
    Unchecked(UncheckedAnswer),
}

/// Most target bytes kept while waiting for the segment that covers them;
/// past it, the oldest are given up (strict mode: reported).
const MAX_KEPT: usize = 16 << 20;

/// Checks a connection's answer stream against its expected segments.
///
/// The target's bytes are kept until a segment covering them is verified,
/// so a segment may be expected before or after its bytes arrived, and
/// segments may be expected out of stream order (the proxy can journal a
/// connection's segments in either order when two records race). In strict
/// mode (migration) verification is contiguous from the stream's start and
/// any byte left unverified is a finding; otherwise (debugging) a segment is
/// checked as soon as its bytes are there and gaps are skipped silently.
#[derive(Default)]
pub struct AnswerChecker {
    segments: BTreeMap<u64, ExpectedSegment>,
    /// Target bytes from `kept_from` on.
    kept: BytesMut,
    kept_from: u64,
    /// Every byte before this was compared with the journal (strict) or
    /// passed (debugging).
    verified_upto: u64,
    /// The stream position `original_offset - offset` maps to (for reports).
    base: Option<u64>,
    strict: bool,
}

impl AnswerChecker {
    /// A checker; `strict`: every byte must be covered by a segment.
    pub fn new(strict: bool) -> Self {
        AnswerChecker {
            strict,
            ..Default::default()
        }
    }

    /// Queues a segment.
    pub fn expect(&mut self, segment: ExpectedSegment) -> Vec<Finding> {
        if segment.len == 0 {
            return Vec::new();
        }
        self.base = Some(segment.original_offset - segment.offset);
        self.segments.insert(segment.offset, segment);
        self.settle()
    }

    /// Segments still waiting for their bytes (or for an earlier segment).
    pub fn waiting(&self) -> usize {
        self.segments.len()
    }

    /// End of the prefix of the stream checked so far.
    pub fn verified_upto(&self) -> u64 {
        self.verified_upto
    }

    /// Feeds the target's next answer bytes (stream position `start`, which
    /// continues what was fed before; bytes already fed are ignored).
    pub fn feed(&mut self, start: u64, bytes: &[u8]) -> Vec<Finding> {
        let have = self.kept_from + self.kept.len() as u64;
        let skip = have.saturating_sub(start).min(bytes.len() as u64) as usize;
        if start + (skip as u64) > have {
            // A gap in what was fed: nothing before `start` can be kept.
            self.kept.clear();
            self.kept_from = start;
        }
        self.kept.extend_from_slice(&bytes[skip..]);
        let mut found = self.settle();
        if self.kept.len() > MAX_KEPT {
            let over = (self.kept.len() - MAX_KEPT) as u64;
            found.extend(self.give_up_to(
                self.kept_from + over,
                "kept too long without a journaled segment",
            ));
        }
        found
    }

    /// Strict mode: the stream up to `upto` must have been checked; what
    /// was not is a finding (and counts as checked from then on).
    pub fn require_checked(&mut self, upto: u64) -> Vec<Finding> {
        if !self.strict || self.verified_upto >= upto {
            return Vec::new();
        }
        self.give_up_to(upto, "no journaled answer segment covers it")
    }

    /// Checks every segment that can be checked now.
    fn settle(&mut self) -> Vec<Finding> {
        let mut found = Vec::new();
        let got = self.kept_from + self.kept.len() as u64;
        while let Some((&offset, seg)) = self.segments.first_key_value() {
            let end = offset + seg.len;
            if offset < self.kept_from || (self.strict && offset < self.verified_upto) {
                let seg = self.segments.pop_first().expect("first").1;
                if self.strict {
                    found.push(Finding::Unchecked(UncheckedAnswer {
                        offset: seg.original_offset,
                        len: seg.len,
                        why: "the target's bytes were gone before the segment was journaled".into(),
                    }));
                }
                continue;
            }
            if end > got || (self.strict && offset > self.verified_upto) {
                break; // its bytes (or an earlier segment) are still to come
            }
            let seg = self.segments.pop_first().expect("first").1;
            let from = (offset - self.kept_from) as usize;
            let bytes = &self.kept[from..from + seg.len as usize];
            if let Some(m) = verdict(&seg, bytes) {
                found.push(Finding::Mismatch(m));
            }
            self.verified_upto = self.verified_upto.max(end);
            let drop_to = if self.strict { self.verified_upto } else { end };
            let drop = (drop_to - self.kept_from) as usize;
            self.kept.advance(drop);
            self.kept_from = drop_to;
        }
        found
    }

    /// Gives up checking the stream before `upto` (strict: reported), but
    /// still checks the segments waiting inside that range.
    fn give_up_to(&mut self, upto: u64, why: &str) -> Vec<Finding> {
        let mut found = Vec::new();
        while self.verified_upto < upto {
            let next_segment = self
                .segments
                .keys()
                .copied()
                .find(|o| *o >= self.verified_upto);
            let stop = next_segment.map_or(upto, |o| o.min(upto));
            if stop > self.verified_upto && self.strict {
                found.push(Finding::Unchecked(UncheckedAnswer {
                    offset: self.base.unwrap_or(0) + self.verified_upto,
                    len: stop - self.verified_upto,
                    why: why.to_string(),
                }));
            }
            self.verified_upto = stop;
            let have = self.kept_from + self.kept.len() as u64;
            let drop_to = stop.min(have).max(self.kept_from);
            self.kept.advance((drop_to - self.kept_from) as usize);
            self.kept_from = drop_to;
            let before = self.verified_upto;
            found.extend(self.settle());
            if self.verified_upto == before {
                break; // the next segment's bytes are still to come
            }
        }
        found
    }
}

/// Compares a whole segment's bytes from the target with the journal.
fn verdict(seg: &ExpectedSegment, got: &[u8]) -> Option<AnswerMismatch> {
    let differs_at = if seg.data.is_empty() {
        None
    } else {
        seg.data.iter().zip(got).position(|(a, b)| a != b)
    };
    if differs_at.is_none() && crc32fast::hash(got) == seg.crc32 {
        return None;
    }
    let at = differs_at.unwrap_or(0);
    let expected = if seg.data.is_empty() {
        &[][..]
    } else {
        &seg.data[at..(at + PREVIEW_BYTES).min(seg.data.len())]
    };
    Some(AnswerMismatch {
        request_lsn: seg.request_lsn,
        answer_lsn: seg.answer_lsn,
        offset: seg.original_offset + at as u64,
        exact: differs_at.is_some(),
        segment_len: seg.len,
        expected_preview: preview(expected),
        got_preview: preview(&got[at..(at + PREVIEW_BYTES).min(got.len())]),
    })
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

    fn mismatches(found: Vec<Finding>) -> Vec<AnswerMismatch> {
        found
            .into_iter()
            .map(|f| match f {
                Finding::Mismatch(m) => m,
                other => panic!("not a mismatch: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn equal_answers_fed_in_any_pieces_give_no_verdict() {
        for strict in [false, true] {
            let mut c = AnswerChecker::new(strict);
            assert!(c.expect(segment(0, b"+OK\r\n", true)).is_empty());
            assert!(c.expect(segment(5, b":42\r\n", false)).is_empty());
            assert!(c.feed(0, b"+O").is_empty());
            assert!(c.feed(2, b"K\r\n:4").is_empty());
            assert!(
                c.feed(0, b"+OK\r\n:4").is_empty(),
                "bytes fed twice are ignored"
            );
            assert!(c.feed(7, b"2\r\n").is_empty());
            assert_eq!(c.waiting(), 0);
            assert_eq!(c.verified_upto(), 10);
            assert!(c.require_checked(10).is_empty());
        }
    }

    #[test]
    fn a_segment_expected_after_its_bytes_came_is_still_checked() {
        let mut c = AnswerChecker::new(true);
        assert!(c.feed(0, b":1\r\n:2\r\n").is_empty());
        assert!(c.expect(segment(0, b":1\r\n", false)).is_empty());
        let found = mismatches(c.expect(segment(4, b":3\r\n", false)));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].got_preview, ":2\\r\\n");
    }

    #[test]
    fn segments_expected_out_of_order_are_checked_in_stream_order() {
        let mut c = AnswerChecker::new(true);
        assert!(c.feed(0, b"abcdefgh").is_empty());
        assert!(c.expect(segment(4, b"efgh", false)).is_empty());
        assert_eq!(c.verified_upto(), 0, "strict: waits for the first segment");
        assert!(c.expect(segment(0, b"abcd", false)).is_empty());
        assert_eq!(c.verified_upto(), 8);
    }

    #[test]
    fn kept_bytes_name_the_first_differing_byte() {
        let mut c = AnswerChecker::new(false);
        c.expect(segment(0, b"$5\r\nhello\r\n", true));
        let found = mismatches(c.feed(0, b"$5\r\nhellO\r\n"));
        assert_eq!(found.len(), 1);
        let m = &found[0];
        assert_eq!((m.offset, m.exact, m.segment_len), (108, true, 11));
        assert_eq!(m.expected_preview, "o\\r\\n");
        assert_eq!(m.got_preview, "O\\r\\n");
        assert_eq!((m.request_lsn, m.answer_lsn), (10, 11));
    }

    #[test]
    fn a_digest_names_the_segment_and_shows_what_came() {
        let mut c = AnswerChecker::new(false);
        c.expect(segment(0, b":1\r\n", false));
        c.expect(segment(4, b":2\r\n", false));
        let found = mismatches(c.feed(0, b":1\r\n:7\r\n"));
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].offset, found[0].exact), (104, false));
        assert_eq!(found[0].expected_preview, "");
        assert_eq!(found[0].got_preview, ":7\\r\\n");
    }

    #[test]
    fn debugging_skips_gaps_but_strict_checking_reports_them() {
        let mut loose = AnswerChecker::new(false);
        loose.expect(segment(4, b"efgh", false));
        assert!(loose.feed(0, b"abcdefgh").is_empty());
        assert_eq!(loose.waiting(), 0, "checked past the gap");

        let mut strict = AnswerChecker::new(true);
        strict.expect(segment(4, b"efgh", false));
        assert!(strict.feed(0, b"abcdefgh").is_empty());
        assert_eq!(strict.waiting(), 1, "waits for what covers 0..4");
        let found = strict.require_checked(8);
        assert_eq!(found.len(), 1, "{found:?}");
        let Finding::Unchecked(u) = &found[0] else {
            panic!("{found:?}")
        };
        assert_eq!((u.offset, u.len), (100, 4), "the gap before the segment");
        assert_eq!(strict.verified_upto(), 8, "the segment itself was checked");
    }

    #[test]
    fn strict_checking_reports_a_segment_whose_bytes_were_given_up() {
        let mut c = AnswerChecker::new(true);
        assert!(c.feed(0, b"abcd").is_empty());
        assert_eq!(c.require_checked(4).len(), 1, "nothing covered 0..4");
        let found = c.expect(segment(0, b"abcd", false));
        assert!(
            matches!(found.as_slice(), [Finding::Unchecked(_)]),
            "{found:?}"
        );
    }
}
