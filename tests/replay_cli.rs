//! `replaymig replay` (the real binary) against real redis-servers: a mixed
//! session recorded through `replaymig proxy` and replayed from LSN 1 onto a
//! fresh redis, or from a middle LSN onto a redis restored from an RDB saved
//! there, ends with the same dataset and no divergence; a target holding
//! other data diverges (LSN, connection, kind; non-zero exit); bad input
//! gets a clear error; and no replay ever changes the journal.

mod common;

use common::*;
use replaymig_journal::{Entry, Lsn, Record};
use replaymig_proxy::QuiesceOptions;
use replaymig_testkit::{free_port, InProcessProxy, RedisServer, Reply, RespClient};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `replaymig replay --journal J ARGS`.
fn replay(journal: &Path, args: &[&str]) -> Output {
    let mut cmd = replaymig();
    cmd.arg("replay").arg("--journal").arg(journal).args(args);
    cmd.env("REPLAYMIG_LOG", "warn");
    cmd.output().expect("run replaymig replay")
}

/// `replay ... --json` onto `target`; the summary object.
fn replay_json(journal: &Path, target: SocketAddr, args: &[&str]) -> (Output, serde_json::Value) {
    let target = target.to_string();
    let mut all = vec!["--target", target.as_str(), "--json"];
    all.extend_from_slice(args);
    let out = replay(journal, &all);
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): stdout {:?} stderr {:?}",
            stdout(&out),
            stderr(&out)
        )
    });
    (out, summary)
}

/// The command failed and its error says `reason`.
fn fails_with(out: &Output, reason: &str) {
    assert!(!out.status.success(), "must fail: {}", stdout(out));
    assert!(
        stderr(out).contains(reason),
        "expected {reason:?} in: {}",
        stderr(out)
    );
}

