//! Snapshot drivers: how a service is dumped and restored.
//!
//! * `exec`: operator commands with `{placeholders}` (values shell-quoted),
//!   e.g. dump = `redis-cli -p {port} SAVE` then `cp {data_dir}/dump.rdb
//!   {snapshot_dir}/`; restore = copy the file back before the service is
//!   started on it. Each command runs under `sh -c` with a timeout; a
//!   non-zero exit fails the snapshot with the command's stderr.
//! * `criu`: process-level, as in the paper. The service runs as the init
//!   of its own PID namespace (`unshare --pid --fork setsid ...`, started
//!   with `nsenter --net=...` rather than `ip netns exec`, which would give
//!   it a mount namespace CRIU cannot dump); `criu dump --leave-running
//!   --tcp-close` of that init from inside the service's network namespace,
//!   `criu restore -d` from inside the destination's, which gives the
//!   restored process its old PIDs in a fresh PID namespace while the
//!   original still runs (see ENVIRONMENT.md and tools/install-criu.sh).
//!   With `carry_connections` the init is the socket holder
//!   ([`crate::holder`]) and the connections are dumped and restored
//!   established (`--tcp-established`), both of their ends in the image.
//! * `none`: a stateless service; nothing to dump, replay starts at LSN 1.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Values substituted for `{name}` in exec commands.
pub type Placeholders = BTreeMap<String, String>;

/// Why a dump or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A command could not be started.
    #[error("cannot run snapshot command `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("snapshot command `{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// A command ran past its timeout (it was killed).
    #[error("snapshot command `{command}` did not finish within {timeout:?}")]
    Timeout {
        /// The command.
        command: String,
        /// The bound.
        timeout: Duration,
    },
    /// A command names a placeholder nobody supplied.
    #[error("snapshot command `{command}` uses unknown placeholder {{{name}}}")]
    UnknownPlaceholder {
        /// The command.
        command: String,
        /// The placeholder.
        name: String,
    },
}

/// Operator-supplied dump and restore commands.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ExecDriver {
    /// Run in order to write the snapshot into `{snapshot_dir}`.
    pub dump: Vec<String>,
    /// Run in order to put `{snapshot_dir}` back in place (before the
    /// service is started on it).
    pub restore: Vec<String>,
    /// Bound on each command, seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// After this many `dump` commands the snapshot point is fixed and
    /// client input may resume while the rest run (e.g. 1 for a Redis
    /// `BGSAVE`, whose fork fixes the point; then wait for it and copy).
    /// Default: all of them (the hold lasts the whole dump).
    #[serde(default)]
    pub point_fixed_after: Option<usize>,
    /// Send the files that appear in `{snapshot_dir}` while the commands
    /// after the fixed point run, as they grow (see [`crate::stream`]):
    /// the dump overlaps the transfer. Pays off when those commands write
    /// straight into `{snapshot_dir}`; the manifest's checksums keep it
    /// exact whatever they do.
    #[serde(default = "default_stream")]
    pub stream: bool,
}

fn default_stream() -> bool {
    true
}

fn default_timeout_secs() -> u64 {
    60
}

/// CRIU checkpoint/restore of a process tree.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct CriuDriver {
    /// The criu command (tools/install-criu.sh's wrapper by default).
    #[serde(default = "default_criu")]
    pub criu: String,
    /// Network namespace (name under /run/netns) the service runs in on
    /// this node; `None` = the agent's own.
    #[serde(default)]
    pub netns: Option<String>,
    /// Bound on a dump or restore, seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Bound on freezing the process tree at a dump (criu `--timeout`),
    /// seconds: the tree stays frozen — every client waits — while criu
    /// collects it, so a tree that will not freeze fails the dump (and the
    /// migration, the source serving on) instead of stalling clients.
    #[serde(default = "default_freeze_timeout_secs")]
    pub freeze_timeout_secs: u64,
    /// Carry the client connections themselves (`--tcp-established`): the
    /// service runs under the socket holder (`{holder}` in its start
    /// command, see [`crate::holder`]), which holds the proxy's ends during
    /// the dump, so each connection continues at the destination with its
    /// server-side state, partial requests and unread bytes. Off: the
    /// service's connections are closed in the image (`--tcp-close`) and
    /// the destination opens fresh ones.
    #[serde(default)]
    pub carry_connections: bool,
    /// Send the image files while CRIU writes them (under the dump's
    /// hold) instead of after it, so the link works during the dump: only
    /// pieces zstd would not shrink, uncompressed, so no compression runs
    /// beside the frozen dump (see `DumpStream::incompressible_only`).
    /// What changed after it was sent goes again; the manifest's checksums
    /// stay the proof (see [`crate::stream`]). Measured cost: ~4 ms more
    /// hold at 580 Mbit/s for a 25 MB image of random data, none when the
    /// image compresses (nothing streams then); `false` keeps the hold to
    /// the dump alone.
    #[serde(default = "default_stream")]
    pub stream: bool,
}

