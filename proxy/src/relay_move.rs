//! Moving a relayed connection to a new owner: the relaying side of a
//! redirect (the old owner's side is `handover`).
//!
//! The old owner, in its hand-over, tells this proxy how many of the
//! tunnel's input bytes it journaled (`consumed`) and at which answer
//! offset it ends the tunnel (`answers_end`). The move then:
//!
//! 1. takes the tunnel's writing half, so no more input goes into it, and
//!    checks that what follows `consumed` is still kept (`sent`); if not,
//!    it refuses, and the old owner relays the connection as before; if
//!    so, it says "taken", and goes on only when the old owner confirms
//!    ([`MoveTaken::go`]) — else nothing changed;
//! 2. waits for the old tunnel's end and checks that exactly
//!    `answers_end` answer bytes came (fewer or more: the answers the new
//!    owner continues from would not join up, and the connection is
//!    closed rather than continued wrong);
//! 3. dials the new owner for the parked connection, from `answers_end`;
//! 4. sends it the input after `consumed` again, then lets input flow.
//!
//! Client input waits in the client's socket meanwhile; the client sees a
//! pause, or — if a step after the old owner let go fails — a reset (not
//! an end of stream, which could pass for a complete answer).

use crate::handover::{ServiceReader, ServiceWriter};
use crate::route::{RelayMove, TunnelRequest};
use crate::sent::ResendError;
use crate::shared::{ConnSlot, Shared};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, MutexGuard};

/// How long the old tunnel may deliver nothing before its end, once the
/// old owner confirmed the move (it ends the tunnel within its hold, after
/// the answers it already read).
const OLD_TUNNEL_STALL: Duration = Duration::from_secs(5);

/// Bound on taking the tunnel's writing half (step 1).
const TAKE_WAIT: Duration = Duration::from_millis(100);

/// Why a move was refused (the old owner then keeps relaying) or failed
/// after it was taken (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// No relayed connection has this id here (it ended, or never was).
    #[error("no relayed connection {0} here")]
    UnknownRelay(u64),
    /// The input after the old owner's offset cannot be sent again.
    #[error("cannot send the input again: {0}")]
    Resend(#[from] ResendError),
    /// The connection ended while the move was being set up.
    #[error("the connection ended during the move")]
    Ended,
    /// Its input is blocked on the old tunnel (a full socket buffer): it
    /// cannot stop at a known offset in time.
    #[error("its input is blocked on the old tunnel")]
    Busy,
    /// The old tunnel ended at another answer offset than the old owner
    /// said: the new owner's answers would not join up.
    #[error("the old tunnel ended after answer byte {got}, the old owner said {said}")]
    AnswersDiffer {
        /// Where it ended.
        got: u64,
        /// What the old owner said.
        said: u64,
    },
    /// The new owner's tunnel could not be opened or written.
    #[error("tunnel to the new owner: {0}")]
    NewTunnel(std::io::Error),
}

/// A move taken (step 1 done, input into the old tunnel stopped): the
/// old owner is told so, and must confirm that it leaves the path —
/// [`MoveTaken::go`] — or the move is dropped and the connection stays on
/// the old tunnel (dropping this does that). The confirmation removes the
/// one ambiguity a bounded wait would leave: an old owner that gave up
/// waiting for "taken" relays on, and one that confirmed ends its tunnel,
/// however long its last answers take to get through.
#[derive(Debug)]
pub struct MoveTaken {
    go: oneshot::Sender<bool>,
}

impl MoveTaken {
    /// The old owner confirmed: it ends its tunnel, the move goes on.
    pub fn go(self) {
        let _ = self.go.send(true);
    }
}

