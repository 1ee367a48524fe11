//! `replaymig journal dump` on a journal recorded through the proxy (the
//! real binary) in front of a real redis-server: every record in LSN
//! order, the filters, the three formats, and clear errors.

mod common;

use common::*;
use replaymig_testkit::{RedisServer, Reply, RespClient};
use tempfile::TempDir;

fn dump(journal: &std::path::Path, args: &[&str]) -> std::process::Output {
    replaymig()
        .args(["journal", "dump", "--journal"])
        .arg(journal)
        .args(args)
        .output()
        .expect("run replaymig journal dump")
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn dump_lists_filters_and_formats_a_recorded_session() {
    let redis = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let journal = dir.path().join("journal");
    let mut proxy = ProxyProcess::start(redis.addr, &journal, "batch").unwrap();
    let mut a = RespClient::connect(proxy.listen).unwrap();
    let mut b = RespClient::connect(proxy.listen).unwrap();
    assert_eq!(
        a.cmd(&["SET", "k", "hello"]).unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(b.cmd(&["INCR", "n"]).unwrap(), Reply::Int(1));
    assert_eq!(a.cmd(&["RPUSH", "l", "x"]).unwrap(), Reply::Int(1));
    drop((a, b));
    std::thread::sleep(std::time::Duration::from_millis(300));
    proxy.stop();
    let entries = read_journal(&journal);

    // Everything, as JSON lines: the same records in LSN order.
    let all = json_lines(&dump(&journal, &["--format", "json"]));
    assert_eq!(all.len(), entries.len());
    for (line, entry) in all.iter().zip(&entries) {
        assert_eq!(line["lsn"], entry.lsn);
        assert_eq!(line["kind"], entry.record.kind_name());
    }
    let data: Vec<_> = all.iter().filter(|l| l["kind"] == "data").collect();
    assert_eq!(data.len(), 3);
    let set = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
    let hex: String = set.bytes().map(|b| format!("{b:02x}")).collect();
    assert_eq!(data[0]["data_hex"], hex);

    // Filters: one connection; a kind; a range; a client address.
    let conn_b = data[1]["conn"].as_u64().unwrap();
    let only_b = json_lines(&dump(
        &journal,
        &["--format", "json", "--conn", &conn_b.to_string()],
    ));
    assert!(only_b.iter().all(|l| l["conn"] == conn_b));
    assert_eq!(only_b.iter().filter(|l| l["kind"] == "data").count(), 1);
    let kinds = json_lines(&dump(&journal, &["--format", "json", "--kind", "opened"]));
    assert_eq!(kinds.len(), 2);
    let range = json_lines(&dump(
        &journal,
        &["--format", "json", "--from", "2", "--to", "3"],
    ));
    assert_eq!(
        range
            .iter()
            .map(|l| l["lsn"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    let client = kinds[0]["client"].as_str().unwrap().to_string();
    let by_client = json_lines(&dump(&journal, &["--format", "json", "--client", &client]));
    assert!(!by_client.is_empty() && by_client.iter().all(|l| l["conn"] == kinds[0]["conn"]));
    let limited = json_lines(&dump(&journal, &["--format", "json", "--limit", "2"]));
    assert_eq!(limited.len(), 2);
    let future = json_lines(&dump(
        &journal,
        &["--format", "json", "--since", "2100-01-01T00:00:00Z"],
    ));
    assert!(future.is_empty());

    // Human and hex forms show the bytes.
    let human = dump(&journal, &[]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("|*3..$3..SET..$1..k..$5..hello..|"), "{text}");
    let hexdump = dump(&journal, &["--format", "hex", "--kind", "data"]);
    let text = String::from_utf8_lossy(&hexdump.stdout);
    assert!(
        text.contains("    00000000  2a 33 0d 0a 24 33 0d 0a 53 45 54"),
        "{text}"
    );

    // Errors: a range past the end, an unknown kind, not a journal.
    let past = dump(&journal, &["--from", "1000"]);
    assert!(!past.status.success());
    assert!(String::from_utf8_lossy(&past.stderr).contains("beyond the last LSN"));
    let kind = dump(&journal, &["--kind", "nope"]);
    assert!(String::from_utf8_lossy(&kind.stderr).contains("unknown record kind"));
    let empty = TempDir::new().unwrap();
    let not = dump(empty.path(), &[]);
    assert!(!not.status.success());
    assert!(String::from_utf8_lossy(&not.stderr).contains("cannot open journal"));
    // Dumping wrote nothing.
    assert_eq!(read_journal(&journal).len(), entries.len());
}

/// `journal dump --follow --format json` as a child; its lines arrive on
/// the returned channel (read by a thread) so the test can wait, bounded.
fn follow(
    journal: &std::path::Path,
) -> (
    replaymig_testkit::ChildGuard,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    use std::io::BufRead;
    let mut child = replaymig()
        .args([
            "journal",
            "dump",
            "--follow",
            "--format",
            "json",
            "--journal",
        ])
        .arg(journal)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the follower");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(serde_json::from_str(&line).expect("a JSON line"));
        }
    });
    (
        replaymig_testkit::ChildGuard::new("dump --follow", child),
        rx,
    )
}

/// The next `n` lines, each within 10 s.
fn next_lines(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
    n: usize,
) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("line {i} of {n} did not come: {e}"))
        })
        .collect()
}

