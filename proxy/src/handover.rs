//! Handing open journaled connections to a new owner of the service: each
//! connection's service side is switched to a tunnel to the new owner, and
//! it stops journaling (the new owner journals from then on). Clients keep
//! their connections; only what is behind the proxy changes.
//!
//! # One switch for both halves
//!
//! Each half of a connection's service side lives in its [`ConnSlot`] as a
//! [`ServiceHalf`]: the half in use behind a lock, a slot for a posted
//! replacement, and a wake-up. The client→service direction locks the
//! writing half for each forward; [`ServiceHalf::lock`] swaps a posted
//! replacement in first, dropping the old half. The service→client
//! direction is the only reader: it takes the reading half's lock once,
//! for its whole life (nothing per read on the answer path), and selects
//! on [`ServiceHalf::posted`] ahead of each read to swap a replacement in
//! ([`ServiceHalf::swap_posted`]). A hand-over
//! [`post`](ServiceHalf::post)s both replacements — the reading half
//! first — and then locks the writing half itself, so the old one is
//! dropped (and the old service sees its FIN) before the hand-over
//! returns; it never locks the reading half.
//! A connection whose tunnel cannot be opened has its old writing half
//! shut down through the same lock instead: the old service sees end of
//! input and closes, and the client sees the close.
//!
//! # Why no byte in flight is lost or doubled
//!
//! The hand-over runs while the barrier holds the forward gate
//! exclusively ([`crate::barrier`]), after the service went quiet.
//!
//! - Client→service: every forward (journal append and write) holds a
//!   shared gate permit, so no write is half done on the old half, and the
//!   writing half is not locked by anyone else while the hand-over swaps it.
//!   Client bytes that arrive meanwhile wait for the gate; their forward
//!   re-reads `journaling` (now off, so the new owner journals them) and
//!   locks the writing half, already the new one: the gate is held until
//!   after the hand-over returns.
//! - Service→client: the service is quiet, so nothing more comes on the old
//!   reading half. Bytes already read are delivered before the direction
//!   looks at its half again, and they are already counted in
//!   `answer_bytes_read_from_service`, which is what the new owner is told
//!   the client has ([`TunnelRequest::delivered`]). Answer bytes that came
//!   with the tunnel's handshake travel with the new reading half
//!   ([`ServiceReader::owed`]) and are delivered before anything read from
//!   it.
//! - End of stream: dropping the old writing half half-closes the old
//!   service connection, which may then close and show the old reading half
//!   an end of stream. Its replacement is posted, and the wake-up stored,
//!   before that drop; the direction's select is biased toward the wake-up,
//!   so it switches before it could read that end of stream and take it for
//!   the service's.

use crate::barrier::Quiesced;
use crate::route::{Dialer, Route, TunnelRequest};
use crate::shared::{ConnSlot, Shared};
use bytes::Bytes;
use replaymig_journal::ConnId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{MutexGuard, Notify};

/// One half of a connection's service side, which a hand-over can replace
/// while the connection runs (see the module doc).
pub(crate) struct ServiceHalf<H> {
    /// The half in use; each direction locks it for each use.
    current: tokio::sync::Mutex<H>,
    /// A replacement posted by a hand-over, swapped in at the next lock.
    next: std::sync::Mutex<Option<H>>,
    /// Stored by `post` (one permit): wakes a direction waiting on the
    /// current half so it swaps the replacement in.
    posted: Notify,
}

impl<H> ServiceHalf<H> {
    /// The half a connection starts with.
    pub fn new(half: H) -> Self {
        ServiceHalf {
            current: tokio::sync::Mutex::new(half),
            next: std::sync::Mutex::new(None),
            posted: Notify::new(),
        }
    }

    /// Posts a replacement and wakes the direction waiting on the current
    /// half: the next [`lock`](Self::lock) swaps it in.
    pub fn post(&self, half: H) {
        *self.next.lock().expect("poisoned") = Some(half);
        self.posted.notify_one();
    }

    /// The half to use now. A posted replacement is swapped in first (the
    /// old half is dropped here).
    pub async fn lock(&self) -> MutexGuard<'_, H> {
        let mut current = self.current.lock().await;
        if let Some(next) = self.next.lock().expect("poisoned").take() {
            *current = next;
        }
        current
    }

    /// Swaps a posted replacement into `current` (a guard the caller holds
    /// for good: the reading direction, which never lets go of its half).
    pub fn swap_posted(&self, current: &mut MutexGuard<'_, H>) {
        if let Some(next) = self.next.lock().expect("poisoned").take() {
            **current = next;
        }
    }

    /// Resolves once a replacement was posted (at once if one was posted
    /// since the last wait): the direction waiting on the current half
    /// selects on it, ahead of its read, to swap the replacement in.
    pub async fn posted(&self) {
        self.posted.notified().await;
    }
}

/// The service side's reading half, with answer bytes owed to the client
/// before anything read from it.
pub(crate) struct ServiceReader {
    /// Where the service's answers come from.
    pub half: OwnedReadHalf,
    /// Answer bytes that arrived with the half's setup (a tunnel's
    /// handshake, a replayed connection): taken and delivered first.
    pub owed: Bytes,
}

/// Hands every open journaled connection to a new owner: while `hold`
/// keeps the gate, each connection's service side is replaced by a tunnel
/// from `dial` (told the connection id and the answer bytes its client
/// has) and it stops journaling; new clients take the remote route. A
/// connection whose tunnel cannot be opened is closed. Returns how many
/// were switched.
pub(crate) async fn hand_over(shared: &Shared, hold: &Quiesced, dial: Dialer) -> usize {
    let _ = hold;
    *shared.route.write().expect("poisoned") = Route::Remote { dial: dial.clone() };
    let open: Vec<(ConnId, Arc<ConnSlot>)> = shared
        .open
        .lock()
        .expect("poisoned")
        .iter()
        .map(|(c, s)| (*c, s.clone()))
        .collect();
    // All tunnels are dialed at once: the hold lasts one dial, not one
    // per open connection.
    let mut dials = tokio::task::JoinSet::new();
    for (conn, slot) in open {
        let request = TunnelRequest {
            conn: Some(conn),
            delivered: slot.answer_bytes_read_from_service.load(Ordering::Acquire),
            client: slot.client.clone(),
        };
        slot.journaling.store(false, Ordering::Release);
        let dial = dial.clone();
        dials.spawn(async move {
            let tunnel = dial(request).await;
            (conn, slot, tunnel)
        });
    }
    let mut switched = 0;
    while let Some(done) = dials.join_next().await {
        let Ok((conn, slot, tunnel)) = done else {
            continue;
        };
        match tunnel {
            Ok((stream, owed)) => {
                let (read, write) = stream.into_split();
                // Reading half first: its wake-up must be stored before the
                // old writing half is dropped (see the module doc).
                slot.service_read.post(ServiceReader { half: read, owed });
                slot.service_write.post(write);
                // Swapped in now: the old writing half is dropped here.
                drop(slot.service_write.lock().await);
                switched += 1;
            }
            Err(e) => {
                tracing::warn!(conn, error = %e, "cannot hand a connection over; closing it");
                let _ = slot.service_write.lock().await.shutdown().await;
            }
        }
    }
    switched
}
