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
    /// An owner whose registration lapsed (cut off from etcd, say) is
    /// still dialed at its last known address: membership says who is
    /// alive, not who owns — the epoch fence decides that.
    Registered {
        /// The owner's name.
        name: String,
        /// The registry's members.
        members: replaymig_fleet::MemberMap,
        /// Where it was last registered.
        last_known: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    },
}

impl PeerAddress {
    /// Node `name`'s address as fleet mode finds it.
    pub fn registered(name: &str, members: &replaymig_fleet::MemberMap) -> PeerAddress {
        let known = members.get(name).and_then(|m| m.value.peer.parse().ok());
        PeerAddress::Registered {
            name: name.to_string(),
            members: members.clone(),
            last_known: Arc::new(std::sync::Mutex::new(known)),
        }
    }

    fn resolve(&self) -> std::io::Result<SocketAddr> {
        match self {
            PeerAddress::Fixed(addr) => Ok(*addr),
            PeerAddress::Registered {
                name,
                members,
                last_known,
            } => {
                let mut last = last_known.lock().expect("poisoned");
                if let Some(now) = members.get(name).and_then(|m| m.value.peer.parse().ok()) {
                    *last = Some(now);
                }
                last.ok_or_else(|| {
                    std::io::Error::other(format!(
                        "node {name} owns the service but was never seen registered in the fleet"
                    ))
                })
            }
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
    // Movable: the owner's hand-over can tell this node to dial the next
    // owner itself (see `redirect`).
    link.send(Message::TunnelOpenMovable {
        service: service.to_string(),
        conn: request.conn,
        delivered: request.delivered,
        client: request.client,
        epoch,
        relay: request.relay,
    })
    .await
    .map_err(io)?;
    match link.recv_timeout(TUNNEL_TIMEOUT).await.map_err(io)? {
        Message::TunnelReady => {
            let (stream, owed) = link.into_raw();
            // What a move may have to send again is bounded by it.
            replaymig_proxy::bound_tunnel_buffer(&stream, true)?;
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
