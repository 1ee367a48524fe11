//! A redis snapshot made by the exec driver, shipped over a real
//! authenticated peer link, verified and restored: the restored redis holds
//! the same data. Corrupt chunks, tampered files and a sender that vanishes
//! are clear errors.

use replaymig_peer::{Message, PeerLink};
use replaymig_snapshot::transfer::{self, TransferError};
use replaymig_snapshot::{Driver, ExecDriver, Manifest, Placeholders};
use replaymig_testkit::RedisServer;
use tempfile::TempDir;

const SECRET: &str = "snapshot-test-secret-0123456789";

/// A connected, authenticated pair of links (dialer, listener).
async fn link_pair() -> (PeerLink, PeerLink) {
    replaymig_testkit::peer_link_pair(SECRET).await
}

fn redis_exec_driver() -> Driver {
    Driver::Exec(ExecDriver {
        dump: vec![
            "redis-cli -p {port} SAVE".into(),
            "cp {data_dir}/dump.rdb {snapshot_dir}/dump.rdb".into(),
        ],
        restore: vec!["cp {snapshot_dir}/dump.rdb {data_dir}/dump.rdb".into()],
        timeout_secs: 30,
        point_fixed_after: None,
        stream: true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_snapshot_of_redis_ships_and_restores_with_the_same_data() {
    let source = RedisServer::start().unwrap();
    let mut c = source.client().unwrap();
    for i in 0..2000 {
        c.cmd(&[
            "SET",
            &format!("k{i}"),
            &format!("value-{i}-{}", "x".repeat(i % 97)),
        ])
        .unwrap();
        c.cmd(&["RPUSH", "list", &i.to_string()]).unwrap();
    }
    let driver = redis_exec_driver();
    let snap = TempDir::new().unwrap();
    let mut vars = Placeholders::new();
    vars.insert("port".into(), source.addr.port().to_string());
    vars.insert("data_dir".into(), source.dir().display().to_string());
    driver.dump(snap.path(), &vars).await.unwrap();
    let manifest = Manifest::build(snap.path(), "redis", driver.name(), 1234).unwrap();
    assert_eq!(manifest.files.len(), 1);

    for compress in [false, true] {
        let (mut a, mut b) = link_pair().await;
        let received = TempDir::new().unwrap();
        let into = received.path().join("snap");
        let sending = {
            let (dir, manifest) = (snap.path().to_path_buf(), manifest.clone());
            tokio::spawn(async move {
                transfer::send(&mut a, &dir, &manifest, compress)
                    .await
                    .unwrap()
            })
        };
        let (got, stats) = transfer::receive(&mut b, &into).await.unwrap();
        let sent = sending.await.unwrap();
        assert_eq!(got, manifest);
        assert_eq!(got.lsn, 1234, "the manifest carries the snapshot point");
        assert_eq!(stats.raw_bytes, manifest.total_bytes());
        assert_eq!(sent.wire_bytes, stats.wire_bytes);
        if compress {
            assert!(
                stats.wire_bytes < stats.raw_bytes,
                "zstd shrinks an RDB of repetitive values"
            );
        }

        // Restore on "the other node" and start the service on it.
        let data_dir = TempDir::new().unwrap();
        let mut vars = Placeholders::new();
        vars.insert("data_dir".into(), data_dir.path().display().to_string());
        driver.restore(&into, &vars, None).await.unwrap();
        let restored = RedisServer::start_from_rdb(&data_dir.path().join("dump.rdb")).unwrap();
        assert_eq!(restored.dump_all().unwrap(), source.dump_all().unwrap());
    }
}

#[tokio::test]
async fn a_corrupt_chunk_a_tampered_file_and_a_vanished_sender_are_errors() {
    let snap = TempDir::new().unwrap();
    std::fs::write(snap.path().join("state.bin"), vec![42u8; 3 << 20]).unwrap();
    let manifest = Manifest::build(snap.path(), "svc", "exec", 7).unwrap();

    // A chunk whose bytes do not match its CRC.
    let (mut a, mut b) = link_pair().await;
    let into = TempDir::new().unwrap();
    a.send(Message::SnapshotBegin {
        manifest: serde_json::to_vec(&manifest).unwrap(),
    })
    .await
    .unwrap();
    a.send(Message::SnapshotChunk {
        file: 0,
        offset: 0,
        compressed: false,
        data: vec![42u8; 1024],
        crc32: 1,
    })
    .await
    .unwrap();
    let err = transfer::receive(&mut b, &into.path().join("s"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransferError::CorruptChunk { file, offset: 0, .. } if file == "state.bin"),
        "{err}"
    );

    // Chunks that verify one by one but do not add up to the manifest's file.
    let (mut a, mut b) = link_pair().await;
    let mut forged = manifest.clone();
    forged.files[0].sha256 = "0".repeat(64);
    let sender = tokio::spawn({
        let dir = snap.path().to_path_buf();
        async move { transfer::send(&mut a, &dir, &forged, true).await }
    });
    let err = transfer::receive(&mut b, &into.path().join("t"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("state.bin"), "{err}");
    let _ = sender.await;

    // The sender disappears mid-transfer.
    let (mut a, mut b) = link_pair().await;
    a.send(Message::SnapshotBegin {
        manifest: serde_json::to_vec(&manifest).unwrap(),
    })
    .await
    .unwrap();
    let raw = vec![42u8; 1 << 20];
    a.send(Message::SnapshotChunk {
        file: 0,
        offset: 0,
        compressed: false,
        crc32: crc32fast::hash(&raw),
        data: raw,
    })
    .await
    .unwrap();
    drop(a);
    let err = transfer::receive(&mut b, &into.path().join("u"))
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Link(_)), "{err}");
}

#[tokio::test]
async fn delta_rounds_patch_the_receivers_copy_into_the_new_dump() {
    use replaymig_snapshot::delta::{BlockIndex, DELTA_BLOCK};
    use replaymig_snapshot::transfer::SnapshotChunks;
    let (mut tx, mut rx) = link_pair().await;
    let into = tempfile::tempdir().unwrap();
    let into_path = into.path().to_path_buf();
    // Round 1: everything. Round 2: two dirtied blocks, one file grown, one
    // file gone, one new. The receiver's directory is the base each time.
    let block = DELTA_BLOCK as usize;
    let one = tempfile::tempdir().unwrap();
    let mut pages: Vec<u8> = (0..6 * block).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(one.path().join("pages.img"), &pages).unwrap();
    std::fs::write(one.path().join("old.img"), b"gone next round").unwrap();
    let m1 = Manifest::build(one.path(), "svc", "criu", 0).unwrap();
    let i1 = BlockIndex::of(one.path(), &m1).unwrap();

    let two = tempfile::tempdir().unwrap();
    pages[block + 1] ^= 0xff;
    pages[4 * block] ^= 0xff;
    pages.extend_from_slice(b"tail");
    std::fs::write(two.path().join("pages.img"), &pages).unwrap();
    std::fs::write(two.path().join("new.img"), b"fresh").unwrap();
    let m2 = Manifest::build(two.path(), "svc", "criu", 9).unwrap();
    let i2 = BlockIndex::of(two.path(), &m2).unwrap();
    let (ranges, dirty) = i2.changed_since(&m2, Some(&i1));

    let receiver = tokio::spawn(async move {
        let first = transfer::receive(&mut rx, &into_path).await.unwrap();
        let second = transfer::receive(&mut rx, &into_path).await.unwrap();
        (first, second)
    });
    transfer::send(&mut tx, one.path(), &m1, true)
        .await
        .unwrap();
    let mut chunks = SnapshotChunks::delta(two.path(), &m2, true, ranges);
    while let Some(msg) = chunks.next_message().unwrap() {
        tx.send(msg).await.unwrap();
    }
    let ((_, full), (got, delta)) = receiver.await.unwrap();
    assert_eq!(got, m2);
    // Only the dirtied blocks, the grown tail and the new file travelled.
    assert_eq!(delta.raw_bytes, dirty);
    assert_eq!(
        dirty,
        2 * DELTA_BLOCK + 4 + 5,
        "two blocks + tail + new file"
    );
    assert!(full.raw_bytes > 6 * DELTA_BLOCK);
    assert_eq!(std::fs::read(into.path().join("pages.img")).unwrap(), pages);
    assert!(
        !into.path().join("old.img").exists(),
        "a file the new dump lacks is removed"
    );
}

/// A dump whose file is written in steps under a temporary name, renamed
/// into place and then patched at its start (the way a dump may fix up a
/// header): the pieces written meanwhile are streamed before the dump
/// ends, the patched piece and the tail follow as chunks, and the receiver
/// ends with exactly the dumped bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_streamed_while_it_is_written_arrives_exact() {
    use replaymig_snapshot::stream::DumpStream;
    use replaymig_snapshot::transfer::SnapshotChunks;

    let driver = Driver::Exec(ExecDriver {
        dump: vec![
            "true".into(),
            // 12 × 512 KiB with pauses, renamed, first bytes rewritten.
            "for i in $(seq 12); do head -c 524288 /dev/urandom; sleep 0.03; done \
             >{snapshot_dir}/tmp.part && mv {snapshot_dir}/tmp.part {snapshot_dir}/state.bin \
             && printf patched | dd of={snapshot_dir}/state.bin conv=notrunc status=none"
                .into(),
        ],
        restore: vec![],
        timeout_secs: 30,
        point_fixed_after: Some(1),
        stream: true,
    });
    assert!(driver.streams_dump());
    let snap = TempDir::new().unwrap();
    let vars = Placeholders::new();
    driver.fix_point(snap.path(), &vars).await.unwrap();

    let (mut a, mut b) = link_pair().await;
    let received = TempDir::new().unwrap();
    let into = received.path().join("snap");
    let receiving = tokio::spawn(async move { transfer::receive(&mut b, &into).await });

    let dump = {
        let (driver, dir) = (driver.clone(), snap.path().to_path_buf());
        tokio::spawn(async move { driver.finish_dump(&dir, &Placeholders::new()).await })
    };
    let mut stream = DumpStream::new(snap.path(), true);
    while !dump.is_finished() {
        match stream.next_message().unwrap() {
            Some(msg) => a.send(msg).await.unwrap(),
            None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
    dump.await.unwrap().unwrap();
    let manifest = Manifest::build(snap.path(), "svc", "exec", 5).unwrap();
    let settled = stream.settle(&manifest).unwrap();
    assert_eq!(settled.names, vec![(0, "state.bin".to_string())]);
    assert!(
        stream.stats.raw_bytes >= 2 << 20,
        "pieces were sent while the dump ran: {:?}",
        stream.stats
    );
    assert_eq!(
        settled.stale_bytes,
        transfer::CHUNK_BYTES as u64,
        "the patched first piece is sent again"
    );
    a.send(Message::SnapshotStreamsNamed {
        names: settled.names.clone(),
    })
    .await
    .unwrap();
    let mut chunks = SnapshotChunks::delta(snap.path(), &manifest, true, settled.ranges);
    while let Some(msg) = chunks.next_message().unwrap() {
        a.send(msg).await.unwrap();
    }
    let (got, stats) = receiving.await.unwrap().unwrap();
    assert_eq!(got, manifest);
    assert_eq!(
        stats.raw_bytes,
        stream.stats.raw_bytes + chunks.stats.raw_bytes,
        "the receiver counts streamed pieces and chunks"
    );
    assert_eq!(
        stream.stats.raw_bytes + chunks.stats.raw_bytes - settled.stale_bytes,
        manifest.total_bytes(),
        "nothing but the patched piece is sent twice"
    );
    let dir = received.path().join("snap");
    assert_eq!(
        std::fs::read(dir.join("state.bin")).unwrap(),
        std::fs::read(snap.path().join("state.bin")).unwrap()
    );
    assert!(!dir.join(".replaymig-streams").exists());
}
