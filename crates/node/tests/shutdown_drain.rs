//! A node's shutdown waits for the peer request it is serving: node b is
//! the destination of a migration (the test plays the source, a) when it is
//! told to shut down. It stops accepting at once, but its `migrate_in` runs
//! to its own end (here: the source's abort, answered with b's abort)
//! before the shutdown completes — and only then does b close its journal.

use replaymig_journal::{Journal, JournalOptions, OpenMode};
use replaymig_node::{Node, NodeConfig};
use replaymig_peer::{Authenticator, Message, PeerLink, Secret};
use replaymig_testkit::{write_node_config, NodePorts};
use std::net::SocketAddr;
use std::time::Duration;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_a_running_migration_before_closing_the_journal() {
    let dir = TempDir::new().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "shutdown-drain-secret-0123456789").unwrap();
    // Nothing runs as a: its ports are only names in b's config.
    let (pa, pb) = (NodePorts::loopback(), NodePorts::loopback());
    let config = write_node_config(dir.path(), "b", &pb, ("a", &pa), "a", None, None);
    let node_b = Node::start(NodeConfig::load(&config).unwrap())
        .await
        .unwrap();

    // The source's first steps: b's migrate_in starts and waits for the
    // snapshot.
    let auth = Authenticator::new("a", Secret::from_file(&secret).unwrap());
    let peer: SocketAddr = (pb.ip, pb.peer).into();
    let mut link = PeerLink::connect(peer, &auth).await.unwrap();
    link.send(Message::MigrateBegin {
        service: "redis".into(),
        epoch: 2,
        verify_answers: true,
    })
    .await
    .unwrap();
    assert_eq!(link.recv().await.unwrap(), Message::MigrateReady);

    let shutdown = tokio::spawn(node_b.shutdown());
    // b stops accepting at once: its listeners are closed ...
    let admin: SocketAddr = ([127, 0, 0, 1], pb.admin).into();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(admin).await.is_ok()
        || tokio::net::TcpStream::connect(peer).await.is_ok()
    {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... but the migration in flight holds the shutdown.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !shutdown.is_finished(),
        "shut down under a running migration"
    );

    // The source gives up; b's migrate_in ends its own way, answering with
    // its abort (an aborted task would send nothing).
    link.send(Message::MigrateAbort {
        reason: "test: the source gives up".into(),
    })
    .await
    .unwrap();
    let answer = link.recv_timeout(Duration::from_secs(5)).await.unwrap();
    assert!(
        matches!(answer, Message::MigrateAbort { .. }),
        "b's own abort: {answer:?}"
    );
    drop(link);
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("the shutdown completes once the migration ended")
        .unwrap();

    // The journal was closed (flushed, its lock released) after that.
    let journal = Journal::open(
        dir.path().join("b-journal"),
        JournalOptions {
            mode: OpenMode::MustExist,
            ..Default::default()
        },
    )
    .expect("b's journal was closed by the shutdown");
    journal.close().await.unwrap();
}
