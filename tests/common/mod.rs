//! Shared by the integration tests: start the real `replaymig` binary, read
//! its journal back, scrape its metrics.
#![allow(dead_code, unused_imports)]

use anyhow::{Context, Result};
use replaymig_journal::{Entry, Journal, JournalOptions, Lsn, OpenMode};
use replaymig_testkit::{free_port, wait_for_listen_by, ChildGuard};
pub use replaymig_testkit::{scrape, Metrics};
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
        // Three different ports: two free_port() calls in a row can return
        // the same port, and then the proxy's second bind fails while the
        // first listener makes it look up (a flake seen once in CI).
        let mut ports = vec![backend.port()];
        while ports.len() < 3 {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let listen: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], ports[2]).into();
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
        wait_for_listen_by(guard.pid(), listen.port(), Duration::from_secs(15))
            .context("proxy did not come up")?;
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
    start_node_in(None, dir, name, config, admin, env, args)
}

/// [`start_node`] inside network namespace `netns` (a testbed node's,
/// through `nsenter`, which execs the agent: the guard holds its PID),
/// waiting for the admin port in that namespace.
pub fn start_node_in(
    netns: Option<&str>,
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
    let mut cmd = match netns {
        Some(ns) => {
            // nsenter, not `ip netns exec`: that one also makes a mount
            // namespace, and CRIU cannot dump a service whose files are
            // open in a mount namespace other than its own.
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg(env!("CARGO_BIN_EXE_replaymig"));
            c
        }
        None => replaymig(),
    };
    let child = cmd
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
    let pid = guard.pid();
    let up = move || wait_for_listen_by(pid, admin, Duration::from_secs(30));
    match netns {
        Some(ns) => replaymig_testkit::in_netns(ns, up).unwrap().unwrap(),
        None => up().unwrap(),
    }
    guard
}
