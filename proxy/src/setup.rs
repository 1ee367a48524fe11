//! Setting a connection up before it relays: which start it had, where its
//! service side is (the local backend or a tunnel to the owner), what
//! answer bytes are already owed to its client, and whether this proxy
//! journals it. All of it under a gate permit, so a barrier or a hand-over
//! sees a journaled connection either not begun or fully registered.

use crate::connection::ConnError;
use crate::handover::{ServiceHalf, ServiceReader, ServiceWriter};
use crate::route::{Adopted, RelayOrigin, Route, TunnelRequest};
use crate::shared::{ConnSlot, Shared};
use bytes::Bytes;
use replaymig_journal::{ConnId, Record};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::OwnedRwLockReadGuard;

/// How a connection starts.
pub(crate) enum Start {
    /// Accepted by the listener.
    Accepted(TcpStream, SocketAddr),
    /// Handed in from outside (a tunnel arriving at the owner).
    Adopted(Adopted),
}

impl Start {
    /// Who the client is, for logs and the journal's `opened` record.
    pub fn label(&self) -> String {
        match self {
            Start::Accepted(_, peer) => peer.to_string(),
            Start::Adopted(a) => a.client_label.clone(),
        }
    }
}

/// What a start brings, whichever it was.
struct Arrival {
    /// The client side: an accepted socket or an adopted tunnel.
    client: TcpStream,
    /// The client's address (as the first proxy saw it).
    label: String,
    /// The journaled connection an adopted one continues.
    continues: Option<ConnId>,
    /// Answer bytes the client already had (from a previous owner).
    delivered: u64,
    /// A service side that came with the start (a replayed connection),
    /// with the answer bytes it still owes the client.
    service: Option<(TcpStream, Bytes)>,
    /// The node that relays an adopted tunnel, if it can move it later.
    origin: Option<RelayOrigin>,
}

impl From<Start> for Arrival {
    fn from(start: Start) -> Self {
        match start {
            Start::Accepted(client, peer) => Arrival {
                client,
                label: peer.to_string(),
                continues: None,
                delivered: 0,
                service: None,
                origin: None,
            },
            Start::Adopted(a) => Arrival {
                client: a.client,
                label: a.client_label,
                continues: a.conn,
                delivered: a.delivered,
                service: a.backend,
                origin: a.origin,
            },
        }
    }
}

/// A connection's service side as the route gave it.
struct ServiceSide {
    /// The connected stream (local backend, tunnel, replayed connection).
    stream: TcpStream,
    /// Answer bytes that came with it, owed to the client first.
    owed: Bytes,
    /// Whether this proxy journals the connection (it owns the service).
    journaling: bool,
    /// This proxy's id of the connection as a relay (its tunnel's
    /// `TunnelRequest::relay`); 0 when it is not relayed.
    relay: u64,
}

/// A connection set up (and journaled, when this proxy owns the service)
/// but not yet relaying: everything the relay starts from, by name.
pub(crate) struct Setup {
    /// The client side: an accepted socket or an adopted tunnel.
    client: TcpStream,
    /// The client's address (as the first proxy saw it).
    label: String,
    /// The service side.
    service: ServiceSide,
    /// The journaled connection (0 when not journaled): new, or the one an
    /// adopted connection continues.
    conn: ConnId,
    /// Answer bytes the client already had (from a previous owner): where
    /// this proxy's answer counting starts.
    delivered: u64,
    /// The node that relays an adopted tunnel, if it can move it later.
    origin: Option<RelayOrigin>,
    /// The gate permit the setup runs under, given up before a tunnel dial
    /// (see `open_service`) and once the connection is registered.
    permit: Option<OwnedRwLockReadGuard<()>>,
}

/// A set-up connection split for its two directions, registered in the
/// open set while journaled.
pub(crate) struct Registered<'a> {
    /// What the client sends (client→service direction).
    pub client_read: OwnedReadHalf,
    /// Where the answers go (service→client direction).
    pub client_write: OwnedWriteHalf,
    /// What the barrier and a hand-over reach of the connection.
    pub slot: Arc<ConnSlot>,
    /// Keeps the connection in the open set until the relay ends.
    pub _open: Option<OpenGuard<'a>>,
    /// Keeps it among the relayed connections (if it is one, now or after
    /// a hand-over) until the relay ends.
    pub _relayed: RelayGuard<'a>,
}

/// Removes a connection from the relayed set however its task ends.
pub(crate) struct RelayGuard<'a> {
    shared: &'a Shared,
    relay: u64,
}

impl Drop for RelayGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .relays
            .lock()
            .expect("poisoned")
            .remove(&self.relay);
    }
}

/// Removes a connection from the open set however its task ends — and
/// from the relayed set, under the open set's lock: a hand-over registers
/// a switched connection as relayed under that lock, only while it is
/// still open, so none is left registered after its task ended.
pub(crate) struct OpenGuard<'a> {
    shared: &'a Shared,
    conn: ConnId,
    relay: u64,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        let mut open = self.shared.open.lock().expect("poisoned");
        open.remove(&self.conn);
        self.shared
            .relays
            .lock()
            .expect("poisoned")
            .remove(&self.relay);
    }
}

