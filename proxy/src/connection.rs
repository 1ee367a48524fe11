//! One client connection, start to end: set it up (`setup`), relay both
//! directions (`upstream`: client → journal → service, write-ahead;
//! `downstream`: service → client, counted), then journal its close.
//!
//! Each direction holds one bounded buffer and awaits the other side before
//! reading more, so a slow service slows the client (and vice versa) instead
//! of growing memory. Either direction failing ends the other (`cancel`).
//!
//! A connection on a node that does not own the service relays without
//! journaling through a tunnel (see `route`). A journaled connection can be
//! handed over while the barrier holds the gate (see `handover`).

use crate::cancel::Cancel;
use crate::downstream::Downstream;
use crate::metrics::{ErrorKind, ProxyMetrics};
use crate::setup::{Registered, Setup, Start};
use crate::shared::Shared;
use crate::upstream::Upstream;
use replaymig_journal::Record;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A failure that ends a connection, with the metric kind it is counted as.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// No service side could be set up (backend connect, tunnel dial):
    /// the client is closed before anything is relayed.
    #[error("backend {addr} unreachable: {source}")]
    BackendConnect {
        /// Where the service side was sought.
        addr: String,
        /// Why it could not be had.
        source: std::io::Error,
    },
    /// The service side failed mid-connection (or a forward was abandoned).
    #[error("backend I/O: {0}")]
    BackendIo(std::io::Error),
    /// The client side failed mid-connection.
    #[error("client I/O: {0}")]
    ClientIo(std::io::Error),
    /// The journal refused a record: nothing unjournaled is forwarded, so
    /// the connection ends.
    #[error("journal append failed: {0}")]
    Journal(#[from] replaymig_journal::JournalError),
}

impl ConnError {
    /// The `kind` label the failure is counted under.
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

/// Serves one client until both directions are done. `stop` (see
/// [`Cancel`]) asks it to stop taking client input at a safe point
/// (graceful shutdown): it then half-closes the backend and relays the
/// remaining answers.
pub(crate) async fn serve(start: Start, shared: Arc<Shared>, stop: CancellationToken) {
    shared.metrics.active.increment(1.0);
    let _active = ActiveGuard(&shared.metrics);
    let label = start.label();
    if let Err(e) = relay(start, &shared, Cancel::new(stop)).await {
        shared.metrics.error(e.kind());
        match e {
            ConnError::BackendConnect { .. } | ConnError::Journal(_) => {
                tracing::warn!(peer = %label, error = %e, "client connection closed")
            }
            _ => tracing::debug!(peer = %label, error = %e, "client connection ended"),
        }
    }
}

/// Sets the connection up, relays both directions until both are done,
/// then journals its close (if it is still journaled here).
async fn relay(start: Start, shared: &Shared, cancel: Cancel) -> Result<(), ConnError> {
    let setup = Setup::open(start, shared).await?;
    shared.metrics.total.increment(1);
    let Registered {
        client_read,
        client_write,
        slot,
        _open,
        _relayed,
    } = setup.register(shared);
    let upstream = async {
        let r = Upstream::new(client_read, &slot, shared, &cancel)
            .run()
            .await;
        if r.is_err() {
            cancel.fail();
        }
        r
    };
    let downstream = async {
        tokio::select! {
            r = Downstream::new(client_write, &slot, shared).run() => {
                if r.is_err() {
                    cancel.fail();
                }
                r
            }
            // Only a failure (not a graceful stop) cuts the answers short.
            _ = cancel.failed() => Ok(()),
        }
    };
    let (up, down) = tokio::join!(upstream, downstream);
    let closed = if slot.journaling.load(Ordering::Acquire) {
        // Not under the gate: other connections' segments are left to the
        // next client record (or barrier), which is.
        let conn = slot.conn;
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
