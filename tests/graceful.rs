//! Graceful shutdown under load, and bounded memory with a slow client.

mod common;

use common::*;
use replaymig_journal::Record;
use replaymig_testkit::{free_port, RedisServer};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

#[test]
fn sigterm_under_load_drains_every_forwarded_command_and_flushes() {
    let redis = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let journal = dir.path().join("journal");
    let mut proxy = ProxyProcess::start(redis.addr, &journal, "batch").unwrap();
    let load = IncrLoad::start(proxy.listen, 8, "g", 50_000);
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    proxy.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained well within the drain timeout"
    );
    let results = load.finish();

    assert!(
        std::fs::read_dir(journal.join("staging")).map_or(0, |d| d.count()) == 0,
        "a clean stop leaves everything in the main store"
    );
    let entries = read_journal(&journal);
    assert_contiguous(&entries);
    let conns = connections(&entries);
    assert_eq!(conns.len(), 8);
    for c in conns.values() {
        assert!(
            matches!(c.records.last(), Some(Record::Closed { .. })),
            "every connection closed in the journal"
        );
    }
    for (key, acked) in results {
        let executed = redis.get_int(&key).unwrap();
        let journaled = journaled_incrs(&conns, &key);
        assert!(acked > 0);
        assert!(acked <= executed);
        assert_eq!(
            executed as usize, journaled,
            "{key}: what was journaled was forwarded, and only that"
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_slow_client_slows_the_service_instead_of_growing_proxy_memory() {
    const TOTAL: u64 = 128 << 20;
    let backend = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let sent_by_backend = sent.clone();
    std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        let chunk = vec![7u8; 64 << 10];
        while sent_by_backend.load(Ordering::Relaxed) < TOTAL {
            if s.write_all(&chunk).is_err() {
                return;
            }
            sent_by_backend.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let dir = TempDir::new().unwrap();
    let mut proxy = ProxyProcess::start(backend_addr, &dir.path().join("j"), "batch").unwrap();
    let rss_before = rss_kib(proxy.guard.pid());
    let mut c = TcpStream::connect(proxy.listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let stalled_at = sent.load(Ordering::Relaxed);
    let rss_stalled = rss_kib(proxy.guard.pid());
    assert!(
        stalled_at < TOTAL / 2,
        "the service was held back by the client ({stalled_at} bytes sent)"
    );
    assert!(
        rss_stalled < rss_before + 16 * 1024,
        "proxy memory stayed bounded: {rss_before} KiB -> {rss_stalled} KiB"
    );
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while got < TOTAL {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early at {got}");
        assert!(buf[..n].iter().all(|b| *b == 7));
        got += n as u64;
    }
    assert_eq!(got, TOTAL);
    drop(c);
    proxy.stop();
}
