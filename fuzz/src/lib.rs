//! The checks behind replaymig's fuzz targets (issue #7), one function per
//! target, shared by:
//!
//! - the cargo-fuzz targets in `fuzz_targets/` (libFuzzer, run by
//!   `tools/fuzz.sh`), and
//! - the root package's `tests/fuzz_regressions.rs`, which compiles this
//!   file with `#[path]` (plain stable Rust) and replays every file under
//!   `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
//!
//! So this file may only use crates the root package also has (journal,
//! peer, snapshot, bytes, tokio-util, serde_json): no libfuzzer-sys, no
//! crc32fast (a small CRC-32 is below).
//!
//! Each function takes the raw fuzz input, feeds it to a decoder, and panics
//! (through `assert!`) only if the decoder panics or an invariant that holds
//! by design is broken. Any `Err` from a decoder is fine.

#![allow(dead_code)]

use bytes::BytesMut;
use replaymig_journal::record::MAX_DATA_LEN;
use replaymig_journal::{JournalError, Record};
use replaymig_peer::{Message, PeerCodec};
use replaymig_snapshot::Manifest;
use tokio_util::codec::{Decoder, Encoder};

/// Names of the targets, as directories under `fuzz/corpus/` and
/// `fuzz/regressions/`.
pub const TARGETS: [&str; 4] = [
    "journal_record",
    "journal_segment",
    "peer_frame",
    "snapshot_manifest",
];

