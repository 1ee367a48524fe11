//! Unit tests of the journal handle against real sled storage in temp dirs.

use super::*;
use bytes::Bytes;
use tempfile::TempDir;

fn open(dir: &TempDir, durability: Durability) -> Journal {
    Journal::open(
        dir.path().join("j"),
        JournalOptions {
            durability,
            mode: OpenMode::CreateIfMissing,
            ..JournalOptions::default()
        },
    )
    .unwrap()
}

fn data(conn: ConnId, s: &str) -> Record {
    Record::data(conn, 0, 0, Bytes::copy_from_slice(s.as_bytes()))
}

fn lsns(j: &Journal) -> Vec<Lsn> {
    j.read_range(1, Lsn::MAX).map(|e| e.unwrap().lsn).collect()
}

#[tokio::test]
async fn lsns_start_at_one_are_contiguous_and_survive_reopen() {
    let dir = TempDir::new().unwrap();
    for durability in [Durability::None, Durability::Batch, Durability::Sync] {
        let sub = TempDir::new_in(dir.path()).unwrap();
        let j = open(&sub, durability);
        assert_eq!(j.last_lsn(), 0);
        let conn = j.append(Record::opened("127.0.0.1:1")).await.unwrap();
        assert_eq!(conn, 1);
        assert_eq!(j.append(data(conn, "a")).await.unwrap(), 2);
        let first = j
            .append_batch(vec![data(conn, "b"), data(conn, "c")])
            .await
            .unwrap();
        assert_eq!(first, 3);
        assert_eq!(j.last_lsn(), 4);
        j.close().await.unwrap();
        drop(j);
        let j = open(&sub, durability);
        assert_eq!(j.last_lsn(), 4);
        assert_eq!(j.append(data(conn, "d")).await.unwrap(), 5);
        assert_eq!(lsns(&j), vec![1, 2, 3, 4, 5]);
        j.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_contiguous_lsns_in_order_per_task() {
    let dir = TempDir::new().unwrap();
    let j = open(&dir, Durability::Batch);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..200 {
                got.push(j.append(data(t, &format!("{t}:{i}"))).await.unwrap());
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "per-task order kept");
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=3200).collect::<Vec<_>>());
    // Each task's payloads come back in the order it appended them.
    let mut seen = std::collections::HashMap::<u64, u64>::new();
    for e in j.read_range(1, Lsn::MAX) {
        let Record::Data { conn, data, .. } = e.unwrap().record else {
            panic!("only data records were appended")
        };
        let i = seen.entry(conn).or_default();
        assert_eq!(data, Bytes::from(format!("{conn}:{i}")));
        *i += 1;
    }
    j.close().await.unwrap();
}

#[tokio::test]
async fn tail_yields_stored_then_live_records_then_ends_on_close() {
    let dir = TempDir::new().unwrap();
    let j = open_with_records(&dir, 300).await;
    let mut tail = j.tail(250).unwrap();
    for lsn in 250..=300 {
        assert_eq!(tail.next().await.unwrap().unwrap().lsn, lsn);
    }
    let writer = j.clone();
    let live = tokio::spawn(async move {
        for i in 0..20 {
            writer.append(data(1, &format!("live{i}"))).await.unwrap();
        }
        writer.close().await.unwrap();
    });
    let mut got = Vec::new();
    while let Some(e) = tail.next().await.unwrap() {
        got.push(e.lsn);
    }
    live.await.unwrap();
    assert_eq!(got, (301..=320).collect::<Vec<_>>());
}

