//! Tunnels, the owner's side: a client connection relayed from a node
//! that does not own the service arrives as `TunnelOpen` and is handed to
//! the service's proxy (the dialing side is `dial.rs`).

use crate::context::NodeShared;
use replaymig_peer::{Message, PeerLink};
use replaymig_proxy::{Adopted, RelayOrigin};

/// How long a tunnel waits for a rebuild after a restart to finish (the
/// dialing side gives up after 5 s).
const REBUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(4);
/// How often it looks.
const REBUILD_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// A `TunnelOpen` as the owner receives it.
pub(crate) struct Request {
    pub service: String,
    pub conn: Option<u64>,
    pub delivered: u64,
    pub client: String,
    pub epoch: u64,
    /// The dialing node's id of the connection, when it can move it to a
    /// later owner itself (`TunnelOpenMovable`).
    pub relay: Option<u64>,
}

impl Request {
    /// The request a `TunnelOpen` or `TunnelOpenMovable` makes (`None` for
    /// any other message).
    pub fn from_open(message: Message) -> Option<Request> {
        let (service, conn, delivered, client, epoch, relay) = match message {
            Message::TunnelOpen {
                service,
                conn,
                delivered,
                client,
                epoch,
            } => (service, conn, delivered, client, epoch, None),
            Message::TunnelOpenMovable {
                service,
                conn,
                delivered,
                client,
                epoch,
                relay,
            } => (service, conn, delivered, client, epoch, Some(relay)),
            _ => return None,
        };
        Some(Request {
            service,
            conn,
            delivered,
            client,
            epoch,
            relay,
        })
    }
}

/// The owner's side: hand the tunnel to the service's proxy as a
/// journaled connection (continuing a handed-over one if `conn` is set).
pub(crate) async fn accept(
    node: &NodeShared,
    mut link: PeerLink,
    request: Request,
) -> anyhow::Result<()> {
    let Request {
        service,
        conn,
        delivered,
        client,
        epoch,
        relay,
    } = request;
    let origin = relay.map(|relay| RelayOrigin {
        node: link.peer_node().to_string(),
        relay,
    });
    let Some(host) = node.services.get(&service) else {
        let _ = link
            .send(Message::MigrateAbort {
                reason: format!("no service {service:?} here"),
            })
            .await;
        anyhow::bail!("tunnel for unknown service {service:?}");
    };
    // A tunnel under the prepared epoch comes after the source's commit
    // (no other node routes by that epoch before it): a commit too — but
    // not of a hand-over being rebuilt after a restart: the tunnel waits,
    // bounded, for the rebuild to commit it.
    let deadline = tokio::time::Instant::now() + REBUILD_WAIT;
    loop {
        let (prepared, rebuilding) = {
            let state = host.state.lock().await;
            (state.prepared_epoch(), state.rebuilding)
        };
        if prepared != Some(epoch) {
            break;
        }
        if !rebuilding {
            crate::handover::commit_ownership(node, host, epoch).await;
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let reason = "the service is still being rebuilt here after a restart".to_string();
            let _ = link
                .send(Message::MigrateAbort {
                    reason: reason.clone(),
                })
                .await;
            anyhow::bail!("tunnel for {service} refused: {reason}");
        }
        tokio::time::sleep(REBUILD_POLL).await;
    }
    let backend = {
        let mut state = host.state.lock().await;
        // Fencing: only the owner feeds its service, and an owner that
        // hears of a newer epoch than its own is stale.
        let refusal = if state.owner != node.config.name {
            Some("this node does not own the service".to_string())
        } else if epoch > state.epoch {
            Some(format!(
                "this node owns epoch {}, the tunnel routes by {epoch}",
                state.epoch
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            drop(state);
            crate::telemetry::fenced(&service);
            let _ = link
                .send(Message::MigrateAbort {
                    reason: reason.clone(),
                })
                .await;
            anyhow::bail!("tunnel for {service} refused: {reason}");
        }
        match conn {
            Some(id) => match state.parked.remove(&id) {
                Some(parked) => Some(parked),
                None => {
                    drop(state);
                    let _ = link
                        .send(Message::MigrateAbort {
                            reason: format!("no handed-over connection {id}"),
                        })
                        .await;
                    anyhow::bail!("tunnel for unknown connection {id}");
                }
            },
            None => None,
        }
    };
    link.send(Message::TunnelReady).await?;
    let (stream, early) = link.into_raw();
    // What the dialing node may have to send again is bounded by it.
    replaymig_proxy::bound_tunnel_buffer(&stream, false)?;
    // The other side sends nothing before it read TunnelReady.
    anyhow::ensure!(
        early.is_empty(),
        "tunnel peer sent raw bytes before tunnel_ready"
    );
    host.proxy
        .adopt(Adopted {
            client: stream,
            client_label: client,
            backend,
            conn,
            delivered,
            origin,
        })
        .await?;
    Ok(())
}
