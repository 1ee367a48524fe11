//! Snapshot drivers: how a service is dumped and restored.
//!
//! * `exec`: operator commands with `{placeholders}` (values shell-quoted),
//!   e.g. dump = `redis-cli -p {port} SAVE` then `cp {data_dir}/dump.rdb
//!   {snapshot_dir}/`; restore = copy the file back before the service is
//!   started on it. Each command runs under `sh -c` with a timeout; a
//!   non-zero exit fails the snapshot with the command's stderr.
//! * `none`: a stateless service; nothing to dump, replay starts at LSN 1.
//!
//! (`criu` is the third driver DESIGN.md names; it is not built yet.)

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
}

fn default_timeout_secs() -> u64 {
    60
}

/// A service's snapshot driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// Operator commands.
    Exec(ExecDriver),
    /// Stateless: nothing to dump.
    None,
}

impl Driver {
    /// The name written into manifests.
    pub fn name(&self) -> &'static str {
        match self {
            Driver::Exec(_) => "exec",
            Driver::None => "none",
        }
    }

    /// Writes the service's state into `snapshot_dir` (which exists).
    pub async fn dump(&self, snapshot_dir: &Path, vars: &Placeholders) -> Result<(), DriverError> {
        match self {
            Driver::Exec(exec) => exec.run_all(&exec.dump, snapshot_dir, vars).await,
            Driver::None => Ok(()),
        }
    }

    /// Puts the state in `snapshot_dir` in place for the service.
    pub async fn restore(
        &self,
        snapshot_dir: &Path,
        vars: &Placeholders,
    ) -> Result<(), DriverError> {
        match self {
            Driver::Exec(exec) => exec.run_all(&exec.restore, snapshot_dir, vars).await,
            Driver::None => Ok(()),
        }
    }
}

impl ExecDriver {
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

/// Replaces each `{name}` with the shell-quoted value of `name`.
pub(crate) fn substitute(template: &str, vars: &Placeholders) -> Result<String, DriverError> {
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
        let quoted = shlex::try_quote(value).map_err(|_| DriverError::UnknownPlaceholder {
            command: template.to_string(),
            name: format!("{name} (value has a NUL byte)"),
        })?;
        out.push_str(&quoted);
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
    }

    #[tokio::test]
    async fn failing_and_hanging_commands_are_clear_errors() {
        let dir = tempfile::TempDir::new().unwrap();
        let exec = ExecDriver {
            dump: vec!["echo boom >&2; exit 3".into()],
            restore: vec!["sleep 5".into()],
            timeout_secs: 1,
        };
        let d = Driver::Exec(exec);
        let err = d.dump(dir.path(), &Placeholders::new()).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        let err = d
            .restore(dir.path(), &Placeholders::new())
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Timeout { .. }), "{err}");
    }
}
