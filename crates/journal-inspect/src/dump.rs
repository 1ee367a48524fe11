//! Rendering and filtering records for `replaymig journal dump` — the
//! journal's pg_waldump: a range by LSN or time, filters by connection,
//! client address and record kind; a one-line human form with a hex+text
//! preview, a full hexdump, or JSON lines for scripts.

use replaymig_journal::{ConnId, Entry, Lsn, Record};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per record with a 32-byte hex+text preview.
    Human,
    /// The line, then every data byte as a hexdump.
    Hex,
    /// One JSON object per line, data in hex.
    Json,
}

/// Which records to print (all conditions must hold).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only records at or after this time (µs since the Unix epoch).
    pub since_us: Option<u64>,
    /// Only records before this time (µs since the Unix epoch).
    pub until_us: Option<u64>,
    /// Only these connections (empty: all).
    pub conns: HashSet<ConnId>,
    /// Only connections whose client address contains one of these.
    pub clients: Vec<String>,
    /// Only these kinds (`opened`, `data`, `half_closed`, `closed`, `marker`; empty: all).
    pub kinds: HashSet<String>,
}

impl Filter {
    /// Whether the client filter needs the connections' `opened` records.
    pub fn needs_clients(&self) -> bool {
        !self.clients.is_empty()
    }

    /// Whether `entry` passes; `clients` maps connection ids to their
    /// client address (from their `opened` records).
    pub fn accepts(&self, entry: &Entry, clients: &HashMap<ConnId, String>) -> bool {
        let record = &entry.record;
        let time = record.time_us();
        let conn = record.conn(entry.lsn);
        self.since_us.is_none_or(|t| time >= t)
            && self.until_us.is_none_or(|t| time < t)
            && (self.kinds.is_empty() || self.kinds.contains(record.kind_name()))
            && (self.conns.is_empty() || conn.is_some_and(|c| self.conns.contains(&c)))
            && (self.clients.is_empty()
                || conn.and_then(|c| clients.get(&c)).is_some_and(|addr| {
                    self.clients.iter().any(|want| addr.contains(want.as_str()))
                }))
    }
}

/// The client address of each connection opened in `entries`.
pub fn client_addresses<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
) -> HashMap<ConnId, String> {
    entries
        .into_iter()
        .filter_map(|e| match &e.record {
            Record::Opened { client_addr, .. } => Some((e.lsn, client_addr.clone())),
            _ => None,
        })
        .collect()
}

/// `entry` in `format` (ends with a newline).
pub fn render(entry: &Entry, format: Format) -> String {
    match format {
        Format::Human => format!("{}\n", line(entry, true)),
        Format::Hex => {
            let mut out = format!("{}\n", line(entry, false));
            if let Some(bytes) = payload(&entry.record) {
                out.push_str(&hexdump(bytes));
            }
            out
        }
        Format::Json => format!("{}\n", json(entry)),
    }
}

fn payload(record: &Record) -> Option<&[u8]> {
    match record {
        Record::Data { data, .. } | Record::Answer { data, .. } => Some(data),
        Record::Marker { payload, .. } => Some(payload),
        _ => None,
    }
}

fn time(us: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
    humantime::format_rfc3339_micros(at).to_string()
}

fn line(entry: &Entry, preview: bool) -> String {
    let lsn = entry.lsn;
    let mut out = format!("{lsn:>10} {} ", time(entry.record.time_us()));
    match &entry.record {
        Record::Opened { client_addr, .. } => {
            let _ = write!(out, "conn {lsn} opened by {client_addr}");
        }
        Record::Data {
            conn,
            resp_before,
            resp_total_before,
            data,
            ..
        } => {
            let _ = write!(
                out,
                "conn {conn} data {} B (answers before: {resp_before} on it, {resp_total_before} in all)",
                data.len()
            );
        }
        Record::HalfClosed { conn, .. } => {
            let _ = write!(out, "conn {conn} half_closed by the client");
        }
        Record::Closed {
            conn, resp_total, ..
        } => {
            let _ = write!(out, "conn {conn} closed after {resp_total} answer bytes");
        }
        Record::Answer {
            conn,
            offset,
            len,
            crc32,
            data,
            ..
        } => {
            let kept = if data.is_empty() { "digest" } else { "bytes" };
            let _ = write!(
                out,
                "conn {conn} answer {len} B at {offset} (crc32 {crc32:08x}, {kept})"
            );
        }
        Record::Marker {
            mark,
            lsn_ref,
            payload,
            ..
        } => {
            let _ = write!(out, "marker {mark} at LSN {lsn_ref} ({} B)", payload.len());
        }
    }
    if preview {
        if let Some(bytes) = payload(&entry.record).filter(|b| !b.is_empty()) {
            let shown = &bytes[..bytes.len().min(PREVIEW_BYTES)];
            let more = if bytes.len() > PREVIEW_BYTES {
                " …"
            } else {
                ""
            };
            let _ = write!(out, " | {} |{}|{more}", hex(shown), text(shown));
        }
    }
    out
}

/// Bytes of payload shown on a human line.
const PREVIEW_BYTES: usize = 32;

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

