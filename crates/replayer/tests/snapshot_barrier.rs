//! The quiesce barrier under continuous load: a snapshot (redis `SAVE`)
//! taken at the barrier's LSN s, restored into a fresh redis and replayed
//! from s+1, ends with every acknowledged write exactly once — counters equal
//! the clients' tallies, lists hold exactly the pushed values in order — and
//! the same dataset as the original. And a barrier that cannot get quiet
//! fails within its bound while the service keeps serving.

use replaymig_journal::Lsn;
use replaymig_proxy::{QuiesceError, QuiesceOptions};
use replaymig_replayer::{replay_all, ReplayOptions};
use replaymig_testkit::{InProcessProxy, RedisServer, Reply, RespClient};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// One client's bounded load: INCR its counter and RPUSH to its list,
/// pipelined for odd clients; returns (acknowledged INCRs, pushed values).
fn client_load(listen: SocketAddr, i: usize, stop: Arc<AtomicBool>) -> (i64, Vec<String>) {
    let mut c = RespClient::connect(listen).unwrap();
    let (ctr, list) = (format!("ctr:{i}"), format!("list:{i}"));
    let mut acked = 0i64;
    let mut pushed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stop.load(Ordering::Relaxed) && acked < 5_000 && Instant::now() < deadline {
        let value = format!("v{acked}");
        let cmds = vec![
            vec!["INCR", ctr.as_str()],
            vec!["RPUSH", list.as_str(), value.as_str()],
        ];
        let replies = if i % 2 == 1 {
            c.pipeline(&cmds).unwrap()
        } else {
            cmds.iter().map(|cmd| c.cmd(cmd).unwrap()).collect()
        };
        assert_eq!(replies[0], Reply::Int(acked + 1));
        assert_eq!(replies[1], Reply::Int(acked + 1));
        acked += 1;
        pushed.push(value);
    }
    (acked, pushed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_load_plus_replay_keeps_every_acknowledged_write() {
    const CLIENTS: usize = 8;
    let original = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let proxy = InProcessProxy::start(original.addr, dir.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (listen, stop) = (proxy.listen, stop.clone());
            std::thread::spawn(move || client_load(listen, i, stop))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(400)).await;
    let hold = proxy
        .control
        .quiesce(QuiesceOptions::default())
        .await
        .unwrap();
    let s: Lsn = hold.lsn;
    let snapshot = TempDir::new().unwrap();
    let rdb = snapshot.path().join("at-s.rdb");
    std::fs::copy(original.save().unwrap(), &rdb).unwrap();
    let held = hold.held_for();
    assert_eq!(
        hold.mark.delivered.len(),
        CLIENTS,
        "every client was connected at s"
    );
    drop(hold);
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    proxy.wait_all_closed().await;
    let journal = proxy.stop().await;
    eprintln!("held client input for {held:?} at s = {s}");

    let restored = RedisServer::start_from_rdb(&rdb).unwrap();
    let at_s = restored.get_int("ctr:0").unwrap();
    assert!(
        at_s > 0 && at_s < tallies[0].0,
        "the snapshot is mid-load ({at_s} of {})",
        tallies[0].0
    );
    let after_s: Vec<_> = journal
        .read_range(s + 1, Lsn::MAX)
        .map(|e| e.unwrap())
        .collect();
    let report = replay_all(after_s, ReplayOptions::new(restored.addr))
        .await
        .unwrap();
    assert!(report.divergences.is_empty(), "{:?}", report.divergences);

    for (i, (acked, pushed)) in tallies.iter().enumerate() {
        assert_eq!(
            restored.get_int(&format!("ctr:{i}")).unwrap(),
            *acked,
            "ctr:{i}"
        );
        let items = restored
            .client()
            .unwrap()
            .lrange(&format!("list:{i}"))
            .unwrap();
        assert_eq!(
            &items, pushed,
            "list:{i} holds every pushed value once, in order"
        );
    }
    assert_eq!(restored.dump_all().unwrap(), original.dump_all().unwrap());
    journal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_goes_quiet_fails_the_barrier_in_time_and_keeps_serving() {
    // A service that streams answers without pause and records its input.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let got = received.clone();
    std::thread::spawn(move || {
        let (s, _) = backend.accept().unwrap();
        let mut reader = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut writer = s;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && writer.write_all(b"tick\n").is_ok() {
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let dir = TempDir::new().unwrap();
    let proxy = InProcessProxy::start(backend_addr, dir.path()).await;
    let listen = proxy.listen;
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(listen).unwrap();
        let mut drain = c.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
        });
        c.write_all(b"before").unwrap();
        std::thread::sleep(Duration::from_millis(800));
        c.write_all(b"+after").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let options = QuiesceOptions {
        idle: Duration::from_millis(20),
        timeout: Duration::from_millis(300),
        ..QuiesceOptions::default()
    };
    let err = proxy
        .control
        .quiesce(options)
        .await
        .err()
        .expect("never quiet");
    assert!(matches!(err, QuiesceError::NotQuiet(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "bounded");
    client.join().unwrap();
    assert_eq!(
        received.lock().unwrap().as_slice(),
        b"before+after",
        "forwarding resumed"
    );
    drop(proxy);
}

/// Reads until the peer closes (or resets), with a bound; `true` if it did.
fn sees_close(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_barrier_closes_stuck_and_used_connections_and_keeps_the_others() {
    let redis = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let proxy = InProcessProxy::start(redis.addr, dir.path()).await;
    let listen = proxy.listen;
    // In use: SELECT 3 answered; its state would be lost at a destination.
    let mut selected = RespClient::connect(listen).unwrap();
    assert_eq!(
        selected.cmd(&["SELECT", "3"]).unwrap(),
        Reply::Status("OK".into())
    );
    // Unanswered: half of a SET, the rest never sent.
    let mut half = TcpStream::connect(listen).unwrap();
    half.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$10\r\nonly")
        .unwrap();
    // Unanswered: blocked until somebody pushes.
    let mut blocked = RespClient::connect(listen).unwrap();
    blocked
        .send(&replaymig_testkit::encode_command(&[
            "BLPOP", "nothing", "0",
        ]))
        .unwrap();
    // Idle: connected, never sent: continues.
    let mut idle = RespClient::connect(listen).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let options = QuiesceOptions {
        idle: Duration::from_millis(20),
        timeout: Duration::from_millis(1000),
        close: replaymig_proxy::CloseAtBarrier {
            unanswered: true,
            in_use: true,
        },
        carried: false,
    };
    let held = proxy
        .control
        .quiesce(options)
        .await
        .expect("quiet once closed");
    assert_eq!(
        held.closed,
        replaymig_proxy::ClosedAtBarrier {
            unanswered: 2,
            in_use: 1
        }
    );
    // Sent while held, on a closed connection: never journaled, never run.
    let _ = selected.send(&replaymig_testkit::encode_command(&[
        "SET", "during", "hold",
    ]));
    let marker_lsn = held.marker_lsn;
    drop(held);

    let mut selected = selected.stream().try_clone().unwrap();
    let mut blocked = blocked.stream().try_clone().unwrap();
    for (what, c) in [
        ("the SELECTed connection", &mut selected),
        ("the half-sent SET", &mut half),
        ("the blocked BLPOP", &mut blocked),
    ] {
        assert!(sees_close(c), "{what} was not closed for its client");
    }
    assert_eq!(
        idle.cmd(&["PING"]).unwrap(),
        Reply::Status("PONG".into()),
        "the idle connection continues"
    );
    let mut check = RespClient::connect(redis.addr).unwrap();
    assert_eq!(
        check.cmd(&["EXISTS", "half"]).unwrap(),
        Reply::Int(0),
        "the half-sent SET was dropped"
    );
    assert_eq!(
        check.cmd(&["SELECT", "3"]).unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(
        check.cmd(&["EXISTS", "during"]).unwrap(),
        Reply::Int(0),
        "input during the hold never ran"
    );

    // Every closed connection's `closed` record precedes the marker; nothing
    // of theirs follows it.
    let entries: Vec<_> = proxy
        .journal
        .read_range(1, Lsn::MAX)
        .map(|e| e.unwrap())
        .collect();
    let closed_before: Vec<u64> = entries
        .iter()
        .filter(|e| e.lsn < marker_lsn)
        .filter_map(|e| match e.record {
            replaymig_journal::Record::Closed { conn, .. } => Some(conn),
            _ => None,
        })
        .collect();
    assert_eq!(
        closed_before.len(),
        3,
        "closed records before the marker: {closed_before:?}"
    );
    let after: Vec<_> = entries
        .iter()
        .filter(|e| e.lsn > marker_lsn)
        .filter(|e| {
            e.record
                .conn(e.lsn)
                .is_some_and(|c| closed_before.contains(&c))
        })
        .map(|e| format!("{}: {}", e.lsn, e.record.kind_name()))
        .collect();
    assert!(
        after.is_empty(),
        "records of closed connections after the marker: {after:?}"
    );
    drop(proxy);
}