/// Takes the move of relayed connection `relay` (returns once step 1 is
/// done) and runs the rest in the background once confirmed.
pub(crate) async fn begin(
    shared: &Arc<Shared>,
    relay: u64,
    order: RelayMove,
) -> Result<MoveTaken, MoveError> {
    let refused = shared.metrics.relay_moves_refused.clone();
    let slot = shared.relays.lock().expect("poisoned").get(&relay).cloned();
    let Some(slot) = slot else {
        refused.increment(1);
        return Err(MoveError::UnknownRelay(relay));
    };
    let (taken_tx, taken_rx) = oneshot::channel();
    let shared = shared.clone();
    tokio::spawn(async move {
        // A forward blocked on a full tunnel holds the half: rather than
        // wait (the old owner is in its hold), refuse; it relays on.
        let Ok(mut writer) = tokio::time::timeout(TAKE_WAIT, slot.service_write.lock()).await
        else {
            let _ = taken_tx.send(Err(MoveError::Busy));
            return;
        };
        let resend = match writer.sent.as_ref() {
            _ if slot.answers_ended.load(Ordering::Acquire) => Err(MoveError::Ended),
            Some(sent) => sent.after(order.consumed).map_err(MoveError::from),
            None => Err(MoveError::UnknownRelay(relay)),
        };
        let resend = match resend {
            Ok(resend) => resend,
            Err(e) => {
                let _ = taken_tx.send(Err(e));
                return;
            }
        };
        let taken_at = std::time::Instant::now();
        let (end_tx, mut end_rx) = oneshot::channel();
        *slot.tunnel_end.lock().expect("poisoned") = Some(end_tx);
        let (go_tx, go_rx) = oneshot::channel();
        if taken_tx.send(Ok(MoveTaken { go: go_tx })).is_err() || go_rx.await != Ok(true) {
            // Not confirmed: the old owner relays on. Unless the old
            // tunnel's end came meanwhile (it did leave: the confirmation
            // was lost on the way), nothing changed.
            if slot.tunnel_end.lock().expect("poisoned").take().is_some() {
                tracing::info!(
                    relay,
                    "the old owner did not confirm the move; the connection stays on its tunnel"
                );
                shared.metrics.relay_moves_kept.increment(1);
                return;
            }
        }
        let answers = wait_for_tunnel_end(&slot, &mut end_rx).await;
        let resent = resend.len();
        match finish(&slot, &order, &mut writer, resend, answers).await {
            Ok(()) => {
                shared.metrics.relay_moves.increment(1);
                tracing::info!(
                    relay,
                    conn = order.conn,
                    resent,
                    paused_ms = taken_at.elapsed().as_secs_f64() * 1e3,
                    "relayed connection moved to the new owner"
                );
            }
            Err(e) => {
                shared.metrics.relay_moves_failed.increment(1);
                tracing::warn!(relay, conn = order.conn, error = %e, "relayed connection could not move; closing it");
                close(&slot, &mut writer).await;
            }
        }
    });
    let taken = taken_rx.await.unwrap_or(Err(MoveError::Ended));
    if taken.is_err() {
        refused.increment(1);
    }
    taken
}

/// Waits for the old tunnel's end — as long as its last answers keep
/// coming, and [`OLD_TUNNEL_STALL`] past the last of them: the answer
/// count it ended at, or `None` if it broke or stalled.
async fn wait_for_tunnel_end(slot: &ConnSlot, end: &mut oneshot::Receiver<u64>) -> Option<u64> {
    let mut seen = slot.answer_bytes_read_from_service.load(Ordering::Acquire);
    loop {
        tokio::select! {
            got = &mut *end => return got.ok(),
            _ = tokio::time::sleep(OLD_TUNNEL_STALL) => {
                let now = slot.answer_bytes_read_from_service.load(Ordering::Acquire);
                if now == seen {
                    // Stalled: take the end back (or, if it came just now,
                    // have it).
                    if slot.tunnel_end.lock().expect("poisoned").take().is_some() {
                        return None;
                    }
                    return end.await.ok();
                }
                seen = now;
            }
        }
    }
}

/// Steps 2–4, with the writing half held.
async fn finish(
    slot: &ConnSlot,
    order: &RelayMove,
    writer: &mut MutexGuard<'_, ServiceWriter>,
    resend: Bytes,
    answers: Option<u64>,
) -> Result<(), MoveError> {
    let got = answers.ok_or(MoveError::Ended)?;
    if got != order.answers_end {
        return Err(MoveError::AnswersDiffer {
            got,
            said: order.answers_end,
        });
    }
    let request = TunnelRequest {
        conn: Some(order.conn),
        delivered: order.answers_end,
        client: slot.client.clone(),
        relay: slot.relay,
    };
    let (stream, owed) = (order.dial)(request).await.map_err(MoveError::NewTunnel)?;
    let (read, write) = stream.into_split();
    let mut next = ServiceWriter::tunnel(write, b"");
    next.write(&resend).await.map_err(MoveError::NewTunnel)?;
    slot.service_read.post(ServiceReader {
        half: Some(read),
        owed,
    });
    // The old tunnel's writing half is dropped here.
    **writer = next;
    Ok(())
}

/// Closes a connection whose move failed after the old owner let go: no
/// more input is taken, the answers it got stand, then the client sees
/// the end.
async fn close(slot: &ConnSlot, writer: &mut MutexGuard<'_, ServiceWriter>) {
    slot.reset_client.store(true, Ordering::Release);
    slot.evict.cancel();
    let _ = writer.half.shutdown().await;
    slot.service_read.post(ServiceReader::ended());
}
