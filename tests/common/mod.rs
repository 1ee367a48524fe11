//! Shared by the integration tests: start the real `replaymig` binary, read
//! its journal back, scrape its metrics.
#![allow(dead_code, unused_imports)]

use anyhow::{Context, Result};
use replaymig_journal::{Entry, Journal, JournalOptions, Lsn, OpenMode};
use replaymig_testkit::{free_port, wait_for_listen, ChildGuard};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The binary under test, built by cargo for this test run.
pub fn replaymig() -> Command {
    Command::new(env!("CARGO_BIN_EXE_replaymig"))
}

/// Runs `replaymig ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    replaymig().args(args).output().expect("run replaymig")
}

/// A running `replaymig proxy`.
pub struct ProxyProcess {
    pub guard: ChildGuard,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub journal: PathBuf,
}

impl ProxyProcess {
    /// Starts a proxy in front of `backend` journaling into `journal`.
    pub fn start(backend: SocketAddr, journal: &Path, durability: &str) -> Result<ProxyProcess> {
        Self::start_with(backend, journal, durability, &[])
    }

    /// Like `start`, with extra command-line options.
    pub fn start_with(
        backend: SocketAddr,
        journal: &Path,
        durability: &str,
        extra: &[&str],
    ) -> Result<ProxyProcess> {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = replaymig()
            .args(["proxy", "--listen", &listen.to_string()])
            .args(["--backend", &backend.to_string()])
            .arg("--journal")
            .arg(journal)
            .args(["--durability", durability])
            .args(["--metrics", &metrics.to_string()])
            .args(["--drain-timeout", "3"])
            .args(extra)
            .env("REPLAYMIG_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let guard = ChildGuard::new("replaymig proxy", child);
        wait_for_listen(listen.port(), Duration::from_secs(15)).context("proxy did not come up")?;
        Ok(ProxyProcess {
            guard,
            listen,
            metrics,
            journal: journal.to_path_buf(),
        })
    }

    /// Graceful stop; asserts a clean exit.
    pub fn stop(&mut self) {
        let status = self
            .guard
            .terminate(Duration::from_secs(15))
            .expect("proxy exits");
        assert!(status.success(), "proxy exited with {status}");
    }

    /// The metrics page, parsed.
    pub fn scrape(&self) -> Metrics {
        scrape(self.metrics).expect("scrape metrics")
    }
}

/// Samples of one scrape: `name{labels}` → value.
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// The value of a series written exactly as on the page; a bare family
    /// name sums its labelled series (0 if absent).
    pub fn get(&self, series: &str) -> f64 {
        if let Some(v) = self.0.get(series) {
            return *v;
        }
        let prefix = format!("{series}{{");
        self.0
            .iter()
            .filter(|(k, _)| !series.contains('{') && k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum()
    }
    /// Whether any series of the family exists.
    pub fn has_family(&self, prefix: &str) -> bool {
        self.0.keys().any(|k| k.starts_with(prefix))
    }
}

/// GET /metrics over plain HTTP/1.0.
pub fn scrape(addr: SocketAddr) -> Result<Metrics> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    // The samples are the body, after the HTTP headers.
    let body = body
        .split_once("\r\n\r\n")
        .map_or(body.as_str(), |(_, b)| b);
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse() {
                samples.insert(series.to_string(), v);
            }
        }
    }
    Ok(Metrics(samples))
}

/// Every record of a (closed) journal, verified.
pub fn read_journal(dir: &Path) -> Vec<Entry> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let j = Journal::open(
            dir,
            JournalOptions {
                mode: OpenMode::MustExist,
                ..Default::default()
            },
        )
        .expect("journal opens");
        let entries: Vec<Entry> = j
            .read_range(1, Lsn::MAX)
            .collect::<Result<_, _>>()
            .expect("every record verifies");
        j.close().await.unwrap();
        entries
    })
}

/// LSNs must run 1, 2, 3, ... with no gap.
pub fn assert_contiguous(entries: &[Entry]) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.lsn, i as u64 + 1, "LSNs must be contiguous from 1");
    }
}

pub use replaymig_testkit::journal_view::{connections, journaled_incrs, JournaledConn};
pub use replaymig_testkit::{IncrLoad, StopRedisOnDrop};

/// Starts `replaymig node --config CONFIG ARGS` (log in `DIR/NAME.log`)
/// and waits for its admin port.
pub fn start_node(
    dir: &Path,
    name: &str,
    config: &Path,
    admin: u16,
    env: &[(&str, &str)],
    args: &[&str],
) -> ChildGuard {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let child = replaymig()
        .args(["node", "--config"])
        .arg(config)
        .args(args)
        .env("REPLAYMIG_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = ChildGuard::new(format!("node {name}"), child);
    wait_for_listen(admin, Duration::from_secs(30)).unwrap();
    guard
}
