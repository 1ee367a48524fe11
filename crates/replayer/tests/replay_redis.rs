//! The replayer against real redis-server: a session recorded through the
//! journaling proxy, replayed into a fresh redis (from LSN 1) or into one
//! restored from an RDB saved at LSN s (from s+1, as migration does), ends
//! in the same dataset; a target with other data diverges at the right LSN.

use replaymig_journal::{Entry, Journal, Lsn, Record};
use replaymig_replayer::{replay_all, DivergenceKind, ReplayOptions, Replayer};
use replaymig_testkit::{InProcessProxy, RedisServer, Reply, RespClient};
use std::net::SocketAddr;
use std::time::Duration;
use tempfile::TempDir;

fn entries(journal: &Journal, from: Lsn) -> Vec<Entry> {
    journal
        .read_range(from, Lsn::MAX)
        .map(|e| e.unwrap())
        .collect()
}

/// A mixed session: four connections, pipelined and not, SET/INCR/RPUSH/DEL.
fn mixed_session(listen: SocketAddr, round: usize) {
    let workers: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = RespClient::connect(listen).unwrap();
                for n in 0..60 {
                    let key = format!("r{round}c{i}");
                    if i % 2 == 0 {
                        c.cmd(&["INCR", &format!("{key}:ctr")]).unwrap();
                        c.cmd(&["RPUSH", &format!("{key}:list"), &n.to_string()])
                            .unwrap();
                        c.cmd(&["SET", &format!("{key}:s{}", n % 7), &"x".repeat(n)])
                            .unwrap();
                    } else {
                        let n = n.to_string();
                        let list = format!("{key}:plist");
                        // Only same-answer writes go to a shared key: replay
                        // keeps per-connection order, not the order in which
                        // the service happened to serve concurrent connections
                        // (a shared INCR's answers, and so their lengths,
                        // depend on it).
                        let ctr = format!("{key}:pctr");
                        let gone = format!("{key}:gone");
                        let cmds = vec![
                            vec!["INCR", ctr.as_str()],
                            vec!["RPUSH", list.as_str(), n.as_str()],
                            vec!["SET", "shared:last", n.as_str()],
                            vec!["DEL", gone.as_str()],
                            vec!["SET", gone.as_str(), "1"],
                        ];
                        for r in c.pipeline(&cmds).unwrap() {
                            assert!(!matches!(r, Reply::Error(_)), "{r:?}");
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_lsn_1_rebuilds_the_same_dataset() {
    let original = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let proxy = InProcessProxy::start(original.addr, dir.path()).await;
    let listen = proxy.listen;
    tokio::task::spawn_blocking(move || mixed_session(listen, 0))
        .await
        .unwrap();
    proxy.wait_all_closed().await;
    let journal = proxy.stop().await;
    let recorded = entries(&journal, 1);
    let answers_original: u64 = recorded
        .iter()
        .filter_map(|e| match e.record {
            Record::Closed { resp_total, .. } => Some(resp_total),
            _ => None,
        })
        .sum();

    let fresh = RedisServer::start().unwrap();
    let report = replay_all(recorded.clone(), ReplayOptions::new(fresh.addr))
        .await
        .unwrap();
    assert!(report.divergences.is_empty(), "{:?}", report.divergences);
    assert_eq!(report.records, recorded.len() as u64);
    assert_eq!(report.connections, 4);
    assert_eq!(
        report.answer_bytes, answers_original,
        "every answer byte reproduced"
    );
    let want = original.dump_all().unwrap();
    assert!(want.len() > 20);
    assert_eq!(fresh.dump_all().unwrap(), want);
    journal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_snapshot_point_onto_the_restored_snapshot_matches() {
    let original = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let proxy = InProcessProxy::start(original.addr, dir.path()).await;
    let listen = proxy.listen;
    // A client that stays connected across the snapshot point.
    let mut long_lived = tokio::task::spawn_blocking(move || {
        let mut c = RespClient::connect(listen).unwrap();
        for _ in 0..10 {
            c.cmd(&["INCR", "long:ctr"]).unwrap();
        }
        c
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || mixed_session(listen, 1))
        .await
        .unwrap();
    // Quiescent: every short connection closed and the long-lived one idle.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = proxy.journal.last_lsn();
    let rdb = original.save().unwrap();
    let snapshot = TempDir::new().unwrap();
    std::fs::copy(&rdb, snapshot.path().join("at-s.rdb")).unwrap();

    long_lived = tokio::task::spawn_blocking(move || {
        for _ in 0..15 {
            long_lived.cmd(&["INCR", "long:ctr"]).unwrap();
            long_lived.cmd(&["RPUSH", "long:list", "after"]).unwrap();
        }
        long_lived
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || mixed_session(listen, 2))
        .await
        .unwrap();
    drop(long_lived);
    proxy.wait_all_closed().await;
    let journal = proxy.stop().await;

    let restored = RedisServer::start_from_rdb(&snapshot.path().join("at-s.rdb")).unwrap();
    let after_s = entries(&journal, s + 1);
    assert!(after_s
        .iter()
        .any(|e| matches!(e.record, Record::Data { .. })));
    let report = replay_all(after_s, ReplayOptions::new(restored.addr))
        .await
        .unwrap();
    assert!(report.divergences.is_empty(), "{:?}", report.divergences);
    assert_eq!(restored.get_int("long:ctr").unwrap(), 25);
    assert_eq!(restored.dump_all().unwrap(), original.dump_all().unwrap());
    journal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_other_data_diverges_at_the_right_lsn() {
    let original = RedisServer::start().unwrap();
    // Data the journal never saw: the original's answers are longer.
    original
        .client()
        .unwrap()
        .cmd(&["SET", "ctr", "1000"])
        .unwrap();
    let dir = TempDir::new().unwrap();
    let proxy = InProcessProxy::start(original.addr, dir.path()).await;
    let listen = proxy.listen;
    tokio::task::spawn_blocking(move || {
        let mut c = RespClient::connect(listen).unwrap();
        for n in 1001..=1003 {
            assert_eq!(c.cmd(&["INCR", "ctr"]).unwrap(), Reply::Int(n));
        }
    })
    .await
    .unwrap();
    proxy.wait_all_closed().await;
    let journal = proxy.stop().await;
    let recorded = entries(&journal, 1);
    let second_incr = recorded
        .iter()
        .filter(|e| matches!(e.record, Record::Data { .. }))
        .nth(1)
        .unwrap()
        .lsn;

    let fresh = RedisServer::start().unwrap();
    let mut options = ReplayOptions::new(fresh.addr);
    options.answer_timeout = Duration::from_millis(300);
    let err = replay_all(recorded.clone(), options.clone())
        .await
        .unwrap_err();
    let replaymig_replayer::ReplayError::Diverged(d) = err;
    // The second INCR waits for the answer segment journaled just before
    // it (":1001\r\n", 7 bytes); the fresh redis said ":1\r\n".
    assert_eq!(d.lsn, second_incr);
    assert!(matches!(
        recorded[(second_incr - 2) as usize].record,
        Record::Answer { .. }
    ));
    assert_eq!(
        d.kind,
        DivergenceKind::AnswerNeverCame {
            answer_lsn: second_incr - 1
        }
    );

    // Debug mode records it and goes on.
    let other = RedisServer::start().unwrap();
    options.target = other.addr;
    options.stop_on_divergence = false;
    let mut replayer = Replayer::new(options);
    for e in &recorded {
        replayer.apply(e).await.unwrap();
    }
    let (report, _) = replayer.finish().await;
    assert!(!report.divergences.is_empty());
    assert_eq!(report.divergences[0].lsn, second_incr);
    journal.close().await.unwrap();
}