/// Runs the target called `name` on `data` (for the regression test).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "journal_record" => journal_record(data),
        "journal_segment" => journal_segment(data),
        "peer_frame" => peer_frame(data),
        "snapshot_manifest" => snapshot_manifest(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// CRC-32 (IEEE), bitwise: what the journal's crc32fast computes. Only
/// used to let the fuzzer past the record checksum.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

/// The record checksum as the journal computes it: over the LSN (8 bytes,
/// big-endian) and the record's bytes before the checksum.
fn record_crc(lsn: u64, body: &[u8]) -> u32 {
    crc32(&[&lsn.to_be_bytes(), body])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Checks what every `Record::decode` outcome must satisfy.
fn check_record(lsn: u64, stored: &[u8], got: &Result<Record, JournalError>) {
    match got {
        Ok(record) => {
            // Decoding is strict (version, exact lengths, no trailing
            // bytes, checksum over LSN ++ body), so the encoding is a
            // bijection: what decodes re-encodes to the same bytes.
            assert_eq!(
                record.encode(lsn),
                stored,
                "LSN {lsn}: decoded {record:?} re-encodes differently"
            );
            // The LSN is under the checksum: the same bytes under an LSN
            // one bit away never decode (CRC-32 catches every 1-bit error).
            assert!(
                matches!(
                    Record::decode(lsn ^ 1, stored),
                    Err(JournalError::Checksum { .. })
                ),
                "LSN {lsn}: record also decodes under LSN {}",
                lsn ^ 1
            );
            // What decodes passes the append-time checks, except for the
            // payload size limit, which decode does not enforce.
            let oversized = match record {
                Record::Data { data, .. } | Record::Answer { data, .. } => {
                    data.len() > MAX_DATA_LEN
                }
                Record::Marker { payload, .. } => payload.len() > MAX_DATA_LEN,
                _ => false,
            };
            if !oversized {
                if let Err(e) = record.validate() {
                    panic!("LSN {lsn}: decoded {record:?} fails validate: {e}");
                }
            }
            let _ = (record.kind_name(), record.time_us(), record.conn(lsn));
        }
        Err(e) => {
            // Every decode error names the record's LSN.
            assert_eq!(e.lsn(), Some(lsn), "decode error without its LSN: {e}");
            assert!(e.to_string().contains(&format!("LSN {lsn}")), "{e}");
        }
    }
}

/// `journal_record`: `Record::decode`.
///
/// Input: `[u8 flags][u64 LSN, big-endian][bytes]`. With flag bit 0 clear,
/// `bytes` is the stored record as is; with it set, `bytes` is the record
/// without its checksum and the right checksum is appended, so the fuzzer
/// reaches the body parser instead of stopping at the CRC. Shorter inputs
/// are decoded as a stored record under LSN 1.
pub fn journal_record(data: &[u8]) {
    if data.len() < 9 {
        let got = Record::decode(1, data);
        check_record(1, data, &got);
        return;
    }
    let fix_crc = data[0] & 1 != 0;
    let lsn = be_u64(&data[1..9]);
    let mut stored = data[9..].to_vec();
    if fix_crc {
        let crc = record_crc(lsn, &stored);
        stored.extend_from_slice(&crc.to_be_bytes());
    }
    let got = Record::decode(lsn, &stored);
    check_record(lsn, &stored, &got);
}

/// `journal_segment`: `decode_segment` (one group commit: repeated
/// `[u32 length, big-endian][record]`).
///
/// Input: `[u64 first LSN, big-endian][u8 flags][segment]`. With flag bit
/// 0 set, the last 4 bytes of every framed record (of at least 4 bytes) are
/// overwritten with the checksum the record needs under its LSN, so the
/// fuzzer gets past the CRCs; framing is left untouched. Shorter inputs are
/// decoded as a segment starting at LSN 1.
pub fn journal_segment(data: &[u8]) {
    let (first, fix_crc, mut value) = if data.len() < 9 {
        (1, false, data.to_vec())
    } else {
        (be_u64(&data[..8]), data[8] & 1 != 0, data[9..].to_vec())
    };
    // Frame the segment independently: (lsn, offset of the record, length).
    let mut frames = Vec::new();
    let mut framing_error = false;
    let mut at = 0usize;
    let mut lsn = Some(first);
    while at < value.len() {
        let Some(len_bytes) = value.get(at..at + 4) else {
            framing_error = true;
            break;
        };
        let len = u32::from_be_bytes(len_bytes.try_into().unwrap()) as usize;
        if value.len() - (at + 4) < len {
            framing_error = true;
            break;
        }
        frames.push((lsn, at + 4, len));
        at += 4 + len;
        lsn = lsn.and_then(|l| l.checked_add(1));
    }
    if fix_crc {
        for &(lsn, start, len) in &frames {
            if let (Some(lsn), true) = (lsn, len >= 4) {
                let crc = record_crc(lsn, &value[start..start + len - 4]);
                value[start + len - 4..start + len].copy_from_slice(&crc.to_be_bytes());
            }
        }
    }

    let got = replaymig_journal::decode_segment(first, &value);

    // One result per framed record that has an LSN (records past LSN
    // u64::MAX have none), plus one error for the rest: a framing error or
    // records past u64::MAX, after which the segment is not walked further.
    // (Without this the decoder once overflowed its LSN counter:
    // fuzz/regressions/journal_segment/crash-lsn-overflow.)
    let numbered = frames.iter().take_while(|f| f.0.is_some()).count();
    let past_max = numbered < frames.len();
    assert_eq!(
        got.len(),
        numbered + usize::from(framing_error || past_max),
        "decode_segment gave {} results for {} records ({numbered} numbered, framing error: {framing_error})",
        got.len(),
        frames.len()
    );
    let mut reframed = Vec::with_capacity(value.len());
    for (i, result) in got.iter().enumerate() {
        match frames
            .get(i)
            .and_then(|&(lsn, start, len)| Some((lsn?, start, len)))
        {
            Some((lsn, start, len)) => {
                let stored = &value[start..start + len];
                // Each record is decoded exactly as `Record::decode` would,
                // under LSN first + i.
                match result {
                    Ok(entry) => {
                        assert_eq!(entry.lsn, lsn, "record {i} of a segment at {first}");
                        let alone = Record::decode(lsn, stored);
                        assert_eq!(alone.as_ref().ok(), Some(&entry.record));
                        check_record(lsn, stored, &Ok(entry.record.clone()));
                        let enc = entry.record.encode(lsn);
                        reframed.extend_from_slice(&(enc.len() as u32).to_be_bytes());
                        reframed.extend_from_slice(&enc);
                    }
                    Err(e) => {
                        assert_eq!(e.lsn(), Some(lsn), "{e}");
                        assert!(Record::decode(lsn, stored).is_err());
                    }
                }
            }
            None => {
                assert!(
                    result.is_err(),
                    "a framing error or a record past LSN u64::MAX decoded"
                );
            }
        }
    }
    // A segment whose records all decode re-encodes to the same bytes.
    if !framing_error && !past_max && got.iter().all(|r| r.is_ok()) {
        assert_eq!(reframed, value, "a decoded segment re-frames differently");
    }
}

/// Every outcome of feeding a byte stream to a fresh `PeerCodec`: the
/// messages with the bytes each consumed, then how it ended.
#[derive(Debug, PartialEq)]
struct Stream {
    messages: Vec<(Message, Vec<u8>)>,
    /// `None`: ran out of bytes (waiting for more); `Some(kind)`: the
    /// error's kind (its message may differ between feeds, e.g. byte
    /// counts).
    error: Option<&'static str>,
}

fn error_kind(e: &replaymig_peer::FrameError) -> &'static str {
    use replaymig_peer::FrameError::*;
    match e {
        Io(_) => "io",
        Version { .. } => "version",
        Malformed(_) => "malformed",
        TooLarge(_) => "too_large",
    }
}

/// Feeds `input` to a fresh codec `chunk` bytes at a time (0: all at
/// once), decoding until it wants more bytes or fails, as `Framed` does.
fn feed(input: &[u8], chunk: usize) -> Stream {
    let mut codec = PeerCodec::default();
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut out = Stream {
        messages: Vec::new(),
        error: None,
    };
    let step = if chunk == 0 {
        input.len().max(1)
    } else {
        chunk
    };
    loop {
        let end = (fed + step).min(input.len());
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => {
                    // The codec may take a frame's length prefix in an
                    // earlier call that returned `None`: count from the
                    // end of the previous message.
                    let upto = fed - buf.len();
                    let used = upto - consumed;
                    assert!(used > 4, "a message decoded from {used} bytes");
                    out.messages.push((msg, input[consumed..upto].to_vec()));
                    consumed = upto;
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(error_kind(&e));
                    return out;
                }
            }
        }
        if fed == input.len() {
            return out;
        }
    }
}

