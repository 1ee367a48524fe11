//! One client connection: connect the backend, journal the connection, then
//! relay both directions. Client bytes are appended to the journal and only
//! forwarded once the journal accepted them (write-ahead); service bytes are
//! relayed back and counted, because every data record carries how many
//! answer bytes the client had received when it sent (`resp_before`).
//!
//! Each direction holds one bounded buffer and awaits the other side before
//! reading more, so a slow service slows the client (and vice versa) instead
//! of growing memory.
//!
//! A connection on a node that does not own the service relays without
//! journaling through a tunnel (see `route`). A journaled connection can be
//! handed over while the barrier holds the gate: its service side is
//! switched to a tunnel to the new owner and it stops journaling (the new
//! owner journals from then on).

use crate::answers::{AnswerJournaling, OpenSegment};
use crate::metrics::{ErrorKind, ProxyMetrics};
use crate::route::{Adopted, Route, TunnelRequest};
use bytes::Bytes;
use replaymig_journal::{ConnId, Journal, Record};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What every connection of one proxy shares.
pub(crate) struct Shared {
    /// Where client bytes are written before they are forwarded.
    pub journal: Journal,
    /// Where new clients go (owner: local backend; else: a tunnel).
    pub route: std::sync::RwLock<Route>,
    /// Bytes read per client or backend read (the per-direction buffer).
    pub read_buffer: usize,
    /// What the journal keeps of the answers (see `answers`).
    pub journal_responses: AnswerJournaling,
    /// Bound on the backend connect.
    pub connect_timeout: Duration,
    /// Service→client bytes delivered on all connections: `resp_total_before`.
    pub resp_total: AtomicU64,
    /// Answer bytes read from the service on journaled connections (they
    /// reach their clients even if a hand-over happens meanwhile): what
    /// snapshot marks and hand-overs count, and what "quiet" watches.
    pub received_total: AtomicU64,
    /// Counters.
    pub metrics: ProxyMetrics,
    /// Held shared by each record from its append to the end of its
    /// forward; the quiesce barrier takes it exclusively (see `barrier`).
    pub gate: Arc<tokio::sync::RwLock<()>>,
    /// Open journaled connections: answer counts for snapshot marks, and
    /// the handles a hand-over switches. Touched once per connection
    /// open/close, never per record.
    pub open: std::sync::Mutex<std::collections::HashMap<ConnId, Arc<ConnSlot>>>,
    /// Held while a record's answers are cut and the record is queued for
    /// the journal: the journal's order is the order of the cuts.
    pub order: tokio::sync::Mutex<()>,
    /// Journaled client records are forwarded in LSN order (`ordering`).
    pub forwards: crate::ordering::ForwardOrder,
    /// Connections with answer bytes not yet in a journaled segment (answer
    /// journaling): every client record cuts them first, so each answer the
    /// proxy delivered before it read a record is journaled before that
    /// record — the order replay reproduces across connections.
    pub dirty: std::sync::Mutex<Vec<Arc<ConnSlot>>>,
}

/// What the rest of the proxy can reach of one journaled connection.
pub(crate) struct ConnSlot {
    /// The journaled connection (0 when not journaled).
    pub conn: ConnId,
    /// Answer bytes delivered to the client (moved under `segment`'s lock
    /// when answers are journaled).
    pub delivered: AtomicU64,
    /// What the service said before any client input was forwarded (a
    /// greeting): recorded at snapshot points, so a connection re-created
    /// at a new owner can consume and check it instead of taking it for an
    /// answer.
    pub preamble: std::sync::Mutex<Preamble>,
    /// The answers since the last client record (answer journaling).
    pub segment: std::sync::Mutex<OpenSegment>,
    /// The client's address.
    pub client: String,
    /// Cleared by a hand-over: the new owner journals from then on.
    pub journaling: AtomicBool,
    /// The service side's writing half; replaced by a hand-over.
    pub backend_write: tokio::sync::Mutex<OwnedWriteHalf>,
    /// A replacement reading half (and bytes it already carried), taken
    /// by the answers direction when `switched` fires.
    pub new_backend_read: std::sync::Mutex<Option<(OwnedReadHalf, Bytes)>>,
    /// Tells the answers direction to take `new_backend_read`.
    pub switched: Notify,
    /// Client reads forwarded to the service so far.
    pub forwarded: AtomicU64,
    /// Value of `forwarded` when answer bytes last came back: equal to
    /// `forwarded` once the service answered after the last forward. The
    /// barrier waits for that on every connection, not only for silence,
    /// so a slow answer is not mistaken for a quiet service.
    pub answered_after: AtomicU64,
    /// Answer bytes read from the service side (≥ `delivered`: the rest is
    /// on its way to the client).
    pub received: AtomicU64,
}

