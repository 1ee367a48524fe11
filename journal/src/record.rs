//! The record format: what one journal entry says and how it is laid out on
//! disk. Versioned and checksummed so that a flipped bit is reported with its
//! LSN instead of being replayed into a service.
//!
//! Layout (all integers big-endian), format version 1:
//!
//! ```text
//! u8  version (1)   u8 kind   u64 time (µs since the Unix epoch)
//! kind-specific body (see `Record`)
//! u32 crc32 over (LSN as 8 bytes ++ everything above)
//! ```
//!
//! The LSN is part of the checksum so a record that ends up under the wrong
//! key is caught too.

use crate::error::{JournalError, Result};
use crate::Lsn;
use bytes::{Buf, BufMut, Bytes};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// Format version written by this build.
pub const FORMAT_VERSION: u8 = 1;

/// Identifies a client connection across the journal: the LSN of its
/// `Opened` record, so it is unique and never reused, even across restarts
/// and on another node that received the same records.
pub type ConnId = u64;

/// Largest data payload one record may carry; the proxy reads at most this
/// much per client read, and a bigger payload is refused at append.
pub const MAX_DATA_LEN: usize = 1 << 20;

/// Largest free-form marker kind / payload, to keep markers small.
const MAX_MARKER_KIND_LEN: usize = 255;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A client connected. Its connection id is this record's LSN.
    Opened {
        /// Wall-clock time of the event, µs since the Unix epoch.
        time_us: u64,
        /// The client's address as the proxy saw it.
        client_addr: String,
    },
    /// The bytes of one client read, journaled before they were forwarded.
    Data {
        /// Wall-clock time of the read, µs since the Unix epoch.
        time_us: u64,
        /// The connection these bytes arrived on.
        conn: ConnId,
        /// Service→client bytes delivered on this connection before the
        /// client's read: replay waits for that many answer bytes first.
        resp_before: u64,
        /// Service→client bytes delivered on all connections of this
        /// journal before the read: cross-connection causality for replay.
        /// Taken when the client's bytes were read, so it is a causal lower
        /// bound and, across connections, not monotone in LSN order (two
        /// reads can reach the writer in the other order).
        resp_total_before: u64,
        /// The client's bytes.
        #[serde(serialize_with = "serialize_len")]
        data: Bytes,
    },
    /// The client shut down its sending side (TCP FIN).
    HalfClosed {
        /// Wall-clock time, µs since the Unix epoch.
        time_us: u64,
        /// The connection.
        conn: ConnId,
    },
    /// The connection ended (both directions done, or an error).
    Closed {
        /// Wall-clock time, µs since the Unix epoch.
        time_us: u64,
        /// The connection.
        conn: ConnId,
        /// Service→client bytes delivered on it in total, so replay can check
        /// that the last answers were produced too.
        resp_total: u64,
    },
    /// What the service answered on a connection between two of its client
    /// records (optional, see `AnswerJournaling`): journaled just before the
    /// next client record (or the close), so `replay --compare` can check a
    /// target's answers by content, not only by count.
    Answer {
        /// Wall-clock time the segment was cut, µs since the Unix epoch.
        time_us: u64,
        /// The connection.
        conn: ConnId,
        /// Answer bytes delivered on the connection before this segment
        /// (its position in the connection's answer stream).
        offset: u64,
        /// The segment's length in bytes.
        len: u64,
        /// CRC-32 (IEEE) of the segment's bytes.
        crc32: u32,
        /// The segment's bytes when they were kept (`full`, up to
        /// `MAX_DATA_LEN`); empty when only the digest was.
        #[serde(serialize_with = "serialize_len")]
        data: Bytes,
    },
    /// A free-form control mark: "snapshot taken at LSN s", "epoch changed".
    Marker {
        /// Wall-clock time, µs since the Unix epoch.
        time_us: u64,
        /// What kind of mark (short text, e.g. `snapshot`).
        mark: String,
        /// The LSN the mark refers to (e.g. the snapshot point).
        lsn_ref: Lsn,
        /// Opaque details (e.g. an epoch number, a manifest digest).
        #[serde(serialize_with = "serialize_len")]
        payload: Bytes,
    },
}

fn serialize_len<S: serde::Serializer>(b: &Bytes, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(b.len() as u64)
}

/// The on-disk kind byte of each variant; kept in one place so encode and
/// decode cannot disagree.
mod kind {
    pub const OPENED: u8 = 1;
    pub const DATA: u8 = 2;
    pub const HALF_CLOSED: u8 = 3;
    pub const CLOSED: u8 = 4;
    pub const MARKER: u8 = 5;
    pub const ANSWER: u8 = 6;
}

