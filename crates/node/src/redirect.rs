//! Tunnels leave an old owner's path at its hand-over. A client that
//! reaches the service through another node is relayed to the owner over
//! a tunnel; when the owner hands the service over, it tells that node
//! (`TunnelMove`) to dial the new owner itself, with how much of the
//! tunnel's input it journaled and where its answers end. The relaying
//! node's proxy moves the connection (see the proxy's `relay_move`), so
//! the old owner is out of the path — it may stop, or die, and those
//! clients keep their connections.
//!
//! A node that does not take the word within [`TAKE_WAIT`] (unreachable,
//! too much input in flight, its end of input already passed on) is
//! relayed through the old owner as before: never a guess.

use crate::context::NodeShared;
use anyhow::Result;
use replaymig_peer::{Authenticator, LinkError, Message, PeerLink};
use replaymig_proxy::{Redirect, Redirector, RelayMove};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Bound on the old owner's wait, inside its hand-over's hold, for a
/// relaying node to take a move.
const TAKE_WAIT: Duration = Duration::from_millis(500);

/// Bound on the relaying node's wait for the old owner's confirmation
/// (longer than [`TAKE_WAIT`]: an old owner that gave up has closed the
/// link by then).
const GO_WAIT: Duration = Duration::from_secs(2);

/// The old owner's side: tells relaying nodes, during the hand-over of
/// `service` to `to` under `epoch`, to dial the new owner themselves.
pub(crate) fn redirector(node: &NodeShared, service: &str, to: &str, epoch: u64) -> Redirector {
    let book: Arc<HashMap<String, SocketAddr>> = Arc::new(node.peer_book());
    let auth = node.auth.clone();
    let (service, to) = (service.to_string(), to.to_string());
    Arc::new(move |word: Redirect| {
        let (book, auth, service, to) = (book.clone(), auth.clone(), service.clone(), to.clone());
        Box::pin(async move {
            let addr = *book.get(&word.origin.node).ok_or_else(|| {
                std::io::Error::other(format!(
                    "node {:?} relays a client here, but its address is unknown",
                    word.origin.node
                ))
            })?;
            let told = tell(&auth, addr, &service, &to, epoch, &word);
            match tokio::time::timeout(TAKE_WAIT, told).await {
                Ok(told) => told,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("node {} did not take the move in time", word.origin.node),
                )),
            }
        })
    })
}

async fn tell(
    auth: &Authenticator,
    addr: SocketAddr,
    service: &str,
    to: &str,
    epoch: u64,
    word: &Redirect,
) -> std::io::Result<()> {
    let io = |e: LinkError| std::io::Error::other(e.to_string());
    let mut link = PeerLink::connect(addr, auth).await.map_err(io)?;
    link.send(Message::TunnelMove {
        service: service.to_string(),
        relay: word.origin.relay,
        to: to.to_string(),
        epoch,
        conn: word.conn,
        consumed: word.consumed,
        answers_end: word.answers_end,
    })
    .await
    .map_err(io)?;
    match link.recv().await.map_err(io)? {
        Message::TunnelMoveTaken => {
            // Confirmed from here on: this node ends its tunnel.
            link.send(Message::TunnelMoveGo).await.map_err(io)
        }
        Message::MigrateAbort { reason } => Err(std::io::Error::other(format!(
            "node {} refused the move: {reason}",
            word.origin.node
        ))),
        other => Err(std::io::Error::other(format!(
            "unexpected {} instead of tunnel_move_taken",
            other.name()
        ))),
    }
}

/// A `TunnelMove` as the relaying node receives it.
pub(crate) struct Word {
    pub service: String,
    pub relay: u64,
    pub to: String,
    pub epoch: u64,
    pub conn: u64,
    pub consumed: u64,
    pub answers_end: u64,
}

/// The relaying node's side: takes the move (or says why not), then the
/// proxy finishes it in the background.
pub(crate) async fn take(node: &NodeShared, mut link: PeerLink, word: Word) -> Result<()> {
    let taken = match check(node, &word).await {
        Ok(order) => {
            let host = &node.services[&word.service];
            host.proxy
                .move_relay(word.relay, order)
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("{e:#}")),
    };
    let taken = match taken {
        Ok(taken) => taken,
        Err(reason) => {
            tracing::info!(service = %word.service, relay = word.relay, from = %link.peer_node(), %reason, "not moving a relayed client; the old owner relays it on");
            link.send(Message::MigrateAbort { reason }).await?;
            return Ok(());
        }
    };
    // Dropping `taken` without `go` keeps the connection on the old tunnel.
    link.send(Message::TunnelMoveTaken).await?;
    match link.recv_timeout(GO_WAIT).await {
        Ok(Message::TunnelMoveGo) => {
            taken.go();
            tracing::info!(service = %word.service, relay = word.relay, to = %word.to, epoch = word.epoch, from = %link.peer_node(), "moving a relayed client to the new owner");
        }
        other => {
            tracing::info!(service = %word.service, relay = word.relay, from = %link.peer_node(), answer = ?other.map(|m| m.name()), "the old owner did not confirm the move; the client stays on its tunnel");
        }
    }
    Ok(())
}

/// The move's order, if the word fits what this node knows.
async fn check(node: &NodeShared, word: &Word) -> Result<RelayMove> {
    let Some(host) = node.services.get(&word.service) else {
        anyhow::bail!("no service {:?} here", word.service);
    };
    // The word comes after the old owner's commit: its epoch is newer than
    // the one this node routes by, or the same if the owner map got here
    // first. An older one is stale.
    let known = host.state.lock().await.epoch;
    anyhow::ensure!(
        word.epoch >= known,
        "the move is for epoch {}, this node routes by epoch {known}",
        word.epoch
    );
    Ok(RelayMove {
        conn: word.conn,
        consumed: word.consumed,
        answers_end: word.answers_end,
        dial: node.tunnels_to(&word.to, word.epoch, &word.service)?,
    })
}
