//! Whole-journal statistics for `replaymig journal stat`.

use replaymig_journal::{ConnId, Journal, Lsn, Record, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// What an operator asks first about a journal: its extent, its volume and
/// its connections. Computed by reading (and so verifying) every record.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct JournalStats {
    /// First LSN still stored.
    pub first_lsn: Option<Lsn>,
    /// Last LSN stored.
    pub last_lsn: Option<Lsn>,
    /// Number of records stored.
    pub records: u64,
    /// Client bytes carried by data records.
    pub data_bytes: u64,
    /// Answer bytes covered by answer records (journaled answer segments,
    /// as digests or bytes).
    pub answer_segment_bytes: u64,
    /// Answer bytes kept verbatim in answer records (`full` mode).
    pub answer_bytes_kept: u64,
    /// Connections opened (opened records stored).
    pub connections: u64,
    /// Connections with an opened record and no closed record yet.
    pub open_connections: u64,
    /// Records per kind.
    pub records_by_kind: BTreeMap<&'static str, u64>,
    /// Time of the first record, µs since the Unix epoch.
    pub first_time_us: Option<u64>,
    /// Time of the last record, µs since the Unix epoch.
    pub last_time_us: Option<u64>,
    /// Bytes the journal occupies on disk.
    pub size_on_disk_bytes: u64,
    /// Per connection (by id, the LSN of its `opened` record; a connection
    /// opened before the first stored LSN appears from its first record).
    pub per_connection: BTreeMap<ConnId, ConnectionStats>,
}

/// One connection's share of a journal: who, how much, when, and whether
/// it is still open — which connection to replay or dump.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ConnectionStats {
    /// The client address (from its `opened` record, if stored).
    pub client: Option<String>,
    /// Its records.
    pub records: u64,
    /// Client bytes it sent.
    pub data_bytes: u64,
    /// Answer bytes its client had received by its last record.
    pub answer_bytes: u64,
    /// Its first and last LSN.
    pub first_lsn: Lsn,
    /// Its last LSN.
    pub last_lsn: Lsn,
    /// Time of its first record, µs since the Unix epoch.
    pub first_time_us: u64,
    /// Time of its last record, µs since the Unix epoch.
    pub last_time_us: u64,
    /// No `closed` record yet.
    pub open: bool,
}

impl JournalStats {
    /// Reads every record; the first corrupt one stops it with its LSN.
    pub fn compute(journal: &Journal) -> Result<JournalStats> {
        let mut stats = JournalStats {
            size_on_disk_bytes: journal.size_on_disk()?,
            ..Default::default()
        };
        let mut open = HashSet::new();
        for entry in journal.read_range(1, Lsn::MAX) {
            let entry = entry?;
            stats.first_lsn.get_or_insert(entry.lsn);
            stats.last_lsn = Some(entry.lsn);
            stats.records += 1;
            let time = entry.record.time_us();
            stats.first_time_us.get_or_insert(time);
            stats.last_time_us = Some(time);
            *stats
                .records_by_kind
                .entry(entry.record.kind_name())
                .or_default() += 1;
            if let Some(conn) = entry.record.conn(entry.lsn) {
                let c = stats
                    .per_connection
                    .entry(conn)
                    .or_insert_with(|| ConnectionStats {
                        first_lsn: entry.lsn,
                        first_time_us: time,
                        open: true,
                        ..Default::default()
                    });
                c.records += 1;
                c.last_lsn = entry.lsn;
                c.last_time_us = time;
                match &entry.record {
                    Record::Opened { client_addr, .. } => c.client = Some(client_addr.clone()),
                    Record::Data {
                        data, resp_before, ..
                    } => {
                        c.data_bytes += data.len() as u64;
                        c.answer_bytes = *resp_before;
                    }
                    Record::Closed { resp_total, .. } => {
                        c.answer_bytes = *resp_total;
                        c.open = false;
                    }
                    _ => {}
                }
            }
            match &entry.record {
                Record::Opened { .. } => {
                    stats.connections += 1;
                    open.insert(entry.lsn);
                }
                Record::Data { data, .. } => stats.data_bytes += data.len() as u64,
                Record::Answer { len, data, .. } => {
                    stats.answer_segment_bytes += len;
                    stats.answer_bytes_kept += data.len() as u64;
                }
                Record::Closed { conn, .. } => {
                    open.remove(conn);
                }
                _ => {}
            }
        }
        stats.open_connections = open.len() as u64;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use replaymig_journal::{fault, JournalOptions, OpenMode};

    #[tokio::test]
    async fn a_corrupt_record_stops_the_stats_with_its_lsn() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("j");
        let j = Journal::open(&path, JournalOptions::default()).unwrap();
        for i in 0..5 {
            let payload = Bytes::from(format!("payload-{i}"));
            j.append(Record::data(1, 0, 0, payload)).await.unwrap();
        }
        j.close().await.unwrap();
        drop(j);
        fault::corrupt_record(&path, 3).unwrap();
        let options = JournalOptions {
            mode: OpenMode::MustExist,
            ..JournalOptions::default()
        };
        let j = Journal::open(&path, options).unwrap();
        let err = JournalStats::compute(&j).unwrap_err();
        assert!(err.to_string().contains("LSN 3"), "{err}");
        j.close().await.unwrap();
    }
}
