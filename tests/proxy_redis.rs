//! The journaling proxy in front of a real redis-server: every command
//! counted, every client byte journaled once, in order, under contiguous
//! LSNs, with the causality counters right.

mod common;

use common::*;
use replaymig_journal::Record;
use replaymig_testkit::{RedisServer, Reply, RespClient};
use std::collections::HashMap;
use tempfile::TempDir;

const CLIENTS: usize = 20;
const INCRS: usize = 500;

#[test]
fn twenty_clients_500_incr_each_are_all_counted_and_journaled() {
    let redis = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let mut proxy = ProxyProcess::start(redis.addr, &dir.path().join("journal"), "batch").unwrap();

    let listen = proxy.listen;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let key = format!("ctr:{i}");
                let mut c = RespClient::connect(listen).unwrap();
                let local = c.stream().local_addr().unwrap().to_string();
                // Odd clients pipeline ten commands per write; even ones wait
                // for each answer (so each read is one command).
                let pipelined = i % 2 == 1;
                let mut reply_bytes_before = Vec::new();
                let mut received = 0u64;
                let mut n = 0i64;
                while (n as usize) < INCRS {
                    if pipelined {
                        let batch: Vec<Vec<&str>> =
                            (0..10).map(|_| vec!["INCR", key.as_str()]).collect();
                        for r in c.pipeline(&batch).unwrap() {
                            n += 1;
                            assert_eq!(r, Reply::Int(n));
                        }
                    } else {
                        reply_bytes_before.push(received);
                        n += 1;
                        assert_eq!(c.cmd(&["INCR", &key]).unwrap(), Reply::Int(n));
                        received += format!(":{n}\r\n").len() as u64;
                    }
                }
                (local, c.sent, pipelined, reply_bytes_before, received)
            })
        })
        .collect();
    let clients: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    for i in 0..CLIENTS {
        assert_eq!(redis.get_int(&format!("ctr:{i}")).unwrap(), INCRS as i64);
    }
    let m = proxy.scrape();
    let sent_total: usize = clients.iter().map(|c| c.1.len()).sum();
    assert_eq!(m.get("replaymig_proxy_connections_total"), CLIENTS as f64);
    assert_eq!(
        m.get(r#"replaymig_proxy_bytes_total{service="default",direction="client_to_service"}"#),
        sent_total as f64
    );
    assert!(m.has_family("replaymig_journal_append_duration_seconds_bucket"));
    assert!(m.has_family("replaymig_journal_batch_records_bucket"));
    let last_lsn = m.get("replaymig_journal_last_lsn");
    assert_eq!(m.get("replaymig_journal_appends_total"), last_lsn);
    proxy.stop();

    let entries = read_journal(&dir.path().join("journal"));
    assert_contiguous(&entries);
    assert!(
        entries.len() as f64 >= last_lsn,
        "everything exported as durable is there"
    );
    let conns = connections(&entries);
    assert_eq!(conns.len(), CLIENTS);
    let by_addr: HashMap<_, _> = conns.values().map(|c| (c.client_addr.clone(), c)).collect();
    for (local, sent, pipelined, reply_bytes_before, received) in &clients {
        let journaled = by_addr
            .get(local)
            .expect("each client's connection is journaled");
        assert_eq!(
            &journaled.data, sent,
            "journal holds exactly the bytes {local} sent"
        );
        assert!(matches!(
            journaled.records.first(),
            Some(Record::Opened { .. })
        ));
        let n = journaled.records.len();
        assert!(matches!(
            journaled.records[n - 2],
            Record::HalfClosed { .. }
        ));
        assert!(
            matches!(journaled.records[n - 1], Record::Closed { resp_total, .. } if resp_total == *received || *pipelined),
            "the close record counts every answer byte"
        );
        if !pipelined {
            let resp_before: Vec<u64> = journaled
                .records
                .iter()
                .filter_map(|r| match r {
                    Record::Data { resp_before, .. } => Some(*resp_before),
                    _ => None,
                })
                .collect();
            assert_eq!(
                &resp_before, reply_bytes_before,
                "resp_before = answer bytes the client had"
            );
        }
    }
    // The journal-wide counter covers at least this connection's answers.
    for e in &entries {
        if let Record::Data {
            resp_before,
            resp_total_before,
            ..
        } = &e.record
        {
            assert!(resp_total_before >= resp_before, "LSN {}", e.lsn);
        }
    }
}

