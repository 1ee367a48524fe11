//! The peer listener: authenticated connections from other nodes, each
//! dispatched on its first message — a migration to this node, a tunnel
//! to a service it owns, an old owner's word to move a relayed tunnel, or
//! a question about who owns a service.

use crate::context::NodeShared;
use crate::listener::{self, Limits};
use crate::{handover, redirect, tunnel};
use replaymig_peer::{Message, PeerLink};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bounds of the peer listener: peer connections in their handshake or
/// request at once. A tunnel's ends as soon as the proxy adopts it;
/// migrations and owner queries are few.
const PEER_LISTENER: Limits = Limits {
    name: "peer",
    max_connections: 1024,
    drain_timeout: listener::DRAIN_TIMEOUT,
};

/// The peer listener: authenticates each connection and dispatches on its
/// first message (see `listener` for the bound, backoff and drain).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<NodeShared>, stop: CancellationToken) {
    listener::serve(listener, PEER_LISTENER, stop, move |stream, addr, stop| {
        peer_connection(stream, addr, shared.clone(), stop)
    })
    .await;
}

/// One peer connection: the handshake and the first message (dropped if
/// the node shuts down before they are through), then the request.
async fn peer_connection(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<NodeShared>,
    stop: CancellationToken,
) {
    let request = async {
        let mut link = match PeerLink::accept(stream, &shared.auth).await {
            Ok(link) => {
                crate::telemetry::peer_link(link.peer_node(), true);
                link
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "peer refused");
                return None;
            }
        };
        match link.recv_timeout(Duration::from_secs(10)).await {
            Ok(first) => Some((link, first)),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "peer sent no request");
                None
            }
        }
    };
    let (link, first) = tokio::select! {
        request = request => match request {
            Some(request) => request,
            None => return,
        },
        _ = stop.cancelled() => return,
    };
    let outcome = match first {
        Message::MigrateBegin {
            service,
            epoch,
            verify_answers,
        } => {
            crate::destination::migrate_in(&shared, link, service, epoch, verify_answers, stop)
                .await
        }
        open @ (Message::TunnelOpen { .. } | Message::TunnelOpenMovable { .. }) => {
            let request = tunnel::Request::from_open(open).expect("a tunnel opening");
            tunnel::accept(&shared, link, request).await
        }
        Message::TunnelMove {
            service,
            relay,
            to,
            epoch,
            conn,
            consumed,
            answers_end,
        } => {
            let word = redirect::Word {
                service,
                relay,
                to,
                epoch,
                conn,
                consumed,
                answers_end,
            };
            redirect::take(&shared, link, word).await
        }
        Message::MigrateRequest {
            service,
            to,
            method,
            unverified,
        } => crate::forward::serve(&shared, link, service, to, method, unverified).await,
        Message::JournalQuery { service } => {
            crate::fleet_view::answer_journal_query(&shared, link, &service).await
        }
        Message::OwnerQuery { service } => {
            handover::answer_owner_query(&shared, link, &service).await
        }
        other => Err(anyhow::anyhow!("unexpected first message {}", other.name())),
    };
    if let Err(e) = outcome {
        tracing::warn!(%addr, error = %format!("{e:#}"), "peer request failed");
    }
}