/// Microseconds since the Unix epoch, for record timestamps.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Record {
    /// A connection-opened record stamped now.
    pub fn opened(client_addr: impl Into<String>) -> Self {
        Record::Opened {
            time_us: now_us(),
            client_addr: client_addr.into(),
        }
    }

    /// A data record stamped now.
    pub fn data(conn: ConnId, resp_before: u64, resp_total_before: u64, data: Bytes) -> Self {
        Record::Data {
            time_us: now_us(),
            conn,
            resp_before,
            resp_total_before,
            data,
        }
    }

    /// A half-close record stamped now.
    pub fn half_closed(conn: ConnId) -> Self {
        Record::HalfClosed {
            time_us: now_us(),
            conn,
        }
    }

    /// A close record stamped now.
    pub fn closed(conn: ConnId, resp_total: u64) -> Self {
        Record::Closed {
            time_us: now_us(),
            conn,
            resp_total,
        }
    }

    /// An answer-segment record stamped now.
    pub fn answer(conn: ConnId, offset: u64, len: u64, crc32: u32, data: Bytes) -> Self {
        Record::Answer {
            time_us: now_us(),
            conn,
            offset,
            len,
            crc32,
            data,
        }
    }

    /// A marker stamped now.
    pub fn marker(mark: impl Into<String>, lsn_ref: Lsn, payload: Bytes) -> Self {
        Record::Marker {
            time_us: now_us(),
            mark: mark.into(),
            lsn_ref,
            payload,
        }
    }

    /// Short name of the record kind, as used in stats, filters and JSON.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Record::Opened { .. } => "opened",
            Record::Data { .. } => "data",
            Record::HalfClosed { .. } => "half_closed",
            Record::Closed { .. } => "closed",
            Record::Marker { .. } => "marker",
            Record::Answer { .. } => "answer",
        }
    }

    /// When the event happened, µs since the Unix epoch.
    pub fn time_us(&self) -> u64 {
        match self {
            Record::Opened { time_us, .. }
            | Record::Data { time_us, .. }
            | Record::HalfClosed { time_us, .. }
            | Record::Closed { time_us, .. }
            | Record::Answer { time_us, .. }
            | Record::Marker { time_us, .. } => *time_us,
        }
    }

    /// The connection this record belongs to, if any; for `Opened` that is
    /// its own LSN, which the caller must supply.
    pub fn conn(&self, own_lsn: Lsn) -> Option<ConnId> {
        match self {
            Record::Opened { .. } => Some(own_lsn),
            Record::Data { conn, .. }
            | Record::HalfClosed { conn, .. }
            | Record::Closed { conn, .. }
            | Record::Answer { conn, .. } => Some(*conn),
            Record::Marker { .. } => None,
        }
    }

    /// Checks limits before the record is accepted, so an oversized record
    /// is refused at append rather than discovered at read.
    pub fn validate(&self) -> Result<()> {
        match self {
            Record::Data { data, .. } if data.len() > MAX_DATA_LEN => Err(JournalError::Invalid(
                format!("data record of {} bytes exceeds {MAX_DATA_LEN}", data.len()),
            )),
            Record::Answer { len, data, .. }
                if data.len() > MAX_DATA_LEN || !(data.is_empty() || data.len() as u64 == *len) =>
            {
                Err(JournalError::Invalid(format!(
                    "answer record keeps {} bytes of a {len}-byte segment (must be 0 or all, at most {MAX_DATA_LEN})",
                    data.len()
                )))
            }
            Record::Opened { client_addr, .. } if client_addr.len() > u16::MAX as usize => {
                Err(JournalError::Invalid("client address too long".into()))
            }
            Record::Marker { mark, payload, .. }
                if mark.len() > MAX_MARKER_KIND_LEN || payload.len() > MAX_DATA_LEN =>
            {
                Err(JournalError::Invalid(
                    "marker kind or payload too long".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Encodes the record as stored under `lsn`.
    pub fn encode(&self, lsn: Lsn) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        self.encode_into(lsn, &mut out);
        out
    }

    /// Appends the encoding of the record under `lsn` to `out` (the writer
    /// encodes a whole group into one buffer).
    pub fn encode_into(&self, lsn: Lsn, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u8(FORMAT_VERSION);
        match self {
            Record::Opened {
                time_us,
                client_addr,
            } => {
                out.put_u8(kind::OPENED);
                out.put_u64(*time_us);
                out.put_u16(client_addr.len() as u16);
                out.put_slice(client_addr.as_bytes());
            }
            Record::Data {
                time_us,
                conn,
                resp_before,
                resp_total_before,
                data,
            } => {
                out.put_u8(kind::DATA);
                out.put_u64(*time_us);
                out.put_u64(*conn);
                out.put_u64(*resp_before);
                out.put_u64(*resp_total_before);
                out.put_u32(data.len() as u32);
                out.put_slice(data);
            }
            Record::HalfClosed { time_us, conn } => {
                out.put_u8(kind::HALF_CLOSED);
                out.put_u64(*time_us);
                out.put_u64(*conn);
            }
            Record::Closed {
                time_us,
                conn,
                resp_total,
            } => {
                out.put_u8(kind::CLOSED);
                out.put_u64(*time_us);
                out.put_u64(*conn);
                out.put_u64(*resp_total);
            }
            Record::Answer {
                time_us,
                conn,
                offset,
                len,
                crc32,
                data,
            } => {
                out.put_u8(kind::ANSWER);
                out.put_u64(*time_us);
                out.put_u64(*conn);
                out.put_u64(*offset);
                out.put_u64(*len);
                out.put_u32(*crc32);
                out.put_u32(data.len() as u32);
                out.put_slice(data);
            }
            Record::Marker {
                time_us,
                mark,
                lsn_ref,
                payload,
            } => {
                out.put_u8(kind::MARKER);
                out.put_u64(*time_us);
                out.put_u8(mark.len() as u8);
                out.put_slice(mark.as_bytes());
                out.put_u64(*lsn_ref);
                out.put_u32(payload.len() as u32);
                out.put_slice(payload);
            }
        }
        let crc = checksum(lsn, &out[start..]);
        out.put_u32(crc);
    }

    /// About how many bytes `encode` produces (to size buffers).
    pub fn encoded_len_hint(&self) -> usize {
        let body = match self {
            Record::Data { data, .. } => 36 + data.len(),
            Record::Answer { data, .. } => 32 + data.len(),
            Record::Marker { payload, mark, .. } => 13 + mark.len() + payload.len(),
            Record::Opened { client_addr, .. } => 2 + client_addr.len(),
            _ => 16,
        };
        2 + 8 + body + 4
    }

    /// Decodes the record stored under `lsn`, verifying its checksum first.
    pub fn decode(lsn: Lsn, stored: &[u8]) -> Result<Record> {
        let malformed = |reason: &str| JournalError::Malformed {
            lsn,
            reason: reason.to_string(),
        };
        if stored.len() < 1 + 1 + 8 + 4 {
            return Err(malformed("shorter than a record header"));
        }
        let (body, crc_bytes) = stored.split_at(stored.len() - 4);
        let stored_crc = u32::from_be_bytes(crc_bytes.try_into().expect("4 bytes"));
        let computed = checksum(lsn, body);
        if stored_crc != computed {
            return Err(JournalError::Checksum {
                lsn,
                stored: stored_crc,
                computed,
            });
        }
        let mut buf = body;
        let version = buf.get_u8();
        if version != FORMAT_VERSION {
            return Err(JournalError::UnsupportedVersion { lsn, version });
        }
        let kind = buf.get_u8();
        let time_us = buf.get_u64();
        let need = |buf: &[u8], n: usize| -> Result<()> {
            if buf.remaining() < n {
                Err(malformed("truncated body"))
            } else {
                Ok(())
            }
        };
        let record = match kind {
            kind::OPENED => {
                need(buf, 2)?;
                let len = buf.get_u16() as usize;
                need(buf, len)?;
                let addr = std::str::from_utf8(&buf[..len])
                    .map_err(|_| malformed("client address is not UTF-8"))?
                    .to_string();
                buf.advance(len);
                Record::Opened {
                    time_us,
                    client_addr: addr,
                }
            }
            kind::DATA => {
                need(buf, 28)?;
                let conn = buf.get_u64();
                let resp_before = buf.get_u64();
                let resp_total_before = buf.get_u64();
                let len = buf.get_u32() as usize;
                need(buf, len)?;
                let data = Bytes::copy_from_slice(&buf[..len]);
                buf.advance(len);
                Record::Data {
                    time_us,
                    conn,
                    resp_before,
                    resp_total_before,
                    data,
                }
            }
            kind::HALF_CLOSED => {
                need(buf, 8)?;
                Record::HalfClosed {
                    time_us,
                    conn: buf.get_u64(),
                }
            }
            kind::CLOSED => {
                need(buf, 16)?;
                Record::Closed {
                    time_us,
                    conn: buf.get_u64(),
                    resp_total: buf.get_u64(),
                }
            }
            kind::MARKER => {
                need(buf, 1)?;
                let len = buf.get_u8() as usize;
                need(buf, len + 12)?;
                let mark = std::str::from_utf8(&buf[..len])
                    .map_err(|_| malformed("marker kind is not UTF-8"))?
                    .to_string();
                buf.advance(len);
                let lsn_ref = buf.get_u64();
                let plen = buf.get_u32() as usize;
                need(buf, plen)?;
                let payload = Bytes::copy_from_slice(&buf[..plen]);
                buf.advance(plen);
                Record::Marker {
                    time_us,
                    mark,
                    lsn_ref,
                    payload,
                }
            }
            kind::ANSWER => {
                need(buf, 32)?;
                let conn = buf.get_u64();
                let offset = buf.get_u64();
                let len = buf.get_u64();
                let crc32 = buf.get_u32();
                let dlen = buf.get_u32() as usize;
                need(buf, dlen)?;
                if !(dlen == 0 || dlen as u64 == len) {
                    return Err(malformed(
                        "answer bytes kept do not match the segment length",
                    ));
                }
                let data = Bytes::copy_from_slice(&buf[..dlen]);
                buf.advance(dlen);
                Record::Answer {
                    time_us,
                    conn,
                    offset,
                    len,
                    crc32,
                    data,
                }
            }
            other => return Err(malformed(&format!("unknown record kind {other}"))),
        };
        if buf.has_remaining() {
            return Err(malformed("trailing bytes after the record body"));
        }
        Ok(record)
    }
}

fn checksum(lsn: Lsn, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_be_bytes());
    h.update(body);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..2048).prop_map(Bytes::from);
        prop_oneof![
            (any::<u64>(), "[ -~]{0,60}").prop_map(|(time_us, client_addr)| Record::Opened {
                time_us,
                client_addr
            }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                bytes.clone()
            )
                .prop_map(|(time_us, conn, resp_before, resp_total_before, data)| {
                    Record::Data {
                        time_us,
                        conn,
                        resp_before,
                        resp_total_before,
                        data,
                    }
                }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(time_us, conn)| Record::HalfClosed { time_us, conn }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(time_us, conn, resp_total)| {
                Record::Closed {
                    time_us,
                    conn,
                    resp_total,
                }
            }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                bytes.clone(),
                any::<bool>()
            )
                .prop_map(|(time_us, conn, offset, crc32, data, kept)| {
                    Record::Answer {
                        time_us,
                        conn,
                        offset,
                        len: data.len() as u64 + u64::from(!kept),
                        crc32,
                        data: if kept { data } else { Bytes::new() },
                    }
                }),
            (any::<u64>(), "[a-z_]{0,40}", any::<u64>(), bytes).prop_map(
                |(time_us, mark, lsn_ref, payload)| Record::Marker {
                    time_us,
                    mark,
                    lsn_ref,
                    payload
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(record in arb_record(), lsn in 1u64..u64::MAX) {
            let stored = record.encode(lsn);
            prop_assert_eq!(Record::decode(lsn, &stored).unwrap(), record);
        }

        #[test]
        fn any_single_bit_flip_is_detected_with_its_lsn(
            record in arb_record(),
            lsn in 1u64..u64::MAX,
            bit in any::<prop::sample::Index>(),
        ) {
            let mut stored = record.encode(lsn);
            let i = bit.index(stored.len() * 8);
            stored[i / 8] ^= 1 << (i % 8);
            let err = Record::decode(lsn, &stored).unwrap_err();
            let names_lsn = matches!(err, JournalError::Checksum { lsn: l, .. } if l == lsn);
            prop_assert!(names_lsn, "{}", err);
            let expected = format!("LSN {}", lsn);
            prop_assert!(err.to_string().contains(&expected));
        }

        #[test]
        fn truncated_records_never_decode(record in arb_record(), cut in any::<prop::sample::Index>()) {
            let stored = record.encode(7);
            let len = cut.index(stored.len());
            prop_assert!(Record::decode(7, &stored[..len]).is_err());
        }
    }

    #[test]
    fn a_record_moved_to_another_lsn_is_detected() {
        let stored = Record::half_closed(3).encode(10);
        let err = Record::decode(11, &stored).unwrap_err();
        assert!(
            matches!(err, JournalError::Checksum { lsn: 11, .. }),
            "{err}"
        );
    }

    #[test]
    fn unknown_version_is_named() {
        let mut stored = Record::half_closed(3).encode(10);
        stored[0] = 9;
        let body_len = stored.len() - 4;
        let crc = checksum(10, &stored[..body_len]);
        stored[body_len..].copy_from_slice(&crc.to_be_bytes());
        let err = Record::decode(10, &stored).unwrap_err();
        assert!(matches!(
            err,
            JournalError::UnsupportedVersion {
                lsn: 10,
                version: 9
            }
        ));
    }

    #[test]
    fn oversized_data_is_refused() {
        let r = Record::data(1, 0, 0, Bytes::from(vec![0u8; MAX_DATA_LEN + 1]));
        assert!(r.validate().is_err());
    }
}