/// The answer bytes of a connection before its first forwarded input.
#[derive(Default)]
pub(crate) struct Preamble {
    /// Their length.
    pub len: u64,
    hasher: crc32fast::Hasher,
}

impl Preamble {
    /// CRC-32 of the bytes so far.
    pub fn crc32(&self) -> u32 {
        self.hasher.clone().finalize()
    }
}

impl ConnSlot {
    /// The service has answered since the last input forwarded to it.
    pub fn answered_last_input(&self) -> bool {
        self.answered_after.load(Ordering::Acquire) >= self.forwarded.load(Ordering::Acquire)
    }
}

/// Removes a connection from the open set however its task ends.
struct OpenGuard<'a> {
    shared: &'a Shared,
    conn: ConnId,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .open
            .lock()
            .expect("poisoned")
            .remove(&self.conn);
    }
}

/// A failure that ends a connection, with the metric kind it is counted as.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("backend {addr} unreachable: {source}")]
    BackendConnect {
        addr: String,
        source: std::io::Error,
    },
    #[error("backend I/O: {0}")]
    BackendIo(std::io::Error),
    #[error("client I/O: {0}")]
    ClientIo(std::io::Error),
    #[error("journal append failed: {0}")]
    Journal(#[from] replaymig_journal::JournalError),
}

impl ConnError {
    fn kind(&self) -> ErrorKind {
        match self {
            ConnError::BackendConnect { .. } => ErrorKind::BackendConnect,
            ConnError::BackendIo(_) => ErrorKind::BackendIo,
            ConnError::ClientIo(_) => ErrorKind::ClientIo,
            ConnError::Journal(_) => ErrorKind::JournalAppend,
        }
    }
}

/// Decrements the active-connections gauge however the task ends
/// (including being aborted at the drain timeout).
struct ActiveGuard<'a>(&'a ProxyMetrics);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.decrement(1.0);
    }
}

/// How a connection starts.
pub(crate) enum Start {
    /// Accepted by the listener.
    Accepted(TcpStream, SocketAddr),
    /// Handed in from outside (a tunnel arriving at the owner).
    Adopted(Adopted),
}

