//! Connection load: thousands of concurrent clients through one proxy, each
//! doing a little checked work (an INCR on its own key, about once a
//! second), for a bounded time. No connection may fail, every INCR must be
//! in redis exactly, and the proxy's resident memory must stay bounded
//! after the warm-up.
//!
//! "Bounded", measured: once every client is connected the per-connection
//! memory is all there; what still grows is sled's page cache as the
//! journal fills, up to its cap ([`CACHE_CAPACITY_BYTES`]). RSS is sampled
//! every second; its maximum may exceed the post-warm-up value by that cap
//! plus 10% and 8 MB. The lowest sample of each third of the run is
//! reported, and in runs of 2 minutes or more the last third's may not
//! exceed the middle third's by more than 8% + 8 MB: the plateau (a 170 s
//! run here: troughs 199 → 241 → 251 MB, flat over its last 80 s).
//!
//! File descriptors: the campaign raises its own `RLIMIT_NOFILE` soft limit
//! to the hard limit (children inherit it: the proxy needs two descriptors
//! per client, redis one); a hard limit below what the load needs is an
//! error that says so.

use crate::{rss, Row, Target};
use anyhow::{bail, Context, Result};
use replaymig_journal::CACHE_CAPACITY_BYTES;
use replaymig_testkit::{encode_command, free_port, wait_for_listen_by, ChildGuard, RedisServer};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How a connection load runs.
#[derive(Debug, Clone)]
pub struct ConnectionLoad {
    /// Concurrent client connections.
    pub count: usize,
    /// How long they stay and work after all connected.
    pub seconds: u64,
}

impl Default for ConnectionLoad {
    fn default() -> Self {
        ConnectionLoad {
            count: 5000,
            seconds: 180,
        }
    }
}

/// Memory may grow this much after the warm-up, beyond the journal's
/// page cache filling, and still count as bounded.
const RSS_SLACK: f64 = 0.10;
const RSS_SLACK_BYTES: u64 = 8 << 20;

/// Runs at least this long must also be flat at the end: the last third's
/// trough within `RSS_TREND_SLACK` (+ 8 MB) of the middle third's. Shorter
/// runs end before sled's cache has filled (about 100 s here).
const RSS_TREND_AFTER: Duration = Duration::from_secs(120);
const RSS_TREND_SLACK: f64 = 0.08;

/// What the proxy's memory did after the warm-up.
#[derive(Debug, Clone, Default, PartialEq)]
struct RssTrace {
    warm: u64,
    samples: Vec<u64>,
}

impl RssTrace {
    fn max(&self) -> u64 {
        self.samples.iter().copied().max().unwrap_or(self.warm)
    }

    fn end(&self) -> u64 {
        self.samples.last().copied().unwrap_or(self.warm)
    }

    /// The lowest sample of each third of the run (sawtooth troughs: what
    /// stays once buffers are given back).
    fn troughs(&self) -> Vec<u64> {
        let third = self.samples.len().div_ceil(3).max(1);
        self.samples
            .chunks(third)
            .map(|c| c.iter().copied().min().unwrap_or(0))
            .collect()
    }

    /// The most the maximum may be.
    fn bound(&self) -> u64 {
        self.warm + CACHE_CAPACITY_BYTES + (self.warm as f64 * RSS_SLACK) as u64 + RSS_SLACK_BYTES
    }

    /// Whether the last third's trough is still climbing past the middle
    /// third's (a leak the cache-sized bound would hide in a long run).
    fn still_growing(&self) -> Option<(u64, u64)> {
        let troughs = self.troughs();
        let [.., middle, last] = troughs[..] else {
            return None;
        };
        let allowed = (middle as f64 * (1.0 + RSS_TREND_SLACK)) as u64 + RSS_SLACK_BYTES;
        (last > allowed).then_some((middle, last))
    }
}

