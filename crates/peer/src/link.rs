//! An authenticated link: the handshake on connect/accept, then typed
//! sends and receives with timeouts. Nothing but handshake messages is read
//! before the peer proved it knows the secret.

use crate::auth::{AuthError, Authenticator, Role};
use crate::codec::WireBytes;
use crate::codec::{FrameError, PeerCodec};
use crate::message::Message;
use crate::names;
use futures_util::{SinkExt, StreamExt};
use metrics::counter;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Bound on each handshake step.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one send: a peer that stops reading (or a cut link) fails the
/// sender instead of blocking it forever on a full socket buffer.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Could not reach the peer.
    #[error("cannot connect to peer {addr}: {source}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A frame could not be read or written.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The handshake failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The peer said nothing in time.
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
    /// The link took no more bytes for this long (the peer stopped reading,
    /// or the path to it is gone).
    #[error("could not send to the peer within {0:?} (the link is stalled or cut)")]
    SendTimeout(Duration),
    /// The peer closed the link.
    #[error("peer closed the link")]
    Closed,
}

/// An authenticated connection to another node.
pub struct PeerLink {
    framed: Framed<TcpStream, PeerCodec>,
    peer_node: String,
    peer_addr: SocketAddr,
    /// Wire bytes already added to the bytes counter.
    counted: WireBytes,
}

