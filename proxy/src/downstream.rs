//! Service → client: relays the service's answers back and counts them,
//! because every client record carries how many answer bytes its client
//! had when it sent (`resp_before`, `resp_total_before`), snapshot points
//! record how many were read, and answer journaling folds each delivered
//! chunk into the connection's open segment (see `answers`).
//!
//! Each chunk is counted as read from the service first, then delivered:
//! see `shared` for what each counter counts and what it feeds.

use crate::answers::AnswerJournaling;
use crate::connection::ConnError;
use crate::shared::{ConnSlot, Shared};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

/// The service→client direction of one connection.
pub(crate) struct Downstream<'a> {
    /// Where the answers go.
    client: OwnedWriteHalf,
    /// The connection (its service side's reading half, its counts).
    slot: &'a Arc<ConnSlot>,
    /// The proxy (journal-wide counts, answer journaling, metrics).
    shared: &'a Shared,
}

impl<'a> Downstream<'a> {
    /// The direction for `slot`, writing to `client`.
    pub fn new(client: OwnedWriteHalf, slot: &'a Arc<ConnSlot>, shared: &'a Shared) -> Self {
        Downstream {
            client,
            slot,
            shared,
        }
    }

    /// Relays until the service side ends, then half-closes the client.
    /// Answer bytes owed by the service side's setup go first; a hand-over
    /// switches the reading half, owed bytes included (see `handover`).
    pub async fn run(mut self) -> Result<(), ConnError> {
        let result = self.relay().await;
        // However the direction ended, a move waiting for the old tunnel's
        // end learns that it will not come (its sender is dropped), and no
        // move is taken any more.
        self.slot.answers_ended.store(true, Ordering::Release);
        self.slot.tunnel_end.lock().expect("poisoned").take();
        if self.slot.reset_client.load(Ordering::Acquire) {
            // A failed move: a reset once both halves are gone (the input
            // direction was evicted), never an end of stream.
            // (SO_LINGER 0: the close does not block, it resets.)
            let reset = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ = nix::sys::socket::setsockopt(
                self.client.as_ref(),
                nix::sys::socket::sockopt::Linger,
                &reset,
            );
            self.client.forget();
        }
        result
    }

    async fn relay(&mut self) -> Result<(), ConnError> {
        let mut buf = vec![0u8; self.shared.read_buffer];
        // Only this direction reads the service side: it holds the reading
        // half for its whole life (no lock per read) and swaps in a posted
        // replacement when woken for it.
        let mut service = self.slot.service_read.lock().await;
        loop {
            let owed = std::mem::take(&mut service.owed);
            if !owed.is_empty() {
                self.receive(owed.len());
                self.deliver(&owed).await?;
                continue;
            }
            let n = tokio::select! {
                biased;
                // A hand-over posted a new reading half: swap it in (the
                // old one is dropped) before reading again.
                _ = self.slot.service_read.posted() => {
                    self.slot.service_read.swap_posted(&mut service);
                    continue;
                }
                n = service.read(&mut buf) => n.map_err(ConnError::BackendIo)?,
            };
            if n == 0 {
                // A move waits for this end (the old owner ended its tunnel
                // after the answers it read): tell it where the answers
                // stopped, then go on with the half it posts.
                let moving = self.slot.tunnel_end.lock().expect("poisoned").take();
                if let Some(moving) = moving {
                    let read = self
                        .slot
                        .answer_bytes_read_from_service
                        .load(Ordering::Acquire);
                    let _ = moving.send(read);
                    self.slot.service_read.posted().await;
                    self.slot.service_read.swap_posted(&mut service);
                    continue;
                }
                if !self.slot.reset_client.load(Ordering::Acquire) {
                    let _ = self.client.shutdown().await;
                }
                return Ok(());
            }
            self.receive(n);
            self.deliver(&buf[..n]).await?;
        }
    }

    /// Counts answer bytes as they come from the service side.
    fn receive(&self, n: usize) {
        let (slot, shared) = (self.slot, self.shared);
        if n == 0 {
            return;
        }
        slot.answer_bytes_read_from_service
            .fetch_add(n as u64, Ordering::AcqRel);
        slot.answered_after
            .store(slot.forwarded.load(Ordering::Acquire), Ordering::Release);
        if slot.journaling.load(Ordering::Acquire) {
            shared
                .answer_bytes_read_from_service_all_journaled
                .fetch_add(n as u64, Ordering::AcqRel);
            if shared.forwards.settled() {
                shared.forwards.answered();
            }
        }
    }

    /// Writes answer bytes to the client and counts them.
    async fn deliver(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let (slot, shared) = (self.slot, self.shared);
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
            if preamble.len == slot.answer_bytes_delivered.load(Ordering::Acquire) {
                preamble.extend(bytes);
            }
        }
        if journaling && shared.journal_responses != AnswerJournaling::Off {
            let mut segment = slot.segment.lock().expect("poisoned");
            if segment.is_empty() {
                shared.dirty.lock().expect("poisoned").push(slot.clone());
            }
            segment.fold(bytes, &slot.answer_bytes_delivered);
        } else {
            slot.answer_bytes_delivered.fetch_add(n, Ordering::AcqRel);
        }
        // After the fold: whoever counts these bytes in `resp_total_before`
        // finds their segment among the pending ones (`ordering`).
        if journaling {
            shared
                .answer_bytes_delivered_all_journaled
                .fetch_add(n, Ordering::AcqRel);
        }
        self.client
            .write_all(bytes)
            .await
            .map_err(ConnError::ClientIo)?;
        shared.metrics.service_to_client.increment(n);
        Ok(())
    }
}