#[tokio::test]
async fn truncation_never_lets_an_lsn_be_reused() {
    let dir = TempDir::new().unwrap();
    let j = open_with_records(&dir, 10).await;
    assert_eq!(j.truncate_before(4).unwrap(), 3);
    assert_eq!(j.first_lsn().unwrap(), Some(4));
    assert!(j.tail(2).is_err(), "tailing a truncated LSN is refused");
    assert!(
        j.truncate_before(12).is_err(),
        "cannot truncate past the end"
    );
    assert_eq!(j.truncate_before(11).unwrap(), 7);
    assert_eq!(
        j.truncate_before(2).unwrap(),
        0,
        "a lower point changes nothing"
    );
    j.close().await.unwrap();
    drop(j);
    let j = open(&dir, Durability::Batch);
    assert_eq!(
        j.last_lsn(),
        10,
        "the head is remembered with no record left"
    );
    assert_eq!(j.append(data(1, "x")).await.unwrap(), 11);
    j.close().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_record_is_reported_with_its_lsn() {
    let dir = TempDir::new().unwrap();
    let j = open(&dir, Durability::Batch);
    for i in 0..5 {
        j.append(data(1, &format!("payload-{i}"))).await.unwrap();
    }
    j.close().await.unwrap();
    drop(j);
    fault::corrupt_record(&dir.path().join("j"), 3).unwrap();
    let j = Journal::open(
        dir.path().join("j"),
        JournalOptions {
            mode: OpenMode::MustExist,
            ..Default::default()
        },
    )
    .unwrap();
    let results: Vec<_> = j.read_range(1, 5).collect();
    assert!(results[1].is_ok());
    let err = results[2].as_ref().unwrap_err();
    assert!(
        matches!(err, JournalError::Checksum { lsn: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("LSN 3"));
    j.close().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_record_does_not_hide_its_neighbours_in_one_group() {
    let dir = TempDir::new().unwrap();
    let j = open(&dir, Durability::Batch);
    let batch = (0..3).map(|i| data(1, &format!("grouped-{i}"))).collect();
    assert_eq!(j.append_batch(batch).await.unwrap(), 1);
    j.append(data(1, "after")).await.unwrap();
    j.close().await.unwrap();
    drop(j);
    fault::corrupt_record(&dir.path().join("j"), 2).unwrap();
    let options = JournalOptions {
        mode: OpenMode::MustExist,
        ..Default::default()
    };
    let j = Journal::open(dir.path().join("j"), options).unwrap();
    assert_eq!(j.get(1).unwrap().unwrap().lsn, 1);
    let err = j.get(2).unwrap_err();
    assert_eq!(err.lsn(), Some(2), "{err}");
    assert_eq!(j.get(3).unwrap().unwrap().lsn, 3, "same segment, sound");
    let lsns: Vec<_> = j.read_range(3, 4).map(|e| e.unwrap().lsn).collect();
    assert_eq!(lsns, [3, 4]);
    j.close().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_last_record_refuses_the_open() {
    let dir = TempDir::new().unwrap();
    let j = open_with_records(&dir, 3).await;
    j.inner
        .store
        .insert_segment(3, &b"garbage!garbage!"[..])
        .unwrap();
    j.close().await.unwrap();
    drop(j);
    let err = Journal::open(dir.path().join("j"), JournalOptions::default())
        .err()
        .expect("open must fail");
    assert!(err.to_string().contains("LSN 3"), "{err}");
}

#[tokio::test]
async fn foreign_missing_and_locked_directories_are_refused() {
    let dir = TempDir::new().unwrap();
    let must_exist = JournalOptions {
        mode: OpenMode::MustExist,
        ..Default::default()
    };
    let err = Journal::open(dir.path().join("nope"), must_exist)
        .err()
        .unwrap();
    assert!(matches!(err, JournalError::NotAJournal { .. }), "{err}");
    assert!(
        !dir.path().join("nope").exists(),
        "inspection creates nothing"
    );

    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let err = Journal::open(dir.path(), JournalOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, JournalError::NotAJournal { .. }), "{err}");

    let plain_sled = dir.path().join("other");
    sled::open(&plain_sled).unwrap().insert("k", "v").unwrap();
    let err = Journal::open(&plain_sled, JournalOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, JournalError::NotAJournal { .. }), "{err}");

    let j = open(&dir, Durability::Batch);
    let err = Journal::open(dir.path().join("j"), JournalOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    j.close().await.unwrap();
}

#[tokio::test]
async fn appends_after_close_fail_cleanly_and_bad_records_are_refused() {
    let dir = TempDir::new().unwrap();
    let j = open(&dir, Durability::Batch);
    let big = Record::data(1, 0, 0, Bytes::from(vec![0; record::MAX_DATA_LEN + 1]));
    assert!(matches!(j.append(big).await, Err(JournalError::Invalid(_))));
    assert!(j.append_batch(vec![]).await.is_err());
    let huge: Vec<_> = (0..5)
        .map(|_| Record::data(1, 0, 0, Bytes::from(vec![0; record::MAX_DATA_LEN])))
        .collect();
    assert!(matches!(
        j.append_batch(huge).await,
        Err(JournalError::Invalid(_))
    ));
    assert_eq!(j.last_lsn(), 0, "a refused record takes no LSN");
    j.close().await.unwrap();
    assert!(matches!(
        j.append(data(1, "late")).await,
        Err(JournalError::Closed)
    ));
    j.close().await.unwrap();
}

#[tokio::test]
async fn staged_groups_that_sled_lost_are_restored_on_open() {
    let dir = TempDir::new().unwrap();
    let j = open(&dir, Durability::Batch);
    j.append(data(1, "kept by sled")).await.unwrap();
    j.close().await.unwrap();
    drop(j);
    // What a process killed after its staging write but before a sled
    // checkpoint leaves behind: a staged group sled never stored.
    let jdir = dir.path().join("j");
    let mut staged = Vec::new();
    segment::push(&mut staged, 2, &data(1, "only staged"));
    segment::push(&mut staged, 3, &Record::half_closed(1));
    let mut log = staging::StagingLog::create(&jdir.join("staging"), 41, true).unwrap();
    log.append(2, &staged).unwrap();
    // A torn frame after it is ignored.
    drop(log);
    let path = staging::existing(&jdir.join("staging")).unwrap()[0]
        .1
        .clone();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0x52, 0x4d, 0x4a, 0x31, 0, 0]);
    std::fs::write(&path, bytes).unwrap();

    let j = open(&dir, Durability::Batch);
    assert_eq!(j.last_lsn(), 3);
    let got: Vec<_> = j.read_range(1, 10).map(|e| e.unwrap().record).collect();
    assert!(matches!(&got[1], Record::Data { data, .. } if data.as_ref() == b"only staged"));
    assert!(matches!(got[2], Record::HalfClosed { conn: 1, .. }));
    assert!(
        staging::existing(&jdir.join("staging")).unwrap().len() <= 1,
        "recovered files are removed"
    );
    assert_eq!(j.append(data(1, "next")).await.unwrap(), 4);
    j.close().await.unwrap();
}

#[tokio::test]
async fn shipped_records_keep_their_lsns_and_must_continue_the_journal() {
    let dir = TempDir::new().unwrap();
    let j = open(&dir, Durability::Batch);
    // An empty journal may start at the sender's snapshot point + 1.
    assert_eq!(
        j.append_at(101, vec![data(7, "a"), data(7, "b")])
            .await
            .unwrap(),
        101
    );
    assert_eq!(j.last_lsn(), 102);
    assert!(
        j.append_at(101, vec![data(7, "dup")]).await.is_err(),
        "no LSN twice"
    );
    assert!(
        j.append_at(104, vec![data(7, "gap")]).await.is_err(),
        "no gap"
    );
    assert_eq!(j.append_at(103, vec![data(7, "c")]).await.unwrap(), 103);
    // Local appends continue after the shipped ones.
    assert_eq!(j.append(data(7, "local")).await.unwrap(), 104);
    assert_eq!(j.first_lsn().unwrap(), Some(101));
    j.close().await.unwrap();
    drop(j);
    let j = open(&dir, Durability::Batch);
    assert_eq!(lsns_from(&j, 101), vec![101, 102, 103, 104]);
    j.close().await.unwrap();
}

/// A batch-mode journal holding `count` data records "0", "1", … on conn 1.
async fn open_with_records(dir: &TempDir, count: usize) -> Journal {
    let j = open(dir, Durability::Batch);
    for i in 0..count {
        j.append(data(1, &i.to_string())).await.unwrap();
    }
    j
}

fn lsns_from(j: &Journal, from: Lsn) -> Vec<Lsn> {
    j.read_range(from, Lsn::MAX)
        .map(|e| e.unwrap().lsn)
        .collect()
}

#[tokio::test]
async fn an_unfinished_sled_snapshot_left_by_a_full_disk_does_not_refuse_the_open() {
    let dir = TempDir::new().unwrap();
    let j = open_with_records(&dir, 3).await;
    j.close().await.unwrap();
    drop(j);
    // What sled leaves when writing a snapshot fails (ENOSPC) or the
    // process dies mid-write; sled alone then calls the database corrupt.
    let leftover = dir
        .path()
        .join("j")
        .join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&leftover, b"").unwrap();
    let j = open(&dir, Durability::Batch);
    assert_eq!(lsns(&j), vec![1, 2, 3]);
    assert!(!leftover.exists(), "the leftover is removed");
    j.close().await.unwrap();
}

#[test]
fn records_past_one_append_are_split_in_order() {
    let big = |n| Record::data(1, 0, 0, Bytes::from(vec![0u8; n]));
    let records: Vec<Record> = (0..9).map(|_| big(1 << 20)).collect();
    let runs = split_for_append(records, |r| r);
    assert!(runs.len() >= 3, "{} runs", runs.len());
    assert_eq!(runs.iter().map(Vec::len).sum::<usize>(), 9);
    for run in &runs {
        let bytes: usize = run.iter().map(Record::encoded_len_hint).sum();
        assert!(bytes <= MAX_APPEND_BYTES);
    }
    assert_eq!(
        split_for_append(vec![Record::half_closed(1)], |r| r).len(),
        1
    );
    // Entries keep their order across runs; an oversized one stands alone.
    let entries: Vec<Entry> = [MAX_APPEND_BYTES, 10, 10]
        .into_iter()
        .enumerate()
        .map(|(i, n)| Entry {
            lsn: i as Lsn + 1,
            record: big(n),
        })
        .collect();
    let runs = split_for_append(entries.iter().collect(), |e: &&Entry| &e.record);
    let firsts: Vec<_> = runs.iter().map(|r| (r[0].lsn, r.len())).collect();
    assert_eq!(firsts, [(1, 1), (2, 2)]);
}

/// Groups past `OFFLOAD_BYTES` are staged and stored on a blocking thread,
/// smaller ones inline: interleaved, in every mode, they keep contiguous
/// LSNs and their bytes, also across a reopen (the staging log and sled
/// both saw every group).
#[tokio::test]
async fn large_groups_stored_off_thread_keep_order_and_bytes() {
    for durability in [Durability::None, Durability::Batch, Durability::Sync] {
        let dir = TempDir::new().unwrap();
        let j = open(&dir, durability);
        let conn = j.append(Record::opened("127.0.0.1:1")).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..12usize {
            let len = if i % 2 == 0 {
                10
            } else {
                3 * crate::writer::OFFLOAD_BYTES
            };
            let body: String = std::iter::repeat_n((b'a' + i as u8) as char, len).collect();
            j.append(data(conn, &body)).await.unwrap();
            expected.push(body);
        }
        j.close().await.unwrap();
        drop(j);
        let j = open(&dir, durability);
        let got: Vec<_> = j.read_range(2, Lsn::MAX).map(|e| e.unwrap()).collect();
        assert_eq!(
            got.iter().map(|e| e.lsn).collect::<Vec<_>>(),
            (2..14).collect::<Vec<_>>()
        );
        for (entry, body) in got.iter().zip(&expected) {
            let Record::Data { data: bytes, .. } = &entry.record else {
                panic!("LSN {} is not data", entry.lsn)
            };
            assert_eq!(&bytes[..], body.as_bytes());
        }
        j.close().await.unwrap();
    }
}