impl Setup {
    /// Opens the service side per the start and the route, and journals a
    /// new connection. The gate permit is taken first: a route read before
    /// a hand-over must not journal after it.
    pub async fn open(start: Start, shared: &Shared) -> Result<Setup, ConnError> {
        let mut permit = Some(shared.gate.clone().read_owned().await);
        let arrival = Arrival::from(start);
        let service = match (arrival.service, arrival.continues) {
            (Some((stream, owed)), _) => ServiceSide {
                stream,
                owed,
                journaling: true,
                relay: 0,
            },
            // A new client, accepted or tunneled here: to the local
            // service, or — when a tunneled one arrived during a hand-over
            // that gave the service away before it was set up — on to the
            // new owner, like a client accepted now.
            (None, None) => open_service(shared, &arrival.label, &mut permit).await?,
            (None, Some(_)) => {
                return Err(ConnError::BackendConnect {
                    addr: "local service".into(),
                    source: std::io::Error::other(
                        "a handed-over connection arrived without its service side",
                    ),
                })
            }
        };
        let client = arrival.client;
        let _ = client.set_nodelay(true);
        let conn = match (service.journaling, arrival.continues) {
            (false, _) => 0,
            (true, Some(conn)) => conn,
            (true, None) => {
                shared
                    .journal
                    .append(Record::opened(arrival.label.clone()))
                    .await?
            }
        };
        Ok(Setup {
            client,
            label: arrival.label,
            service,
            conn,
            delivered: arrival.delivered,
            origin: arrival.origin,
            permit,
        })
    }

    /// Splits both sides, builds the connection's slot, registers it in
    /// the open set when journaled, and then gives up the gate permit
    /// (before the relay takes per-record permits: the lock is fair, so
    /// holding one while asking for another could deadlock behind a
    /// barrier).
    pub fn register(self, shared: &Shared) -> Registered<'_> {
        let Setup {
            client,
            label,
            service,
            conn,
            delivered,
            origin,
            permit,
        } = self;
        let (client_read, client_write) = client.into_split();
        let (service_read, service_write) = service.stream.into_split();
        let journaling = service.journaling;
        let tunneled = service.relay != 0;
        // Every connection has a relay id: one journaled now is relayed
        // after a hand-over, and a later owner may move it.
        let relay = if tunneled {
            service.relay
        } else {
            shared.next_relay.fetch_add(1, Ordering::Relaxed)
        };
        let slot = Arc::new(ConnSlot {
            conn,
            answer_bytes_delivered: AtomicU64::new(delivered),
            answer_bytes_read_from_service: AtomicU64::new(delivered),
            preamble: Default::default(),
            segment: std::sync::Mutex::new(crate::answers::OpenSegment::new(
                delivered,
                shared.journal_responses,
            )),
            client: label,
            journaling: AtomicBool::new(journaling),
            service_write: ServiceHalf::new(if tunneled {
                ServiceWriter::tunnel(service_write, b"")
            } else {
                ServiceWriter::local(service_write)
            }),
            service_read: ServiceHalf::new(ServiceReader {
                half: Some(service_read),
                owed: service.owed,
            }),
            forwarded: AtomicU64::new(0),
            answered_after: AtomicU64::new(0),
            evict: Default::default(),
            relay,
            origin,
            input_bytes_forwarded: AtomicU64::new(0),
            tunnel_end: Default::default(),
            answers_ended: AtomicBool::new(false),
            drain_on_evict: AtomicBool::new(false),
            reset_client: AtomicBool::new(false),
        });
        if tunneled {
            shared
                .relays
                .lock()
                .expect("poisoned")
                .insert(relay, slot.clone());
        }
        let open = journaling.then(|| {
            shared
                .open
                .lock()
                .expect("poisoned")
                .insert(conn, slot.clone());
            OpenGuard {
                shared,
                conn,
                relay,
            }
        });
        drop(permit);
        Registered {
            client_read,
            client_write,
            _relayed: RelayGuard {
                shared,
                relay: slot.relay,
            },
            slot,
            _open: open,
        }
    }
}

async fn connect_backend(shared: &Shared, addr: SocketAddr) -> Result<TcpStream, ConnError> {
    let stream = tokio::time::timeout(shared.connect_timeout, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })
        .map_err(|source| ConnError::BackendConnect {
            addr: addr.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The service side of a new connection, per the route. `permit` is given
/// up before dialing a tunnel: a relay to another owner does not journal,
/// and a barrier must not wait for a remote dial.
async fn open_service(
    shared: &Shared,
    label: &str,
    permit: &mut Option<OwnedRwLockReadGuard<()>>,
) -> Result<ServiceSide, ConnError> {
    let route = shared.route.read().expect("poisoned").clone();
    match route {
        Route::Owner { backend } => Ok(ServiceSide {
            stream: connect_backend(shared, backend).await?,
            owed: Bytes::new(),
            journaling: true,
            relay: 0,
        }),
        Route::Remote { dial } => {
            permit.take();
            let relay = shared.next_relay.fetch_add(1, Ordering::Relaxed);
            let request = TunnelRequest {
                conn: None,
                delivered: 0,
                client: label.to_string(),
                relay,
            };
            let (stream, owed) =
                dial(request)
                    .await
                    .map_err(|source| ConnError::BackendConnect {
                        addr: "the owner's tunnel".into(),
                        source,
                    })?;
            Ok(ServiceSide {
                stream,
                owed,
                journaling: false,
                relay,
            })
        }
    }
}
