//! A real `redis-server` (Debian's package, installed by tools/setup.sh) on
//! a free loopback port, in its own temp dir, killed when dropped.

use crate::process::{free_port, wait_for_port, ChildGuard};
use crate::resp::{Reply, RespClient};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// A running redis-server; stopped (by PID) and its dir removed on drop.
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    guard: ChildGuard,
    dir: TempDir,
}

impl RedisServer {
    /// Starts an empty, persistence-less redis on a free port.
    pub fn start() -> Result<RedisServer> {
        Self::start_on(free_port())
    }

    /// Starts redis on `port` (e.g. to bring a backend back on the same port).
    pub fn start_on(port: u16) -> Result<RedisServer> {
        Self::start_in(TempDir::new()?, port)
    }

    /// Starts redis loading the RDB file `rdb` (a snapshot), on a free port.
    pub fn start_from_rdb(rdb: &Path) -> Result<RedisServer> {
        let dir = TempDir::new()?;
        std::fs::copy(rdb, dir.path().join("dump.rdb")).context("copy the RDB snapshot")?;
        Self::start_in(dir, free_port())
    }

    fn start_in(dir: TempDir, port: u16) -> Result<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (run tools/setup.sh)")?;
        let guard = ChildGuard::new("redis-server", child);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for_port(addr, Duration::from_secs(10))?;
        Ok(RedisServer { addr, guard, dir })
    }

    /// A fresh client connection straight to redis (not through a proxy).
    pub fn client(&self) -> Result<RespClient> {
        RespClient::connect(self.addr)
    }

    /// Reads an integer key (missing = 0).
    pub fn get_int(&self, key: &str) -> Result<i64> {
        match self.client()?.cmd(&["GET", key])? {
            Reply::Nil => Ok(0),
            Reply::Bulk(b) => Ok(String::from_utf8(b)?.parse()?),
            other => anyhow::bail!("GET {key}: unexpected {other:?}"),
        }
    }

    /// Every key with its `DUMP` (serialized value), sorted by key: equal
    /// maps mean equal datasets.
    pub fn dump_all(&self) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
        let mut c = self.client()?;
        let Reply::Array(keys) = c.cmd(&["KEYS", "*"])? else {
            anyhow::bail!("KEYS did not answer an array")
        };
        let mut out = std::collections::BTreeMap::new();
        for k in keys {
            let Reply::Bulk(k) = k else {
                anyhow::bail!("odd key")
            };
            let key = String::from_utf8(k)?;
            let Reply::Bulk(v) = c.cmd(&["DUMP", &key])? else {
                anyhow::bail!("DUMP {key} failed")
            };
            out.insert(key, v);
        }
        Ok(out)
    }

    /// `SAVE`, then the path of the RDB file written.
    pub fn save(&self) -> Result<std::path::PathBuf> {
        match self.client()?.cmd(&["SAVE"])? {
            Reply::Status(s) if s == "OK" => Ok(self.dir.path().join("dump.rdb")),
            other => anyhow::bail!("SAVE: {other:?}"),
        }
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server now.
    pub fn stop(&mut self) {
        let _ = self.guard.kill9();
    }
}
