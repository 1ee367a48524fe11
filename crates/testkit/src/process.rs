//! Child processes that cannot outlive their test.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Owns a child process; dropping it kills that PID (SIGKILL) and reaps it.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Takes ownership of a spawned child.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        ChildGuard {
            child: Some(child),
            name: name.into(),
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child present").id()
    }

    /// Sends `signal` to the child (by PID).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid() as i32), signal)
            .with_context(|| format!("signal {}", self.name))
    }

    /// Waits up to `timeout` for the child to exit and returns its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().expect("child present");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, then waits for a graceful exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_timeout(timeout)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// A loopback port nobody listens on right now, and never handed out
/// before in this process (tests running in parallel would otherwise be
/// given the same port between its release here and their bind).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        let mut given = GIVEN.lock().expect("poisoned");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits until something accepts connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// Waits until a socket listens on loopback `port`, without connecting to
/// it (a probe connection would be journaled by a proxy). Reads the
/// kernel's table of TCP sockets in this network namespace.
pub fn wait_for_listen(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let needle = format!(":{port:04X} 00000000:0000 0A");
    while Instant::now() < deadline {
        // thread-self: the calling thread's network namespace (a thread that
        // entered a testbed node's namespace sees that node's sockets).
        let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
        if table.lines().any(|l| l.contains(&needle)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port} after {timeout:?}")
}

/// Stops, when dropped, the redis-servers on these loopback ports: a node
/// killed by its guard leaves the service it started behind (also when the
/// test fails).
pub struct StopRedisOnDrop(pub Vec<u16>);

impl Drop for StopRedisOnDrop {
    fn drop(&mut self) {
        for port in &self.0 {
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "SHUTDOWN", "NOSAVE"])
                .output();
        }
    }
}

/// The PIDs of the processes holding a socket that listens on loopback
/// TCP `port` (IPv4) in this network namespace: the socket's inode from
/// `/proc/net/tcp`, then every `/proc/PID/fd` entry that is that socket.
pub fn listener_pids(port: u16) -> Vec<u32> {
    // thread-self: the calling thread's network namespace (a thread that
    // entered a testbed node's namespace sees that node's sockets).
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st ... uid timeout inode
            let listening = f.get(3) == Some(&"0A");
            let ours = f.get(1).is_some_and(|a| a.ends_with(&local));
            (listening && ours).then(|| f.get(9).map(|i| format!("socket:[{i}]")))?
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let fds = std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten();
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .map(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
                .unwrap_or(false)
        });
        if holds {
            pids.push(pid);
        }
    }
    pids
}

/// Kills (SIGKILL, by PID), when dropped, whatever process listens on
/// these loopback ports: the services a node agent started (any kind, not
/// only redis), left behind when the node is killed or the test fails.
pub struct StopListenersOnDrop(pub Vec<u16>);

impl Drop for StopListenersOnDrop {
    fn drop(&mut self) {
        for port in &self.0 {
            for pid in listener_pids(*port) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}
