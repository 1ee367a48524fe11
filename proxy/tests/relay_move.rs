//! A relayed connection moved to a new owner on its old owner's word
//! (`ProxyControl::move_relay`), against two plain TCP listeners playing
//! the old and the new owner's tunnel ends: what the old owner did not
//! take is sent again, the answers join up, and every doubt is a refusal
//! (the old tunnel stays) or a close — never a connection continued wrong.

use bytes::Bytes;
use replaymig_journal::{Journal, JournalOptions};
use replaymig_proxy::{
    Dialer, MoveError, Proxy, ProxyConfig, ProxyControl, RelayMove, ResendError, Route,
    TunnelRequest,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

/// Dials `addr`, reporting each request; the tunnel arrives with `owed`.
fn dialer(
    addr: SocketAddr,
    owed: &'static [u8],
    seen: mpsc::UnboundedSender<TunnelRequest>,
) -> Dialer {
    Arc::new(move |request: TunnelRequest| {
        let seen = seen.clone();
        Box::pin(async move {
            let _ = seen.send(request);
            let stream = TcpStream::connect(addr).await?;
            Ok((stream, Bytes::from_static(owed)))
        })
    })
}

/// A proxy that relays every client to `old_owner`.
struct Relay {
    control: ProxyControl,
    listen: SocketAddr,
    requests: mpsc::UnboundedReceiver<TunnelRequest>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Relay {
    async fn start(old_owner: SocketAddr) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path().join("j"), JournalOptions::default()).unwrap();
        let unused: SocketAddr = ([127, 0, 0, 1], 9).into();
        let proxy = Proxy::bind(
            ProxyConfig::new(([127, 0, 0, 1], 0).into(), unused),
            journal,
        )
        .await
        .unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let control = proxy.control();
        control.set_route(Route::Remote {
            dial: dialer(old_owner, b"", tx),
        });
        let listen = proxy.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(proxy.run(stop.clone()));
        Relay {
            control,
            listen,
            requests,
            stop,
            _dir: dir,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .expect("bytes in time")
        .unwrap();
    buf
}

async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("the end in time")
        .unwrap();
    buf
}

/// A relay to a listener playing the old owner, with one client through
/// it whose "abc" + "def" went through and "HI" came back; a listener
/// playing the new owner.
struct Scene {
    relay: Relay,
    new: TcpListener,
    client: TcpStream,
    /// The old owner's end of the client's tunnel.
    tunnel: TcpStream,
    /// The relay's id of the client's connection.
    id: u64,
}

impl Scene {
    async fn start() -> Scene {
        let old = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let new = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut relay = Relay::start(old.local_addr().unwrap()).await;
        let mut client = TcpStream::connect(relay.listen).await.unwrap();
        client.write_all(b"abc").await.unwrap();
        let (mut tunnel, _) = old.accept().await.unwrap();
        let request = relay.requests.recv().await.unwrap();
        assert_eq!(request.conn, None, "a new client");
        assert_eq!(read_exactly(&mut tunnel, 3).await, b"abc");
        tunnel.write_all(b"HI").await.unwrap();
        assert_eq!(read_exactly(&mut client, 2).await, b"HI");
        client.write_all(b"def").await.unwrap();
        assert_eq!(read_exactly(&mut tunnel, 3).await, b"def");
        Scene {
            relay,
            new,
            client,
            tunnel,
            id: request.relay,
        }
    }
}

/// The old owner's word for connection 7 at the new owner `new` (whose
/// tunnel arrives with `owed`), and what the new owner is asked.
fn order_to(
    new: &TcpListener,
    consumed: u64,
    answers_end: u64,
    owed: &'static [u8],
) -> (RelayMove, mpsc::UnboundedReceiver<TunnelRequest>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let order = RelayMove {
        conn: 7,
        consumed,
        answers_end,
        dial: dialer(new.local_addr().unwrap(), owed, tx),
    };
    (order, rx)
}

#[tokio::test]
async fn a_move_sends_again_what_the_old_owner_did_not_take_and_the_answers_join_up() {
    let Scene {
        relay,
        new,
        mut client,
        mut tunnel,
        id,
    } = Scene::start().await;

    // The old owner journaled "abc" only: "def" was in flight.
    let (order, mut to_new) = order_to(&new, 3, 2, b"ow");
    relay.control.move_relay(id, order).await.unwrap().go();
    // Input while the move runs waits; then the old owner ends its tunnel.
    client.write_all(b"ghi").await.unwrap();
    tunnel.shutdown().await.unwrap();
    drop(tunnel);

    let (mut tunnel, _) = tokio::time::timeout(WAIT, new.accept())
        .await
        .unwrap()
        .unwrap();
    let request = to_new.recv().await.unwrap();
    assert_eq!((request.conn, request.delivered), (Some(7), 2));
    assert_eq!(request.relay, id, "still movable under the same id");
    assert_eq!(read_exactly(&mut tunnel, 6).await, b"defghi");
    tunnel.write_all(b"XY").await.unwrap();
    assert_eq!(read_exactly(&mut client, 4).await, b"owXY");
    // And it goes on.
    client.write_all(b"jk").await.unwrap();
    assert_eq!(read_exactly(&mut tunnel, 2).await, b"jk");
}

#[tokio::test]
async fn answers_that_end_elsewhere_than_the_old_owner_said_reset_the_connection() {
    let Scene {
        relay,
        new,
        mut client,
        mut tunnel,
        id,
    } = Scene::start().await;
    // Only "HI" (2 bytes) ever comes.
    let (order, mut to_new) = order_to(&new, 6, 5, b"");
    relay.control.move_relay(id, order).await.unwrap().go();
    tunnel.shutdown().await.unwrap();
    drop(tunnel);
    // Reset, not an end of stream that could pass for a complete answer.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, client.read_to_end(&mut buf))
        .await
        .expect("the close in time");
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "got {buf:?}"
    );
    assert!(to_new.try_recv().is_err(), "the new owner was never dialed");
}