/// `peer_frame`: `PeerCodec` (the peer link's frame decoder).
///
/// Input: `[u8 chunk size][stream]`. The stream is decoded twice, all at
/// once and `chunk size` bytes at a time (0 → 1), and both must give the
/// same messages and the same end. Every decoded message must re-encode to
/// exactly the frame it came from (bincode with fixed-width integers and no
/// trailing bytes is canonical).
pub fn peer_frame(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let whole = feed(stream, 0);
    for (msg, frame) in &whole.messages {
        let mut enc = BytesMut::new();
        PeerCodec::default()
            .encode(msg.clone(), &mut enc)
            .expect("a decoded message encodes");
        assert_eq!(
            &enc[..],
            &frame[..],
            "{} re-encodes differently",
            msg.name()
        );
        let _ = msg.name();
    }
    let pieces = feed(stream, usize::from(chunk).max(1));
    assert_eq!(whole, pieces, "decoding depends on how the bytes arrive");

    // At end of stream (what `Framed` does when the peer closes): a clean
    // end only if no partial frame is left.
    let mut codec = PeerCodec::default();
    let mut buf = BytesMut::from(stream);
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => {
                assert!(buf.is_empty(), "decode_eof ended with bytes left");
                break;
            }
            Err(_) => break,
        }
    }
}