/// Bytes as one hex string (JSON's `data_hex`).
fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Offset, 16 bytes in hex, the same as text.
fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (row, chunk) in bytes.chunks(16).enumerate() {
        let _ = writeln!(
            out,
            "    {:08x}  {:<47}  |{}|",
            row * 16,
            hex(chunk),
            text(chunk)
        );
    }
    out
}

fn json(entry: &Entry) -> serde_json::Value {
    let r = &entry.record;
    let mut v = serde_json::json!({
        "lsn": entry.lsn,
        "kind": r.kind_name(),
        "time_us": r.time_us(),
        "conn": r.conn(entry.lsn),
    });
    let obj = v.as_object_mut().expect("an object");
    match r {
        Record::Opened { client_addr, .. } => {
            obj.insert("client".into(), client_addr.clone().into());
        }
        Record::Data {
            resp_before,
            resp_total_before,
            data,
            ..
        } => {
            obj.insert("resp_before".into(), (*resp_before).into());
            obj.insert("resp_total_before".into(), (*resp_total_before).into());
            obj.insert("len".into(), data.len().into());
            obj.insert("data_hex".into(), hex_string(data).into());
        }
        Record::Closed { resp_total, .. } => {
            obj.insert("resp_total".into(), (*resp_total).into());
        }
        Record::HalfClosed { .. } => {}
        Record::Answer {
            offset,
            len,
            crc32,
            data,
            ..
        } => {
            obj.insert("offset".into(), (*offset).into());
            obj.insert("len".into(), (*len).into());
            obj.insert("crc32".into(), format!("{crc32:08x}").into());
            if !data.is_empty() {
                obj.insert("data_hex".into(), hex_string(data).into());
            }
        }
        Record::Marker {
            mark,
            lsn_ref,
            payload,
            ..
        } => {
            obj.insert("mark".into(), mark.clone().into());
            obj.insert("lsn_ref".into(), (*lsn_ref).into());
            obj.insert("len".into(), payload.len().into());
        }
    }
    v
}

/// A range that starts past the journal's end is an error, not silence.
pub fn check_range(from: Lsn, to: Lsn, last: Lsn) -> Result<(), String> {
    if from > last {
        return Err(format!("--from {from} is beyond the last LSN {last}"));
    }
    if from > to {
        return Err(format!("--from {from} is after --to {to}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(lsn: Lsn, record: Record) -> Entry {
        Entry { lsn, record }
    }

    #[test]
    fn renders_each_format() {
        let opened = entry(5, Record::opened("127.0.0.1:4000"));
        let data = entry(
            6,
            Record::data(5, 0, 10, Bytes::from_static(b"*1\r\n$4\r\nPING\r\n")),
        );
        let human = render(&data, Format::Human);
        assert!(human.contains("conn 5 data 14 B"), "{human}");
        assert!(
            human.contains("2a 31 0d 0a") && human.contains("|*1..$4..PING..|"),
            "{human}"
        );
        let hex = render(&data, Format::Hex);
        assert!(hex.contains("    00000000  2a 31 0d 0a 24 34"), "{hex}");
        let json: serde_json::Value = serde_json::from_str(&render(&data, Format::Json)).unwrap();
        assert_eq!(json["lsn"], 6);
        assert_eq!(json["conn"], 5);
        assert_eq!(json["data_hex"], "2a310d0a24340d0a50494e470d0a");
        assert!(render(&opened, Format::Human).contains("opened by 127.0.0.1:4000"));
    }

    #[test]
    fn filters_by_connection_client_kind_and_time() {
        let entries = [
            entry(1, Record::opened("10.0.0.1:1")),
            entry(2, Record::opened("10.0.0.2:2")),
            entry(3, Record::data(1, 0, 0, Bytes::from_static(b"a"))),
            entry(4, Record::data(2, 0, 0, Bytes::from_static(b"b"))),
            entry(5, Record::closed(1, 0)),
        ];
        let clients = client_addresses(&entries);
        let pick = |f: &Filter| -> Vec<Lsn> {
            entries
                .iter()
                .filter(|e| f.accepts(e, &clients))
                .map(|e| e.lsn)
                .collect()
        };
        assert_eq!(pick(&Filter::default()), vec![1, 2, 3, 4, 5]);
        let by_conn = Filter {
            conns: [2].into(),
            ..Default::default()
        };
        assert_eq!(pick(&by_conn), vec![2, 4]);
        let by_client = Filter {
            clients: vec!["10.0.0.1".into()],
            ..Default::default()
        };
        assert_eq!(pick(&by_client), vec![1, 3, 5]);
        let by_kind = Filter {
            kinds: ["data".to_string()].into(),
            ..Default::default()
        };
        assert_eq!(pick(&by_kind), vec![3, 4]);
        let future = Filter {
            since_us: Some(u64::MAX),
            ..Default::default()
        };
        assert!(pick(&future).is_empty());
    }

    #[test]
    fn a_range_past_the_end_is_an_error() {
        assert!(check_range(1, 10, 10).is_ok());
        assert!(check_range(11, u64::MAX, 10)
            .unwrap_err()
            .contains("beyond the last LSN 10"));
        assert!(check_range(5, 4, 10).is_err());
    }
}
