//! The journaling proxy run inside the test process, for tests that need
//! its control handle (the quiesce barrier) or its journal while it runs.

use replaymig_journal::{Journal, JournalOptions, Lsn, Record};
use replaymig_proxy::{Proxy, ProxyConfig, ProxyControl};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A journaling proxy on a free loopback port, stopped by [`stop`](Self::stop)
/// (or cancelled when dropped).
pub struct InProcessProxy {
    /// Its journal (shared with the proxy).
    pub journal: Journal,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The barrier and counters.
    pub control: ProxyControl,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessProxy {
    /// Opens (or creates) the journal in `dir` and serves `backend`.
    pub async fn start(backend: SocketAddr, dir: &Path) -> InProcessProxy {
        let journal = Journal::open(dir, JournalOptions::default()).expect("journal opens");
        let proxy = Proxy::bind(
            ProxyConfig::new(([127, 0, 0, 1], 0).into(), backend),
            journal.clone(),
        )
        .await
        .expect("proxy binds");
        let listen = proxy.local_addr().expect("bound");
        let control = proxy.control();
        let stop = CancellationToken::new();
        let run = proxy.run(stop.clone());
        let task = tokio::spawn(async move {
            run.await;
        });
        InProcessProxy {
            journal,
            listen,
            control,
            stop,
            task: Some(task),
        }
    }

    /// Waits until every connection opened so far has its `closed` record
    /// (the clients dropped their sockets); returns the last LSN.
    pub async fn wait_all_closed(&self) -> Lsn {
        for _ in 0..500 {
            let (mut opened, mut closed) = (0, 0);
            for e in self.journal.read_range(1, Lsn::MAX) {
                match e.expect("journal reads").record {
                    Record::Opened { .. } => opened += 1,
                    Record::Closed { .. } => closed += 1,
                    _ => {}
                }
            }
            if opened == closed {
                return self.journal.last_lsn();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("connections did not close");
    }

    /// Graceful stop; the journal stays open for the caller to read/close.
    pub async fn stop(mut self) -> Journal {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("proxy task");
        }
        self.journal.clone()
    }
}

impl Drop for InProcessProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