#[tokio::test]
async fn a_move_the_old_owner_does_not_confirm_leaves_the_connection_on_its_tunnel() {
    let Scene {
        relay,
        new,
        mut client,
        mut tunnel,
        id,
    } = Scene::start().await;
    let (order, mut to_new) = order_to(&new, 6, 2, b"");
    let taken = relay.control.move_relay(id, order).await.unwrap();
    // Input waits while the move is taken...
    client.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), tunnel.read_exact(&mut buf))
            .await
            .is_err(),
        "no input goes into the old tunnel while the move is taken"
    );
    // ... and flows on the old tunnel once the old owner gave up.
    drop(taken);
    assert_eq!(read_exactly(&mut tunnel, 4).await, b"held");
    tunnel.write_all(b"ok").await.unwrap();
    assert_eq!(read_exactly(&mut client, 2).await, b"ok");
    assert!(to_new.try_recv().is_err(), "the new owner was never dialed");
}

#[tokio::test]
async fn a_move_that_needs_input_never_sent_is_refused_and_the_tunnel_stays() {
    let Scene {
        relay,
        new,
        mut client,
        mut tunnel,
        id,
    } = Scene::start().await;
    let (order, _to_new) = order_to(&new, 100, 2, b"");
    match relay.control.move_relay(id, order.clone()).await {
        Err(MoveError::Resend(ResendError::BeyondSent {
            consumed: 100,
            sent: 6,
        })) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    match relay.control.move_relay(id + 100, order).await {
        Err(MoveError::UnknownRelay(_)) => {}
        other => panic!("expected an unknown relay, got {other:?}"),
    }
    client.write_all(b"more").await.unwrap();
    assert_eq!(read_exactly(&mut tunnel, 4).await, b"more");
    tunnel.write_all(b"ok").await.unwrap();
    assert_eq!(read_exactly(&mut client, 2).await, b"ok");
}

#[tokio::test]
async fn a_client_whose_end_of_input_went_on_is_not_moved() {
    let Scene {
        relay,
        new,
        mut client,
        mut tunnel,
        id,
    } = Scene::start().await;
    client.shutdown().await.unwrap();
    assert_eq!(
        read_to_end(&mut tunnel).await,
        b"",
        "the end of input went on"
    );
    let (order, _to_new) = order_to(&new, 6, 2, b"");
    match relay.control.move_relay(id, order).await {
        Err(MoveError::Resend(ResendError::Ended)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The answers still come over the old tunnel.
    tunnel.write_all(b"bye").await.unwrap();
    drop(tunnel);
    assert_eq!(read_to_end(&mut client).await, b"bye");
}
