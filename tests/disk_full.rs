//! A full disk under the journal: the client whose bytes could not be
//! journaled is closed (never forwarded), the error is logged and counted,
//! the proxy process stays up and never forwards unjournaled input, and
//! once there is space again the journal reopens with everything that was
//! acknowledged.
//!
//! Needs root (it mounts a small tmpfs under its temp dir); skips with a
//! printed reason otherwise.

mod common;

use bytes::Bytes;
use common::*;
use replaymig_journal::{Journal, JournalError, JournalOptions, Lsn, Record};
use replaymig_testkit::{encode_command, fill_up, RedisServer, RespClient, Tmpfs};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A tmpfs of `size` under a new temp dir, or `None` (with the reason
/// printed) where this process may not mount.
fn small_disk(test: &str, size: &str) -> Option<(TempDir, Tmpfs)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: needs root to mount a small tmpfs");
        return None;
    }
    let dir = TempDir::new().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("fs"), size) else {
        eprintln!("SKIP {test}: mount -t tmpfs failed (no mount privilege here)");
        return None;
    };
    Some((dir, fs))
}

/// Appends the reopen test's loop takes after the last refusal before it
/// stops.
const RESUMED_APPENDS: usize = 40;

/// A 64 KiB data record whose bytes say which append it was.
fn big_record(i: usize) -> Record {
    let mut bytes = format!("append {i:06} ").into_bytes();
    bytes.resize(64 << 10, b'x');
    Record::data(1, 0, 0, Bytes::from(bytes))
}

/// Appends 64 KiB records until the journal refuses one (at most 2,000);
/// returns the acknowledged `(LSN, append number)` pairs and the error.
async fn fill(j: &Journal) -> (Vec<(Lsn, usize)>, JournalError) {
    let mut acked = Vec::new();
    for i in 0..2000 {
        match j.append(big_record(i)).await {
            Ok(lsn) => acked.push((lsn, i)),
            Err(e) => return (acked, e),
        }
    }
    panic!("2,000 appends of 64 KiB fit on the small disk")
}

/// Every acknowledged append is stored, verified, under its LSN, and the
/// stored LSNs run from 1 without a gap.
fn assert_holds(j: &Journal, acked: &[(Lsn, usize)]) {
    let stored: Vec<Lsn> = j.read_range(1, Lsn::MAX).map(|e| e.unwrap().lsn).collect();
    assert_eq!(
        stored,
        (1..=stored.len() as Lsn).collect::<Vec<_>>(),
        "LSNs contiguous from 1"
    );
    for &(lsn, i) in acked {
        let entry = j
            .get(lsn)
            .unwrap()
            .expect("every acknowledged LSN is stored");
        let Record::Data { data, .. } = &entry.record else {
            panic!("LSN {lsn} is not a data record")
        };
        let Record::Data { data: sent, .. } = big_record(i) else {
            unreachable!()
        };
        assert!(*data == sent, "LSN {lsn} does not hold append {i}");
    }
}

/// `assert_holds` on the open journal, then again after it closed
/// cleanly (space is back) and was opened anew.
async fn assert_holds_across_reopen(j: Journal, dir: &Path, acked: &[(Lsn, usize)]) {
    assert_holds(&j, acked);
    j.close().await.expect("closes cleanly once space is back");
    drop(j);
    let j = open_on(dir, None);
    assert_holds(&j, acked);
    j.close().await.unwrap();
}

fn open_on(dir: &Path, min_free_bytes: Option<u64>) -> Journal {
    Journal::open(
        dir,
        JournalOptions {
            min_free_bytes,
            ..JournalOptions::default()
        },
    )
    .unwrap()
}

