//! Bad situations get a clear error and a non-zero exit, and lose nothing:
//! a dead backend, a taken port, a bad address, a corrupt or foreign
//! journal, a journal in use.

mod common;

use common::*;
use replaymig_journal::{Entry, Journal, JournalError, JournalOptions, OpenMode};
use replaymig_testkit::{free_port, RedisServer, Reply, RespClient};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command failed and said why.
fn fails_with(out: &std::process::Output, reason: &str) {
    assert!(!out.status.success(), "must fail: {}", stderr(out));
    assert!(
        stderr(out).contains(reason),
        "expected {reason:?} in: {}",
        stderr(out)
    );
}

#[test]
fn dead_backend_closes_the_client_counts_the_error_and_keeps_serving() {
    let port = free_port();
    let backend: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = TempDir::new().unwrap();
    let mut proxy = ProxyProcess::start(backend, &dir.path().join("j"), "batch").unwrap();

    let mut c = TcpStream::connect(proxy.listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the client is closed");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(
        proxy
            .scrape()
            .get(r#"replaymig_errors_total{service="default",kind="backend_connect"}"#),
        1.0
    );

    // The service comes back on its port: the same proxy serves again.
    let redis = RedisServer::start_on(port).unwrap();
    let mut c = RespClient::connect(proxy.listen).unwrap();
    assert_eq!(c.cmd(&["INCR", "x"]).unwrap(), Reply::Int(1));
    drop(c);
    assert_eq!(redis.get_int("x").unwrap(), 1);
    proxy.stop();
    let entries = read_journal(&dir.path().join("j"));
    assert_contiguous(&entries);
    assert_eq!(
        connections(&entries).len(),
        1,
        "the refused client left no record"
    );
}

#[test]
fn taken_ports_and_bad_addresses_exit_non_zero_with_a_reason() {
    let dir = TempDir::new().unwrap();
    let taken = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let journal = dir.path().join("j");
    let j = journal.to_str().unwrap();

    let out = run(&[
        "proxy",
        "--listen",
        &taken_addr,
        "--backend",
        "127.0.0.1:1",
        "--journal",
        j,
    ]);
    fails_with(&out, &format!("cannot listen on {taken_addr}"));
    assert!(
        stderr(&out).to_lowercase().contains("in use"),
        "{}",
        stderr(&out)
    );

    let free = format!("127.0.0.1:{}", free_port());
    let out = run(&[
        "proxy",
        "--listen",
        &free,
        "--backend",
        "127.0.0.1:1",
        "--journal",
        j,
        "--metrics",
        &taken_addr,
    ]);
    fails_with(&out, "cannot serve metrics");

    let out = run(&[
        "proxy",
        "--listen",
        "localhost:http",
        "--backend",
        "127.0.0.1:1",
        "--journal",
        j,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--listen"), "{}", stderr(&out));

    let out = run(&[
        "proxy",
        "--listen",
        &free,
        "--backend",
        "127.0.0.1:1",
        "--journal",
        j,
        "--durability",
        "maybe",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown durability"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unusable_journal_directories_are_refused() {
    let dir = TempDir::new().unwrap();
    let out = run(&[
        "journal",
        "stat",
        "--journal",
        dir.path().join("missing").to_str().unwrap(),
    ]);
    fails_with(&out, "not a replaymig journal");
    assert!(!dir.path().join("missing").exists(), "stat creates nothing");

    std::fs::write(dir.path().join("file"), "x").unwrap();
    let out = run(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:1",
        "--journal",
        dir.path().join("file").to_str().unwrap(),
    ]);
    fails_with(&out, "cannot open journal");
    assert_eq!(
        std::fs::read(dir.path().join("file")).unwrap(),
        b"x",
        "the file is untouched"
    );

    let out = run(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:1",
        "--journal",
        dir.path().to_str().unwrap(),
    ]);
    fails_with(&out, "not empty and holds no journal");
}

#[test]
fn a_corrupt_journal_is_named_by_lsn_and_left_as_it_was() {
    let redis = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let journal = dir.path().join("j");
    let mut proxy = ProxyProcess::start(redis.addr, &journal, "batch").unwrap();
    let mut c = RespClient::connect(proxy.listen).unwrap();
    for i in 0..10 {
        c.cmd(&["SET", &format!("k{i}"), "v"]).unwrap();
    }
    // While the proxy runs, the journal is locked: stat says so.
    let out = run(&["journal", "stat", "--journal", journal.to_str().unwrap()]);
    fails_with(&out, "in use by another process");
    drop(c);
    proxy.stop();

    let before = read_journal(&journal);
    let last = before.len() as u64;
    let victim = 5u64;
    // Flip one byte of record 5 and one of the last record, under the journal.
    for lsn in [victim, last] {
        replaymig_journal::fault::corrupt_record(&journal, lsn).unwrap();
    }
    let out = run(&["journal", "stat", "--journal", journal.to_str().unwrap()]);
    fails_with(&out, &format!("LSN {victim}"));

    let out = run(&[
        "proxy",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--backend",
        &redis.addr.to_string(),
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "a proxy never appends after a corrupt tail"
    );
    assert!(
        stderr(&out).contains(&format!("LSN {last}")),
        "{}",
        stderr(&out)
    );

    // Nothing was rewritten: every other record is still there, unchanged.
    let after = entries_lenient(&journal);
    assert_eq!(after.len() as u64, last);
    for (b, a) in before.iter().zip(&after) {
        if b.lsn == victim || b.lsn == last {
            assert!(
                a.is_err(),
                "LSN {} stays corrupt, not repaired or dropped",
                b.lsn
            );
        } else {
            assert_eq!(a.as_ref().unwrap(), b);
        }
    }
}

/// Every record of a closed journal, corrupt ones as errors.
fn entries_lenient(dir: &std::path::Path) -> Vec<Result<Entry, JournalError>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = JournalOptions {
            mode: OpenMode::MustExist,
            ..Default::default()
        };
        let j = Journal::open(dir, options).unwrap();
        let all = (1..=j.last_lsn())
            .map(|lsn| j.get(lsn).map(|e| e.expect("stored")))
            .collect();
        j.close().await.unwrap();
        all
    })
}
