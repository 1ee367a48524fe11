//! The server and the client against each other, in-process, over TCP.

use replaymig_workload::protocol::{encode_request, read_full};
use replaymig_workload::{client, Answer, ClientConfig, Server, ServiceConfig, ServiceState};
use replaymig_workload::{ANSWER_LEN, MAX_FRAME};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn config() -> ServiceConfig {
    ServiceConfig {
        model_bytes: 1 << 20,
        cpu_us: 50,
        dirty_bytes: 32 << 10,
        working_bytes: 0,
        seed: 3,
    }
}

/// Starts a server on an ephemeral port in a background thread (it lives
/// until the test process ends).
fn start() -> SocketAddr {
    let server = Server::bind("127.0.0.1:0", ServiceState::new(&config())).unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || server.serve());
    addr
}

fn client_config(addr: SocketAddr) -> ClientConfig {
    ClientConfig {
        addr: addr.to_string(),
        interval: Duration::from_millis(1),
        requests: 20,
        request_bytes: 4 << 10,
        seed: 9,
        connections: 2,
        timeout: Duration::from_secs(10),
    }
}

#[test]
fn two_connections_all_answers_check_out() {
    let addr = start();
    let summary = client::run(&client_config(addr));
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(summary.requests, 40);
    assert_eq!(summary.max_counter, 40);
    let line = summary.to_string();
    assert!(
        line.starts_with("requests=40 errors=0 max_counter=40 "),
        "{line}"
    );
}

#[test]
fn answers_over_tcp_equal_a_local_replay() {
    // The same requests in the same order on a fresh state give the same
    // bytes as the server sent: what replay migration relies on.
    let addr = start();
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut local = ServiceState::new(&config());
    for i in 0..5u64 {
        let body = client::payload(1, 0, i, 1000);
        stream.write_all(&encode_request(&body)).unwrap();
        let mut answer = [0u8; ANSWER_LEN];
        assert_eq!(read_full(&mut stream, &mut answer).unwrap(), ANSWER_LEN);
        assert_eq!(answer, local.process(&body).to_bytes());
    }
}

#[test]
fn bad_frames_close_only_their_connection() {
    let addr = start();
    // Oversized length: closed without an answer.
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
        .unwrap();
    let mut rest = Vec::new();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(bad.read_to_end(&mut rest).unwrap(), 0);
    // Truncated frame, then the client goes away.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&[0, 0, 1, 0, 1, 2, 3]).unwrap();
    drop(half);
    // Garbage prefix shorter than a length.
    let mut tiny = TcpStream::connect(addr).unwrap();
    tiny.write_all(&[7]).unwrap();
    drop(tiny);
    // The server still answers, and no request was counted for them.
    let mut good = TcpStream::connect(addr).unwrap();
    good.write_all(&encode_request(b"ok")).unwrap();
    let mut answer = [0u8; ANSWER_LEN];
    assert_eq!(read_full(&mut good, &mut answer).unwrap(), ANSWER_LEN);
    assert_eq!(Answer::from_bytes(&answer).counter, 1);
}

#[test]
fn client_reports_connection_failure() {
    // Nothing listens there: the client fails, it does not retry.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let summary = client::run(&ClientConfig {
        connections: 1,
        ..client_config(addr)
    });
    assert_eq!(summary.errors.len(), 1);
    assert!(summary.to_string().contains("errors=1"));
}

#[test]
fn client_detects_a_wrong_answer() {
    // A fake service answering with the wrong digest.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut header = [0u8; 4];
        s.read_exact(&mut header).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        s.read_exact(&mut body).unwrap();
        let fake = Answer {
            counter: 1,
            request_digest: [0; 32],
            state_digest: [0; 32],
        };
        s.write_all(&fake.to_bytes()).unwrap();
    });
    let summary = client::run(&ClientConfig {
        connections: 1,
        ..client_config(addr)
    });
    assert_eq!(summary.requests, 0);
    assert!(
        summary.errors[0]
            .to_string()
            .contains("digest of another request"),
        "{:?}",
        summary.errors
    );
}
