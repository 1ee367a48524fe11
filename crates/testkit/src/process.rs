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
///
/// Drawn below the kernel's ephemeral range (`ip_local_port_range`): a
/// port from that range, free when checked, can be given to anyone's
/// `bind(0)` or outgoing `connect()` before the process meant to listen
/// on it binds it (seen: a test relay's `bind(0)` took a node's admin
/// port, so the node never started). The kernel assigns nothing below
/// the range on its own.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let below = ports_below_ephemeral();
    loop {
        let port = match &below {
            Some(range) => fastrand::u16(range.clone()),
            None => TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("bind an ephemeral port"),
        };
        if below.is_some() && TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue; // someone listens there (or holds it) now
        }
        let mut given = GIVEN.lock().expect("poisoned");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The 12,000 ports just below the kernel's ephemeral range, if the range
/// starts high enough to leave them (the default starts at 32768).
fn ports_below_ephemeral() -> Option<std::ops::Range<u16>> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = range.split_whitespace().next()?.parse().ok()?;
    (low >= 16_000).then(|| low - 12_000..low)
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

/// The `socket:[INODE]` names of the sockets listening on loopback TCP
/// `port` (IPv4) in the calling thread's network namespace, read from the
/// kernel's table (what `/proc/PID/fd` links point to).
fn listening_sockets(port: u16) -> Vec<String> {
    // thread-self: the calling thread's network namespace (a thread that
    // entered a testbed node's namespace sees that node's sockets).
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st ... uid timeout inode
            let listening = f.get(3) == Some(&"0A");
            let ours = f.get(1).is_some_and(|a| a.ends_with(&local));
            (listening && ours).then(|| f.get(9).map(|i| format!("socket:[{i}]")))?
        })
        .collect()
}

/// Whether process `pid` holds one of `sockets` (`socket:[INODE]` names).
fn holds_any(pid: u32, sockets: &[String]) -> bool {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten();
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| sockets.iter().any(|i| target.as_os_str() == i.as_str()))
            .unwrap_or(false)
    })
}

/// Whether process `pid` has exited (gone, or a zombie not yet reaped).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // pid (comm) STATE ...: the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Waits until process `pid` itself listens on loopback `port`. Unlike
/// [`wait_for_listen`], another process that happens to listen there
/// (another test process given the same port, a service left behind)
/// does not count, and a child that exited (its bind failed) fails at
/// once, its port named, instead of passing or timing out.
pub fn wait_for_listen_by(pid: u32, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let sockets = listening_sockets(port);
        if !sockets.is_empty() && holds_any(pid, &sockets) {
            return Ok(());
        }
        if has_exited(pid) {
            bail!("process {pid} exited before it listened on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("process {pid} does not listen on port {port} after {timeout:?}")
}

/// The PIDs of the processes holding a socket that listens on loopback
/// TCP `port` (IPv4) in this network namespace: the socket's inode from
/// `/proc/net/tcp`, then every `/proc/PID/fd` entry that is that socket.
pub fn listener_pids(port: u16) -> Vec<u32> {
    let inodes = listening_sockets(port);
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
        if holds_any(pid, &inodes) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn free_ports_are_never_ones_the_kernel_hands_out_by_itself() {
        let Some(below) = ports_below_ephemeral() else {
            eprintln!("skipped: the ephemeral range starts too low to leave ports below it");
            return;
        };
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| below.contains(p)), "{ports:?}");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port given twice: {ports:?}");
        // And bind(0) never lands in that range.
        for _ in 0..200 {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            assert!(!below.contains(&l.local_addr().unwrap().port()));
        }
    }

    #[test]
    fn a_listener_counts_only_when_the_child_itself_holds_it() {
        let port = free_port();
        // Someone else (this process) listens on the port.
        let _other = TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert!(wait_for_listen(port, Duration::from_secs(1)).is_ok());
        let sleeper = Command::new("sleep").arg("10").spawn().unwrap();
        let mut sleeper = ChildGuard::new("sleep", sleeper);
        let err = wait_for_listen_by(sleeper.pid(), port, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("does not listen"), "{err:#}");
        sleeper.kill9().unwrap();

        // A child that exits (its bind failed) fails at once, not at the timeout.
        let quitter = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let quitter = ChildGuard::new("sh", quitter);
        let started = Instant::now();
        let err = wait_for_listen_by(quitter.pid(), port, Duration::from_secs(20)).unwrap_err();
        assert!(err.to_string().contains("exited"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(10));

        // The child's own listener counts.
        let mine = free_port();
        let script = format!(
            "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{mine}))\ns.listen()\ntime.sleep(10)"
        );
        let listener = Command::new("python3")
            .args(["-c", &script])
            .spawn()
            .unwrap();
        let listener = ChildGuard::new("python3", listener);
        wait_for_listen_by(listener.pid(), mine, Duration::from_secs(10)).unwrap();
    }
}
