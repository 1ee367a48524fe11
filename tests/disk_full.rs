//! A full disk under the journal: the client whose bytes could not be
//! journaled is closed (never forwarded), the error is logged and counted,
//! the proxy process stays up and never forwards unjournaled input, and
//! once there is space again the journal reopens with everything that was
//! acknowledged.
//!
//! Needs root (it mounts a small tmpfs under its temp dir); skips with a
//! printed reason otherwise.

mod common;

use common::*;
use replaymig_testkit::{encode_command, RedisServer, RespClient};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// A tmpfs mounted for the test; unmounted on drop, also on panic.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn set_cmd(i: usize, value: &str) -> Vec<u8> {
    encode_command(&["SET", &format!("big:{i:04}"), value])
}

#[test]
fn a_full_disk_refuses_unjournaled_input_and_loses_nothing_acknowledged() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP disk_full: needs root to mount a small tmpfs");
        return;
    }
    let dir = TempDir::new().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), "4m") else {
        eprintln!("SKIP disk_full: mount -t tmpfs failed (no mount privilege here)");
        return;
    };
    let journal = fs.0.join("journal");
    let redis = RedisServer::start().unwrap();
    let mut proxy = ProxyProcess::start(redis.addr, &journal, "batch").unwrap();

    let value = "v".repeat(60_000);
    let mut c = TcpStream::connect(proxy.listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut acked = 0;
    let mut reply = [0u8; 5];
    for i in 0..500 {
        if c.write_all(&set_cmd(i, &value)).is_err() {
            break;
        }
        match c.read(&mut reply) {
            Ok(5) if &reply == b"+OK\r\n" => acked += 1,
            _ => break,
        }
    }
    assert!(
        acked > 0 && acked < 500,
        "the disk filled up after {acked} writes"
    );
    let m = proxy.scrape();
    assert!(m.get(r#"replaymig_errors_total{service="default",kind="journal_append"}"#) >= 1.0);
    assert!(m.get(r#"replaymig_errors_total{service="default",kind="journal_write"}"#) >= 1.0);
    assert!(proxy.guard.is_running(), "the proxy process stays up");
    // A new client is refused, or (if cutting off the torn staging write
    // freed enough room) served journaled; the counts below check which.
    let mut late = RespClient::connect(proxy.listen).unwrap();
    let _ = late.cmd(&["SET", "late", "x"]);
    drop(late);
    let executed = redis.client().unwrap().cmd(&["DBSIZE"]).unwrap();

    // Stopping cannot flush: non-zero exit with the reason.
    proxy
        .guard
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = proxy.guard.wait_timeout(Duration::from_secs(15)).unwrap();
    assert!(!status.success(), "a failed final flush is an error exit");

    // Space again: the journal reopens with every acknowledged write.
    fs.resize("64m");
    let entries = read_journal(&journal);
    assert_contiguous(&entries);
    let conns = connections(&entries);
    let journaled_sets: usize = conns
        .values()
        .map(|c| {
            c.data
                .windows(13)
                .filter(|w| w.starts_with(b"$3\r\nSET\r\n"))
                .count()
        })
        .sum();
    let replaymig_testkit::Reply::Int(executed) = executed else {
        panic!("DBSIZE answers an integer")
    };
    assert!(
        acked as i64 <= executed,
        "every acknowledged SET was executed"
    );
    assert!(
        executed as usize <= journaled_sets,
        "redis executed {executed} SETs but only {journaled_sets} are journaled"
    );
    let mut again = ProxyProcess::start(redis.addr, &journal, "batch").unwrap();
    let mut c = RespClient::connect(again.listen).unwrap();
    assert_eq!(
        c.cmd(&["INCR", "after"]).unwrap(),
        replaymig_testkit::Reply::Int(1)
    );
    drop(c);
    again.stop();
    drop(fs);
}
