//! `kill -9` of the proxy under load (durability `batch`): the journal
//! reopens, LSNs are contiguous, no record is torn, and every command the
//! backend executed is in the journal (redis' counter ≤ journaled INCRs),
//! while every acknowledged command was executed (acked ≤ counter).

mod common;

use common::*;
use replaymig_testkit::{encode_command, RedisServer, Reply, RespClient};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const CLIENTS: usize = 8;
/// Bounds each client's loop even if the kill never lands.
const MAX_INCRS: usize = 20_000;

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn kill_9_under_load_loses_nothing_the_backend_saw() {
    for durability in ["batch", "sync"] {
        let redis = RedisServer::start().unwrap();
        let dir = TempDir::new().unwrap();
        let journal = dir.path().join("journal");
        let mut proxy = ProxyProcess::start(redis.addr, &journal, durability).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (listen, stop) = (proxy.listen, stop.clone());
                std::thread::spawn(move || {
                    let key = format!("k{i}");
                    let mut c = RespClient::connect(listen).unwrap();
                    let mut acked = 0i64;
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while !stop.load(Ordering::Relaxed)
                        && (acked as usize) < MAX_INCRS
                        && Instant::now() < deadline
                    {
                        // Pipelined clients write 4 commands per read.
                        let cmds: Vec<Vec<&str>> = (0..1 + 3 * (i % 2))
                            .map(|_| vec!["INCR", key.as_str()])
                            .collect();
                        match c.pipeline(&cmds) {
                            Ok(replies) => {
                                for r in replies {
                                    acked += 1;
                                    assert_eq!(r, Reply::Int(acked));
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    (key, acked)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        proxy.guard.kill9().unwrap();
        stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();

        let entries = read_journal(&journal);
        assert_contiguous(&entries);
        let conns = connections(&entries);
        for (key, acked) in results {
            let executed = redis.get_int(&key).unwrap();
            let needle = encode_command(&["INCR", &key]);
            let journaled: usize = conns.values().map(|c| count(&c.data, &needle)).sum();
            assert!(acked > 0, "{durability}: load ran before the kill");
            assert!(
                acked <= executed,
                "{durability}: {key}: acked {acked} > executed {executed}"
            );
            assert!(
                executed as usize <= journaled,
                "{durability}: {key}: redis executed {executed} but only {journaled} are journaled"
            );
        }
        // The journal reopens for appending too: a new proxy continues the LSNs.
        let last = entries.len() as u64;
        let mut again = ProxyProcess::start(redis.addr, &journal, durability).unwrap();
        RespClient::connect(again.listen)
            .unwrap()
            .cmd(&["PING"])
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        again.stop();
        let after = read_journal(&journal);
        assert_contiguous(&after);
        assert!(
            after.len() as u64 >= last + 3,
            "new records continue after LSN {last}"
        );
    }
}
