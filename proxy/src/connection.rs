//! One client connection: connect the backend, journal the connection, then
//! relay both directions. Client bytes are appended to the journal and only
//! forwarded once the journal accepted them (write-ahead); service bytes are
//! relayed back and counted, because every data record carries how many
//! answer bytes the client had received when it sent (`resp_before`).
//!
//! Each direction holds one bounded buffer and awaits the other side before
//! reading more, so a slow service slows the client (and vice versa) instead
//! of growing memory.

use crate::metrics::{ErrorKind, ProxyMetrics};
use bytes::Bytes;
use replaymig_journal::{ConnId, Journal, Record};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// What every connection of one proxy shares.
pub(crate) struct Shared {
    /// Where client bytes are written before they are forwarded.
    pub journal: Journal,
    /// The service every client is relayed to.
    pub backend: SocketAddr,
    /// Bytes read per client or backend read (the per-direction buffer).
    pub read_buffer: usize,
    /// Bound on the backend connect.
    pub connect_timeout: Duration,
    /// Service→client bytes delivered on all connections: `resp_total_before`.
    pub resp_total: AtomicU64,
    /// Counters.
    pub metrics: ProxyMetrics,
    /// Held shared by each record from its append to the end of its
    /// forward; the quiesce barrier takes it exclusively (see `barrier`).
    pub gate: Arc<tokio::sync::RwLock<()>>,
    /// Answer bytes delivered per open connection, for snapshot marks.
    /// Touched once per connection open/close, never per record.
    pub open: std::sync::Mutex<std::collections::HashMap<ConnId, Arc<AtomicU64>>>,
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
        addr: SocketAddr,
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

/// Serves one client until both directions are done. `stop` asks it to stop
/// taking client input at a safe point (graceful shutdown): it then
/// half-closes the backend and relays the remaining answers.
pub(crate) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    shared.metrics.active.increment(1.0);
    let _active = ActiveGuard(&shared.metrics);
    if let Err(e) = relay(client, peer, &shared, &stop).await {
        shared.metrics.error(e.kind());
        match e {
            ConnError::BackendConnect { .. } | ConnError::Journal(_) => {
                tracing::warn!(%peer, error = %e, "client connection closed")
            }
            _ => tracing::debug!(%peer, error = %e, "client connection ended"),
        }
    }
}

async fn relay(
    client: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    stop: &CancellationToken,
) -> Result<(), ConnError> {
    let backend = tokio::time::timeout(shared.connect_timeout, TcpStream::connect(shared.backend))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })
        .map_err(|source| ConnError::BackendConnect {
            addr: shared.backend,
            source,
        })?;
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let conn = shared
        .journal
        .append(Record::opened(peer.to_string()))
        .await?;
    shared.metrics.total.increment(1);

    let (client_read, client_write) = client.into_split();
    let (backend_read, backend_write) = backend.into_split();
    let delivered = Arc::new(AtomicU64::new(0));
    shared
        .open
        .lock()
        .expect("poisoned")
        .insert(conn, delivered.clone());
    let _registered = OpenGuard { shared, conn };
    // Either direction failing ends the other too.
    let failed = stop.child_token();
    let upstream = async {
        let r = client_to_service(
            client_read,
            backend_write,
            conn,
            &delivered,
            shared,
            &failed,
            stop,
        )
        .await;
        if r.is_err() {
            failed.cancel();
        }
        r
    };
    let downstream = async {
        tokio::select! {
            r = service_to_client(backend_read, client_write, &delivered, shared) => {
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
    let closed = shared
        .journal
        .append(Record::closed(conn, delivered.load(Ordering::Acquire)))
        .await;
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
    mut backend: OwnedWriteHalf,
    conn: ConnId,
    delivered: &AtomicU64,
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
        if n == 0 {
            // End of input is input too: journal and deliver it atomically
            // with respect to a barrier.
            let _permit = shared.gate.read().await;
            shared.journal.append(Record::half_closed(conn)).await?;
            let _ = backend.shutdown().await;
            return Ok(());
        }
        // Causality as the client saw it when it sent these bytes.
        let resp_before = delivered.load(Ordering::Acquire);
        let resp_total_before = shared.resp_total.load(Ordering::Acquire);
        // Journal and forward under one gate permit: a barrier sees either
        // both or neither.
        let _permit = shared.gate.read().await;
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        shared
            .journal
            .append(Record::data(
                conn,
                resp_before,
                resp_total_before,
                chunk.clone(),
            ))
            .await?;
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
        shared.metrics.client_to_service.increment(n as u64);
    }
}

/// Service → client, counting what was delivered.
async fn service_to_client(
    mut backend: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    delivered: &AtomicU64,
    shared: &Shared,
) -> Result<(), ConnError> {
    let mut buf = vec![0u8; shared.read_buffer];
    loop {
        let n = backend.read(&mut buf).await.map_err(ConnError::BackendIo)?;
        if n == 0 {
            let _ = client.shutdown().await;
            return Ok(());
        }
        client
            .write_all(&buf[..n])
            .await
            .map_err(ConnError::ClientIo)?;
        // Total first: a reader that loads `delivered` then `resp_total`
        // always sees resp_total_before >= resp_before.
        shared.resp_total.fetch_add(n as u64, Ordering::AcqRel);
        delivered.fetch_add(n as u64, Ordering::AcqRel);
        shared.metrics.service_to_client.increment(n as u64);
    }
}
