//! The peer link over real loopback TCP: mutual authentication, and every
//! way a peer can misbehave before or after it.

use replaymig_peer::{AuthError, Authenticator, FrameError, LinkError, Message, PeerLink, Secret};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn auth(node: &str, secret: &str) -> Authenticator {
    Authenticator::new(node, Secret::new(secret).unwrap())
}

const SHARED: &str = "a-shared-secret-of-enough-length";

/// A listener that authenticates one peer and reports the outcome.
async fn listen_once(
    a: Authenticator,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<PeerLink, LinkError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        PeerLink::accept(stream, &a).await
    });
    (addr, task)
}

/// node-a dialed node-b, both with the shared secret: (dialer, listener).
async fn authenticated_pair() -> (PeerLink, PeerLink) {
    let (addr, server) = listen_once(auth("node-b", SHARED)).await;
    let dialer = PeerLink::connect(addr, &auth("node-a", SHARED))
        .await
        .unwrap();
    (dialer, server.await.unwrap().unwrap())
}

#[tokio::test]
async fn nodes_with_the_same_secret_authenticate_each_other_and_talk() {
    let (mut dialer, mut listener) = authenticated_pair().await;
    assert_eq!(dialer.peer_node(), "node-b");
    assert_eq!(listener.peer_node(), "node-a");
    dialer.send(Message::Ping(42)).await.unwrap();
    assert_eq!(listener.recv().await.unwrap(), Message::Ping(42));
    listener.send(Message::Pong(42)).await.unwrap();
    assert_eq!(dialer.recv().await.unwrap(), Message::Pong(42));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_on_both_sides() {
    let (addr, server) = listen_once(auth("node-b", SHARED)).await;
    let err = PeerLink::connect(addr, &auth("intruder", "not-the-shared-secret!!"))
        .await
        .err()
        .expect("the dialer must not be welcomed");
    // The dialer sees the listener's proof fail (it cannot know the secret).
    assert!(
        matches!(err, LinkError::Auth(AuthError::BadProof(_))),
        "{err}"
    );
    let server_err = server
        .await
        .unwrap()
        .err()
        .expect("the listener refuses too");
    assert!(
        matches!(
            server_err,
            LinkError::Auth(AuthError::Refused(_))
                | LinkError::Closed
                | LinkError::Auth(AuthError::Unexpected(_))
        ),
        "{server_err}"
    );
}

#[tokio::test]
async fn a_peer_that_skips_the_handshake_gets_nothing_accepted() {
    let (addr, server) = listen_once(auth("node-b", SHARED)).await;
    // A raw client sends a well-formed frame, but not a Hello.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let mut codec_bytes = bytes::BytesMut::new();
    use tokio_util::codec::Encoder;
    replaymig_peer::PeerCodec::default()
        .encode(Message::Ping(1), &mut codec_bytes)
        .unwrap();
    raw.write_all(&codec_bytes).await.unwrap();
    let err = server.await.unwrap().err().unwrap();
    assert!(
        matches!(err, LinkError::Auth(AuthError::Unexpected("ping"))),
        "{err}"
    );
    // It is told why, then disconnected.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
    assert!(String::from_utf8_lossy(&rest).contains("authentication failed"));
}

#[tokio::test]
async fn malformed_oversized_and_foreign_frames_are_errors_not_crashes() {
    for (what, bytes) in [
        ("garbage body", vec![0, 0, 0, 4, 1, 0xde, 0xad, 0xbe]),
        ("oversized length", vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3]),
        ("another version", vec![0, 0, 0, 2, 99, 0]),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ] {
        let (addr, server) = listen_once(auth("node-b", SHARED)).await;
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("refused promptly")
            .unwrap()
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            matches!(
                err,
                LinkError::Frame(
                    FrameError::Malformed(_) | FrameError::Version { .. } | FrameError::Io(_)
                )
            ),
            "{what}: {err}"
        );
    }
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let (addr, server) = listen_once(auth("node-b", SHARED)).await;
    let _silent = TcpStream::connect(addr).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .err()
        .unwrap();
    assert!(matches!(err, LinkError::Timeout(_)), "{err}");
}

