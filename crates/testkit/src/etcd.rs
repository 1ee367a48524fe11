//! A real etcd cluster on loopback for tests (Debian's `etcd` 3.4, from
//! tools/setup.sh): members started as child processes in a temp dir,
//! each one killable and restartable, all stopped by PID and their data
//! deleted when the cluster is dropped (also when a test fails).

use crate::process::{free_port, ChildGuard};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One member's addresses and process.
struct Member {
    name: String,
    client: String,
    peer: String,
    data: PathBuf,
    process: Option<ChildGuard>,
}

/// A running cluster of `n` members.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial: String,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy.
    pub fn start(n: usize) -> Result<EtcdCluster> {
        let dir = tempfile::tempdir()?;
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                data: dir.path().join(format!("m{i}")),
                process: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial,
            dir,
        };
        for i in 0..n {
            cluster.launch(i, "new")?;
        }
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>(), Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// Kills member `i` (SIGKILL, by PID) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            let _ = process.kill9();
        }
    }

    /// Starts member `i` again on its data and waits until it is healthy.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.launch(i, "existing")?;
        self.wait_healthy(&[i], Duration::from_secs(30))
    }

    /// `etcdctl` against every member, for checks from outside the crate
    /// under test; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .arg("--command-timeout=3s")
            .args(args)
            .output()
            .context("run etcdctl (tools/setup.sh installs it)")?;
        if !output.status.success() {
            bail!(
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn launch(&mut self, i: usize, state: &str) -> Result<()> {
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))?;
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg(format!("--data-dir={}", m.data.display()))
            .arg(format!("--listen-client-urls={}", m.client))
            .arg(format!("--advertise-client-urls={}", m.client))
            .arg(format!("--listen-peer-urls={}", m.peer))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer))
            .arg(format!("--initial-cluster={}", self.initial))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--initial-cluster-token=replaymig-test")
            // Quick elections: a killed leader is replaced in well under
            // a second, as on a small LAN.
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start etcd (tools/setup.sh installs etcd-server)")?;
        self.members[i].process = Some(ChildGuard::new(format!("etcd {}", m.name), child));
        Ok(())
    }

    fn wait_healthy(&self, which: &[usize], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for &i in which {
            loop {
                let healthy = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .arg(format!("--endpoints={}", self.members[i].client))
                    .args(["--command-timeout=1s", "endpoint", "health"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if healthy {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(
                        self.dir
                            .path()
                            .join(format!("{}.log", self.members[i].name)),
                    )
                    .unwrap_or_default();
                    let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                    bail!("etcd member {i} not healthy within {timeout:?}; its log ends:\n{tail}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}
