//! The node's accept loops (the peer listener and the admin listener),
//! built like the proxy's (`proxy/src/server.rs`): a bound on the
//! connections served at once, a short backoff on accept errors, and every
//! connection's task tracked, so that a shutdown stops accepting and then
//! waits, bounded, for the requests still running — a migration above all —
//! before the node stops its services and closes its journals.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a shutdown waits for running peer and admin requests (a
/// migration in or out, a hand-over being settled) before aborting them.
/// Each migration step has its own, longer bound; an aborted migration is
/// a crash of this node to the other side, which the protocol survives
/// (see `handover`).
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// First pause after a failed `accept` (doubling up to [`MAX_BACKOFF`]).
const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between failed `accept`s.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How one listener serves.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Its name in logs and the `listener` label of
    /// [`crate::telemetry::ACCEPT_ERRORS_TOTAL`] (`peer`, `admin`).
    pub name: &'static str,
    /// Connections served at once. At the limit the loop stops accepting:
    /// further connections wait in the kernel's backlog (their connect
    /// succeeds, their request waits) until a running one ends.
    pub max_connections: usize,
    /// How long a shutdown waits for the running connections before it
    /// aborts them.
    pub drain_timeout: Duration,
}

/// How a listener's shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Connections that ended by themselves after the listener stopped
    /// accepting (or had ended and were not yet reaped).
    pub finished: usize,
    /// Connections still running at the drain timeout, aborted.
    pub aborted: usize,
}

/// Serves `listener` until `stop` fires: each accepted connection runs
/// `handle(stream, peer, stop)` in its own tracked task (`stop` lets a
/// handler drop a connection that has not made its request yet). Then it
/// stops accepting (the listener is closed), waits up to the drain timeout
/// for the running connections, aborts the rest, and returns once no task
/// of it runs any more.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    stop: CancellationToken,
    mut handle: H,
) -> Drained
where
    H: FnMut(TcpStream, SocketAddr, CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let name = limits.name;
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    let mut running = JoinSet::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        tokio::select! {
            // Stop accepting as soon as shutdown starts.
            _ = stop.cancelled() => break,
            // Reap finished connections so the set stays small.
            Some(_) = running.join_next(), if !running.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = MIN_BACKOFF;
                    let connection = handle(stream, peer, stop.child_token());
                    running.spawn(async move {
                        connection.await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    crate::telemetry::accept_error(name);
                    tracing::warn!(listener = name, error = %e, ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
        }
    }
    drop(listener);
    drain(name, running, limits.drain_timeout).await
}

/// Waits up to `timeout` for `running` to end, then aborts what is left
/// (and waits for the aborted tasks to be gone).
async fn drain(name: &'static str, mut running: JoinSet<()>, timeout: Duration) -> Drained {
    if !running.is_empty() {
        tracing::info!(
            listener = name,
            running = running.len(),
            "shutting down: waiting for running requests"
        );
    }
    let mut finished = 0;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = running.join_next() => match joined {
                Some(_) => finished += 1,
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    let aborted = running.len();
    if aborted > 0 {
        tracing::warn!(
            listener = name,
            aborted,
            ?timeout,
            "drain timeout: aborting running requests"
        );
        running.shutdown().await;
    }
    Drained { finished, aborted }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::{mpsc, Notify};

    fn limits(max_connections: usize, drain_timeout: Duration) -> Limits {
        Limits {
            name: "test",
            max_connections,
            drain_timeout,
        }
    }

    /// A listener whose handler reports each connection's start, then
    /// holds it until `release` is notified, then marks `done`.
    struct Held {
        addr: SocketAddr,
        started: mpsc::UnboundedReceiver<SocketAddr>,
        release: Arc<Notify>,
        done: Arc<AtomicBool>,
        stop: CancellationToken,
        served: tokio::task::JoinHandle<Drained>,
    }

    async fn held(limits: Limits) -> Held {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, started) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let done = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let served = tokio::spawn(serve(listener, limits, stop.clone(), {
            let (release, done) = (release.clone(), done.clone());
            move |stream, peer, _stop| {
                let (tx, release, done) = (tx.clone(), release.clone(), done.clone());
                async move {
                    let _ = tx.send(peer);
                    release.notified().await;
                    done.store(true, Ordering::SeqCst);
                    drop(stream);
                }
            }
        }));
        Held {
            addr,
            started,
            release,
            done,
            stop,
            served,
        }
    }

    #[tokio::test]
    async fn a_shutdown_stops_accepting_and_waits_for_the_running_request() {
        let mut h = held(limits(8, Duration::from_secs(30))).await;
        let _client = TcpStream::connect(h.addr).await.unwrap();
        h.started.recv().await.unwrap();
        h.stop.cancel();
        // Not accepting any more: the listening socket is closed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(h.addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // ... but the running request holds the shutdown until it ends.
        assert!(!h.served.is_finished());
        assert!(!h.done.load(Ordering::SeqCst));
        h.release.notify_one();
        let drained = h.served.await.unwrap();
        assert!(
            h.done.load(Ordering::SeqCst),
            "finished before serve returned"
        );
        assert_eq!(
            drained,
            Drained {
                finished: 1,
                aborted: 0
            }
        );
    }

    #[tokio::test]
    async fn a_request_still_running_at_the_drain_timeout_is_aborted() {
        let mut h = held(limits(8, Duration::from_millis(100))).await;
        let _client = TcpStream::connect(h.addr).await.unwrap();
        h.started.recv().await.unwrap();
        h.stop.cancel();
        let drained = h.served.await.unwrap();
        assert_eq!(
            drained,
            Drained {
                finished: 0,
                aborted: 1
            }
        );
        assert!(!h.done.load(Ordering::SeqCst), "aborted, not finished");
    }

    #[tokio::test]
    async fn at_the_limit_the_next_connection_waits_for_a_running_one_to_end() {
        let mut h = held(limits(1, Duration::from_secs(30))).await;
        let _first = TcpStream::connect(h.addr).await.unwrap();
        let first = h.started.recv().await.unwrap();
        // Connected (the backlog), but not served while the first runs.
        let second = TcpStream::connect(h.addr).await.unwrap();
        let second_addr = second.local_addr().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(h.started.try_recv().is_err(), "served beyond the limit");
        h.release.notify_one();
        let next = h.started.recv().await.unwrap();
        assert_ne!(next, first);
        assert_eq!(next, second_addr);
        h.release.notify_one();
        h.stop.cancel();
        let drained = h.served.await.unwrap();
        assert_eq!(drained.aborted, 0);
    }
}