/// Below the free-space reserve the journal refuses appends before
/// writing anything (sled never meets ENOSPC), and takes the very next
/// append once space is back: no reopen, nothing lost.
#[tokio::test]
async fn under_the_reserve_appends_are_refused_and_taken_again_when_space_returns() {
    let Some((_dir, fs)) = small_disk("disk_full reserve", "32m") else {
        return;
    };
    let j = open_on(&fs.0.join("journal"), None);
    let (mut acked, refused) = fill(&j).await;
    assert!(acked.len() > 10, "only {} appends fit", acked.len());
    let msg = refused.to_string();
    assert!(
        matches!(refused, JournalError::Refusing(_)) && msg.contains("reserve"),
        "refused for the reserve: {msg}"
    );
    fs.resize("64m").unwrap();
    for i in 5000..5020 {
        let lsn = j
            .append(big_record(i))
            .await
            .expect("space is back: taken at once");
        acked.push((lsn, i));
    }
    assert_holds_across_reopen(j, &fs.0.join("journal"), &acked).await;
}

/// Another process fills the disk at once: sled's next checkpoint of
/// what it holds in memory fails with ENOSPC (after which sled refuses
/// every write). The writer refuses appends, reopens the storage in place
/// once the space is freed, and takes appends again — same process, with
/// everything acknowledged still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_by_someone_else_is_reopened_in_place_once_space_returns() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let Some((_dir, fs)) = small_disk("disk_full reopen", "64m") else {
        return;
    };
    let j = open_on(&fs.0.join("journal"), None);
    // Appends every 5 ms (12 MiB/s) until told to stop, or until 40 have
    // been taken since the last refusal (so its own load does not fill
    // the 64 MiB after the recovery); returns what was acked, when, and
    // every refusal's text.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (j, stop) = (j.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut acked_at, mut refusals) = (Vec::new(), Vec::new(), Vec::new());
            let mut since_refusal = 0;
            for i in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match j.append(big_record(i)).await {
                    Ok(lsn) => {
                        acked.push((lsn, i));
                        acked_at.push(Instant::now());
                        since_refusal += 1;
                    }
                    Err(e) => {
                        refusals.push((Instant::now(), e.to_string()));
                        since_refusal = 0;
                    }
                }
                if !refusals.is_empty() && since_refusal >= RESUMED_APPENDS {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, acked_at, refusals)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let filler = fs.0.join("filler");
    let filled = fill_up(&filler).unwrap();
    let filled_at = Instant::now();
    eprintln!("filler took {filled} bytes");
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    let deadline = freed_at + Duration::from_secs(6);
    while !writer.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut acked, acked_at, refusals) = writer.await.unwrap();
    let storage_failed = refusals.iter().any(|(_, e)| e.contains("storage failed"));
    eprintln!(
        "{} acked, {} refused; storage failed: {storage_failed}; first: {:?}; last: {:?}",
        acked.len(),
        refusals.len(),
        refusals.first().map(|r| &r.1),
        refusals.last().map(|r| &r.1)
    );
    assert!(
        refusals
            .iter()
            .all(|(t, _)| *t >= filled_at.checked_sub(Duration::from_millis(50)).unwrap()),
        "nothing refused before the disk filled"
    );
    assert!(
        storage_failed,
        "sled's checkpoint met the full disk (the case under test)"
    );
    // The storage failure ends within 3 s of the space returning. (This
    // loop writes 12 MiB/s into 64 MiB, so later it may meet the reserve
    // for a moment until a checkpoint: that refusal is the reserve working.)
    let last_storage_failure = refusals
        .iter()
        .rev()
        .find(|(_, e)| e.contains("storage failed"))
        .unwrap()
        .0;
    assert!(
        last_storage_failure < freed_at + Duration::from_secs(3),
        "storage reopened within 3 s of the space returning"
    );
    assert!(
        acked_at
            .iter()
            .any(|t| (freed_at..freed_at + Duration::from_secs(3)).contains(t)),
        "appends taken again within 3 s of the space returning"
    );
    assert!(
        acked.iter().any(|&(lsn, _)| lsn > acked.len() as Lsn / 2),
        "appends taken after the reopen"
    );
    for i in 30_000..30_010 {
        acked.push((j.append(big_record(i)).await.unwrap(), i));
    }
    assert_holds_across_reopen(j, &fs.0.join("journal"), &acked).await;
}

