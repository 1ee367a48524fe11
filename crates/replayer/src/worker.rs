//! One task per replayed connection: it sends that connection's records in
//! order, each once the target has produced the answers the original client
//! had seen (on this connection and journal-wide), once every send
//! dispatched before it has gone out, and once every answer segment
//! journaled before it was reproduced (`InFlight::wait_ready`).

use crate::answers::{AnswerReader, TotalAnswers};
use crate::{Divergence, DivergenceKind};
use bytes::Bytes;
use replaymig_journal::{ConnId, Lsn};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Records a worker may hold queued: bounds how far acknowledgements of
/// "applied" can run ahead of what the target has actually received.
pub(crate) const QUEUE: usize = 256;

/// What a worker is told to do, in order.
pub(crate) enum Work {
    /// Send `data` once `expected` answer bytes (this connection) and
    /// `total` (all connections, or `None`) arrived.
    Send {
        lsn: Lsn,
        seq: u64,
        expected: u64,
        total: Option<u64>,
        data: Bytes,
    },
    /// The client half-closed.
    HalfClose { lsn: Lsn, seq: u64 },
    /// The original connection ended with `expected` answer bytes.
    Close { lsn: Lsn, expected: u64 },
}

impl Work {
    /// The dispatch number and record this work holds in the sequencer
    /// (`InFlight`), if any.
    pub(crate) fn queued(&self) -> Option<(u64, Lsn)> {
        match self {
            Work::Send { lsn, seq, .. } | Work::HalfClose { lsn, seq } => Some((*seq, *lsn)),
            Work::Close { .. } => None,
        }
    }

    /// Gives the work its dispatch number.
    pub(crate) fn set_seq(&mut self, to: u64) {
        match self {
            Work::Send { seq, .. } | Work::HalfClose { seq, .. } => *seq = to,
            Work::Close { .. } => {}
        }
    }
}

/// How a worker ended.
pub(crate) struct WorkerEnd {
    /// The write half, unless the connection was closed.
    pub write: Option<OwnedWriteHalf>,
}

pub(crate) struct WorkerCtx {
    pub conn: ConnId,
    pub answers: Arc<AnswerReader>,
    pub total: Arc<TotalAnswers>,
    pub timeout: Duration,
    pub failures: Arc<Mutex<Vec<Divergence>>>,
    /// Fired when the replay finishes: cut the grace for extra answers
    /// short (a hand-over waits for it).
    pub hurry: tokio_util::sync::CancellationToken,
    /// Told when a queued record leaves the queue; says whose turn it is.
    pub inflight: Arc<crate::inflight::InFlight>,
    /// Wakes this task when one of its records becomes the oldest queued.
    pub turn: Arc<tokio::sync::Notify>,
    /// Settled sending (see `ReplayOptions::settle`).
    pub settle: Option<Duration>,
    /// Log divergences as warnings (the replay stops at them) rather than
    /// debug lines (the caller lists them all).
    pub warn: bool,
}

pub(crate) async fn run(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Work>,
    ctx: WorkerCtx,
) -> WorkerEnd {
    while let Some(work) = queue.recv().await {
        let outcome = match work {
            Work::Send {
                lsn,
                seq,
                expected,
                total,
                data,
            } => {
                let sent = match wait_ready(&ctx, seq, lsn).await {
                    Ok(()) => send(&mut write, &ctx, expected, total, &data).await,
                    Err(kind) => Err(kind),
                };
                ctx.inflight.done(seq, lsn);
                sent.map_err(|k| (lsn, k))
            }
            Work::HalfClose { lsn, seq } => {
                let ready = wait_ready(&ctx, seq, lsn).await;
                if ready.is_ok() {
                    let _ = write.shutdown().await;
                }
                ctx.inflight.done(seq, lsn);
                ready.map_err(|k| (lsn, k))
            }
            Work::Close { lsn, expected } => {
                let result = close(&ctx, expected).await.map_err(|k| (lsn, k));
                if let Err((lsn, kind)) = result {
                    fail(&ctx, lsn, kind);
                }
                return WorkerEnd { write: None };
            }
        };
        if let Err((lsn, kind)) = outcome {
            fail(&ctx, lsn, kind);
            // Drain without sending: this connection's replay is over.
            while let Some(work) = queue.recv().await {
                if let Some((seq, lsn)) = work.queued() {
                    ctx.inflight.done(seq, lsn);
                }
            }
            return WorkerEnd { write: None };
        }
    }
    WorkerEnd { write: Some(write) }
}

/// Waits for this work's turn among the sends and for every answer the
/// original had delivered before the record (see `InFlight`).
async fn wait_ready(ctx: &WorkerCtx, seq: u64, lsn: Lsn) -> Result<(), DivergenceKind> {
    ctx.inflight
        .wait_ready(seq, lsn, &ctx.turn, ctx.timeout)
        .await
        .map_err(|answer_lsn| DivergenceKind::AnswerNeverCame {
            answer_lsn: answer_lsn.unwrap_or_default(),
        })
}

fn fail(ctx: &WorkerCtx, lsn: Lsn, kind: DivergenceKind) {
    let d = Divergence {
        lsn,
        conn: ctx.conn,
        kind,
    };
    crate::log_divergence(ctx.warn, &d);
    ctx.failures.lock().expect("poisoned").push(d);
}

async fn send(
    write: &mut OwnedWriteHalf,
    ctx: &WorkerCtx,
    expected: u64,
    total: Option<u64>,
    data: &[u8],
) -> Result<(), DivergenceKind> {
    crate::wait_answers(&ctx.answers, expected, ctx.timeout).await?;
    if let Some(total) = total {
        crate::wait_total(&ctx.total, total, ctx.timeout).await?;
    }
    if let Some(settle) = ctx.settle {
        // The target holds at most one unanswered record, as the source's
        // service did: it executes them in the order they are sent.
        if let Some((previous, answered)) = ctx.inflight.last_sent() {
            let _ = tokio::time::timeout(settle, previous.wait_for(answered + 1)).await;
        }
    }
    let answered = ctx.answers.got();
    // A target that stops reading is a failure, not a reason to hang.
    let written = tokio::time::timeout(ctx.timeout, write.write_all(data)).await;
    if ctx.settle.is_some() {
        ctx.inflight.sent(ctx.answers.clone(), answered);
    }
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(DivergenceKind::TargetClosed),
        Err(_) => Err(DivergenceKind::TargetIo {
            error: format!("the target did not take input for {:?}", ctx.timeout),
        }),
    }
}

/// The target must produce exactly the original's answer bytes.
async fn close(ctx: &WorkerCtx, expected: u64) -> Result<(), DivergenceKind> {
    ctx.answers.raise_watermark(expected);
    crate::wait_answers(&ctx.answers, expected, ctx.timeout).await?;
    // Strict checking (migration): every answer byte compared.
    ctx.answers.require_checked(expected);
    // Give the target a moment to show answers the original never had
    // (unless the replay is finishing: then what arrived so far decides).
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_millis(50), ctx.answers.wait_for(expected + 1)) => {}
        _ = ctx.hurry.cancelled() => {}
    }
    if ctx.answers.got() > expected {
        return Err(DivergenceKind::ExtraAnswer { expected });
    }
    Ok(())
}
