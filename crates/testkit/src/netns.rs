//! Test hosts in network namespaces: the two-node testbed from
//! tools/testbed.sh (torn down on drop), and running code "on" a node by
//! entering its network namespace on a fresh thread (sockets it creates
//! stay in that namespace wherever they are used afterwards).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The two-node testbed; `down` on drop, also on panic.
pub struct Testbed {
    /// Its name (namespaces are `NAME-a`, `NAME-b`).
    pub name: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/testbed.sh")
}

impl Testbed {
    /// Creates it, shaped to `rate_mbit` if given.
    pub fn up(name: &str, rate_mbit: Option<u32>) -> Result<Testbed> {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).args(["--name", name]);
        if let Some(rate) = rate_mbit {
            cmd.args(["--rate", &rate.to_string()]);
        }
        let out = cmd.arg("up").output().context("run tools/testbed.sh")?;
        if !out.status.success() {
            bail!(
                "testbed up failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Testbed {
            name: name.to_string(),
        })
    }

    /// The namespace of node `a` or `b`.
    pub fn netns(&self, node: char) -> String {
        format!("{}-{node}", self.name)
    }

    /// The address of node `a` or `b`.
    pub fn addr(&self, node: char) -> std::net::IpAddr {
        let out = Command::new("bash")
            .arg(script())
            .args(["--name", &self.name, "addr", &node.to_string()])
            .output()
            .expect("testbed addr");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("an address")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["--name", &self.name, "down"])
            .output();
    }
}

/// Runs `f` on a new thread that has entered network namespace `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{netns}");
    let handle = std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {netns} panicked"))?
}

/// Whether this process runs as root (namespaces, mounts, CRIU need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Kills, when dropped, whatever listens on these ports inside network
/// namespace `netns` ([`crate::StopListenersOnDrop`] run in it): the
/// services a node agent in a testbed started, left behind when the node
/// is killed or the test fails. Drop it before the testbed.
pub struct StopNetnsListenersOnDrop {
    /// The namespace (`Testbed::netns`).
    pub netns: String,
    /// The ports its services listen on.
    pub ports: Vec<u16>,
}

impl Drop for StopNetnsListenersOnDrop {
    fn drop(&mut self) {
        let ports = std::mem::take(&mut self.ports);
        let _ = in_netns(&self.netns, move || drop(crate::StopListenersOnDrop(ports)));
    }
}