#[test]
fn journal_stat_reports_what_was_recorded() {
    let redis = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let journal = dir.path().join("journal");
    let mut proxy = ProxyProcess::start(redis.addr, &journal, "sync").unwrap();
    let mut sent = 0;
    for i in 0..3 {
        let mut c = RespClient::connect(proxy.listen).unwrap();
        for _ in 0..10 {
            c.cmd(&["RPUSH", &format!("list:{i}"), "x"]).unwrap();
        }
        sent += c.sent.len();
    }
    proxy.stop();
    let out = run(&[
        "journal",
        "stat",
        "--journal",
        journal.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["first_lsn"], 1);
    assert_eq!(stats["connections"], 3);
    assert_eq!(stats["open_connections"], 0);
    assert_eq!(stats["data_bytes"], sent);
    // 3 × (opened + 10 data + 10 answer digests + half_closed + closed):
    // each answer's digest is cut at the next client record (the last at
    // the half-close).
    assert_eq!(stats["records"], 69);
    assert_eq!(stats["last_lsn"], 69);
    assert_eq!(stats["records_by_kind"]["answer"], 30);
    assert_eq!(stats["answer_segment_bytes"], 3 * (9 * 4 + 5));
    assert_eq!(stats["answer_bytes_kept"], 0, "digests only by default");
    let text = run(&["journal", "stat", "--journal", journal.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("1 ..= 69"));
    // Per connection: 23 records each, its own bytes, all closed, 10 answers
    // of ":n\r\n" (4 bytes for 1..=9, 5 for 10).
    let out = run(&[
        "journal",
        "stat",
        "--journal",
        journal.to_str().unwrap(),
        "--json",
        "--connections",
    ]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let conns = stats["per_connection"].as_object().unwrap();
    assert_eq!(conns.len(), 3);
    let mut bytes = 0;
    for (id, c) in conns {
        assert_eq!(c["records"], 23, "conn {id}");
        assert_eq!(c["first_lsn"].as_u64().unwrap().to_string(), *id);
        assert_eq!(c["open"], false);
        assert_eq!(c["answer_bytes"], 9 * 4 + 5);
        assert!(c["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        bytes += c["data_bytes"].as_u64().unwrap();
    }
    assert_eq!(bytes as usize, sent);
    let text = run(&[
        "journal",
        "stat",
        "--journal",
        journal.to_str().unwrap(),
        "--connections",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&text.stdout)
            .matches(" closed\n")
            .count(),
        3
    );
}

/// A standalone proxy's metrics carry a `node` label like a node agent's
/// (the Grafana dashboard selects by it): `--node`, else the host's name.
#[test]
fn a_standalone_proxy_labels_its_metrics_with_a_node() {
    let redis = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let runs = [
        (vec!["--node", "edge-7"], "edge-7"),
        (vec![], host.as_str()),
    ];
    for (i, (extra, node)) in runs.into_iter().enumerate() {
        let journal = dir.path().join(format!("journal-{node}"));
        let mut proxy = ProxyProcess::start_with(redis.addr, &journal, "batch", &extra).unwrap();
        let mut c = RespClient::connect(proxy.listen).unwrap();
        assert_eq!(c.cmd(&["INCR", "n"]).unwrap(), Reply::Int(i as i64 + 1));
        let page = proxy.scrape();
        let proxy_series: Vec<&String> = page
            .0
            .keys()
            .filter(|k| k.starts_with("replaymig_proxy_"))
            .collect();
        assert!(!proxy_series.is_empty(), "no proxy metrics");
        let label = format!("node=\"{node}\"");
        for series in &proxy_series {
            assert!(series.contains(&label), "{series} lacks {label}");
        }
        drop(c);
        proxy.stop();
    }
}