fn default_freeze_timeout_secs() -> u64 {
    2
}

/// A dump slower than this keeps a copy of CRIU's log (see
/// `CriuDriver::dump`).
const SLOW_DUMP: Duration = Duration::from_secs(1);

fn default_criu() -> String {
    "/opt/replaymig/criu/bin/criu".into()
}

/// A service's snapshot driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// Operator commands.
    Exec(ExecDriver),
    /// CRIU (placeholder `{pid}`: the service's PID-namespace init).
    Criu(CriuDriver),
    /// Stateless: nothing to dump.
    None,
}

/// What a restore produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    /// The restored process (CRIU), to stop later by PID.
    pub pid: Option<u32>,
}

impl Driver {
    /// The name written into manifests.
    pub fn name(&self) -> &'static str {
        match self {
            Driver::Exec(_) => "exec",
            Driver::Criu(_) => "criu",
            Driver::None => "none",
        }
    }

    /// Writes the service's state into `snapshot_dir` (which exists).
    pub async fn dump(&self, snapshot_dir: &Path, vars: &Placeholders) -> Result<(), DriverError> {
        self.fix_point(snapshot_dir, vars).await?;
        self.finish_dump(snapshot_dir, vars).await
    }

    /// The part of the dump that must run while client input is held: when
    /// it returns, the snapshot's content is fixed (see
    /// `ExecDriver::point_fixed_after`; CRIU: the whole dump).
    pub async fn fix_point(
        &self,
        snapshot_dir: &Path,
        vars: &Placeholders,
    ) -> Result<(), DriverError> {
        match self {
            Driver::Exec(exec) => {
                exec.run_all(exec.dump_until_fixed(), snapshot_dir, vars)
                    .await
            }
            Driver::Criu(criu) => criu.dump(snapshot_dir, vars).await,
            Driver::None => Ok(()),
        }
    }

    /// The rest of the dump, which may run while the service serves again.
    pub async fn finish_dump(
        &self,
        snapshot_dir: &Path,
        vars: &Placeholders,
    ) -> Result<(), DriverError> {
        match self {
            Driver::Exec(exec) => {
                exec.run_all(exec.dump_after_fixed(), snapshot_dir, vars)
                    .await
            }
            Driver::Criu(_) | Driver::None => Ok(()),
        }
    }

    /// Whether the dump goes on after the snapshot point is fixed and its
    /// files are to be sent while it does (`ExecDriver::stream`).
    pub fn streams_dump(&self) -> bool {
        matches!(self, Driver::Exec(e) if e.stream && !e.dump_after_fixed().is_empty())
    }

    /// Whether the dump that fixes the point (CRIU's, under the hold) has
    /// its files sent while it runs (`CriuDriver::stream`).
    pub fn streams_fix_point(&self) -> bool {
        matches!(self, Driver::Criu(c) if c.stream)
    }

    /// Puts the state in `snapshot_dir` in place for the service (CRIU:
    /// restores and starts the process itself, in `netns` if given).
    pub async fn restore(
        &self,
        snapshot_dir: &Path,
        vars: &Placeholders,
        netns: Option<&str>,
    ) -> Result<Restored, DriverError> {
        match self {
            Driver::Exec(exec) => exec
                .run_all(&exec.restore, snapshot_dir, vars)
                .await
                .map(|()| Restored::default()),
            Driver::Criu(criu) => criu.restore(snapshot_dir, netns).await,
            Driver::None => Ok(Restored::default()),
        }
    }
}

