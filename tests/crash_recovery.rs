//! `kill -9` of the proxy under load (durability `batch`): the journal
//! reopens, LSNs are contiguous, no record is torn, and every command the
//! backend executed is in the journal (redis' counter ≤ journaled INCRs),
//! while every acknowledged command was executed (acked ≤ counter).

mod common;

use common::*;
use replaymig_testkit::{RedisServer, RespClient};
use std::time::Duration;
use tempfile::TempDir;

const CLIENTS: usize = 8;
/// Bounds each client's loop even if the kill never lands.
const MAX_INCRS: i64 = 20_000;

#[test]
fn kill_9_under_load_loses_nothing_the_backend_saw() {
    for durability in ["batch", "sync"] {
        let redis = RedisServer::start().unwrap();
        let dir = TempDir::new().unwrap();
        let journal = dir.path().join("journal");
        let mut proxy = ProxyProcess::start(redis.addr, &journal, durability).unwrap();
        let load = IncrLoad::start(proxy.listen, CLIENTS, "k", MAX_INCRS);
        std::thread::sleep(Duration::from_millis(1500));
        proxy.guard.kill9().unwrap();
        let results = load.finish();

        let entries = read_journal(&journal);
        assert_contiguous(&entries);
        let conns = connections(&entries);
        for (key, acked) in results {
            let executed = redis.get_int(&key).unwrap();
            let journaled = journaled_incrs(&conns, &key);
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
