//! A replay migration of a real redis between two node agents on loopback
//! (exec driver: SAVE + copy the RDB, restore = start redis on it), under
//! continuous load from clients connected to A before the migration and
//! one connected to B during it. Afterwards: every acknowledged command is
//! in B's redis exactly once, no client saw an error, B owns the service
//! under epoch 2, A's redis is stopped, and B's journal continues A's LSNs.

use replaymig_journal::{Journal, JournalOptions, Lsn, OpenMode};
use replaymig_node::{Node, NodeConfig};
use replaymig_testkit::{write_node_config, NodePorts, Reply, RespClient};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn config(
    name: &str,
    me: &NodePorts,
    other: (&str, &NodePorts),
    dir: &Path,
    owner: &str,
) -> NodeConfig {
    NodeConfig::load(&write_node_config(dir, name, me, other, owner, None, None)).unwrap()
}

/// A client doing INCR + RPUSH on its own keys until told to stop.
fn client(
    addr: SocketAddr,
    key: String,
    pipelined: bool,
    stop: Arc<AtomicBool>,
) -> (i64, Vec<String>) {
    let mut c = RespClient::connect(addr).unwrap();
    let (ctr, list) = (format!("{key}:ctr"), format!("{key}:list"));
    let mut acked = 0i64;
    let mut pushed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && acked < 20_000 && Instant::now() < deadline {
        let value = format!("v{acked}");
        let cmds = vec![
            vec!["INCR", ctr.as_str()],
            vec!["RPUSH", list.as_str(), value.as_str()],
        ];
        let replies = if pipelined {
            c.pipeline(&cmds).unwrap_or_else(|e| panic!("{key}: {e}"))
        } else {
            cmds.iter()
                .map(|cmd| c.cmd(cmd).unwrap_or_else(|e| panic!("{key}: {e}")))
                .collect()
        };
        assert_eq!(replies[0], Reply::Int(acked + 1), "{key}");
        assert_eq!(replies[1], Reply::Int(acked + 1), "{key}");
        acked += 1;
        pushed.push(value);
    }
    (acked, pushed)
}

async fn read_all(dir: &Path) -> Vec<replaymig_journal::Entry> {
    let j = Journal::open(
        dir,
        JournalOptions {
            mode: OpenMode::MustExist,
            ..Default::default()
        },
    )
    .unwrap();
    let all = j.read_range(1, Lsn::MAX).map(|e| e.unwrap()).collect();
    j.close().await.unwrap();
    all
}