/// Raises this process's soft descriptor limit to the hard one; returns it.
fn raise_fd_limit(needed: u64) -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if hard < needed {
        bail!(
            "the hard file descriptor limit is {hard}, the load needs about {needed}: \
             raise it (ulimit -Hn, or LimitNOFILE= for a service) and run again"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// One client: connect, then INCR its key about once a second until
/// `until`; returns the INCRs acknowledged. Any error fails the client.
async fn client(
    listen: SocketAddr,
    key: String,
    until: Instant,
    ready: Arc<AtomicU64>,
) -> Result<i64> {
    let mut stream = None;
    for _ in 0..50 {
        match TcpStream::connect(listen).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            // The listen backlog can overflow while thousands connect.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let stream = stream.context("could not connect")?;
    ready.fetch_add(1, Ordering::AcqRel);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let command = encode_command(&["INCR", &key]);
    let mut acked = 0i64;
    // Spread the clients over the second.
    let jitter = Duration::from_millis(fastrand::u64(0..1000));
    tokio::time::sleep(jitter).await;
    let mut line = String::new();
    while Instant::now() < until {
        write.write_all(&command).await.context("write")?;
        line.clear();
        read.read_line(&mut line).await.context("read")?;
        let expected = format!(":{}\r\n", acked + 1);
        if line != expected {
            bail!("{key}: expected {expected:?}, got {line:?}");
        }
        acked += 1;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    Ok(acked)
}

/// Runs the campaign against `target`.
pub fn run(target: &Target, options: &ConnectionLoad) -> Result<Row> {
    let mut row = Row {
        campaign: format!("connection load ({} clients)", options.count),
        runs: 1,
        ..Default::default()
    };
    let limit = raise_fd_limit(3 * options.count as u64 + 256)?;
    let redis = RedisServer::start()?;
    let dir = tempfile::TempDir::new()?;
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = Command::new(&target.bin)
        .args(["proxy", "--listen", &listen.to_string()])
        .args(["--backend", &redis.addr.to_string()])
        .args(["--max-connections", &(options.count + 100).to_string()])
        .arg("--journal")
        .arg(dir.path().join("journal"))
        .env("REPLAYMIG_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", target.bin.display()))?;
    let mut proxy = ChildGuard::new("replaymig proxy", child);
    wait_for_listen_by(proxy.pid(), listen.port(), Duration::from_secs(15))?;
    let pid = proxy.pid();
    let rss_start = rss::rss_bytes(pid).unwrap_or(0);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ready = Arc::new(AtomicU64::new(0));
    // Everyone connects within the warm-up, then works for `seconds`.
    let warm_up = Duration::from_secs(10);
    let until = Instant::now() + warm_up + Duration::from_secs(options.seconds);
    let outcome = rt.block_on(async {
        let tasks: Vec<_> = (0..options.count)
            .map(|i| tokio::spawn(client(listen, format!("c{i}"), until, ready.clone())))
            .collect();
        // Warm-up: all connected and a round of work done.
        let deadline = Instant::now() + warm_up;
        while ready.load(Ordering::Acquire) < options.count as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut trace = RssTrace {
            warm: rss::rss_bytes(pid).unwrap_or(0),
            samples: Vec::new(),
        };
        let peak = ready.load(Ordering::Acquire);
        while Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
            trace.samples.extend(rss::rss_bytes(pid));
        }
        let mut results = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            results.push((i, t.await));
        }
        (trace, peak, results)
    });
    let (trace, peak, results) = outcome;
    let mut incrs = 0i64;
    for (i, result) in results {
        match result {
            Ok(Ok(acked)) => {
                incrs += acked;
                let executed = redis.get_int(&format!("c{i}"))?;
                if executed != acked {
                    row.lost += acked.abs_diff(executed);
                    row.fail(format!("c{i}: {acked} acked, {executed} in redis"));
                }
            }
            Ok(Err(e)) => row.fail(format!("client {i}: {e:#}")),
            Err(e) => row.fail(format!("client {i} panicked: {e}")),
        }
    }
    if trace.max() > trace.bound() {
        row.fail(format!(
            "proxy RSS grew from {} to {} MB after the warm-up (bound {} MB)",
            trace.warm >> 20,
            trace.max() >> 20,
            trace.bound() >> 20
        ));
    }
    if Duration::from_secs(options.seconds) >= RSS_TREND_AFTER {
        if let Some((middle, last)) = trace.still_growing() {
            row.fail(format!(
                "proxy RSS still growing at the end: lowest {} MB in the middle third, {} MB in the last",
                middle >> 20,
                last >> 20
            ));
        }
    }
    let _ = proxy.terminate(Duration::from_secs(10));
    row.checked = format!(
        "{} connections, {incrs} INCRs (acked = in redis)",
        options.count
    );
    let mb = |b: u64| format!("{:.1}", b as f64 / 1e6);
    let troughs: Vec<String> = trace.troughs().into_iter().map(mb).collect();
    row.notes = format!(
        "peak {peak} connected, {} s; proxy RSS (MB) {} at start, {} after warm-up, \
         lowest by third {}, max {} (bound {}: + sled cache cap + 10% + 8), {} at end; fd limit {limit}",
        options.seconds,
        mb(rss_start),
        mb(trace.warm),
        troughs.join(" / "),
        mb(trace.max()),
        mb(trace.bound()),
        mb(trace.end())
    );
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_reports_each_thirds_trough_and_bounds_the_maximum() {
        const MB: u64 = 1 << 20;
        let trace = RssTrace {
            warm: 200 * MB,
            samples: [205, 220, 201, 230, 241, 235, 260, 251, 270]
                .map(|m| m * MB)
                .to_vec(),
        };
        assert_eq!(trace.troughs(), [201 * MB, 230 * MB, 251 * MB]);
        assert_eq!(trace.max(), 270 * MB);
        assert_eq!(trace.end(), 270 * MB);
        assert_eq!(
            trace.bound(),
            200 * MB + CACHE_CAPACITY_BYTES + 20 * MB + RSS_SLACK_BYTES
        );
        let empty = RssTrace {
            warm: 9,
            samples: vec![],
        };
        assert_eq!((empty.max(), empty.end()), (9, 9));
        assert_eq!(empty.still_growing(), None);
    }

    #[test]
    fn a_plateau_is_flat_and_a_steady_climb_is_not() {
        const MB: u64 = 1 << 20;
        let trace = |samples: &[u64]| RssTrace {
            warm: 200 * MB,
            samples: samples.iter().map(|m| m * MB).collect(),
        };
        // The 170 s run's troughs: the cache fills, then stays.
        assert_eq!(trace(&[199, 210, 241, 245, 251, 250]).still_growing(), None);
        assert_eq!(
            trace(&[200, 230, 260, 290, 320, 350]).still_growing(),
            Some((260 * MB, 320 * MB))
        );
    }
}
