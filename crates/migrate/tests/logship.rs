//! Log shipping between two journals over a real authenticated link, while
//! the source keeps appending: the destination ends with exactly the
//! source's records from the snapshot point on, under the same LSNs. A
//! record damaged in flight is refused with its LSN.

use bytes::Bytes;
use replaymig_journal::Entry;
use replaymig_journal::{Journal, JournalError, JournalOptions, Lsn, Record};
use replaymig_migrate::logship::{self, ShipError, Shipper};
use replaymig_peer::{Message, PeerLink};
use std::time::Duration;
use tempfile::TempDir;

const SECRET: &str = "logship-test-secret-0123456789";

async fn link_pair() -> (PeerLink, PeerLink) {
    replaymig_testkit::peer_link_pair(SECRET).await
}

/// The destination's side of one batch, as the node's driver does it: the
/// next message must be a batch, which is verified and journaled.
async fn receive_batch(dest: &Journal, link: &mut PeerLink) -> Result<Vec<Entry>, ShipError> {
    match link.recv_timeout(Duration::from_secs(10)).await? {
        Message::LogBatch {
            first_lsn,
            count,
            packed,
        } => logship::journal_packed(dest, first_lsn, count, &packed).await,
        other => panic!("expected a log batch, got {}", other.name()),
    }
}

fn data(conn: u64, n: u64) -> Record {
    Record::data(conn, n, n, Bytes::from(format!("SET k{n} v\r\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_gets_every_record_after_s_under_the_same_lsn_while_the_source_appends() {
    let dirs = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let source = Journal::open(dirs.0.path(), JournalOptions::default()).unwrap();
    let dest = Journal::open(dirs.1.path(), JournalOptions::default()).unwrap();
    let conn = source.append(Record::opened("127.0.0.1:9")).await.unwrap();
    for n in 0..500 {
        source.append(data(conn, n)).await.unwrap();
    }
    let s = source.last_lsn();
    let (mut a, mut b) = link_pair().await;

    // The source keeps taking client input while it ships.
    let writer = {
        let source = source.clone();
        tokio::spawn(async move {
            for n in 500..3000 {
                source.append(data(conn, n)).await.unwrap();
            }
        })
    };
    let final_lsn = s + 2500;
    let shipping = {
        let source = source.clone();
        tokio::spawn(async move {
            let mut shipper = Shipper::new(&source, s + 1).unwrap();
            shipper
                .run_until(&mut a, |st| st.acked >= final_lsn)
                .await
                .unwrap();
            shipper.stats
        })
    };
    let mut received = Vec::new();
    while received.last().map_or(0, |e: &Entry| e.lsn) < final_lsn {
        let batch = receive_batch(&dest, &mut b).await.unwrap();
        logship::ack(&mut b, batch.last().unwrap().lsn)
            .await
            .unwrap();
        received.extend(batch);
    }
    writer.await.unwrap();
    let stats = shipping.await.unwrap();
    assert_eq!(stats.records, 2500);
    assert!(
        stats.batches < 2500,
        "records travel in batches ({} batches)",
        stats.batches
    );

    let want: Vec<_> = source
        .read_range(s + 1, Lsn::MAX)
        .map(|e| e.unwrap())
        .collect();
    let got: Vec<_> = dest.read_range(1, Lsn::MAX).map(|e| e.unwrap()).collect();
    assert_eq!(got, want, "same records under the same LSNs");
    assert_eq!(received, want);
    assert_eq!(dest.first_lsn().unwrap(), Some(s + 1));
    source.close().await.unwrap();
    dest.close().await.unwrap();
}

#[tokio::test]
async fn a_record_damaged_in_flight_is_refused_with_its_lsn_and_not_journaled() {
    let dir = TempDir::new().unwrap();
    let dest = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let (mut a, mut b) = link_pair().await;
    let good = data(1, 1).encode(41);
    let mut bad = data(1, 2).encode(42);
    bad[12] ^= 0x01;
    a.send(Message::LogBatch {
        first_lsn: 41,
        count: 2,
        packed: logship::pack(&[good, bad]),
    })
    .await
    .unwrap();
    let err = receive_batch(&dest, &mut b).await.unwrap_err();
    assert!(
        matches!(
            err,
            ShipError::Journal(JournalError::Checksum { lsn: 42, .. })
        ),
        "{err}"
    );
    assert_eq!(dest.last_lsn(), 0, "nothing of a bad batch is journaled");
    dest.close().await.unwrap();
}