impl ExecDriver {
    fn split(&self) -> usize {
        self.point_fixed_after
            .unwrap_or(self.dump.len())
            .min(self.dump.len())
    }

    /// The dump commands that run while input is held.
    fn dump_until_fixed(&self) -> &[String] {
        &self.dump[..self.split()]
    }

    /// The dump commands that may run while the service serves again.
    fn dump_after_fixed(&self) -> &[String] {
        &self.dump[self.split()..]
    }

    async fn run_all(
        &self,
        commands: &[String],
        snapshot_dir: &Path,
        vars: &Placeholders,
    ) -> Result<(), DriverError> {
        let mut vars = vars.clone();
        vars.insert("snapshot_dir".into(), snapshot_dir.display().to_string());
        for template in commands {
            let command = substitute(template, &vars)?;
            run(&command, Duration::from_secs(self.timeout_secs)).await?;
        }
        Ok(())
    }
}

impl CriuDriver {
    /// `nsenter --net=/run/netns/NS` prefix, or nothing.
    fn in_netns(netns: Option<&str>) -> String {
        match netns {
            Some(ns) => format!(
                "nsenter --net={} ",
                shlex::try_quote(&format!("/run/netns/{ns}")).expect("no NUL")
            ),
            None => String::new(),
        }
    }

    /// How the dump treats established connections: carried (a connection
    /// the service has not accepted yet is left out: its client's connect
    /// is still in the proxy's hands and retried there) or closed.
    fn tcp_flags(&self) -> &'static str {
        if self.carry_connections {
            "--tcp-established --skip-in-flight"
        } else {
            "--tcp-close"
        }
    }

    async fn dump(&self, snapshot_dir: &Path, vars: &Placeholders) -> Result<(), DriverError> {
        let template = format!(
            "{}{{criu}} dump -t {{pid}} -D {{snapshot_dir}} --leave-running {} --network-lock skip \
             --timeout {} -v3 -o dump.log",
            Self::in_netns(self.netns.as_deref()),
            self.tcp_flags(),
            self.freeze_timeout_secs.max(1)
        );
        let mut vars = vars.clone();
        vars.insert("criu".into(), self.criu.clone());
        vars.insert("snapshot_dir".into(), snapshot_dir.display().to_string());
        let command = substitute(&template, &vars)?;
        let started = std::time::Instant::now();
        let result = run(&command, Duration::from_secs(self.timeout_secs)).await;
        let took = started.elapsed();
        let log = snapshot_dir.join("dump.log");
        if took > SLOW_DUMP {
            // The snapshot directory goes with the migration; the log of a
            // dump that froze the service this long stays for the operator.
            let kept = snapshot_dir
                .parent()
                .unwrap_or(snapshot_dir)
                .join("criu-last-slow-dump.log");
            let _ = std::fs::copy(&log, &kept);
            tracing::warn!(
                seconds = took.as_secs_f64(),
                log = %kept.display(),
                "the criu dump froze the service for over {SLOW_DUMP:?}"
            );
        }
        with_criu_log(result, &log)
    }

    async fn restore(
        &self,
        snapshot_dir: &Path,
        netns: Option<&str>,
    ) -> Result<Restored, DriverError> {
        let pidfile = snapshot_dir.join("restored.pid");
        let mut vars = Placeholders::new();
        vars.insert("criu".into(), self.criu.clone());
        vars.insert("snapshot_dir".into(), snapshot_dir.display().to_string());
        vars.insert("pidfile".into(), pidfile.display().to_string());
        let template = format!(
            "{}{{criu}} restore -D {{snapshot_dir}} {} --network-lock skip -d --pidfile {{pidfile}} -o restore.log",
            Self::in_netns(netns),
            if self.carry_connections { "--tcp-established" } else { "--tcp-close" }
        );
        let result = run(
            &substitute(&template, &vars)?,
            Duration::from_secs(self.timeout_secs),
        )
        .await;
        with_criu_log(result, &snapshot_dir.join("restore.log"))?;
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        Ok(Restored { pid })
    }
}

