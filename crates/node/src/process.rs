//! The service process a node runs while it owns the service: started from
//! the configured command (or restored by CRIU), stopped by PID.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A running service.
pub struct ServiceProcess {
    /// Started by us (killed and reaped on stop).
    child: Option<Child>,
    /// The PID to snapshot (CRIU: the init of its PID namespace) and stop.
    pub pid: u32,
}

impl ServiceProcess {
    /// Runs `command` under `sh -c` (as `exec`, so the shell is replaced).
    pub fn start(command: &str) -> Result<ServiceProcess> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the service: {command}"))?;
        let pid = child.id().context("the service exited at once")?;
        Ok(ServiceProcess {
            child: Some(child),
            pid,
        })
    }

    /// A process started by someone else (CRIU restore).
    pub fn adopt(pid: u32) -> ServiceProcess {
        ServiceProcess { child: None, pid }
    }

    /// The PID to snapshot: for `unshare --pid --fork ...` it is the
    /// forked init, the first child of the started process; else itself.
    pub fn snapshot_pid(&self) -> u32 {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid))
            .unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .filter(|_| self.is_unshare())
            .unwrap_or(self.pid)
    }

    fn is_unshare(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|c| c.trim() == "unshare")
            .unwrap_or(false)
    }

    /// Stops it: SIGTERM to the snapshot PID and the process, SIGKILL after
    /// a grace period.
    pub async fn stop(self) {
        self.stop_within(STOP_GRACE).await
    }

    /// Stops it, SIGKILL after `grace`. Done only when both the started
    /// process and the snapshot PID are gone: the init of a PID namespace
    /// ignores a SIGTERM it has no handler for, and the `unshare` wrapper
    /// exiting must not leave it serving.
    pub async fn stop_within(mut self, grace: Duration) {
        let inner = self.snapshot_pid();
        for pid in [inner, self.pid] {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            let outer_gone = match self.child.as_mut() {
                Some(child) => matches!(child.try_wait(), Ok(Some(_))),
                None => !is_alive(self.pid),
            };
            if outer_gone && !is_alive(inner) {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(
            pid = inner,
            "the service ignored SIGTERM for {grace:?}; killing it"
        );
        // SIGKILL to a PID namespace's init ends everything in it.
        let _ = kill(Pid::from_raw(inner as i32), Signal::SIGKILL);
        match self.child.as_mut() {
            Some(child) => {
                let _ = child.kill().await;
            }
            None => {
                let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            }
        }
        while is_alive(inner) && Instant::now() < deadline + Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long a stopped service may take to exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether `pid` still runs: it exists and is not a zombie (a restored
/// process's parent is the host's init, which may reap it late).
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Waits until the service accepts connections.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        // A restore waits on this: a coarse poll adds to every migration.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("the service did not accept connections on {addr} within {timeout:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unshare_wrapped_init_that_ignores_sigterm_is_stopped_too() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: unshare --pid needs root");
            return;
        }
        let p = ServiceProcess::start(
            "unshare --pid --fork sh -c 'trap \"\" TERM; while :; do sleep 1; done'",
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.snapshot_pid() == p.pid {
            assert!(Instant::now() < deadline, "unshare did not fork");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let inner = p.snapshot_pid();
        assert!(is_alive(inner));
        p.stop_within(Duration::from_millis(300)).await;
        assert!(!is_alive(inner), "the namespace's init still runs");
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped yet: a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_alive(pid) {
            assert!(Instant::now() < deadline, "true did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        child.wait().unwrap();
        assert!(!is_alive(pid));
        assert!(is_alive(std::process::id()));
    }
}