impl PeerLink {
    /// Dials `addr` and authenticates both ways.
    pub async fn connect(addr: SocketAddr, auth: &Authenticator) -> Result<PeerLink, LinkError> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| LinkError::Timeout(HANDSHAKE_TIMEOUT))?
            .map_err(|source| LinkError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let mut link = PeerLink::unauthenticated(stream, addr);
        let outcome = link.dial_handshake(auth).await;
        link.conclude("dialer", outcome).await
    }

    /// Authenticates a connection accepted from an unknown peer.
    pub async fn accept(stream: TcpStream, auth: &Authenticator) -> Result<PeerLink, LinkError> {
        let addr = stream.peer_addr().map_err(|e| LinkError::Frame(e.into()))?;
        let _ = stream.set_nodelay(true);
        let mut link = PeerLink::unauthenticated(stream, addr);
        let outcome = link.listen_handshake(auth).await;
        link.conclude("listener", outcome).await
    }

    fn unauthenticated(stream: TcpStream, peer_addr: SocketAddr) -> PeerLink {
        PeerLink {
            framed: Framed::new(stream, PeerCodec::default()),
            peer_node: String::new(),
            peer_addr,
            counted: WireBytes::default(),
        }
    }

    /// Counts and explains a failed handshake to the peer before dropping it.
    async fn conclude(
        mut self,
        side: &'static str,
        outcome: Result<(), LinkError>,
    ) -> Result<PeerLink, LinkError> {
        match outcome {
            Ok(()) => Ok(self),
            Err(e) => {
                counter!(names::AUTH_FAILURES_TOTAL, "side" => side).increment(1);
                if matches!(
                    e,
                    LinkError::Frame(FrameError::Malformed(_) | FrameError::Version { .. })
                ) {
                    counter!(names::BAD_FRAMES_TOTAL).increment(1);
                }
                tracing::warn!(peer = %self.peer_addr, side, error = %e, "peer link refused");
                if matches!(
                    e,
                    LinkError::Auth(AuthError::BadProof(_) | AuthError::Unexpected(_))
                ) {
                    let _ = self
                        .send(Message::Goodbye {
                            reason: "authentication failed".into(),
                        })
                        .await;
                }
                Err(e)
            }
        }
    }

    async fn dial_handshake(&mut self, auth: &Authenticator) -> Result<(), LinkError> {
        let mine = Authenticator::nonce();
        self.send(Message::Hello {
            node: auth.node().to_string(),
            nonce: mine,
        })
        .await?;
        let (node, theirs, proof) = match self.recv_timeout(HANDSHAKE_TIMEOUT).await? {
            Message::HelloProof { node, nonce, proof } => (node, nonce, proof),
            Message::Goodbye { reason } => return Err(AuthError::Refused(reason).into()),
            other => return Err(AuthError::Unexpected(other.name()).into()),
        };
        if !auth.verify(Role::Listener, &mine, &theirs, &proof) {
            return Err(AuthError::BadProof(node).into());
        }
        self.send(Message::Proof {
            proof: auth.prove(Role::Dialer, &mine, &theirs),
        })
        .await?;
        match self.recv_timeout(HANDSHAKE_TIMEOUT).await? {
            Message::Welcome => {
                self.peer_node = node;
                Ok(())
            }
            Message::Goodbye { reason } => Err(AuthError::Refused(reason).into()),
            other => Err(AuthError::Unexpected(other.name()).into()),
        }
    }

    async fn listen_handshake(&mut self, auth: &Authenticator) -> Result<(), LinkError> {
        let (node, theirs) = match self.recv_timeout(HANDSHAKE_TIMEOUT).await? {
            Message::Hello { node, nonce } => (node, nonce),
            other => return Err(AuthError::Unexpected(other.name()).into()),
        };
        let mine = Authenticator::nonce();
        self.send(Message::HelloProof {
            node: auth.node().to_string(),
            nonce: mine,
            proof: auth.prove(Role::Listener, &theirs, &mine),
        })
        .await?;
        let proof = match self.recv_timeout(HANDSHAKE_TIMEOUT).await? {
            Message::Proof { proof } => proof,
            other => return Err(AuthError::Unexpected(other.name()).into()),
        };
        if !auth.verify(Role::Dialer, &theirs, &mine, &proof) {
            return Err(AuthError::BadProof(node).into());
        }
        self.send(Message::Welcome).await?;
        self.peer_node = node;
        Ok(())
    }

    /// The authenticated peer's node name.
    pub fn peer_node(&self) -> &str {
        &self.peer_node
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Sends one message (bounded by [`SEND_TIMEOUT`]).
    pub async fn send(&mut self, msg: Message) -> Result<(), LinkError> {
        tokio::time::timeout(SEND_TIMEOUT, self.framed.send(msg))
            .await
            .map_err(|_| LinkError::SendTimeout(SEND_TIMEOUT))??;
        counter!(names::FRAMES_TOTAL, "direction" => "sent").increment(1);
        self.count_bytes();
        Ok(())
    }

    /// Whether every message queued or sent has been handed to the socket
    /// (nothing waits in the link's write buffer): [`queue`](Self::queue)
    /// may then be called without waiting.
    pub fn is_flushed(&self) -> bool {
        self.framed.write_buffer().is_empty()
    }

    /// Encodes `msg` into the link's write buffer without waiting, so a
    /// caller that must not block (a dump under a hold, see the source's
    /// fix point) can hand the link work and go on; [`flush`](Self::flush)
    /// (cancel-safe) or the next [`send`](Self::send) writes it out, in
    /// order. Only when [`is_flushed`](Self::is_flushed): a full buffer
    /// would have to be flushed first, which is waiting.
    pub fn queue(&mut self, msg: Message) -> Result<(), LinkError> {
        if !self.is_flushed() {
            return Err(LinkError::Frame(FrameError::Io(std::io::Error::other(
                "a message was queued behind unflushed ones",
            ))));
        }
        // An empty buffer is below the back-pressure boundary: ready at once.
        // (Were it not, the message would be lost: an error, never a panic.)
        match futures_util::FutureExt::now_or_never(self.framed.feed(msg)) {
            Some(result) => result?,
            None => {
                return Err(LinkError::Frame(FrameError::Io(std::io::Error::other(
                    "the link's write buffer was not ready",
                ))))
            }
        }
        counter!(names::FRAMES_TOTAL, "direction" => "sent").increment(1);
        self.count_bytes();
        Ok(())
    }

    /// Writes out what [`queue`](Self::queue) left in the write buffer
    /// (bounded by [`SEND_TIMEOUT`]). Cancel-safe: dropped before it is
    /// done, the rest stays buffered for the next flush or send.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        tokio::time::timeout(SEND_TIMEOUT, self.framed.flush())
            .await
            .map_err(|_| LinkError::SendTimeout(SEND_TIMEOUT))??;
        Ok(())
    }

    /// Adds what the link carried since the last call to the bytes counter.
    fn count_bytes(&mut self) {
        let now = self.framed.codec().wire;
        let sent = now.sent - self.counted.sent;
        let received = now.received - self.counted.received;
        if sent > 0 {
            counter!(names::BYTES_TOTAL, "direction" => "sent").increment(sent);
        }
        if received > 0 {
            counter!(names::BYTES_TOTAL, "direction" => "received").increment(received);
        }
        self.counted = now;
    }

    /// The next message; `Closed` when the peer hung up. A bad frame is an
    /// error (counted) and the link must be dropped.
    pub async fn recv(&mut self) -> Result<Message, LinkError> {
        match self.framed.next().await {
            Some(Ok(msg)) => {
                counter!(names::FRAMES_TOTAL, "direction" => "received").increment(1);
                self.count_bytes();
                Ok(msg)
            }
            Some(Err(e)) => {
                if !matches!(e, FrameError::Io(_)) {
                    counter!(names::BAD_FRAMES_TOTAL).increment(1);
                }
                Err(e.into())
            }
            None => Err(LinkError::Closed),
        }
    }

    /// Gives up the framing: the raw stream, and bytes already read past
    /// the last frame (a tunnel's first raw bytes).
    pub fn into_raw(self) -> (TcpStream, bytes::BytesMut) {
        let parts = self.framed.into_parts();
        (parts.io, parts.read_buf)
    }

    /// Bytes this link has carried so far, framing included (the
    /// handshake too).
    pub fn wire_bytes(&self) -> crate::codec::WireBytes {
        self.framed.codec().wire
    }

    /// [`send`](Self::send) bounded by `timeout` instead of
    /// [`SEND_TIMEOUT`] (a best-effort message on a link that may be dead).
    pub async fn send_timeout(&mut self, msg: Message, timeout: Duration) -> Result<(), LinkError> {
        tokio::time::timeout(timeout, self.send(msg))
            .await
            .map_err(|_| LinkError::SendTimeout(timeout))?
    }

    /// [`recv`](Self::recv) bounded by `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Message, LinkError> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| LinkError::Timeout(timeout))?
    }
}
