//! Connection load: thousands of concurrent clients through one proxy, each
//! doing a little checked work (an INCR on its own key, about once a
//! second), for a bounded time. No connection may fail, every INCR must be
//! in redis exactly, and the proxy's resident memory must stay flat after
//! the warm-up.
//!
//! File descriptors: the campaign raises its own `RLIMIT_NOFILE` soft limit
//! to the hard limit (children inherit it: the proxy needs two descriptors
//! per client, redis one); a hard limit below what the load needs is an
//! error that says so.

use crate::{rss, Row, Target};
use anyhow::{bail, Context, Result};
use replaymig_testkit::{encode_command, free_port, wait_for_listen, ChildGuard, RedisServer};
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
            seconds: 30,
        }
    }
}

/// Memory may grow this much after the warm-up and still count as flat.
const RSS_SLACK: f64 = 1.25;
const RSS_SLACK_BYTES: u64 = 8 << 20;

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
    wait_for_listen(listen.port(), Duration::from_secs(15))?;
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
        let rss_warm = rss::rss_bytes(pid).unwrap_or(0);
        let peak = ready.load(Ordering::Acquire);
        tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        let rss_end = rss::rss_bytes(pid).unwrap_or(0);
        let mut results = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            results.push((i, t.await));
        }
        (rss_warm, rss_end, peak, results)
    });
    let (rss_warm, rss_end, peak, results) = outcome;
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
    let flat = (rss_end as f64) <= rss_warm as f64 * RSS_SLACK + RSS_SLACK_BYTES as f64;
    if !flat {
        row.fail(format!(
            "proxy RSS grew from {} to {} MB after the warm-up",
            rss_warm >> 20,
            rss_end >> 20
        ));
    }
    let _ = proxy.terminate(Duration::from_secs(10));
    row.checked = format!(
        "{} connections, {incrs} INCRs (acked = in redis)",
        options.count
    );
    row.notes = format!(
        "peak {peak} connected, {} s; proxy RSS {:.1} MB at start, {:.1} after warm-up, {:.1} at end; fd limit {limit}",
        options.seconds,
        rss_start as f64 / 1e6,
        rss_warm as f64 / 1e6,
        rss_end as f64 / 1e6
    );
    Ok(row)
}