/// Nodes a (owner) and b on loopback, with logs on the test's output.
async fn start_pair() -> (TempDir, NodePorts, NodePorts, Node, Node) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let dir = TempDir::new().unwrap();
    std::fs::write(
        dir.path().join("secret"),
        "loopback-migration-secret-0123456789",
    )
    .unwrap();
    let (pa, pb) = (NodePorts::loopback(), NodePorts::loopback());
    let node_a = Node::start(config("a", &pa, ("b", &pb), dir.path(), "a"))
        .await
        .unwrap();
    let node_b = Node::start(config("b", &pb, ("a", &pa), dir.path(), "a"))
        .await
        .unwrap();
    (dir, pa, pb, node_a, node_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_moves_from_a_to_b_under_load_without_losing_a_write() {
    let (dir, pa, pb, node_a, node_b) = start_pair().await;
    let listen_a: SocketAddr = ([127, 0, 0, 1], pa.listen).into();
    let listen_b: SocketAddr = ([127, 0, 0, 1], pb.listen).into();

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..8 {
        let stop = stop.clone();
        clients.push(std::thread::spawn(move || {
            client(listen_a, format!("a{i}"), i % 2 == 1, stop)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A client of B before the hand-over: tunneled to A, then to B.
    {
        let stop = stop.clone();
        clients.push(std::thread::spawn(move || {
            client(listen_b, "b0".into(), false, stop)
        }));
    }
    // An idle client of A: one INCR before the migration, nothing during
    // it, one after — its connection must survive the hand-over.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let idle = std::thread::spawn(move || {
        let mut c = RespClient::connect(listen_a).unwrap();
        let first = c.cmd(&["INCR", "idle"]).unwrap();
        wait.recv().unwrap();
        (first, c.cmd(&["INCR", "idle"]).unwrap())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = node_a.migrate("redis", "b").await.unwrap();
    eprintln!("{report}");
    go.send(()).unwrap();
    let idle = tokio::task::spawn_blocking(move || idle.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        idle,
        (Reply::Int(1), Reply::Int(2)),
        "the idle client kept its connection"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A client connecting to A after the hand-over is tunneled to B.
    let late = {
        let stop = stop.clone();
        std::thread::spawn(move || client(listen_a, "late".into(), true, stop))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tallies: Vec<(String, (i64, Vec<String>))> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            (
                if i < 8 { format!("a{i}") } else { "b0".into() },
                c.join().unwrap(),
            )
        })
        .collect();
    tallies.push(("late".into(), late.join().unwrap()));

    let status_a = node_a.status().await;
    let status_b = node_b.status().await;
    assert_eq!(status_a[0].owner, "b");
    assert_eq!(status_b[0].owner, "b");
    assert_eq!(status_b[0].epoch, 2);
    assert!(report.snapshot_lsn < report.handover_lsn);
    // The report's accounting adds up: jitter + interruption is the time
    // to the commit, within the total; control traffic was seen.
    assert!(report.jitter_seconds > 0.0);
    assert!(report.jitter_seconds + report.interruption_seconds <= report.total_seconds);
    assert!(report.control_bytes > 0 && report.log_bytes > 0 && report.snapshot_bytes > 0);
    assert!(report.destination_restore_seconds > 0.0 && report.destination_replay_seconds > 0.0);
    assert_eq!(
        report.connections_handed_over, 9,
        "8 of A's clients + the idle one"
    );
    assert_eq!(
        report.connections_redirected, 1,
        "B's tunneled client: B dials the new owner (itself) for it, A leaves its path"
    );

    // B's redis holds every acknowledged write exactly once.
    let backend_b: SocketAddr = ([127, 0, 0, 1], pb.backend).into();
    let mut b = RespClient::connect(backend_b).unwrap();
    for (key, (acked, pushed)) in &tallies {
        assert!(*acked > 0, "{key} made progress");
        let ctr = b.cmd(&["GET", &format!("{key}:ctr")]).unwrap();
        assert_eq!(
            ctr,
            Reply::Bulk(acked.to_string().into_bytes()),
            "{key}:ctr"
        );
        assert_eq!(
            &b.lrange(&format!("{key}:list")).unwrap(),
            pushed,
            "{key}:list"
        );
    }
    // A's redis is stopped.
    let backend_a: SocketAddr = ([127, 0, 0, 1], pa.backend).into();
    assert!(
        std::net::TcpStream::connect(backend_a).is_err(),
        "A's service is stopped"
    );

    drop(b);
    node_a.shutdown().await;
    node_b.shutdown().await;
    // LSNs: A's journal 1..=h, B's from s+1 on, the same records where they overlap.
    let ja = read_all(&dir.path().join("a-journal")).await;
    let jb = read_all(&dir.path().join("b-journal")).await;
    for (i, e) in ja.iter().enumerate() {
        assert_eq!(e.lsn, i as u64 + 1);
    }
    assert_eq!(jb.first().unwrap().lsn, report.snapshot_lsn + 1);
    for w in jb.windows(2) {
        assert_eq!(w[1].lsn, w[0].lsn + 1, "B's LSNs are contiguous");
    }
    let overlap: Vec<_> = ja.iter().filter(|e| e.lsn > report.snapshot_lsn).collect();
    for e in &overlap {
        let other = &jb[(e.lsn - report.snapshot_lsn - 1) as usize];
        assert_eq!(&other.record, &e.record, "LSN {}", e.lsn);
    }
    assert!(
        jb.last().unwrap().lsn > report.handover_lsn,
        "B journaled after the hand-over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_and_forth_a_to_b_to_a_keeps_every_write() {
    let (_dir, pa, pb, node_a, node_b) = start_pair().await;
    let listen_a: SocketAddr = ([127, 0, 0, 1], pa.listen).into();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || client(listen_a, format!("k{i}"), i % 2 == 0, stop))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let there = node_a.migrate("redis", "b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = node_b.migrate("redis", "a").await.unwrap();
    assert_eq!(back.epoch, 3);
    assert!(
        back.snapshot_lsn > there.handover_lsn,
        "B's journal continued A's LSNs"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(node_a.status().await[0].owner, "a");
    let mut a = RespClient::connect(([127, 0, 0, 1], pa.backend).into()).unwrap();
    for (i, (acked, pushed)) in tallies.iter().enumerate() {
        assert_eq!(
            a.cmd(&["GET", &format!("k{i}:ctr")]).unwrap(),
            Reply::Bulk(acked.to_string().into_bytes())
        );
        assert_eq!(
            a.cmd(&["LLEN", &format!("k{i}:list")]).unwrap(),
            Reply::Int(pushed.len() as i64)
        );
    }
    assert!(
        std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], pb.backend))).is_err(),
        "B's copy is stopped"
    );
    drop(a);
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterative_migration_pre_copies_in_rounds_and_keeps_every_write() {
    let (_dir, pa, pb, node_a, node_b) = start_pair().await;
    let listen_a: SocketAddr = ([127, 0, 0, 1], pa.listen).into();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || client(listen_a, format!("i{i}"), i % 2 == 0, stop))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The clients keep dirtying the dataset: a threshold of 1 byte/s is
    // never reached, so every allowed round runs.
    let method = replaymig_node::Method::Iterative {
        dirty_threshold_bytes_per_second: 1,
        max_iterations: 3,
    };
    let report = node_a.migrate_by("redis", "b", method).await.unwrap();
    eprintln!("{report}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    assert_eq!(report.method, "iterative");
    assert_eq!(report.iterations.len(), 3, "{:?}", report.iterations);
    assert!(report.iterations[1..]
        .iter()
        .all(|i| i.dirty_rate > 0.0 && i.dirty_bytes > 0));
    // Later rounds send deltas, not the whole dump again.
    assert!(report.iterations[0].dirty_bytes > 0);
    // One hold covers the final dump, its delta, the restore and the
    // hand-over; nothing was journaled during it but the snapshot marker
    // and, before it, the answer segments it cut (one per client at most).
    assert!(report.interruption_seconds >= report.handover_hold_seconds);
    let during = report.handover_lsn - report.snapshot_lsn;
    assert!((1..=1 + tallies.len() as u64).contains(&during), "{during}");
    assert_eq!(node_b.status().await[0].owner, "b");

    let backend_b: SocketAddr = ([127, 0, 0, 1], pb.backend).into();
    let mut b = RespClient::connect(backend_b).unwrap();
    for (i, (acked, pushed)) in tallies.iter().enumerate() {
        assert!(*acked > 0, "i{i} made progress");
        assert_eq!(
            b.cmd(&["GET", &format!("i{i}:ctr")]).unwrap(),
            Reply::Bulk(acked.to_string().into_bytes()),
            "i{i}:ctr"
        );
        assert_eq!(
            &b.lrange(&format!("i{i}:list")).unwrap(),
            pushed,
            "i{i}:list"
        );
    }
    drop(b);
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// A client of B that opens a fresh connection for every command: some of
/// its connections reach A's proxy (tunneled) while the hand-over holds
/// input; each must follow the service to B, never end mid-request.
fn churning_client(addr: SocketAddr, key: String, stop: Arc<AtomicBool>) -> Result<i64, String> {
    let mut acked = 0i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut c = RespClient::connect(addr).map_err(|e| format!("connect: {e}"))?;
        match c.cmd(&["INCR", &key]) {
            Ok(Reply::Int(n)) if n == acked + 1 => acked += 1,
            Ok(other) => return Err(format!("INCR #{} answered {other:?}", acked + 1)),
            Err(e) => return Err(format!("INCR #{} on a fresh connection: {e}", acked + 1)),
        }
    }
    Ok(acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connecting_to_b_during_the_hand_over_follow_the_service() {
    let (_dir, pa, pb, node_a, node_b) = start_pair().await;
    let listen_a: SocketAddr = ([127, 0, 0, 1], pa.listen).into();
    let listen_b: SocketAddr = ([127, 0, 0, 1], pb.listen).into();
    let stop = Arc::new(AtomicBool::new(false));
    // Load on A so the migration has a tail to hand over.
    let loaders: Vec<_> = (0..2)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || client(listen_a, format!("l{i}"), false, stop))
        })
        .collect();
    let churners: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || churning_client(listen_b, format!("churn{i}"), stop))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = node_a.migrate("redis", "b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let backend_b: SocketAddr = ([127, 0, 0, 1], pb.backend).into();
    let mut b = RespClient::connect(backend_b).unwrap();
    for (i, c) in churners.into_iter().enumerate() {
        let acked = c
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("churn{i}: {e}"));
        assert!(acked > 0, "churn{i} made progress");
        assert_eq!(
            b.cmd(&["GET", &format!("churn{i}")]).unwrap(),
            Reply::Bulk(acked.to_string().into_bytes()),
            "churn{i}: every acknowledged INCR on B"
        );
    }
    assert!(report.handover_hold_seconds > 0.0);
    node_a.shutdown().await;
    node_b.shutdown().await;
}
