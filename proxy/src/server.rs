//! The accept loop: bounded concurrent connections, backoff on transient
//! accept errors, and graceful shutdown (stop accepting, let connections
//! finish what they forwarded, abort stragglers at the drain timeout).

use crate::answers::AnswerJournaling;
use crate::connection::serve;
use crate::control::ProxyControl;
use crate::metrics::{ErrorKind, ProxyMetrics};
use crate::route::{Adopted, Route};
use crate::setup::Start;
use crate::shared::Shared;
use anyhow::Context;
use replaymig_journal::follow::FollowServer;
use replaymig_journal::Journal;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Settings of one proxy listener.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The service they are relayed to.
    pub backend: SocketAddr,
    /// Bytes per read in each direction (also the most one data record holds
    /// per read, give or take the buffer's growth).
    pub read_buffer: usize,
    /// Connections served at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// Bound on connecting to the backend.
    pub connect_timeout: Duration,
    /// How long graceful shutdown waits for open connections to finish.
    pub drain_timeout: Duration,
    /// What the journal keeps of the service's answers (default: digests).
    pub journal_responses: AnswerJournaling,
    /// The service's name: the `service` label of the proxy's metrics.
    pub service: String,
}

impl ProxyConfig {
    /// Defaults for everything but the two addresses.
    pub fn new(listen: SocketAddr, backend: SocketAddr) -> Self {
        ProxyConfig {
            listen,
            backend,
            read_buffer: 16 * 1024,
            max_connections: 4096,
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            journal_responses: AnswerJournaling::default(),
            service: "default".to_string(),
        }
    }
}

/// How the proxy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections that finished during the drain.
    pub drained: usize,
    /// Connections still open at the drain timeout, then aborted.
    pub aborted: usize,
}

/// A bound, not yet running, proxy.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
    config: ProxyConfig,
    /// Connections handed in from outside (tunnels), served like accepted
    /// ones so shutdown drains them too.
    adopt_tx: mpsc::Sender<Adopted>,
    adopt_rx: mpsc::Receiver<Adopted>,
    /// Serves `journal dump --follow` from other processes while the
    /// proxy lives (sled keeps them out of the journal itself).
    _follow: Option<FollowServer>,
}

impl Proxy {
    /// Binds the listen address. A taken port or a bad address is an error
    /// here, before anything is served.
    pub async fn bind(config: ProxyConfig, journal: Journal) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let follow = match FollowServer::start(&journal) {
            Ok(server) => Some(server),
            Err(e) => {
                // Followers are a debugging aid: the proxy serves without.
                tracing::warn!(journal = %journal.dir().display(), error = %e,
                    "cannot serve journal followers");
                None
            }
        };
        let shared = Arc::new(Shared {
            journal,
            route: std::sync::RwLock::new(Route::Owner {
                backend: config.backend,
            }),
            read_buffer: config.read_buffer,
            journal_responses: config.journal_responses,
            connect_timeout: config.connect_timeout,
            answer_bytes_delivered_all_journaled: AtomicU64::new(0),
            answer_bytes_read_from_service_all_journaled: AtomicU64::new(0),
            metrics: ProxyMetrics::new(&config.service),
            closed_at_barrier: Default::default(),
            gate: Arc::new(tokio::sync::RwLock::new(())),
            open: Default::default(),
            dirty: Default::default(),
            relays: Default::default(),
            next_relay: AtomicU64::new(1),
            order: Default::default(),
            forwards: Default::default(),
        });
        let (adopt_tx, adopt_rx) = mpsc::channel(64);
        Ok(Proxy {
            listener,
            shared,
            config,
            adopt_tx,
            adopt_rx,
            _follow: follow,
        })
    }

    /// A handle to control the running proxy (the quiesce barrier).
    pub fn control(&self) -> ProxyControl {
        ProxyControl::new(self.shared.clone(), self.adopt_tx.clone())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains. The journal is
    /// left open: the caller closes it (final flush) once this returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> ShutdownReport {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let mut connections = JoinSet::new();
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            tokio::select! {
                // Stop accepting as soon as shutdown starts.
                _ = shutdown.cancelled() => break,
                // Reap finished connections so the set stays small.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                // A tunnel handed in by the node agent.
                Some(adopted) = self.adopt_rx.recv() => {
                    let shared = self.shared.clone();
                    let stop = shutdown.child_token();
                    connections.spawn(async move {
                        serve(Start::Adopted(adopted), shared, stop).await;
                        drop(permit);
                    });
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((client, peer)) => {
                        backoff = Duration::from_millis(5);
                        let shared = self.shared.clone();
                        let stop = shutdown.child_token();
                        connections.spawn(async move {
                            serve(Start::Accepted(client, peer), shared, stop).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning or dying.
                        self.shared.metrics.error(ErrorKind::Accept);
                        tracing::warn!(error = %e, ?backoff, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                },
            }
        }
        drop(self.listener);
        let open = connections.len();
        tracing::info!(open, "shutting down: draining connections");
        let mut drained = 0;
        let deadline = tokio::time::sleep(self.config.drain_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = connections.join_next() => match joined {
                    Some(_) => drained += 1,
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        let aborted = connections.len();
        if aborted > 0 {
            tracing::warn!(aborted, "drain timeout: aborting open connections");
            for _ in 0..aborted {
                self.shared.metrics.error(ErrorKind::DrainTimeout);
            }
            connections.shutdown().await;
        }
        ShutdownReport { drained, aborted }
    }
}
