//! A bounded, checking client load through a proxy (tests and chaos).

use std::net::SocketAddr;
use std::time::Duration;

/// A bounded INCR load through the proxy: `clients` threads, each on its own
/// key `{prefix}{i}`, pipelining `1 + i % 3` commands per write, checking
/// every answer, until the connection fails, `stop` is set, `max_per_client`
/// commands were acknowledged, or 20 s passed.
pub struct IncrLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<std::thread::JoinHandle<(String, i64)>>,
}

impl IncrLoad {
    pub fn start(
        listen: SocketAddr,
        clients: usize,
        prefix: &str,
        max_per_client: i64,
    ) -> IncrLoad {
        use crate::{Reply, RespClient};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = (0..clients)
            .map(|i| {
                let (stop, key) = (stop.clone(), format!("{prefix}{i}"));
                std::thread::spawn(move || {
                    let mut c = RespClient::connect(listen).unwrap();
                    let mut acked = 0i64;
                    let deadline = std::time::Instant::now() + Duration::from_secs(20);
                    while !stop.load(Ordering::Relaxed)
                        && acked < max_per_client
                        && std::time::Instant::now() < deadline
                    {
                        let cmds: Vec<Vec<&str>> =
                            (0..1 + i % 3).map(|_| vec!["INCR", key.as_str()]).collect();
                        let Ok(replies) = c.pipeline(&cmds) else {
                            break; // the proxy went away or closed us
                        };
                        for r in replies {
                            acked += 1;
                            assert_eq!(r, Reply::Int(acked), "{key}");
                        }
                    }
                    (key, acked)
                })
            })
            .collect();
        IncrLoad { stop, workers }
    }

    /// Stops the load; returns each key with the INCRs acknowledged on it.
    pub fn finish(self) -> Vec<(String, i64)> {
        self.finish_checked()
            .expect("a load client saw a wrong answer")
    }

    /// Like `finish`, but a client that saw a wrong answer (its thread
    /// panicked on the check) is an error instead of a panic here.
    pub fn finish_checked(self) -> Result<Vec<(String, i64)>, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| "a client saw a wrong answer".to_string())
            })
            .collect()
    }
}