/// CRIU says why it failed in its log file (`-o`), not on stderr: a failed
/// run's error carries the log's error lines (at most the last 3), so the
/// operator reads the reason in `migrate`'s output.
fn with_criu_log(result: Result<(), DriverError>, log: &Path) -> Result<(), DriverError> {
    match result {
        Err(DriverError::Failed {
            command,
            status,
            stderr,
        }) => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
            let last = &errors[errors.len().saturating_sub(3)..];
            let stderr = if last.is_empty() {
                stderr
            } else {
                format!("{stderr} {}: {}", log.display(), last.join(" | "))
                    .trim()
                    .to_string()
            };
            Err(DriverError::Failed {
                command,
                status,
                stderr,
            })
        }
        other => other,
    }
}

/// Placeholders whose value is a command prefix of already quoted words
/// (`{holder}`: the socket holder the service runs under), inserted as
/// they are.
const PREFIX_PLACEHOLDERS: &[&str] = &["holder"];

/// Replaces each `{name}` with the shell-quoted value of `name`.
pub fn substitute(template: &str, vars: &Placeholders) -> Result<String, DriverError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let name = &after[..close];
        let value = vars
            .get(name)
            .ok_or_else(|| DriverError::UnknownPlaceholder {
                command: template.to_string(),
                name: name.to_string(),
            })?;
        if PREFIX_PLACEHOLDERS.contains(&name) {
            out.push_str(value);
        } else {
            let quoted = shlex::try_quote(value).map_err(|_| DriverError::UnknownPlaceholder {
                command: template.to_string(),
                name: format!("{name} (value has a NUL byte)"),
            })?;
            out.push_str(&quoted);
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

async fn run(command: &str, timeout: Duration) -> Result<(), DriverError> {
    tracing::info!(command, "snapshot command");
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DriverError::Spawn {
            command: command.to_string(),
            source,
        })?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| DriverError::Timeout {
            command: command.to_string(),
            timeout,
        })?
        .map_err(|source| DriverError::Spawn {
            command: command.to_string(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = stderr
        .chars()
        .rev()
        .take(500)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(DriverError::Failed {
        command: command.to_string(),
        status: output.status.to_string(),
        stderr: tail.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted_quoted_and_checked() {
        let vars: Placeholders = [
            ("port".to_string(), "6379".to_string()),
            ("dir".to_string(), "/tmp/a b".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            substitute("redis-cli -p {port} SAVE", &vars).unwrap(),
            "redis-cli -p 6379 SAVE"
        );
        assert_eq!(
            substitute("cp {dir}/x .", &vars).unwrap(),
            "cp '/tmp/a b'/x ."
        );
        assert!(matches!(
            substitute("echo {nope}", &vars),
            Err(DriverError::UnknownPlaceholder { name, .. }) if name == "nope"
        ));
        // A command prefix goes in as its (already quoted) words.
        let mut vars = vars;
        vars.insert("holder".into(), "'/opt/x y' holder --name r --".into());
        assert_eq!(
            substitute("unshare --fork {holder} redis-server", &vars).unwrap(),
            "unshare --fork '/opt/x y' holder --name r -- redis-server"
        );
    }

    #[tokio::test]
    async fn failing_and_hanging_commands_are_clear_errors() {
        let dir = tempfile::TempDir::new().unwrap();
        let exec = ExecDriver {
            dump: vec!["echo boom >&2; exit 3".into()],
            restore: vec!["sleep 5".into()],
            timeout_secs: 1,
            point_fixed_after: None,
            stream: true,
        };
        let d = Driver::Exec(exec);
        let err = d.dump(dir.path(), &Placeholders::new()).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        let err = d
            .restore(dir.path(), &Placeholders::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Timeout { .. }), "{err}");
    }
}
