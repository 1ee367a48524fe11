//! The criu driver with a real redis-server on the two-node testbed: redis
//! runs as the init of its own PID namespace on node A; `criu dump
//! --leave-running` there, restore on node B: B's redis holds A's data at
//! the dump, while A's keeps running on its own. Needs root and CRIU
//! (tools/setup.sh installs it); skips with the reason otherwise.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use replaymig_snapshot::{CriuDriver, Driver, Manifest, Placeholders};
use replaymig_testkit::{in_netns, is_root, ChildGuard, Reply, RespClient, Testbed};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const CRIU: &str = "/opt/replaymig/criu/bin/criu";

/// Kills a PID on drop (the restored redis, which is not our child).
struct KillOnDrop(Option<u32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn connect_in(netns: &str, addr: SocketAddr) -> RespClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ns = netns.to_string();
        match in_netns(&ns, move || RespClient::connect(addr)).unwrap() {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("redis in {netns} never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The PID-namespace init (redis) under `unshare --fork`.
fn child_of(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children.split_whitespace().next() {
            return c.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "unshare did not fork");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn criu_moves_a_running_redis_to_the_other_node_with_its_data() {
    if !is_root() {
        eprintln!("SKIP criu: needs root");
        return;
    }
    if !std::path::Path::new(CRIU).exists() {
        eprintln!("SKIP criu: {CRIU} missing (run tools/install-criu.sh)");
        return;
    }
    let check = Command::new(CRIU).arg("check").output().unwrap();
    if !String::from_utf8_lossy(&check.stdout).contains("Looks good") {
        eprintln!(
            "SKIP criu: `criu check` fails on this kernel: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        return;
    }
    let tb = Testbed::up(&format!("rmc{}", std::process::id() % 100_000), None).unwrap();
    let (ns_a, ns_b) = (tb.netns('a'), tb.netns('b'));
    let data = TempDir::new().unwrap();
    let port = 6390;
    let unshare = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns_a}"))
        .args(["unshare", "--pid", "--fork", "setsid", "redis-server"])
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
        ])
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let unshare = ChildGuard::new("unshare redis", unshare);
    let redis_pid = child_of(unshare.pid());
    let _original = KillOnDrop(Some(redis_pid));
    let addr_a = SocketAddr::new(tb.addr('a'), port);
    let addr_b = SocketAddr::new(tb.addr('b'), port);

    let mut a = connect_in(&ns_a, addr_a);
    for i in 0..500 {
        a.cmd(&["RPUSH", "list", &i.to_string()]).unwrap();
    }
    assert_eq!(a.cmd(&["INCRBY", "n", "41"]).unwrap(), Reply::Int(41));

    let driver = Driver::Criu(CriuDriver {
        criu: CRIU.into(),
        netns: Some(ns_a.clone()),
        timeout_secs: 60,
        freeze_timeout_secs: 2,
        carry_connections: false,
        stream: true,
    });
    let images = TempDir::new().unwrap();
    let mut vars = Placeholders::new();
    vars.insert("pid".into(), redis_pid.to_string());
    let started = Instant::now();
    driver.dump(images.path(), &vars).await.unwrap();
    let dump_time = started.elapsed();
    let manifest = Manifest::build(images.path(), "redis", driver.name(), 7).unwrap();
    assert!(manifest.total_bytes() > 0);

    // A keeps running after the dump (--leave-running) and moves on.
    assert_eq!(a.cmd(&["INCR", "n"]).unwrap(), Reply::Int(42));

    let started = Instant::now();
    let restored = driver
        .restore(images.path(), &Placeholders::new(), Some(&ns_b))
        .await
        .unwrap();
    let restore_time = started.elapsed();
    let _restored = KillOnDrop(restored.pid);
    assert!(restored.pid.is_some(), "criu reports the restored PID");
    let mut b = connect_in(&ns_b, addr_b);
    assert_eq!(
        b.cmd(&["GET", "n"]).unwrap(),
        Reply::Bulk(b"41".to_vec()),
        "B has the state at the dump"
    );
    assert_eq!(b.cmd(&["LLEN", "list"]).unwrap(), Reply::Int(500));
    assert_eq!(b.cmd(&["INCR", "n"]).unwrap(), Reply::Int(42));
    assert_eq!(
        a.cmd(&["GET", "n"]).unwrap(),
        Reply::Bulk(b"42".to_vec()),
        "A runs on independently"
    );
    eprintln!(
        "criu: dump {dump_time:?}, restore {restore_time:?}, images {} bytes",
        manifest.total_bytes()
    );
}
