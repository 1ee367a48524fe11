//! Where a connection's bytes go. The owner of a service journals client
//! input and forwards it to its local service; any other node relays
//! (without journaling) through a tunnel to the owner. The node agent
//! decides the route and supplies the tunnel dialer; the proxy knows
//! nothing of peers or migration.

use bytes::Bytes;
use replaymig_journal::ConnId;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpStream;

/// What a tunnel to the owner is opened for.
#[derive(Debug, Clone)]
pub struct TunnelRequest {
    /// An existing journaled connection being handed over (`Some`), or a
    /// new client (`None`).
    pub conn: Option<ConnId>,
    /// Answer bytes the client has received on it so far.
    pub delivered: u64,
    /// The client's address, for the owner's journal.
    pub client: String,
    /// This proxy's id of the relayed connection: the owner names it when
    /// it later tells this node to move the tunnel to a new owner
    /// ([`RelayMove`]).
    pub relay: u64,
}

/// Where an adopted tunnel comes from: the node that relays it and that
/// node's id of the connection, so a hand-over can tell it to dial the
/// new owner itself instead of relaying through this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOrigin {
    /// The relaying node.
    pub node: String,
    /// Its id of the connection ([`TunnelRequest::relay`]).
    pub relay: u64,
}

/// A hand-over's word to a relaying node: dial the new owner for this
/// connection yourself.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Who relays the connection.
    pub origin: RelayOrigin,
    /// The journaled connection (the new owner has it parked).
    pub conn: ConnId,
    /// Tunnel bytes this owner journaled: the relaying node sends the rest
    /// again to the new owner.
    pub consumed: u64,
    /// The answer offset the tunnel ends at: this owner delivers answers up
    /// to it, then ends the tunnel; the new owner continues from it.
    pub answers_end: u64,
}

/// Delivers a [`Redirect`] to its relaying node and waits, bounded, for it
/// to be taken (`Ok`). On an error the hand-over relays the connection
/// through this node as before.
pub type Redirector = Arc<
    dyn Fn(Redirect) -> Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> + Send + Sync,
>;

/// A relaying node's order for one of its connections (see
/// [`crate::ProxyControl::move_relay`]).
#[derive(Clone)]
pub struct RelayMove {
    /// The journaled connection the new owner has parked.
    pub conn: ConnId,
    /// Tunnel bytes the old owner journaled.
    pub consumed: u64,
    /// Answer offset the old tunnel ends at.
    pub answers_end: u64,
    /// Opens the tunnel to the new owner.
    pub dial: Dialer,
}

/// An open tunnel: the stream, and answer bytes that arrived with the
/// tunnel's handshake (to be delivered before anything read later).
pub type Tunnel = (TcpStream, Bytes);

/// Opens a tunnel to the current owner.
pub type Dialer = Arc<
    dyn Fn(TunnelRequest) -> Pin<Box<dyn Future<Output = std::io::Result<Tunnel>> + Send>>
        + Send
        + Sync,
>;

/// The route for new client connections.
#[derive(Clone)]
pub enum Route {
    /// This node owns the service: journal, then forward to `backend`.
    Owner {
        /// The local service.
        backend: SocketAddr,
    },
    /// Another node owns it: relay through a tunnel.
    Remote {
        /// Opens tunnels to the owner.
        dial: Dialer,
    },
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Owner { backend } => write!(f, "Owner({backend})"),
            Route::Remote { .. } => f.write_str("Remote"),
        }
    }
}

/// A connection handed to this proxy from outside its listener: a tunnel
/// from another node arriving at the owner.
pub struct Adopted {
    /// The client side (the tunnel).
    pub client: TcpStream,
    /// The client's address as the other node saw it.
    pub client_label: String,
    /// The service side: an already connected stream (a replayed
    /// connection) with answer bytes still owed to the client, or `None`
    /// to connect the local backend.
    pub backend: Option<(TcpStream, Bytes)>,
    /// The journaled connection it continues, or `None` for a new one.
    pub conn: Option<ConnId>,
    /// Answer bytes the client has already received on it.
    pub delivered: u64,
    /// The relaying node, when it can move the tunnel later.
    pub origin: Option<RelayOrigin>,
}
