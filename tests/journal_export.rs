//! `replaymig journal export` on a journal recorded through the proxy (the
//! real binary) in front of a real redis-server, checked with tshark: one
//! TCP stream per connection, every journaled client byte as TCP payload,
//! valid checksums, nothing malformed; and clear errors.

mod common;

use common::*;
use replaymig_journal::Record;
use replaymig_testkit::{RedisServer, Reply, RespClient};
use std::path::Path;
use std::process::{Command, Output};
use tempfile::TempDir;

fn export(journal: &Path, pcap: &Path, args: &[&str]) -> Output {
    replaymig()
        .args(["journal", "export", "--journal"])
        .arg(journal)
        .arg("--pcap")
        .arg(pcap)
        .args(args)
        .output()
        .expect("run replaymig journal export")
}

/// Runs tshark on `pcap` with `args`; its stdout lines.
fn tshark(pcap: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(args)
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn tshark_available() -> bool {
    Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn streams(pcap: &Path) -> std::collections::BTreeSet<String> {
    tshark(pcap, &["-T", "fields", "-e", "tcp.stream"])
        .into_iter()
        .collect()
}

#[test]
fn export_writes_a_capture_tshark_reads() {
    let redis = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let journal = dir.path().join("journal");
    // Answers kept verbatim, so the capture has both directions.
    let full = ["--journal-responses", "full"];
    let mut proxy = ProxyProcess::start_with(redis.addr, &journal, "batch", &full).unwrap();
    let mut a = RespClient::connect(proxy.listen).unwrap();
    let mut b = RespClient::connect(proxy.listen).unwrap();
    let mut c = RespClient::connect(proxy.listen).unwrap();
    assert_eq!(
        a.cmd(&["SET", "k", "v"]).unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(b.cmd(&["INCR", "n"]).unwrap(), Reply::Int(1));
    assert_eq!(a.cmd(&["INCR", "n"]).unwrap(), Reply::Int(2));
    // Pipelined, and bigger than one segment.
    let big = "x".repeat(3000);
    let replies = c
        .pipeline(&[
            vec!["SET", "big", &big],
            vec!["INCR", "n"],
            vec!["INCR", "m"],
            vec!["SET", "j", "w"],
        ])
        .unwrap();
    assert_eq!(replies[1], Reply::Int(3));
    assert_eq!(
        b.cmd(&["SET", "k2", "v2"]).unwrap(),
        Reply::Status("OK".into())
    );
    // b half-closes; a and c just go away.
    b.stream().shutdown(std::net::Shutdown::Write).unwrap();
    drop((a, b, c));
    std::thread::sleep(std::time::Duration::from_millis(300));
    proxy.stop();
    let entries = read_journal(&journal);
    let data_bytes: usize = entries
        .iter()
        .map(|e| match &e.record {
            Record::Data { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    let opened: Vec<u64> = entries
        .iter()
        .filter(|e| matches!(e.record, Record::Opened { .. }))
        .map(|e| e.lsn)
        .collect();
    assert_eq!(opened.len(), 3);
    assert!(data_bytes > 3000);
    let answer_bytes: u64 = entries
        .iter()
        .map(|e| match &e.record {
            Record::Answer { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum();
    let delivered: u64 = entries
        .iter()
        .map(|e| match &e.record {
            Record::Closed { resp_total, .. } => *resp_total,
            _ => 0,
        })
        .sum();
    assert_eq!(answer_bytes, delivered, "every answer byte kept");
    assert!(answer_bytes > 30);

    let out_dir = TempDir::new().unwrap();
    let pcap = out_dir.path().join("session.pcap");
    let started = std::time::Instant::now();
    let out = export(&journal, &pcap, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "export took {:?}: {}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // Exporting wrote nothing to the journal.
    assert_eq!(read_journal(&journal).len(), entries.len());

    // Errors: a range past the end, not a journal, an uncreatable file.
    let past = export(
        &journal,
        &out_dir.path().join("p.pcap"),
        &["--from", "1000"],
    );
    assert!(!past.status.success());
    assert!(String::from_utf8_lossy(&past.stderr).contains("beyond the last LSN"));
    let empty = TempDir::new().unwrap();
    let not = export(empty.path(), &out_dir.path().join("n.pcap"), &[]);
    assert!(!not.status.success());
    assert!(String::from_utf8_lossy(&not.stderr).contains("cannot open journal"));
    let nowhere = export(&journal, &out_dir.path().join("no/such/dir.pcap"), &[]);
    assert!(!nowhere.status.success());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("cannot create"));

    if !tshark_available() {
        eprintln!("SKIP tshark checks: tshark is not installed (tools/setup.sh installs it)");
        return;
    }
    assert_eq!(streams(&pcap).len(), 3);
    let payload: usize = tshark(&pcap, &["-T", "fields", "-e", "tcp.len"])
        .iter()
        .map(|l| l.trim().parse::<usize>().unwrap())
        .sum();
    assert_eq!(payload as u64, data_bytes as u64 + answer_bytes);
    let from_service: u64 = tshark(
        &pcap,
        &["-Y", "tcp.srcport==6379", "-T", "fields", "-e", "tcp.len"],
    )
    .iter()
    .map(|l| l.trim().parse::<u64>().unwrap())
    .sum();
    assert_eq!(from_service, answer_bytes, "the answers, service to client");
    let to_service: usize = tshark(
        &pcap,
        &["-Y", "tcp.dstport==6379", "-T", "fields", "-e", "tcp.len"],
    )
    .iter()
    .map(|l| l.trim().parse::<usize>().unwrap())
    .sum();
    assert_eq!(to_service, data_bytes);
    let bad = tshark(
        &pcap,
        &[
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
            "-Y",
            "tcp.checksum.status==0 || ip.checksum.status==0 || _ws.malformed \
             || _ws.expert.severity >= warning",
        ],
    );
    assert!(bad.is_empty(), "bad packets: {bad:#?}");
    // The filter is not vacuous: a flipped bit in the first packet's IPv4
    // checksum (24-byte file header + 16-byte packet header + 10) is reported.
    let mut bytes = std::fs::read(&pcap).unwrap();
    bytes[24 + 16 + 10] ^= 1;
    let corrupt = out_dir.path().join("corrupt.pcap");
    std::fs::write(&corrupt, bytes).unwrap();
    let flagged = tshark(
        &corrupt,
        &[
            "-o",
            "ip.check_checksum:TRUE",
            "-Y",
            "ip.checksum.status==0",
        ],
    );
    assert_eq!(flagged.len(), 1);
    // Wireshark's RESP dissector reads the client's commands.
    assert!(!tshark(&pcap, &["-Y", "resp"]).is_empty());
    // Every stream has its handshake and a FIN from the client.
    assert_eq!(
        tshark(&pcap, &["-Y", "tcp.flags.syn==1 && tcp.flags.ack==0"]).len(),
        3
    );
    let client_fins = tshark(&pcap, &["-Y", "tcp.flags.fin==1 && tcp.dstport==6379"]);
    assert_eq!(client_fins.len(), 3);

    // One connection only.
    let one = out_dir.path().join("one.pcap");
    let out = export(&journal, &one, &["--conn", &opened[1].to_string()]);
    assert!(out.status.success());
    assert_eq!(streams(&one).len(), 1);
    // A range that starts after the connections opened still has them.
    let tail = out_dir.path().join("tail.pcap");
    let from = (opened[2] + 1).to_string();
    let out = export(&journal, &tail, &["--from", &from]);
    assert!(out.status.success());
    assert!(!streams(&tail).is_empty());
}