/// `snapshot_manifest`: `Manifest::parse` (a manifest from disk or from a
/// peer's `SnapshotBegin`), then what a receiver does with one before any
/// file data: the path checks of `verify` (against a directory that does
/// not exist, so nothing is read) and `total_bytes`.
///
/// Input: the manifest's bytes (JSON).
pub fn snapshot_manifest(data: &[u8]) {
    let Ok(manifest) = Manifest::parse(data) else {
        return;
    };
    // Serializing and parsing again gives the same manifest.
    let json = serde_json::to_vec(&manifest).expect("a manifest serializes");
    assert_eq!(
        Manifest::parse(&json).as_ref(),
        Ok(&manifest),
        "manifest does not survive a JSON round trip"
    );
    let _ = manifest.total_bytes();
    let nowhere = std::path::Path::new("/nonexistent/replaymig-fuzz-snapshot");
    let verified = manifest.verify(nowhere);
    assert_eq!(
        verified.is_ok(),
        manifest.files.is_empty(),
        "verify against a missing directory: {verified:?}"
    );
}

/// Seed inputs for each target, in the targets' input layouts: valid
/// encodings of every record kind, segments, every message, manifests.
/// Used by `src/bin/seeds.rs` to (re)write `fuzz/corpus/`.
pub mod seeds {
    use super::*;
    use bytes::Bytes;

    /// One record of each kind (and a few edge shapes).
    pub fn records() -> Vec<(&'static str, Record)> {
        vec![
            (
                "opened",
                Record::Opened {
                    time_us: 1_700_000_000_000_000,
                    client_addr: "127.0.0.1:50000".into(),
                },
            ),
            (
                "opened-empty",
                Record::Opened {
                    time_us: 0,
                    client_addr: String::new(),
                },
            ),
            (
                "data",
                Record::Data {
                    time_us: 1_700_000_000_000_001,
                    conn: 1,
                    resp_before: 5,
                    resp_total_before: 42,
                    data: Bytes::from_static(b"*2\r\n$4\r\nINCR\r\n$3\r\nctr\r\n"),
                },
            ),
            (
                "data-empty",
                Record::Data {
                    time_us: 1,
                    conn: u64::MAX,
                    resp_before: 0,
                    resp_total_before: 0,
                    data: Bytes::new(),
                },
            ),
            (
                "half-closed",
                Record::HalfClosed {
                    time_us: 2,
                    conn: 3,
                },
            ),
            (
                "closed",
                Record::Closed {
                    time_us: 3,
                    conn: 3,
                    resp_total: 1234,
                },
            ),
            (
                "answer-kept",
                Record::Answer {
                    time_us: 4,
                    conn: 3,
                    offset: 10,
                    len: 5,
                    crc32: crc32(&[b":1\r\n\n"]),
                    data: Bytes::from_static(b":1\r\n\n"),
                },
            ),
            (
                "answer-digest",
                Record::Answer {
                    time_us: 5,
                    conn: 3,
                    offset: 15,
                    len: 4096,
                    crc32: 0xdead_beef,
                    data: Bytes::new(),
                },
            ),
            (
                "marker",
                Record::Marker {
                    time_us: 6,
                    mark: "snapshot".into(),
                    lsn_ref: 41,
                    payload: Bytes::from_static(b"{\"epoch\":2}"),
                },
            ),
            (
                "marker-empty",
                Record::Marker {
                    time_us: 7,
                    mark: String::new(),
                    lsn_ref: 0,
                    payload: Bytes::new(),
                },
            ),
        ]
    }

    /// `(file name, input)` pairs for `target`.
    pub fn for_target(target: &str) -> Vec<(String, Vec<u8>)> {
        match target {
            "journal_record" => journal_record(),
            "journal_segment" => journal_segment(),
            "peer_frame" => peer_frame(),
            "snapshot_manifest" => snapshot_manifest(),
            other => panic!("no fuzz target {other:?}"),
        }
    }

