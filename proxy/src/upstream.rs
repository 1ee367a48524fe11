//! Client → journal → service, one read at a time: each read is appended
//! to the journal (write-ahead) and forwarded only once the journal took
//! it, in the journal's order (`ordering`), under a gate permit so a
//! barrier or a hand-over sees either both or neither. The client's end of
//! input is journaled and forwarded (as a half-close) the same way.

use crate::cancel::Cancel;
use crate::connection::ConnError;
use crate::ordering::ForwardTicket;
use crate::shared::{ConnSlot, Shared};
use bytes::Bytes;
use replaymig_journal::Record;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

/// Bound on reading what a redirected relaying node still sends.
const REDIRECT_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The client→service direction of one connection.
pub(crate) struct Upstream<'a> {
    /// What the client sends.
    client: OwnedReadHalf,
    /// The connection (its service side's writing half, its counts).
    slot: &'a Arc<ConnSlot>,
    /// The proxy (journal, gate, forwarding order).
    shared: &'a Shared,
    /// When to stop reading and when to abandon a forward.
    cancel: &'a Cancel,
}

impl<'a> Upstream<'a> {
    /// The direction for `slot`, reading from `client`.
    pub fn new(
        client: OwnedReadHalf,
        slot: &'a Arc<ConnSlot>,
        shared: &'a Shared,
        cancel: &'a Cancel,
    ) -> Self {
        Upstream {
            client,
            slot,
            shared,
            cancel,
        }
    }

    /// Relays until the client's end of input (or `cancel`'s end, taken
    /// between records as one) was forwarded; a forward in progress is cut
    /// short only by a failure.
    pub async fn run(mut self) -> Result<(), ConnError> {
        // One fixed buffer per direction; each read is copied once into an
        // exactly-sized `Bytes` that the journal and the backend write share.
        // (Splitting a growable buffer instead would allocate a fresh
        // read-sized buffer per read while the journal still holds the last.)
        let mut buf = vec![0u8; self.shared.read_buffer];
        loop {
            let n = tokio::select! {
                biased;
                // Closed by a barrier: nothing more is taken from the client
                // (the barrier ended the service side's input itself).
                _ = self.slot.evict.cancelled() => return self.drain_if_redirected().await,
                // Stop between records, never between append and forward; the
                // service then sees end-of-input exactly as a client FIN.
                _ = self.cancel.ended() => 0,
                read = self.client.read(&mut buf) => read.map_err(ConnError::ClientIo)?,
            };
            // Journal and forward under one gate permit: a barrier (and a
            // hand-over) sees either both or neither. A barrier that closes
            // this connection does so while it holds the gate, so the read
            // just made is dropped unjournaled, never forwarded.
            let _permit = match self.shared.gate.try_read() {
                // No barrier holds the gate (the usual case): nothing more
                // to wait on per record.
                Ok(permit) => permit,
                Err(_) => tokio::select! {
                    biased;
                    _ = self.slot.evict.cancelled() => return self.drain_if_redirected().await,
                    permit = self.shared.gate.read() => permit,
                },
            };
            if self.slot.evict.is_cancelled() {
                drop(_permit);
                return self.drain_if_redirected().await;
            }
            // Causality (and the answers since the last record, if they are
            // journaled) is cut under the permit: a barrier that cuts every
            // segment never leaves one in a task waiting for the gate. Taken
            // after the read, it may count answers the client got just after
            // sending: a stricter bound, never a looser one.
            let journaling = self.slot.journaling.load(Ordering::Acquire);
            if n == 0 {
                self.half_close(journaling).await?;
                return Ok(());
            }
            self.forward(Bytes::copy_from_slice(&buf[..n]), journaling)
                .await?;
        }
    }

    /// After a redirect (see `handover`), reads and drops what the relaying
    /// node still sends — it sends it again to the new owner — until its
    /// end of input (bounded), so the socket closes without unread input.
    async fn drain_if_redirected(&mut self) -> Result<(), ConnError> {
        if !self.slot.drain_on_evict.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut buf = vec![0u8; self.shared.read_buffer];
        let drain = async { while matches!(self.client.read(&mut buf).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(REDIRECT_DRAIN, drain).await;
        Ok(())
    }

    /// End of input is input too: journaled, and forwarded in its turn as
    /// a half-close of the service side.
    async fn half_close(&self, journaling: bool) -> Result<(), ConnError> {
        let conn = self.slot.conn;
        let _ticket = if journaling {
            Some(self.journal(|_, _| Record::half_closed(conn)).await?)
        } else {
            None
        };
        let _ = self.slot.service_write.lock().await.end().await;
        Ok(())
    }

    /// Journals (when journaling) and forwards one client read.
    async fn forward(&self, chunk: Bytes, journaling: bool) -> Result<(), ConnError> {
        let conn = self.slot.conn;
        let ticket = if journaling {
            Some(
                self.journal(|resp_before, resp_total_before| {
                    Record::data(conn, resp_before, resp_total_before, chunk.clone())
                })
                .await?,
            )
        } else {
            None
        };
        let mut service = self.slot.service_write.lock().await;
        // Counted before the write: an answer to it can only come after,
        // so "answered since the last input" never misses a fast answer.
        self.slot.forwarded.fetch_add(1, Ordering::AcqRel);
        tokio::select! {
            written = service.write(&chunk) => written.map_err(ConnError::BackendIo)?,
            // The answers side failed (e.g. the client reset): a service
            // that is not reading must not pin this task forever.
            _ = self.cancel.failed() => {
                return Err(ConnError::BackendIo(std::io::Error::other(
                    "forward abandoned: the connection failed",
                )))
            }
        }
        // Only a redirect reads it (an adopted tunnel's `consumed`): local
        // clients skip the atomic on the per-read path.
        if self.slot.origin.is_some() {
            self.slot
                .input_bytes_forwarded
                .fetch_add(chunk.len() as u64, Ordering::AcqRel);
        }
        if ticket.is_some() && self.shared.forwards.settled() {
            self.shared.forwards.forwarded(self.slot);
        }
        drop(ticket);
        self.shared
            .metrics
            .client_to_service
            .increment(chunk.len() as u64);
        Ok(())
    }

    /// Journals the record `make` builds (from the connection's
    /// `resp_before` and `resp_total_before`) with the answer segments it
    /// ends, and waits for its turn to be forwarded (see `ordering`),
    /// counting a forward that could not wait for it.
    async fn journal(
        &self,
        make: impl FnOnce(u64, u64) -> Record,
    ) -> Result<ForwardTicket<'a>, ConnError> {
        let ticket = crate::ordering::journal_input(self.shared, self.slot, make).await?;
        if !ticket.turn().await {
            self.shared.metrics.out_of_order_forwards.increment(1);
        }
        Ok(ticket)
    }
}
