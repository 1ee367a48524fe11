//! Typed markers carried in `Record::Marker`: the shared vocabulary of the
//! proxy (which writes them) and the replayer / migration (which read them).

use crate::record::{ConnId, Record};
use crate::Lsn;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

/// The marker kind of a snapshot point.
pub const SNAPSHOT: &str = "snapshot";

/// A consistent snapshot point, as fixed by the quiesce barrier: the
/// service had received exactly the client records `..= lsn`, had answered
/// all of them, and each open connection had delivered `delivered[conn]`
/// answer bytes (`resp_total` over all connections). Replay from `lsn + 1`
/// counts answers from these bases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotMark {
    /// Last client record the service received before the snapshot.
    pub lsn: Lsn,
    /// Answer bytes delivered over all connections at that point.
    pub resp_total: u64,
    /// Answer bytes delivered per connection open at that point.
    pub delivered: BTreeMap<ConnId, u64>,
}

impl SnapshotMark {
    /// The marker record for this point.
    pub fn to_record(&self) -> Record {
        let mut payload = BytesMut::with_capacity(8 + 16 * self.delivered.len());
        payload.put_u64(self.resp_total);
        for (conn, delivered) in &self.delivered {
            payload.put_u64(*conn);
            payload.put_u64(*delivered);
        }
        Record::marker(SNAPSHOT, self.lsn, payload.freeze())
    }

    /// Reads a snapshot mark from a record; `None` if it is not one (or its
    /// payload is malformed, which the record checksum makes a bug, not
    /// bit rot).
    pub fn from_record(record: &Record) -> Option<SnapshotMark> {
        let (lsn_ref, payload) = payload_of(record, SNAPSHOT)?;
        if payload.len() < 8 || (payload.len() - 8) % 16 != 0 {
            return None;
        }
        let mut p: Bytes = payload.clone();
        let resp_total = p.get_u64();
        let mut delivered = BTreeMap::new();
        while p.has_remaining() {
            let conn = p.get_u64();
            delivered.insert(conn, p.get_u64());
        }
        Some(SnapshotMark {
            lsn: lsn_ref,
            resp_total,
            delivered,
        })
    }
}

/// The LSN a marker of kind `kind` refers to, and its payload; `None` for
/// any other record.
fn payload_of<'a>(record: &'a Record, kind: &str) -> Option<(Lsn, &'a Bytes)> {
    match record {
        Record::Marker {
            mark,
            lsn_ref,
            payload,
            ..
        } if mark == kind => Some((*lsn_ref, payload)),
        _ => None,
    }
}

/// The marker kind of the greetings at a snapshot point.
pub const PREAMBLES: &str = "preambles";

/// What the service had said on each connection open at a snapshot point
/// before the connection's first input (a greeting): `(conn, length,
/// CRC-32)`. A connection re-created at a new owner gets its greeting
/// again; the replayer consumes and checks it instead of counting it as an
/// answer. Journaled just before the snapshot mark of the same point.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Preambles(pub Vec<(ConnId, u64, u32)>);

impl Preambles {
    /// The marker record for snapshot point `lsn`.
    pub fn to_record(&self, lsn: Lsn) -> Record {
        let mut payload = BytesMut::with_capacity(20 * self.0.len());
        for (conn, len, crc) in &self.0 {
            payload.put_u64(*conn);
            payload.put_u64(*len);
            payload.put_u32(*crc);
        }
        Record::marker(PREAMBLES, lsn, payload.freeze())
    }

    /// Reads one from a record, with the snapshot point it belongs to;
    /// `None` if it is not one.
    pub fn from_record(record: &Record) -> Option<(Lsn, Preambles)> {
        let (lsn_ref, payload) = payload_of(record, PREAMBLES)?;
        if payload.len() % 20 != 0 {
            return None;
        }
        let mut p: Bytes = payload.clone();
        let mut list = Vec::new();
        while p.has_remaining() {
            list.push((p.get_u64(), p.get_u64(), p.get_u32()));
        }
        Some((lsn_ref, Preambles(list)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preambles_round_trip_through_a_record() {
        let p = Preambles(vec![(3, 13, 0xdead_beef), (9, 1, 7)]);
        assert_eq!(Preambles::from_record(&p.to_record(42)), Some((42, p)));
        assert_eq!(Preambles::from_record(&Record::half_closed(1)), None);
    }

    #[test]
    fn round_trips_through_a_record() {
        let mark = SnapshotMark {
            lsn: 42,
            resp_total: 1000,
            delivered: [(3, 10), (7, 990)].into_iter().collect(),
        };
        assert_eq!(SnapshotMark::from_record(&mark.to_record()), Some(mark));
        assert_eq!(SnapshotMark::from_record(&Record::half_closed(1)), None);
        assert_eq!(
            SnapshotMark::from_record(&Record::marker("epoch", 1, Bytes::new())),
            None
        );
    }
}