fn set_cmd(i: usize, value: &str) -> Vec<u8> {
    encode_command(&["SET", &format!("big:{i:04}"), value])
}

/// The proxy end to end: clients fill the journal's disk through it
/// until the journal refuses input (under its reserve); the refused
/// client is closed and nothing unjournaled is forwarded; the process
/// stays up, says why in a metric; once space returns the *same* process
/// serves and journals again, and stops cleanly.
#[test]
fn a_full_disk_refuses_unjournaled_input_and_the_proxy_serves_again_when_space_returns() {
    let Some((_dir, fs)) = small_disk("disk_full proxy", "32m") else {
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
    for i in 0..2000 {
        if c.write_all(&set_cmd(i, &value)).is_err() {
            break;
        }
        match c.read(&mut reply) {
            Ok(5) if &reply == b"+OK\r\n" => acked += 1,
            _ => break,
        }
    }
    assert!(
        acked > 0 && acked < 2000,
        "the journal refused input after {acked} writes"
    );
    let m = proxy.scrape();
    assert!(m.get(r#"replaymig_errors_total{service="default",kind="journal_append"}"#) >= 1.0);
    assert!(
        m.get(r#"replaymig_journal_refused_records_total{service="default",reason="low_space"}"#)
            >= 1.0,
        "the refusal is counted with its reason"
    );
    assert!(m.get(r#"replaymig_journal_free_bytes{service="default"}"#) > 0.0);
    assert_eq!(
        m.get(r#"replaymig_journal_min_free_bytes{service="default"}"#),
        (4 << 20) as f64,
        "the default reserve of a 32 MiB disk is the 4 MiB floor"
    );
    assert!(proxy.guard.is_running(), "the proxy process stays up");
    drop(c);

    // Space again: the same process serves and journals new clients.
    fs.resize("128m").unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let served = RespClient::connect(proxy.listen).and_then(|mut c| c.cmd(&["INCR", "after"]));
        match served {
            Ok(reply) => break reply,
            Err(e) if Instant::now() < until => {
                eprintln!("not served yet: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("not served 10 s after space returned: {e}"),
        }
    };
    assert_eq!(after, replaymig_testkit::Reply::Int(1));
    let m = proxy.scrape();
    assert_eq!(
        m.get(r#"replaymig_journal_refusing{service="default",reason="low_space"}"#),
        0.0,
        "no longer refusing"
    );
    let executed = redis.client().unwrap().cmd(&["DBSIZE"]).unwrap();

    // A clean stop: the final flush succeeds.
    proxy
        .guard
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = proxy.guard.wait_timeout(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "a clean exit once space is back");

    let entries = read_journal(&journal);
    assert_contiguous(&entries);
    let conns = connections(&entries);
    let journaled = |command: &[u8]| -> usize {
        conns
            .values()
            .map(|c| {
                c.data
                    .windows(command.len())
                    .filter(|w| w == &command)
                    .count()
            })
            .sum()
    };
    let journaled_sets = journaled(b"$3\r\nSET\r\n");
    let replaymig_testkit::Reply::Int(executed) = executed else {
        panic!("DBSIZE answers an integer")
    };
    // DBSIZE counts the SET keys and `after`.
    let executed = executed - 1;
    assert!(
        acked as i64 <= executed,
        "every acknowledged SET was executed"
    );
    assert!(
        executed as usize <= journaled_sets,
        "redis executed {executed} SETs but only {journaled_sets} are journaled"
    );
    assert!(
        journaled(b"$4\r\nINCR\r\n") >= 1,
        "the INCR after recovery is journaled"
    );
}