/// Polls the proxy's metrics until `replaymig_proxy_connections_active`
/// is `n`: every other connection then has its closed record journaled.
fn wait_active(proxy: &ProxyProcess, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.scrape().get("replaymig_proxy_connections_active") != n {
        assert!(Instant::now() < deadline, "connections did not close");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One client's share of a phase, on its own connection and its own keys
/// (`ctr:i`, `list:i`, `str:i`, `tmp:i`): INCR, RPUSH, SET, and now and
/// then SET + DEL of a temporary key; odd clients pipeline each round,
/// even ones wait for every answer. Returns its local address (how the
/// journal names the connection's client).
fn client_work(listen: SocketAddr, i: usize, rounds: usize) -> String {
    let mut c = RespClient::connect(listen).unwrap();
    let local = c.stream().local_addr().unwrap().to_string();
    let (ctr, list, s, tmp) = (
        format!("ctr:{i}"),
        format!("list:{i}"),
        format!("str:{i}"),
        format!("tmp:{i}"),
    );
    for k in 0..rounds {
        let v = format!("v{k}-{}", "x".repeat(k % 13));
        let mut cmds = vec![
            vec!["INCR", ctr.as_str()],
            vec!["RPUSH", list.as_str(), v.as_str()],
            vec!["SET", s.as_str(), v.as_str()],
        ];
        match k % 10 {
            0 => cmds.push(vec!["SET", tmp.as_str(), v.as_str()]),
            5 => cmds.push(vec!["DEL", tmp.as_str()]),
            _ => {}
        }
        let replies = if i % 2 == 1 {
            c.pipeline(&cmds).unwrap()
        } else {
            cmds.iter().map(|cmd| c.cmd(cmd).unwrap()).collect()
        };
        assert_eq!(replies[0], Reply::Int(k as i64 + 1), "{ctr}");
        assert!(replies.iter().all(|r| !matches!(r, Reply::Error(_))));
    }
    local
}

/// Runs `clients` concurrently; their local addresses by index.
fn phase(listen: SocketAddr, clients: std::ops::Range<usize>, rounds: usize) -> Vec<String> {
    let workers: Vec<_> = clients
        .map(|i| std::thread::spawn(move || client_work(listen, i, rounds)))
        .collect();
    workers.into_iter().map(|w| w.join().unwrap()).collect()
}

/// Connection ids by client address.
fn conn_ids(entries: &[Entry]) -> BTreeMap<String, u64> {
    entries
        .iter()
        .filter_map(|e| match &e.record {
            Record::Opened { client_addr, .. } => Some((client_addr.clone(), e.lsn)),
            _ => None,
        })
        .collect()
}

/// The LSN of connection `conn`'s closed record.
fn closed_lsn(entries: &[Entry], conn: u64) -> Lsn {
    entries
        .iter()
        .find(|e| matches!(e.record, Record::Closed { conn: c, .. } if c == conn))
        .expect("the connection closed")
        .lsn
}

/// A recorded session and what the original redis held.
struct Session {
    /// Owns the journal and the RDB.
    _dir: TempDir,
    journal: PathBuf,
    /// `SAVE` of the original at the quiet moment between the phases.
    rdb: PathBuf,
    /// The journal's last LSN at that moment.
    boundary: Lsn,
    /// The original's dataset at that moment and at the end.
    at_boundary: BTreeMap<String, Vec<u8>>,
    at_end: BTreeMap<String, Vec<u8>>,
    /// Client addresses: the long-lived connection A, and the
    /// workers of phase one (clients 0..4) and two (clients 4..7).
    a: String,
    phase_one: Vec<String>,
    phase_two: Vec<String>,
}

/// Records two phases through the real proxy. Phase one: four workers
/// (clients 0..4) plus two long-lived connections A and B; the workers
/// close, A and B stay open. At the quiet moment between the phases (only
/// A and B connected, every answer delivered) the journal's last LSN is
/// noted and the original redis SAVEd. Phase two: A and B go on (also on
/// keys phase one wrote) while three new workers (clients 4..7) run; then
/// everything closes and the proxy stops.
fn record_session() -> Session {
    let original = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let journal = dir.path().join("journal");
    let mut proxy = ProxyProcess::start(original.addr, &journal, "batch").unwrap();
    let listen = proxy.listen;

    let mut a = RespClient::connect(listen).unwrap();
    let mut b = RespClient::connect(listen).unwrap();
    let a_addr = a.stream().local_addr().unwrap().to_string();
    let workers = std::thread::spawn(move || phase(listen, 0..4, 60));
    for k in 0..20 {
        let v = k.to_string();
        assert_eq!(a.cmd(&["INCR", "a:ctr"]).unwrap(), Reply::Int(k + 1));
        a.cmd(&["SET", "a:s", &v]).unwrap();
        let replies = b
            .pipeline(&[vec!["RPUSH", "b:list", v.as_str()], vec!["INCR", "b:ctr"]])
            .unwrap();
        assert_eq!(replies[1], Reply::Int(k + 1));
    }
    let phase_one = workers.join().unwrap();
    wait_active(&proxy, 2.0);
    let boundary = proxy.scrape().get("replaymig_journal_last_lsn") as Lsn;
    let rdb = dir.path().join("at-boundary.rdb");
    std::fs::copy(original.save().unwrap(), &rdb).unwrap();
    let at_boundary = original.dump_all().unwrap();

    let workers = std::thread::spawn(move || phase(listen, 4..7, 40));
    for k in 0..15 {
        let v = k.to_string();
        // Keys of phase one's (closed) clients: ordered after it by the
        // journal's causality counters.
        assert_eq!(a.cmd(&["INCR", "ctr:0"]).unwrap(), Reply::Int(61 + k));
        a.cmd(&["INCR", "a:ctr"]).unwrap();
        let replies = b
            .pipeline(&[
                vec!["RPUSH", "list:1", v.as_str()],
                vec!["DEL", "str:3"],
                vec!["RPUSH", "b:list", v.as_str()],
            ])
            .unwrap();
        assert_eq!(replies[0], Reply::Int(61 + k));
    }
    a.cmd(&["DEL", "a:s"]).unwrap();
    let phase_two = workers.join().unwrap();
    drop((a, b));
    wait_active(&proxy, 0.0);
    proxy.stop();
    let at_end = original.dump_all().unwrap();
    Session {
        _dir: dir,
        journal,
        rdb,
        boundary,
        at_boundary,
        at_end,
        a: a_addr,
        phase_one,
        phase_two,
    }
}

#[test]
fn a_recorded_session_replays_to_the_same_state_from_lsn_1_and_from_a_snapshot() {
    let s = record_session();
    let entries = read_journal(&s.journal);
    assert_contiguous(&entries);
    let last = entries.len() as Lsn;
    assert!(
        s.boundary > 10 && s.boundary < last,
        "boundary {} inside 1..={last}",
        s.boundary
    );
    let ids = conn_ids(&entries);
    assert_eq!(ids.len(), 9, "A, B and seven workers");
    let data: Vec<&Entry> = entries
        .iter()
        .filter(|e| matches!(e.record, Record::Data { .. }))
        .collect();
    let data_bytes: usize = data
        .iter()
        .map(|e| match &e.record {
            Record::Data { data, .. } => data.len(),
            _ => 0,
        })
        .sum();

    // From LSN 1 onto a fresh redis: the same dataset, every record sent,
    // every journaled answer segment (digests, the proxy's default) equal.
    let segments = entries
        .iter()
        .filter(|e| matches!(e.record, Record::Answer { .. }))
        .count();
    assert!(
        segments > data.len() / 2,
        "answers are journaled by default"
    );
    let fresh = RedisServer::start().unwrap();
    let (out, sum) = replay_json(&s.journal, fresh.addr, &["--from", "1", "--compare"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sum["divergence_count"], 0, "{sum}");
    assert_eq!(sum["compared"], "digests");
    assert_eq!(sum["answer_segments_compared"], segments);
    assert_eq!(sum["records"], last);
    assert_eq!(sum["data_records"], data.len());
    assert_eq!(sum["data_bytes"], data_bytes);
    assert_eq!(sum["connections"], 9);
    assert_eq!(sum["last_lsn"], last);
    assert!(sum["answer_bytes"].as_u64().unwrap() > 0);
    assert!(sum["records_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(fresh.dump_all().unwrap(), s.at_end, "same dataset");

    // From the middle onto a redis restored from the RDB saved there: A
    // and B were opened before --from and continue from their first record.
    let restored = RedisServer::start_from_rdb(&s.rdb).unwrap();
    assert_eq!(restored.dump_all().unwrap(), s.at_boundary);
    let from = (s.boundary + 1).to_string();
    let (out, sum) = replay_json(&s.journal, restored.addr, &["--from", &from, "--compare"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sum["divergence_count"], 0, "{sum}");
    assert!(sum["answer_segments_compared"].as_u64().unwrap() > 0);
    assert_eq!(sum["from_lsn"], s.boundary + 1);
    assert_eq!(sum["records"], last - s.boundary);
    assert_eq!(sum["connections"], 5, "A, B and three phase-two workers");
    assert_eq!(restored.dump_all().unwrap(), s.at_end, "same dataset");

    // Onto a redis with other data: counters ahead make the INCR answers
    // longer; the connections that INCRed ctr:0 (client 0, and A in phase
    // two) diverge at their close, the others do not.
    let other = RedisServer::start().unwrap();
    other
        .client()
        .unwrap()
        .cmd(&["SET", "ctr:0", "1000000"])
        .unwrap();
    let (out, sum) = replay_json(&s.journal, other.addr, &[]);
    assert!(!out.status.success(), "a divergence fails the command");
    assert!(stderr(&out).contains("diverged"), "{}", stderr(&out));
    let client0 = ids[&s.phase_one[0]];
    let a = ids[&s.a];
    let diverged: BTreeSet<(u64, u64, String)> = sum["divergences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["lsn"].as_u64().unwrap(),
                d["conn"].as_u64().unwrap(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<_> = [
        (
            closed_lsn(&entries, client0),
            client0,
            "extra_answer".into(),
        ),
        (closed_lsn(&entries, a), a, "extra_answer".into()),
    ]
    .into();
    assert_eq!(diverged, expected, "{sum}");
    assert_eq!(sum["divergence_count"], 2);
    // The text summary lists them with LSN, connection and kind.
    let again = RedisServer::start().unwrap();
    again
        .client()
        .unwrap()
        .cmd(&["SET", "ctr:0", "1000000"])
        .unwrap();
    let target = again.addr.to_string();
    let out = replay(&s.journal, &["--target", &target]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.contains("divergences      2"), "{text}");
    let line = format!(
        "LSN {:<10} connection {:<10} extra_answer",
        closed_lsn(&entries, a),
        a
    );
    assert!(text.contains(&line), "{line:?} in {text}");

    // Only one connection (a phase-two worker, on its own keys).
    let one = RedisServer::start().unwrap();
    let conn = ids[&s.phase_two[0]].to_string();
    let (out, sum) = replay_json(&s.journal, one.addr, &["--conn", &conn]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sum["connections"], 1);
    assert_eq!(sum["divergence_count"], 0, "{sum}");
    let client4: BTreeMap<_, _> = s
        .at_end
        .iter()
        .filter(|(k, _)| k.ends_with(":4"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(client4.len(), 3, "ctr:4, list:4, str:4");
    assert_eq!(one.dump_all().unwrap(), client4);

    // A dry run prints the records and sends nothing.
    let to = (s.boundary + 10).to_string();
    let out = replay(&s.journal, &["--dry-run", "--from", &from, "--to", &to]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 10, "{text}");
    assert!(rows[0].trim_start().starts_with(&from), "{text}");
    assert!(text.contains(r"\r\n$4\r\nINCR\r\n"), "{text}");
    let out = replay(
        &s.journal,
        &["--dry-run", "--json", "--from", &from, "--to", &to],
    );
    let lsns: Vec<u64> = stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lsn"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(lsns, (s.boundary + 1..=s.boundary + 10).collect::<Vec<_>>());

    // No replay wrote to the journal.
    assert_eq!(
        read_journal(&s.journal),
        entries,
        "the journal is unchanged"
    );
}

/// A small recorded session: three connections, ten commands.
fn small_session(dir: &Path) -> PathBuf {
    let redis = RedisServer::start().unwrap();
    let journal = dir.join("journal");
    let mut proxy = ProxyProcess::start(redis.addr, &journal, "batch").unwrap();
    for i in 0..3 {
        let mut c = RespClient::connect(proxy.listen).unwrap();
        c.cmd(&["SET", &format!("k{i}"), "v"]).unwrap();
        c.pipeline(&[vec!["INCR", "n"], vec!["RPUSH", "l", "x"]])
            .unwrap();
    }
    wait_active(&proxy, 0.0);
    proxy.stop();
    journal
}

/// Copies a (closed) journal directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_a_non_zero_exit_and_the_journal_stays_as_it_was() {
    let dir = TempDir::new().unwrap();
    let journal = small_session(dir.path());
    let entries = read_journal(&journal);
    let last = entries.len() as Lsn;
    let target = RedisServer::start().unwrap();
    let t = target.addr.to_string();

    let beyond = (last + 1).to_string();
    let out = replay(&journal, &["--target", &t, "--from", &beyond]);
    fails_with(
        &out,
        &format!("--from {beyond} is beyond the journal's last LSN {last}"),
    );

    let nobody: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let out = replay(&journal, &["--target", &nobody.to_string()]);
    fails_with(&out, &format!("the target {nobody} is unreachable"));

    let foreign = TempDir::new().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), "not a journal").unwrap();
    let out = replay(foreign.path(), &["--target", &t]);
    fails_with(&out, "is not a replaymig journal");
    assert!(!foreign.path().join("db").exists(), "nothing created there");
    let out = replay(&dir.path().join("missing"), &["--target", &t]);
    fails_with(&out, "is not a replaymig journal: directory does not exist");
    assert!(!dir.path().join("missing").exists());

    let out = replay(&journal, &["--target", &t, "--conn", "2"]);
    fails_with(&out, "connection 2 has no records");

    // A corrupt record is named by its LSN, and nothing reaches the target.
    let damaged = dir.path().join("damaged");
    copy_dir(&journal, &damaged);
    let bad = entries
        .iter()
        .filter(|e| matches!(e.record, Record::Data { .. }))
        .nth(3)
        .unwrap()
        .lsn;
    replaymig_journal::fault::corrupt_record(&damaged, bad).unwrap();
    let out = replay(&damaged, &["--target", &t]);
    fails_with(&out, &format!("journal record at LSN {bad} is corrupt"));
    assert!(
        stderr(&out).contains(&format!("--to {}", bad - 1)),
        "{}",
        stderr(&out)
    );
    assert!(target.dump_all().unwrap().is_empty(), "nothing was sent");

    assert_eq!(read_journal(&journal), entries, "the journal is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_right_after_a_snapshot_marker_counts_answers_from_it() {
    const CLIENTS: usize = 4;
    let original = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let live = dir.path().join("live");
    let proxy = InProcessProxy::start(original.addr, &live).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (listen, stop) = (proxy.listen, stop.clone());
            std::thread::spawn(move || {
                let mut c = RespClient::connect(listen).unwrap();
                let (ctr, list) = (format!("ctr:{i}"), format!("list:{i}"));
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 3_000 && Instant::now() < deadline {
                    let v = n.to_string();
                    let cmds = vec![
                        vec!["INCR", ctr.as_str()],
                        vec!["RPUSH", list.as_str(), v.as_str()],
                    ];
                    if i % 2 == 1 {
                        c.pipeline(&cmds).unwrap();
                    } else {
                        for cmd in &cmds {
                            c.cmd(cmd).unwrap();
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hold = proxy
        .control
        .quiesce(QuiesceOptions::default())
        .await
        .unwrap();
    let (point, marker) = (hold.lsn, hold.marker_lsn);
    let rdb = dir.path().join("at-point.rdb");
    std::fs::copy(original.save().unwrap(), &rdb).unwrap();
    drop(hold);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    proxy.wait_all_closed().await;
    let journal = proxy.stop().await;
    journal.close().await.unwrap();
    drop(journal);
    // A copy: the closed journal's storage lock may linger a moment.
    let copy = dir.path().join("copy");
    copy_dir(&live, &copy);
    let at_end = original.dump_all().unwrap();

    // The marker right before --from, and the marker first in the range.
    for from in [marker + 1, point + 1] {
        let restored = RedisServer::start_from_rdb(&rdb).unwrap();
        let from_arg = from.to_string();
        let (out, sum) = tokio::task::block_in_place(|| {
            replay_json(&copy, restored.addr, &["--from", &from_arg])
        });
        assert!(out.status.success(), "--from {from}: {}", stderr(&out));
        assert_eq!(sum["divergence_count"], 0, "--from {from}: {sum}");
        if from == marker + 1 {
            assert_eq!(sum["snapshot_mark_lsn"], point, "{sum}");
        }
        assert_eq!(
            restored.dump_all().unwrap(),
            at_end,
            "--from {from}: same dataset"
        );
    }
}

/// `--speed`: a session of ~1.5 s (two connections, each an INCR every
/// 50 ms) replayed at 1x takes about as long as the original (first to
/// last record), at 2x about half of that, at max far less; each replay,
/// onto a fresh redis, ends with the original's counters.
#[test]
fn replay_speed_paces_records_by_their_original_timing() {
    const TICK: Duration = Duration::from_millis(50);
    const TICKS: u32 = 30;
    let original = RedisServer::start().unwrap();
    let dir = TempDir::new().unwrap();
    let journal = dir.path().join("journal");
    let mut proxy = ProxyProcess::start(original.addr, &journal, "batch").unwrap();
    let listen = proxy.listen;
    let start = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = RespClient::connect(listen).unwrap();
                let key = format!("ctr:{i}");
                for k in 0..TICKS {
                    let due = start + TICK * k;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    assert_eq!(
                        c.cmd(&["INCR", key.as_str()]).unwrap(),
                        Reply::Int(i64::from(k) + 1)
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_active(&proxy, 0.0);
    proxy.stop();
    let at_end = original.dump_all().unwrap();
    assert_eq!(at_end.len(), 2, "ctr:0 and ctr:1");
    let entries = read_journal(&journal);
    let times: Vec<u64> = entries.iter().map(|e| e.record.time_us()).collect();
    let span = Duration::from_micros(times.iter().max().unwrap() - times[0]);
    assert!(
        span >= Duration::from_millis(1_300) && span < Duration::from_secs(4),
        "the original session's span: {span:?}"
    );
    let span = span.as_secs_f64();

    // (speed, the elapsed time it should take: low ..= high, in seconds).
    let cases = [
        ("1x", span, span * 1.2),
        ("max", 0.0, span * 0.5),
        ("2x", span * 0.5, span * 0.5 * 1.25),
    ];
    for (speed, low, high) in cases {
        let fresh = RedisServer::start().unwrap();
        let began = Instant::now();
        let (out, sum) = replay_json(&journal, fresh.addr, &["--speed", speed]);
        let wall = began.elapsed().as_secs_f64();
        assert!(out.status.success(), "--speed {speed}: {}", stderr(&out));
        assert_eq!(sum["divergence_count"], 0, "--speed {speed}: {sum}");
        assert_eq!(sum["speed"], speed, "{sum}");
        assert_eq!(sum["records"], entries.len(), "{sum}");
        let elapsed = sum["elapsed_seconds"].as_f64().unwrap();
        eprintln!("--speed {speed}: {elapsed:.3} s (span {span:.3} s)");
        assert!(
            (low..=high).contains(&elapsed) && wall >= low,
            "--speed {speed}: replayed in {elapsed:.3} s ({wall:.3} s wall), \
             expected {low:.3} ..= {high:.3} s (original span {span:.3} s)"
        );
        assert_eq!(fresh.dump_all().unwrap(), at_end, "--speed {speed}");
    }
    assert_eq!(
        replay_json(&journal, RedisServer::start().unwrap().addr, &[]).1["speed_multiplier"],
        serde_json::Value::Null,
        "max by default"
    );

    // The text summary names the speed; a bad one is refused up front.
    let fresh = RedisServer::start().unwrap();
    let target = fresh.addr.to_string();
    let out = replay(&journal, &["--target", &target, "--speed", "1.5x"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("speed            1.5x\n"),
        "{}",
        stdout(&out)
    );
    for bad in ["0x", "-2x", "fast", "2"] {
        let out = replay(&journal, &["--target", &target, &format!("--speed={bad}")]);
        fails_with(&out, "expected max or a positive multiplier");
    }
}

/// One client, answers journaled per `mode`: SET, five INCRs, a pipelined
/// GET + INCR. Returns the journal and the LSN of the first INCR record.
fn answers_session(dir: &Path, mode: &str) -> (PathBuf, Lsn) {
    let redis = RedisServer::start().unwrap();
    let journal = dir.join(format!("journal-{mode}"));
    let mut proxy = ProxyProcess::start_with(
        redis.addr,
        &journal,
        "batch",
        &["--journal-responses", mode],
    )
    .unwrap();
    let mut c = RespClient::connect(proxy.listen).unwrap();
    c.cmd(&["SET", "k", "hello"]).unwrap();
    for i in 1..=5 {
        assert_eq!(c.cmd(&["INCR", "ctr"]).unwrap(), Reply::Int(i));
    }
    c.pipeline(&[vec!["GET", "k"], vec!["INCR", "ctr"]])
        .unwrap();
    drop(c);
    wait_active(&proxy, 0.0);
    proxy.stop();
    let entries = read_journal(&journal);
    let first_incr = entries
        .iter()
        .find(|e| matches!(&e.record, Record::Data { data, .. } if data.windows(4).any(|w| w == b"INCR")))
        .unwrap()
        .lsn;
    (journal, first_incr)
}

#[test]
fn compare_finds_same_length_answers_that_differ_by_lsn_offset_and_preview() {
    let dir = TempDir::new().unwrap();
    for mode in ["full", "digest"] {
        let (journal, first_incr) = answers_session(dir.path(), mode);
        let entries = read_journal(&journal);
        assert_contiguous(&entries);
        let answers: Vec<(u64, u64, usize)> = entries
            .iter()
            .filter_map(|e| match &e.record {
                Record::Answer {
                    offset, len, data, ..
                } => Some((*offset, *len, data.len())),
                _ => None,
            })
            .collect();
        // SET, five INCRs, the pipelined pair (cut at the close).
        assert_eq!(answers.len(), 7, "{mode}: {answers:?}");
        let mut next = 0;
        for (offset, len, kept) in &answers {
            assert_eq!(*offset, next, "{mode}: segments are contiguous");
            assert_eq!(*kept as u64, if mode == "full" { *len } else { 0 });
            next = offset + len;
        }
        let Some(Record::Closed { resp_total, .. }) = entries.last().map(|e| &e.record) else {
            panic!("the journal ends with the close");
        };
        assert_eq!(
            *resp_total, next,
            "{mode}: segments cover every answer byte"
        );

        // The same data: no divergence, every segment compared.
        let fresh = RedisServer::start().unwrap();
        let (out, sum) = replay_json(&journal, fresh.addr, &["--compare"]);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert_eq!(sum["divergence_count"], 0, "{mode}: {sum}");
        assert_eq!(sum["answer_segments_compared"], 7);

        // ctr starts at 3: every INCR answer (4..9 instead of 1..6) has the
        // same length but another digit. Counting bytes cannot see it; --compare does.
        let ahead = RedisServer::start().unwrap();
        ahead.client().unwrap().cmd(&["SET", "ctr", "3"]).unwrap();
        let (out, sum) = replay_json(&journal, ahead.addr, &[]);
        assert!(
            out.status.success(),
            "{mode}: counts alone see nothing: {sum}"
        );
        let ahead = RedisServer::start().unwrap();
        ahead.client().unwrap().cmd(&["SET", "ctr", "3"]).unwrap();
        let (out, sum) = replay_json(&journal, ahead.addr, &["--compare"]);
        assert!(
            !out.status.success(),
            "{mode}: a difference fails the command"
        );
        assert!(
            stderr(&out).contains(&format!("first at LSN {first_incr}")),
            "{}",
            stderr(&out)
        );
        assert_eq!(
            sum["divergence_count"], 6,
            "{mode}: every INCR answer segment: {sum}"
        );
        let first = &sum["divergences"][0];
        assert_eq!(first["kind"], "answer_mismatch", "{sum}");
        assert_eq!(first["lsn"], first_incr);
        assert_eq!(first["conn"], 1);
        // "+OK\r\n" then ":1\r\n": the first differing byte is at 6.
        if mode == "full" {
            assert_eq!(first["offset"], 6, "{sum}");
            assert_eq!(first["exact"], true);
            assert_eq!(first["expected_preview"], "1\\r\\n");
            assert_eq!(first["got_preview"], "4\\r\\n");
        } else {
            assert_eq!(first["offset"], 5, "{sum}");
            assert_eq!(first["exact"], false);
            assert_eq!(first["got_preview"], ":4\\r\\n");
        }
    }

    // Answers not journaled: --compare says it compared counts only.
    let (journal, _) = answers_session(dir.path(), "off");
    let entries = read_journal(&journal);
    assert!(!entries
        .iter()
        .any(|e| matches!(e.record, Record::Answer { .. })));
    let fresh = RedisServer::start().unwrap();
    let (out, sum) = replay_json(&journal, fresh.addr, &["--compare"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        sum["compared"]
            .as_str()
            .unwrap()
            .starts_with("counts (no answers journaled"),
        "{sum}"
    );
}

/// Issue #13, item 9: `--compare` once reported `missing_answer` at the
/// last records of a clean journal (its answer readers stopped before the
/// last connections' records were sent). Eight clients end together; the
/// replay to the journal's end compares every answer segment of every
/// connection, finds nothing, and leaves every counter where the clients
/// left it — causal and settled alike.
#[test]
fn compare_checks_every_connection_to_the_journals_last_record() {
    let dir = TempDir::new().unwrap();
    let redis = RedisServer::start().unwrap();
    let journal = dir.path().join("journal");
    let mut proxy = ProxyProcess::start_with(
        redis.addr,
        &journal,
        "batch",
        &["--journal-responses", "full"],
    )
    .unwrap();
    const ROUNDS: usize = 120;
    phase(proxy.listen, 0..8, ROUNDS);
    wait_active(&proxy, 0.0);
    proxy.stop();
    let entries = read_journal(&journal);
    assert_contiguous(&entries);
    let segments = entries
        .iter()
        .filter(|e| matches!(e.record, Record::Answer { .. }))
        .count();
    assert!(segments >= 8 * ROUNDS, "{segments} answer segments");
    for settled in [false, true] {
        let fresh = RedisServer::start().unwrap();
        let mut args = vec!["--compare"];
        if settled {
            args.push("--settled");
        }
        let (out, sum) = replay_json(&journal, fresh.addr, &args);
        assert!(out.status.success(), "settled {settled}: {}", stderr(&out));
        assert_eq!(sum["divergence_count"], 0, "settled {settled}: {sum}");
        assert_eq!(
            sum["answer_segments_compared"], segments,
            "settled {settled}: every segment, the last ones included: {sum}"
        );
        let mut c = fresh.client().unwrap();
        for i in 0..8 {
            assert_eq!(
                c.cmd(&["GET", &format!("ctr:{i}")]).unwrap(),
                Reply::Bulk(ROUNDS.to_string().into_bytes()),
                "settled {settled}: client {i}'s counter"
            );
        }
    }
}