#[test]
fn secrets_come_from_files_or_the_environment_and_must_be_long_enough() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "  abcdefghijklmnopqrstuvwxyz\n").unwrap();
    assert!(Secret::from_file(&path).is_ok());
    std::fs::write(&path, "short").unwrap();
    assert!(Secret::from_file(&path).is_err());
    assert!(Secret::from_file(&dir.path().join("missing")).is_err());
    assert!(Secret::from_env("REPLAYMIG_TEST_SURELY_UNSET_VARIABLE").is_err());
}

/// An eavesdropper records everything a genuine dialer sent during a
/// successful handshake and replays it to the listener later: the
/// listener's fresh challenge makes the recorded proof worthless.
#[tokio::test]
async fn a_replayed_handshake_is_refused() {
    use std::sync::{Arc, Mutex};
    let (real, genuine_server) = listen_once(auth("node-b", SHARED)).await;
    // A relay in the middle that keeps a copy of the dialer's bytes.
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let tape = recorded.clone();
    let relaying = tokio::spawn(async move {
        let (dialer, _) = relay.accept().await.unwrap();
        let upstream = TcpStream::connect(real).await.unwrap();
        let (mut dr, mut dw) = dialer.into_split();
        let (mut ur, mut uw) = upstream.into_split();
        let down = tokio::spawn(async move { tokio::io::copy(&mut ur, &mut dw).await });
        let mut buf = [0u8; 4096];
        loop {
            let n = dr.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            tape.lock().unwrap().extend_from_slice(&buf[..n]);
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        down.abort();
    });
    let dialer = PeerLink::connect(relay_addr, &auth("node-a", SHARED))
        .await
        .unwrap();
    let genuine = genuine_server.await.unwrap().unwrap();
    assert_eq!(
        genuine.peer_node(),
        "node-a",
        "the recorded handshake was good"
    );
    drop((dialer, genuine));
    relaying.await.unwrap();
    let tape = recorded.lock().unwrap().clone();
    assert!(tape.len() > 40, "recorded the Hello and the Proof");

    // Replayed byte for byte to the same kind of listener.
    let (addr, server) = listen_once(auth("node-b", SHARED)).await;
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&tape).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("refused promptly")
        .unwrap()
        .err()
        .expect("a replayed handshake must not be welcomed");
    assert!(
        matches!(err, LinkError::Auth(AuthError::BadProof(ref node)) if node == "node-a"),
        "{err}"
    );
}

#[tokio::test]
async fn queued_messages_go_out_in_order_and_never_behind_unflushed_ones() {
    let (mut dialer, mut listener) = authenticated_pair().await;
    // More than the socket buffers take at once: queued, then flushed in
    // steps that may be cut short (the dump ending) without losing bytes.
    let big = Message::SnapshotStreamChunk {
        stream: 0,
        offset: 0,
        compressed: false,
        data: vec![7u8; 6 << 20],
        crc32: 0,
    };
    assert!(dialer.is_flushed());
    dialer.queue(big.clone()).unwrap();
    assert!(!dialer.is_flushed(), "queued, not written yet");
    let second = dialer.queue(Message::Ping(1)).unwrap_err();
    assert!(second.to_string().contains("unflushed"), "{second}");
    // A flush cut short keeps what it did not write.
    let _ = tokio::time::timeout(Duration::from_millis(5), dialer.flush()).await;
    let reader = tokio::spawn(async move {
        let first = listener.recv().await.unwrap();
        let then = listener.recv().await.unwrap();
        (first, then)
    });
    // A send after queued bytes goes behind them.
    dialer.send(Message::Ping(2)).await.unwrap();
    assert!(dialer.is_flushed());
    let (first, then) = reader.await.unwrap();
    assert_eq!(first, big);
    assert_eq!(then, Message::Ping(2));
}
