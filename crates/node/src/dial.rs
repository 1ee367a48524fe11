//! Tunnels, the dialing side: a client connection relayed from a node that
//! does not own the service to the one that does, over an authenticated
//! peer connection that turns into a raw byte stream after `TunnelOpen` /
//! `TunnelReady` (the owner's side is `tunnel.rs`).

use replaymig_peer::{Authenticator, LinkError, Message, PeerLink};
use replaymig_proxy::{Dialer, Tunnel, TunnelRequest};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Bound on the tunnel handshake.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the owner listens for peers.
#[derive(Clone)]
pub enum PeerAddress {
    /// A configured address (`[peers]`).
    Fixed(SocketAddr),
    /// Fleet mode: looked up in the member map at each dial, so an owner
    /// that registers (or moves) after the route was set is still found.
    Registered {
        /// The owner's name.
        name: String,
        /// The registry's members.
        members: replaymig_fleet::MemberMap,
    },
}

impl PeerAddress {
    fn resolve(&self) -> std::io::Result<SocketAddr> {
        match self {
            PeerAddress::Fixed(addr) => Ok(*addr),
            PeerAddress::Registered { name, members } => members
                .get(name)
                .and_then(|m| m.value.peer.parse().ok())
                .ok_or_else(|| {
                    std::io::Error::other(format!(
                        "node {name} owns the service but is not registered in the fleet"
                    ))
                }),
        }
    }
}

/// A dialer that opens tunnels for `service` to the node at `owner`, which
/// owns it under `epoch`.
pub fn dialer(auth: Authenticator, owner: PeerAddress, service: String, epoch: u64) -> Dialer {
    Arc::new(move |request: TunnelRequest| {
        let (auth, service, owner) = (auth.clone(), service.clone(), owner.clone());
        Box::pin(async move {
            let owner = owner.resolve()?;
            open(&auth, owner, &service, epoch, request).await
        })
    })
}

async fn open(
    auth: &Authenticator,
    owner: SocketAddr,
    service: &str,
    epoch: u64,
    request: TunnelRequest,
) -> std::io::Result<Tunnel> {
    let io = |e: LinkError| std::io::Error::other(e.to_string());
    let mut link = PeerLink::connect(owner, auth).await.map_err(io)?;
    link.send(Message::TunnelOpen {
        service: service.to_string(),
        conn: request.conn,
        delivered: request.delivered,
        client: request.client,
        epoch,
    })
    .await
    .map_err(io)?;
    match link.recv_timeout(TUNNEL_TIMEOUT).await.map_err(io)? {
        Message::TunnelReady => {
            let (stream, owed) = link.into_raw();
            Ok((stream, owed.freeze()))
        }
        Message::MigrateAbort { reason } | Message::Goodbye { reason } => Err(
            std::io::Error::other(format!("owner refused the tunnel: {reason}")),
        ),
        other => Err(std::io::Error::other(format!(
            "unexpected {} instead of tunnel_ready",
            other.name()
        ))),
    }
}