/// Serves one client until both directions are done. `stop` asks it to stop
/// taking client input at a safe point (graceful shutdown): it then
/// half-closes the backend and relays the remaining answers.
pub(crate) async fn serve(start: Start, shared: Arc<Shared>, stop: CancellationToken) {
    shared.metrics.active.increment(1.0);
    let _active = ActiveGuard(&shared.metrics);
    let label = match &start {
        Start::Accepted(_, peer) => peer.to_string(),
        Start::Adopted(a) => a.client_label.clone(),
    };
    if let Err(e) = relay(start, &shared, &stop).await {
        shared.metrics.error(e.kind());
        match e {
            ConnError::BackendConnect { .. } | ConnError::Journal(_) => {
                tracing::warn!(peer = %label, error = %e, "client connection closed")
            }
            _ => tracing::debug!(peer = %label, error = %e, "client connection ended"),
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

/// The service side of a new connection, per the route, and whether it is
/// journaled. `setup` (a gate permit) is given up before dialing a tunnel:
/// a relay to another owner does not journal, and a barrier must not wait
/// for a remote dial.
async fn open_backend(
    shared: &Shared,
    label: &str,
    setup: &mut Option<tokio::sync::OwnedRwLockReadGuard<()>>,
) -> Result<(TcpStream, Bytes, bool), ConnError> {
    let route = shared.route.read().expect("poisoned").clone();
    match route {
        Route::Owner { backend } => {
            Ok((connect_backend(shared, backend).await?, Bytes::new(), true))
        }
        Route::Remote { dial } => {
            setup.take();
            let request = TunnelRequest {
                conn: None,
                delivered: 0,
                client: label.to_string(),
            };
            let (stream, owed) =
                dial(request)
                    .await
                    .map_err(|source| ConnError::BackendConnect {
                        addr: "the owner's tunnel".into(),
                        source,
                    })?;
            Ok((stream, owed, false))
        }
    }
}

async fn relay(start: Start, shared: &Shared, stop: &CancellationToken) -> Result<(), ConnError> {
    // Set up under a gate permit: a barrier or a hand-over sees a journaled
    // connection either not begun or fully registered, never in between
    // (a route read before a hand-over must not journal after it).
    let mut setup = Some(shared.gate.clone().read_owned().await);
    // Work out both sides, the connection id and where counting starts.
    let (client, label, backend, owed, existing, delivered, journaling) = match start {
        Start::Accepted(client, peer) => {
            let label = peer.to_string();
            let (backend, owed, journaling) = open_backend(shared, &label, &mut setup).await?;
            (client, label, backend, owed, None, 0, journaling)
        }
        Start::Adopted(a) => {
            let (backend, owed, journaling) = match (a.backend, a.conn) {
                (Some((stream, owed)), _) => (stream, owed, true),
                // A new client tunneled here: to the local service, or —
                // when it arrived during a hand-over that gave the service
                // away before it was set up — on to the new owner, like a
                // client accepted now.
                (None, None) => open_backend(shared, &a.client_label, &mut setup).await?,
                (None, Some(_)) => {
                    return Err(ConnError::BackendConnect {
                        addr: "local service".into(),
                        source: std::io::Error::other(
                            "a handed-over connection arrived without its service side",
                        ),
                    })
                }
            };
            (
                a.client,
                a.client_label,
                backend,
                owed,
                a.conn,
                a.delivered,
                journaling,
            )
        }
    };
    let _ = client.set_nodelay(true);
    let conn = match (journaling, existing) {
        (false, _) => 0,
        (true, Some(conn)) => conn,
        (true, None) => shared.journal.append(Record::opened(label.clone())).await?,
    };
    shared.metrics.total.increment(1);

    let (client_read, client_write) = client.into_split();
    let (backend_read, backend_write) = backend.into_split();
    let slot = Arc::new(ConnSlot {
        conn,
        delivered: AtomicU64::new(delivered),
        preamble: Default::default(),
        segment: std::sync::Mutex::new(OpenSegment::new(delivered, shared.journal_responses)),
        client: label,
        journaling: AtomicBool::new(journaling),
        backend_write: tokio::sync::Mutex::new(backend_write),
        new_backend_read: std::sync::Mutex::new(None),
        switched: Notify::new(),
        forwarded: AtomicU64::new(0),
        answered_after: AtomicU64::new(0),
        received: AtomicU64::new(delivered),
    });
    let _registered = journaling.then(|| {
        shared
            .open
            .lock()
            .expect("poisoned")
            .insert(conn, slot.clone());
        OpenGuard { shared, conn }
    });
    // Released before the relay takes per-record permits (the lock is fair:
    // holding one while asking for another could deadlock behind a barrier).
    drop(setup);
    // Either direction failing ends the other too.
    let failed = stop.child_token();
    let upstream = async {
        let r = client_to_service(client_read, &slot, conn, shared, &failed, stop).await;
        if r.is_err() {
            failed.cancel();
        }
        r
    };
    let downstream = async {
        tokio::select! {
            r = service_to_client(backend_read, owed, client_write, &slot, shared) => {
                if r.is_err() {
                    failed.cancel();
                }
                r
            }
            // Only a failure (not a graceful stop) cuts the answers short.
            _ = wait_failed(&failed, stop) => Ok(()),
        }
    };
    let (up, down) = tokio::join!(upstream, downstream);
    let closed = if slot.journaling.load(Ordering::Acquire) {
        // Not under the gate: other connections' segments are left to the
        // next client record (or barrier), which is.
        crate::ordering::journal_record(shared, &slot, false, |delivered, _| {
            Record::closed(conn, delivered)
        })
        .await
        .map(|_| ())
    } else {
        Ok(())
    };
    up?;
    down?;
    closed?;
    Ok(())
}

/// Resolves when `failed` was cancelled by a direction's error rather than
/// by the graceful `stop` (which cancels it too, being its parent).
async fn wait_failed(failed: &CancellationToken, stop: &CancellationToken) {
    failed.cancelled().await;
    if stop.is_cancelled() {
        std::future::pending::<()>().await;
    }
}

/// Client → journal → service, one read at a time. `stop` (cancelled by a
/// graceful shutdown or by the other direction failing) ends it between
/// records; a forward in progress is cut short only by a failure.
async fn client_to_service(
    mut client: OwnedReadHalf,
    slot: &Arc<ConnSlot>,
    conn: ConnId,
    shared: &Shared,
    stop: &CancellationToken,
    graceful: &CancellationToken,
) -> Result<(), ConnError> {
    // One fixed buffer per direction; each read is copied once into an
    // exactly-sized `Bytes` that the journal and the backend write share.
    // (Splitting a growable buffer instead would allocate a fresh
    // read-sized buffer per read while the journal still holds the last.)
    let mut buf = vec![0u8; shared.read_buffer];
    loop {
        let n = tokio::select! {
            biased;
            // Stop between records, never between append and forward; the
            // service then sees end-of-input exactly as a client FIN.
            _ = stop.cancelled() => 0,
            read = client.read(&mut buf) => read.map_err(ConnError::ClientIo)?,
        };
        // Journal and forward under one gate permit: a barrier (and a
        // hand-over) sees either both or neither.
        let _permit = shared.gate.read().await;
        // Causality (and the answers since the last record, if they are
        // journaled) is cut under the permit: a barrier that cuts every
        // segment never leaves one in a task waiting for the gate. Taken
        // after the read, it may count answers the client got just after
        // sending: a stricter bound, never a looser one.
        let journaling = slot.journaling.load(Ordering::Acquire);
        if n == 0 {
            // End of input is input too (and forwarded in its turn).
            let _ticket = if journaling {
                let ticket =
                    crate::ordering::journal_input(shared, slot, |_, _| Record::half_closed(conn))
                        .await?;
                in_order(&ticket, shared).await;
                Some(ticket)
            } else {
                None
            };
            let _ = slot.backend_write.lock().await.shutdown().await;
            return Ok(());
        }
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        let ticket = if journaling {
            let ticket = crate::ordering::journal_input(shared, slot, |resp_before, resp_total| {
                Record::data(conn, resp_before, resp_total, chunk.clone())
            })
            .await?;
            in_order(&ticket, shared).await;
            Some(ticket)
        } else {
            None
        };
        let mut backend = slot.backend_write.lock().await;
        // Counted before the write: an answer to it can only come after,
        // so "answered since the last input" never misses a fast answer.
        slot.forwarded.fetch_add(1, Ordering::AcqRel);
        tokio::select! {
            written = backend.write_all(&chunk) => written.map_err(ConnError::BackendIo)?,
            // The answers side failed (e.g. the client reset): a service
            // that is not reading must not pin this task forever.
            _ = wait_failed(stop, graceful) => {
                return Err(ConnError::BackendIo(std::io::Error::other(
                    "forward abandoned: the connection failed",
                )))
            }
        }
        if ticket.is_some() && shared.forwards.settled() {
            shared.forwards.forwarded(slot);
        }
        drop(ticket);
        shared.metrics.client_to_service.increment(n as u64);
    }
}

/// Waits for the record's turn to be forwarded (see `ordering`); counts a
/// forward that could not wait for it.
async fn in_order(ticket: &crate::ordering::ForwardTicket<'_>, shared: &Shared) {
    if !ticket.turn().await {
        shared.metrics.out_of_order_forwards.increment(1);
    }
}

/// Service → client, counting what was delivered. `owed`: answer bytes
/// that arrived with the service side's setup, delivered first. A hand-over
/// swaps the reading half (see `ConnSlot`).
async fn service_to_client(
    mut backend: OwnedReadHalf,
    owed: Bytes,
    mut client: OwnedWriteHalf,
    slot: &Arc<ConnSlot>,
    shared: &Shared,
) -> Result<(), ConnError> {
    receive(owed.len(), slot, shared);
    deliver(&mut client, &owed, slot, shared).await?;
    let mut buf = vec![0u8; shared.read_buffer];
    loop {
        let n = tokio::select! {
            biased;
            _ = slot.switched.notified() => {
                let taken = slot.new_backend_read.lock().expect("poisoned").take();
                if let Some((read, owed)) = taken {
                    backend = read;
                    receive(owed.len(), slot, shared);
                    deliver(&mut client, &owed, slot, shared).await?;
                }
                continue;
            }
            n = backend.read(&mut buf) => n.map_err(ConnError::BackendIo)?,
        };
        if n == 0 {
            let _ = client.shutdown().await;
            return Ok(());
        }
        receive(n, slot, shared);
        deliver(&mut client, &buf[..n], slot, shared).await?;
    }
}

/// Counts answer bytes as they come from the service side.
fn receive(n: usize, slot: &ConnSlot, shared: &Shared) {
    if n == 0 {
        return;
    }
    slot.received.fetch_add(n as u64, Ordering::AcqRel);
    slot.answered_after
        .store(slot.forwarded.load(Ordering::Acquire), Ordering::Release);
    if slot.journaling.load(Ordering::Acquire) {
        shared.received_total.fetch_add(n as u64, Ordering::AcqRel);
        if shared.forwards.settled() {
            shared.forwards.answered();
        }
    }
}

/// Writes answer bytes to the client and counts them.
async fn deliver(
    client: &mut OwnedWriteHalf,
    bytes: &[u8],
    slot: &Arc<ConnSlot>,
    shared: &Shared,
) -> Result<(), ConnError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let n = bytes.len() as u64;
    // Counted (and folded into the journal's answer segment) as the write
    // to the client starts: a client that reacts to these bytes on another
    // connection must find them journaled before its next record. Only
    // journaled connections count: the journal-wide figure is about its
    // own records.
    let journaling = slot.journaling.load(Ordering::Acquire);
    if journaling && slot.forwarded.load(Ordering::Acquire) == 0 {
        // Only while everything delivered is greeting (not on a connection
        // continued from another owner, which starts with answers).
        let mut preamble = slot.preamble.lock().expect("poisoned");
        if preamble.len == slot.delivered.load(Ordering::Acquire) {
            preamble.len += n;
            preamble.hasher.update(bytes);
        }
    }
    if journaling && shared.journal_responses != AnswerJournaling::Off {
        let mut segment = slot.segment.lock().expect("poisoned");
        if segment.is_empty() {
            shared.dirty.lock().expect("poisoned").push(slot.clone());
        }
        segment.fold(bytes, &slot.delivered);
    } else {
        slot.delivered.fetch_add(n, Ordering::AcqRel);
    }
    // After the fold: whoever counts these bytes in `resp_total_before`
    // finds their segment among the pending ones (`ordering`).
    if journaling {
        shared.resp_total.fetch_add(n, Ordering::AcqRel);
    }
    client.write_all(bytes).await.map_err(ConnError::ClientIo)?;
    shared.metrics.service_to_client.increment(n);
    Ok(())
}

/// Ends the connection's answer segment at a client record: the record
/// that journals it (if answers are journaled and any came) and the answer
/// bytes delivered so far (the client record's `resp_before`).
pub(crate) fn cut_answers(slot: &ConnSlot, shared: &Shared) -> (Option<Record>, u64) {
    // Nothing was folded (answers not journaled, or not on this
    // connection): no lock on the per-read path.
    if shared.journal_responses == AnswerJournaling::Off || !slot.journaling.load(Ordering::Acquire)
    {
        return (None, slot.delivered.load(Ordering::Acquire));
    }
    let (record, delivered) = slot
        .segment
        .lock()
        .expect("poisoned")
        .cut(slot.conn, shared.journal_responses);
    if record.is_some() {
        shared.metrics.answer_segments.increment(1);
    }
    (record, delivered)
}
