//! A journal seen as the tests and the chaos campaigns check it: the
//! bytes of each connection, and how many `INCR key` commands it holds.

use replaymig_journal::{Entry, Record};
use std::collections::BTreeMap;

/// One journaled connection: its client address and its bytes in order.
#[derive(Default, Debug)]
pub struct JournaledConn {
    pub client_addr: String,
    pub data: Vec<u8>,
    pub records: Vec<Record>,
}

/// Groups data by connection (keyed by the connection id).
pub fn connections(entries: &[Entry]) -> BTreeMap<u64, JournaledConn> {
    let mut conns: BTreeMap<u64, JournaledConn> = BTreeMap::new();
    for e in entries {
        let Some(conn) = e.record.conn(e.lsn) else {
            continue;
        };
        let c = conns.entry(conn).or_default();
        match &e.record {
            Record::Opened { client_addr, .. } => c.client_addr = client_addr.clone(),
            Record::Data { data, .. } => c.data.extend_from_slice(data),
            _ => {}
        }
        c.records.push(e.record.clone());
    }
    conns
}

/// How many `INCR key` commands the journal holds across all connections.
pub fn journaled_incrs(conns: &BTreeMap<u64, JournaledConn>, key: &str) -> usize {
    let needle = crate::encode_command(&["INCR", key]);
    conns
        .values()
        .map(|c| {
            c.data
                .windows(needle.len())
                .filter(|w| *w == needle)
                .count()
        })
        .sum()
}
