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
use crate::route::{Dialer, Redirect, Redirector, Route, TunnelRequest};
use crate::sent::{SentInput, SENT_KEPT};
use crate::shared::{ConnSlot, Shared};
use bytes::Bytes;
use replaymig_journal::ConnId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
    /// Where the service's answers come from; `None`: nothing more comes
    /// (a tunnel ended by a redirect, a move that failed).
    pub half: Option<OwnedReadHalf>,
    /// Answer bytes that arrived with the half's setup (a tunnel's
    /// handshake, a replayed connection): taken and delivered first.
    pub owed: Bytes,
}

impl ServiceReader {
    /// A reader that has nothing more: the direction ends after what it
    /// already read.
    pub fn ended() -> Self {
        ServiceReader {
            half: None,
            owed: Bytes::new(),
        }
    }

    /// Reads answer bytes (0: end of stream).
    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.half {
            Some(half) => half.read(buf).await,
            None => Ok(0),
        }
    }
}

/// The service side's writing half; on a tunnel (a relayed connection),
/// with what was sent into it lately (see `sent`).
pub(crate) struct ServiceWriter {
    /// Where client input goes.
    pub half: OwnedWriteHalf,
    /// The tunnel's recent input, kept for a move to a new owner.
    pub sent: Option<SentInput>,
}

impl ServiceWriter {
    /// A writer to the local service (nothing kept).
    pub fn local(half: OwnedWriteHalf) -> Self {
        ServiceWriter { half, sent: None }
    }

    /// A writer into a tunnel whose first bytes, `resent`, were written.
    pub fn tunnel(half: OwnedWriteHalf, resent: &[u8]) -> Self {
        ServiceWriter {
            half,
            sent: Some(SentInput::starting_with(SENT_KEPT, resent)),
        }
    }

    /// Writes client input, keeping it if this is a tunnel.
    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.half.write_all(chunk).await?;
        if let Some(sent) = &mut self.sent {
            sent.push(chunk);
        }
        Ok(())
    }

    /// Passes the client's end of input on.
    pub async fn end(&mut self) -> std::io::Result<()> {
        if let Some(sent) = &mut self.sent {
            sent.end();
        }
        self.half.shutdown().await
    }
}

/// What a hand-over did with the open connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandedOver {
    /// Relayed on through a tunnel from this node to the new owner.
    pub switched: usize,
    /// Tunnels from other nodes whose relaying node took the word to dial
    /// the new owner itself (this node left their path).
    pub redirected: usize,
    /// Closed: no tunnel to the new owner could be opened for them.
    pub closed: usize,
}

/// What became of one connection.
enum Outcome {
    Redirected,
    Tunnel(std::io::Result<crate::route::Tunnel>),
}

/// Hands every open journaled connection to a new owner: while `hold`
/// keeps the gate, each connection's service side is replaced by a tunnel
/// from `dial` (told the connection id and the answer bytes its client
/// has) and it stops journaling; new clients take the remote route. A
/// connection that came over a tunnel from another node is first offered
/// to that node through `redirect` (it then dials the new owner itself);
/// if it does not take it, the connection is relayed like the others. A
/// connection whose tunnel cannot be opened is closed.
pub(crate) async fn hand_over(
    shared: &Shared,
    hold: &Quiesced,
    dial: Dialer,
    redirect: Option<Redirector>,
) -> HandedOver {
    let _ = hold;
    *shared.route.write().expect("poisoned") = Route::Remote { dial: dial.clone() };
    let open: Vec<(ConnId, Arc<ConnSlot>)> = shared
        .open
        .lock()
        .expect("poisoned")
        .iter()
        .map(|(c, s)| (*c, s.clone()))
        .collect();
    // All tunnels are dialed (and redirects asked) at once: the hold lasts
    // one round, not one per open connection.
    let mut dials = tokio::task::JoinSet::new();
    for (conn, slot) in open {
        let request = TunnelRequest {
            conn: Some(conn),
            delivered: slot.answer_bytes_read_from_service.load(Ordering::Acquire),
            client: slot.client.clone(),
            relay: slot.relay,
        };
        slot.journaling.store(false, Ordering::Release);
        let offer = match (&redirect, &slot.origin) {
            (Some(redirect), Some(origin)) => Some((
                redirect.clone(),
                Redirect {
                    origin: origin.clone(),
                    conn,
                    // Stable: no forward runs while the gate is held.
                    consumed: slot.input_bytes_forwarded.load(Ordering::Acquire),
                    answers_end: request.delivered,
                },
            )),
            _ => None,
        };
        let dial = dial.clone();
        dials.spawn(async move {
            if let Some((redirect, word)) = offer {
                match redirect(word).await {
                    Ok(()) => return (conn, slot, Outcome::Redirected),
                    Err(e) => {
                        tracing::info!(conn, error = %e, "the relaying node did not take the redirect; relaying through this node")
                    }
                }
            }
            let tunnel = dial(request).await;
            (conn, slot, Outcome::Tunnel(tunnel))
        });
    }
    let mut done = HandedOver::default();
    while let Some(joined) = dials.join_next().await {
        let Ok((conn, slot, outcome)) = joined else {
            continue;
        };
        match outcome {
            Outcome::Redirected => {
                end_redirected(&slot).await;
                done.redirected += 1;
            }
            Outcome::Tunnel(Ok((stream, owed))) => {
                let (read, write) = stream.into_split();
                // Reading half first: its wake-up must be stored before the
                // old writing half is dropped (see the module doc).
                slot.service_read.post(ServiceReader {
                    half: Some(read),
                    owed,
                });
                slot.service_write.post(ServiceWriter::tunnel(write, b""));
                // Swapped in now: the old writing half is dropped here.
                drop(slot.service_write.lock().await);
                // A relayed connection now: a later owner can move it —
                // if it is still open (see `setup::OpenGuard`).
                let open = shared.open.lock().expect("poisoned");
                if open.contains_key(&conn) {
                    shared
                        .relays
                        .lock()
                        .expect("poisoned")
                        .insert(slot.relay, slot.clone());
                }
                drop(open);
                done.switched += 1;
            }
            Outcome::Tunnel(Err(e)) => {
                tracing::warn!(conn, error = %e, "cannot hand a connection over; closing it");
                let _ = slot.service_write.lock().await.half.shutdown().await;
                done.closed += 1;
            }
        }
    }
    done
}

/// Ends a tunnel whose relaying node took the redirect: no more of its
/// input is taken (what it sent after `consumed` it sends to the new
/// owner), the answers already read reach it, and then the tunnel's end —
/// which the relaying node waits for before it dials the new owner.
async fn end_redirected(slot: &ConnSlot) {
    slot.drain_on_evict.store(true, Ordering::Release);
    slot.evict.cancel();
    // Reading half first, as above: the old service's close must not be
    // read as the end of the answers.
    slot.service_read.post(ServiceReader::ended());
    let _ = slot.service_write.lock().await.half.shutdown().await;
}