#[test]
fn follow_prints_a_stopped_journal_then_what_a_proxy_journals_live() {
    let redis = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let journal = dir.path().join("journal");
    let mut proxy = ProxyProcess::start(redis.addr, &journal, "batch").unwrap();
    let mut c = RespClient::connect(proxy.listen).unwrap();
    c.cmd(&["SET", "before", "1"]).unwrap();
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(200));
    proxy.stop();
    let stored = read_journal(&journal);
    assert!(
        !journal
            .join(replaymig_journal::follow::SOCKET_NAME)
            .exists(),
        "socket removed at stop"
    );

    // Nobody holds the journal: the stored records, then it waits.
    let (_follower, rx) = follow(&journal);
    let first = next_lines(&rx, stored.len());
    let lsns: Vec<u64> = first.iter().map(|l| l["lsn"].as_u64().unwrap()).collect();
    assert_eq!(lsns, (1..=stored.len() as u64).collect::<Vec<_>>());

    // A proxy opens it: its new records follow, live, in order, no gap.
    let mut proxy = ProxyProcess::start(redis.addr, &journal, "batch").unwrap();
    let mut c = RespClient::connect(proxy.listen).unwrap();
    for i in 0..5 {
        assert_eq!(c.cmd(&["INCR", "live"]).unwrap(), Reply::Int(i + 1));
    }
    // opened, 5 data (+ 4 answer segments cut at the next INCR).
    let live = next_lines(&rx, 10);
    let lsns: Vec<u64> = live.iter().map(|l| l["lsn"].as_u64().unwrap()).collect();
    let next = stored.len() as u64 + 1;
    assert_eq!(lsns, (next..next + 10).collect::<Vec<_>>());
    assert_eq!(live[0]["kind"], "opened");
    let data: Vec<_> = live.iter().filter(|l| l["kind"] == "data").collect();
    assert_eq!(data.len(), 5, "{live:?}");
    assert!(data
        .iter()
        .all(|d| d["data_hex"].as_str().unwrap().contains(&hex("INCR"))));
    assert_eq!(live.iter().filter(|l| l["kind"] == "answer").count(), 4);
    // And a second follower of the live journal starts where it is asked.
    let out = replaymig()
        .args([
            "journal", "dump", "--follow", "--format", "json", "--limit", "2",
        ])
        .args(["--from", &next.to_string(), "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    let two = json_lines(&out);
    assert_eq!(two.len(), 2);
    assert_eq!(two[0]["lsn"], next);
    assert_eq!(two[1]["lsn"], next + 1);
    drop(c);
    proxy.stop();
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
