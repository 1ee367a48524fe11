//! Faulted migrations between two real node agents (the binary) on
//! loopback, under client load: a peer with the wrong secret, a destination
//! killed (`kill -9`) mid-migration, and a divergent replay (the
//! destination restores a stale snapshot). Each: `replaymig migrate` fails
//! with a clear error and a non-zero exit, A keeps serving without a client
//! error, every acknowledged write is on A, and B does not own the service.

mod common;

use common::replaymig;
use nix::sys::signal::Signal;
use replaymig_testkit::{
    wait_for_listen, write_node_config, ChildGuard, NodePorts, RedisServer, Reply, RespClient,
};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn start_node(dir: &Path, name: &str, config: &Path, admin: u16) -> ChildGuard {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = replaymig()
        .args(["node", "--config"])
        .arg(config)
        .env("REPLAYMIG_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = ChildGuard::new(format!("node {name}"), child);
    wait_for_listen(admin, Duration::from_secs(30)).unwrap();
    guard
}

/// A sequential INCR client on `key` until stopped; returns acks.
fn counter(
    addr: SocketAddr,
    key: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<i64> {
    std::thread::spawn(move || {
        let mut c = RespClient::connect(addr).unwrap();
        let mut acked = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let r = c
                .cmd(&["INCR", key])
                .unwrap_or_else(|e| panic!("client error: {e}"));
            assert_eq!(r, Reply::Int(acked + 1));
            acked += 1;
        }
        acked
    })
}

struct Pair {
    dir: TempDir,
    pa: NodePorts,
    pb: NodePorts,
    /// Node a's process, killed with the pair.
    _a: ChildGuard,
    b: ChildGuard,
}

impl Pair {
    fn start(b_secret: Option<&str>, b_restore: Option<&str>) -> Pair {
        let dir = TempDir::new().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "fault-test-secret-0123456789abcdef",
        )
        .unwrap();
        let b_secret_file = b_secret.map(|s| {
            let p = dir.path().join("b-secret");
            std::fs::write(&p, s).unwrap();
            p
        });
        let (pa, pb) = (NodePorts::loopback(), NodePorts::loopback());
        let ca = write_node_config(dir.path(), "a", &pa, ("b", &pb), "a", None, None);
        let cb = write_node_config(
            dir.path(),
            "b",
            &pb,
            ("a", &pa),
            "a",
            b_secret_file.as_deref(),
            b_restore,
        );
        let a = start_node(dir.path(), "a", &ca, pa.admin);
        let b = start_node(dir.path(), "b", &cb, pb.admin);
        Pair {
            dir,
            pa,
            pb,
            _a: a,
            b,
        }
    }

    fn listen_a(&self) -> SocketAddr {
        (self.pa.ip, self.pa.listen).into()
    }

    fn migrate(&self) -> std::process::Child {
        replaymig()
            .args([
                "migrate",
                "redis",
                "--to",
                "b",
                "--admin",
                &format!("127.0.0.1:{}", self.pa.admin),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn owner(&self, admin: u16) -> String {
        let out = replaymig()
            .args(["status", "--json", "--admin", &format!("127.0.0.1:{admin}")])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["owner"].as_str().unwrap().to_string()
    }

    /// A still owns and serves, with every acknowledged INCR.
    fn assert_a_kept_everything(&self, acked: i64) {
        assert_eq!(self.owner(self.pa.admin), "a");
        let mut direct = RespClient::connect((self.pa.ip, self.pa.backend).into()).unwrap();
        assert_eq!(
            direct.cmd(&["GET", "n"]).unwrap(),
            Reply::Bulk(acked.to_string().into_bytes())
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Node processes go with their guards; a redis that a killed node
        // left behind is stopped by its port.
        for port in [self.pa.backend, self.pb.backend] {
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "SHUTDOWN", "NOSAVE"])
                .output();
        }
        let _ = &self.dir;
    }
}

fn failed_migration(mut child: std::process::Child) -> String {
    let out = child.wait_with_output_timeout();
    assert!(!out.status.success(), "the migration must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

trait WaitTimeout {
    fn wait_with_output_timeout(&mut self) -> std::process::Output;
}

impl WaitTimeout for std::process::Child {
    fn wait_with_output_timeout(&mut self) -> std::process::Output {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "migrate did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut stderr = String::new();
        if let Some(mut e) = self.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut stderr).unwrap();
        }
        std::process::Output {
            status: self.wait().unwrap(),
            stdout: Vec::new(),
            stderr: stderr.into_bytes(),
        }
    }
}

#[test]
fn a_peer_with_the_wrong_secret_gets_nothing() {
    let mut pair = Pair::start(Some("a-completely-different-secret-value"), None);
    let stop = Arc::new(AtomicBool::new(false));
    let client = counter(pair.listen_a(), "n", stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let err = failed_migration(pair.migrate());
    assert!(
        err.contains("authentication") || err.contains("refused"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let acked = client.join().unwrap();
    pair.assert_a_kept_everything(acked);
    assert_eq!(pair.owner(pair.pb.admin), "a");
    pair.b.terminate(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_destination_killed_mid_migration_leaves_a_serving() {
    // B restores slowly, so A is still catching up when B dies.
    let slow = r#"["sleep 2", "cp {snapshot_dir}/dump.rdb {data_dir}/dump.rdb"]"#;
    let pair = Pair::start(None, Some(slow));
    let stop = Arc::new(AtomicBool::new(false));
    let client = counter(pair.listen_a(), "n", stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let mut migrate = pair.migrate();
    let mut phases = BufReader::new(migrate.stderr.take().unwrap()).lines();
    for line in phases.by_ref() {
        if line.unwrap().contains("catching_up") {
            break;
        }
    }
    pair.b.signal(Signal::SIGKILL).unwrap();
    let rest: Vec<String> = phases.map_while(Result::ok).collect();
    let status = migrate.wait().unwrap();
    assert!(!status.success());
    assert!(
        rest.iter().any(|l| l.contains("migration failed")),
        "{rest:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let acked = client.join().unwrap();
    pair.assert_a_kept_everything(acked);
}

#[test]
fn a_divergent_replay_aborts_and_a_keeps_ownership() {
    // B "restores" a stale snapshot: an empty dataset.
    let stale_dir = TempDir::new().unwrap();
    let stale = stale_dir.path().join("stale.rdb");
    std::fs::copy(RedisServer::start().unwrap().save().unwrap(), &stale).unwrap();
    let restore = format!(r#"["cp {} {{data_dir}}/dump.rdb"]"#, stale.display());
    let pair = Pair::start(None, Some(&restore));
    let stop = Arc::new(AtomicBool::new(false));
    let client = counter(pair.listen_a(), "n", stop.clone());
    // Let the counter reach 4 digits so replayed answers are shorter.
    std::thread::sleep(Duration::from_millis(1500));
    let err = failed_migration(pair.migrate());
    assert!(err.contains("diverged"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let acked = client.join().unwrap();
    assert!(acked > 1000);
    pair.assert_a_kept_everything(acked);
    assert_eq!(pair.owner(pair.pb.admin), "a", "no split ownership");
    assert!(
        std::net::TcpStream::connect((pair.pb.ip, pair.pb.backend)).is_err(),
        "B discarded its restored copy"
    );
}

#[test]
fn a_corrupt_snapshot_chunk_is_refused_and_nobody_takes_ownership() {
    use replaymig_peer::{Authenticator, Message, PeerLink, Secret};
    let pair = Pair::start(None, None);
    let stop = Arc::new(AtomicBool::new(false));
    let client = counter(pair.listen_a(), "n", stop.clone());
    // Play a source that sends B a damaged chunk (the peer secret is known
    // to this test as to any node).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = rt.block_on(async {
        let secret = Secret::from_file(&pair.dir.path().join("secret")).unwrap();
        let peer: SocketAddr = (pair.pb.ip, pair.pb.peer).into();
        let mut link = PeerLink::connect(peer, &Authenticator::new("a", secret))
            .await
            .unwrap();
        link.send(Message::MigrateBegin {
            service: "redis".into(),
            epoch: 2,
        })
        .await
        .unwrap();
        assert_eq!(link.recv().await.unwrap(), Message::MigrateReady);
        let manifest = serde_json::json!({
            "service": "redis", "driver": "exec", "lsn": 1,
            "files": [{"name": "dump.rdb", "size": 4, "sha256": "00"}]
        });
        link.send(Message::SnapshotBegin {
            manifest: serde_json::to_vec(&manifest).unwrap(),
        })
        .await
        .unwrap();
        link.send(Message::SnapshotChunk {
            file: 0,
            offset: 0,
            compressed: false,
            data: b"RDB!".to_vec(),
            crc32: 7,
        })
        .await
        .unwrap();
        link.recv_timeout(Duration::from_secs(10)).await.unwrap()
    });
    match answer {
        Message::MigrateAbort { reason } => assert!(reason.contains("corrupt"), "{reason}"),
        other => panic!("expected an abort, got {other:?}"),
    }
    assert_eq!(pair.owner(pair.pb.admin), "a", "B did not take the service");
    assert!(
        std::net::TcpStream::connect((pair.pb.ip, pair.pb.backend)).is_err(),
        "B restored nothing"
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let acked = client.join().unwrap();
    pair.assert_a_kept_everything(acked);
}
