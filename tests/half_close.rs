//! Half-close crosses the proxy both ways: a client that shuts its write
//! side still gets the whole answer, and a service that shuts its write side
//! still receives the client's bytes. The backend here is a plain TCP
//! program written for the test, because what is under test is TCP FIN
//! handling, which Redis does not exercise (it closes on client EOF).

mod common;

use common::*;
use replaymig_journal::Record;
use replaymig_testkit::free_port;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;
use tempfile::TempDir;

const ANSWER_LEN: usize = 1 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn client_half_close_still_receives_the_full_answer() {
    // Backend: read to EOF, then answer with 1 MiB and close.
    let backend = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (got_tx, got_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut input = Vec::new();
        s.read_to_end(&mut input).unwrap();
        got_tx.send(input).unwrap();
        s.write_all(&pattern(ANSWER_LEN)).unwrap();
    });
    let dir = TempDir::new().unwrap();
    let mut proxy = ProxyProcess::start(backend_addr, &dir.path().join("j"), "batch").unwrap();

    let mut c = TcpStream::connect(proxy.listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = pattern(100_000);
    c.write_all(&request).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert_eq!(answer.len(), ANSWER_LEN);
    assert_eq!(answer, pattern(ANSWER_LEN));
    assert_eq!(
        got_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        request
    );
    drop(c);
    proxy.stop();

    let entries = read_journal(&dir.path().join("j"));
    assert_contiguous(&entries);
    let conns = connections(&entries);
    let conn = conns.values().next().unwrap();
    assert_eq!(conn.data, request);
    let kinds: Vec<_> = conn.records.iter().map(|r| r.kind_name()).collect();
    assert_eq!(kinds.first(), Some(&"opened"));
    // The answer came after the client's FIN: its segment is journaled
    // with the close (answer digests are on by default).
    assert_eq!(
        &kinds[kinds.len() - 3..],
        &["half_closed", "answer", "closed"]
    );
    let answer = &conn.records[kinds.len() - 2];
    assert!(
        matches!(answer, Record::Answer { offset: 0, len, data, .. } if *len == ANSWER_LEN as u64 && data.is_empty()),
        "{answer:?}"
    );
    assert!(
        matches!(conn.records.last(), Some(Record::Closed { resp_total, .. }) if *resp_total == ANSWER_LEN as u64)
    );
}

#[test]
fn service_half_close_still_receives_the_client_input() {
    // Backend: greet, shut its write side, then read the client to EOF.
    let backend = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (got_tx, got_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"hello, then silence").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut input = Vec::new();
        s.read_to_end(&mut input).unwrap();
        got_tx.send(input).unwrap();
    });
    let dir = TempDir::new().unwrap();
    let mut proxy = ProxyProcess::start(backend_addr, &dir.path().join("j"), "batch").unwrap();

    let mut c = TcpStream::connect(proxy.listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = Vec::new();
    c.read_to_end(&mut greeting).unwrap();
    assert_eq!(greeting, b"hello, then silence");
    let late = pattern(300_000);
    c.write_all(&late).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(got_rx.recv_timeout(Duration::from_secs(10)).unwrap(), late);
    drop(c);
    proxy.stop();
    let conns = connections(&read_journal(&dir.path().join("j")));
    assert_eq!(conns.values().next().unwrap().data, late);
}