    fn journal_record() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (lsn, tag) in [(1u64, "lsn1"), (1_000_003, "lsnbig")] {
            for (name, record) in records() {
                let stored = record.encode(lsn);
                // As stored (flag 0) ...
                let mut raw = vec![0u8];
                raw.extend_from_slice(&lsn.to_be_bytes());
                raw.extend_from_slice(&stored);
                out.push((format!("{name}-{tag}-stored"), raw));
                // ... and without the checksum (flag 1: the target adds it).
                let mut body = vec![1u8];
                body.extend_from_slice(&lsn.to_be_bytes());
                body.extend_from_slice(&stored[..stored.len() - 4]);
                out.push((format!("{name}-{tag}-body"), body));
            }
        }
        out
    }

    fn segment(first: u64, records: &[Record]) -> Vec<u8> {
        let mut seg = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let enc = r.encode(first + i as u64);
            seg.extend_from_slice(&(enc.len() as u32).to_be_bytes());
            seg.extend_from_slice(&enc);
        }
        seg
    }

    fn journal_segment() -> Vec<(String, Vec<u8>)> {
        let all: Vec<Record> = records().into_iter().map(|(_, r)| r).collect();
        let mut out = Vec::new();
        for (name, first, recs) in [
            ("all-kinds", 1u64, &all[..]),
            ("one-data", 77, &all[2..3]),
            ("conn-life", 1_000, &all[0..6]),
        ] {
            for flag in [0u8, 1] {
                let mut input = first.to_be_bytes().to_vec();
                input.push(flag);
                input.extend_from_slice(&segment(first, recs));
                out.push((format!("{name}-flag{flag}"), input));
            }
        }
        // A segment cut inside its last record.
        let mut cut = 5u64.to_be_bytes().to_vec();
        cut.push(0);
        let seg = segment(5, &all[..3]);
        cut.extend_from_slice(&seg[..seg.len() - 3]);
        out.push(("truncated".into(), cut));
        out
    }

    /// One of each message.
    pub fn messages() -> Vec<Message> {
        vec![
            Message::Hello {
                node: "a".into(),
                nonce: [7; 32],
            },
            Message::HelloProof {
                node: "b".into(),
                nonce: [9; 32],
                proof: vec![1; 32],
            },
            Message::Proof { proof: vec![2; 32] },
            Message::Welcome,
            Message::Goodbye {
                reason: "wrong secret".into(),
            },
            Message::SnapshotBegin {
                manifest: manifest_json(),
            },
            Message::SnapshotChunk {
                file: 0,
                offset: 0,
                compressed: false,
                data: b"REDIS0011".to_vec(),
                crc32: crc32(&[b"REDIS0011"]),
            },
            Message::SnapshotEnd,
            Message::SnapshotStreamChunk {
                stream: 0,
                offset: 1 << 20,
                compressed: false,
                data: b"REDIS0011".to_vec(),
                crc32: crc32(&[b"REDIS0011"]),
            },
            Message::SnapshotStreamsNamed {
                names: vec![(0, "dump.rdb".into())],
            },
            Message::MigrateRequest {
                service: "redis".into(),
                to: "c".into(),
                method: b"\"replay\"".to_vec(),
                unverified: false,
            },
            Message::MigrateResult {
                report: None,
                error: Some("the registry did not take the hand-over".into()),
            },
            Message::JournalQuery {
                service: "redis".into(),
            },
            Message::JournalIs {
                first: 1,
                last: 4242,
            },
            Message::TunnelOpenMovable {
                service: "redis".into(),
                conn: None,
                delivered: 0,
                client: "10.77.0.9:5000".into(),
                epoch: 3,
                relay: 17,
            },
            Message::TunnelMove {
                service: "redis".into(),
                relay: 17,
                to: "b".into(),
                epoch: 4,
                conn: 9,
                consumed: 4096,
                answers_end: 1024,
            },
            Message::TunnelMoveTaken,
            Message::TunnelMoveGo,
            Message::LogBatch {
                first_lsn: 42,
                count: 2,
                packed: vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 1, 0, 0],
            },
            Message::LogApplied { lsn: 43 },
            Message::MigrateBegin {
                service: "redis".into(),
                epoch: 2,
                verify_answers: true,
            },
            Message::MigrateReady,
            Message::MigrateAbort {
                reason: "restore failed".into(),
            },
            Message::HandOver {
                epoch: 2,
                delivered: vec![(1, 10), (5, 0)],
            },
            Message::HandOverDone {
                epoch: 2,
                restore_micros: 1000,
                replay_micros: 2000,
            },
            Message::HandOverCommit { epoch: 2 },
            Message::TunnelOpen {
                service: "redis".into(),
                conn: Some(1),
                delivered: 10,
                client: "127.0.0.1:5000".into(),
                epoch: 2,
            },
            Message::TunnelOpen {
                service: "redis".into(),
                conn: None,
                delivered: 0,
                client: String::new(),
                epoch: 1,
            },
            Message::TunnelReady,
            Message::OwnerQuery {
                service: "redis".into(),
            },
            Message::OwnerIs {
                owner: "a".into(),
                epoch: 2,
                migrating: true,
            },
            Message::Ping(7),
            Message::Pong(7),
        ]
    }

    fn frames(msgs: &[Message]) -> Vec<u8> {
        let mut codec = PeerCodec::default();
        let mut buf = BytesMut::new();
        for m in msgs {
            codec.encode(m.clone(), &mut buf).expect("encodes");
        }
        buf.to_vec()
    }

    fn peer_frame() -> Vec<(String, Vec<u8>)> {
        let msgs = messages();
        let mut out = Vec::new();
        for m in &msgs {
            // Chunk size 0 (→ 1 byte at a time).
            let mut input = vec![0u8];
            input.extend_from_slice(&frames(std::slice::from_ref(m)));
            let mut name = m.name().replace('_', "-");
            if out.iter().any(|(n, _)| *n == name) {
                name.push_str("-2");
            }
            out.push((name, input));
        }
        // The handshake then a ping, as a dialer sees it, 7 bytes at a time.
        let mut conv = vec![7u8];
        conv.extend_from_slice(&frames(&[
            msgs[1].clone(),
            msgs[3].clone(),
            msgs[21].clone(),
        ]));
        out.push(("conversation".into(), conv));
        // A frame cut short, a wrong version, an oversized length.
        let mut cut = vec![3u8];
        let f = frames(&msgs[..1]);
        cut.extend_from_slice(&f[..f.len() - 5]);
        out.push(("cut".into(), cut));
        out.push(("bad-version".into(), vec![0, 0, 0, 0, 2, 9, 0]));
        out.push(("oversized".into(), vec![0, 0x7f, 0xff, 0xff, 0xff, 2]));
        out
    }

    fn manifest() -> Manifest {
        Manifest {
            service: "redis".into(),
            driver: "exec".into(),
            lsn: 41,
            precopy: false,
            files: vec![
                replaymig_snapshot::FileEntry {
                    name: "dump.rdb".into(),
                    size: 13,
                    sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                        .into(),
                },
                replaymig_snapshot::FileEntry {
                    name: "sub/extra".into(),
                    size: 3000,
                    sha256: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
                        .into(),
                },
            ],
        }
    }

    fn manifest_json() -> Vec<u8> {
        serde_json::to_vec(&manifest()).unwrap()
    }

    fn snapshot_manifest() -> Vec<(String, Vec<u8>)> {
        let m = manifest();
        let mut precopy = m.clone();
        precopy.precopy = true;
        precopy.driver = "criu".into();
        let empty = Manifest {
            service: "svc".into(),
            driver: "none".into(),
            lsn: 0,
            precopy: false,
            files: vec![],
        };
        vec![
            ("compact".into(), serde_json::to_vec(&m).unwrap()),
            ("pretty".into(), serde_json::to_vec_pretty(&m).unwrap()),
            ("precopy".into(), serde_json::to_vec(&precopy).unwrap()),
            ("no-files".into(), serde_json::to_vec(&empty).unwrap()),
            (
                "no-precopy-field".into(),
                br#"{"service":"s","driver":"exec","lsn":18446744073709551615,"files":[{"name":"a","size":1,"sha256":""}]}"#.to_vec(),
            ),
            (
                "unsafe-path".into(),
                br#"{"service":"s","driver":"exec","lsn":1,"files":[{"name":"../etc/passwd","size":1,"sha256":"x"}]}"#.to_vec(),
            ),
        ]
    }
}
