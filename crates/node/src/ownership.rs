//! Durable ownership: who owns a service, under which epoch, and whether
//! this node is a prepared destination waiting for its source's commit.
//!
//! One small JSON file per service beside its journal
//! (`<journal>.ownership`), replaced atomically (write a temporary file,
//! fsync, rename, fsync the directory). A node reads it at start, so a
//! restarted node neither takes a service back from its config's `owner`
//! after giving it away nor forgets that it was handed one. Written at the
//! protocol's commit points: the source before it gives the service up,
//! the destination when it prepares, commits or discards.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a node knows about a service's ownership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipRecord {
    /// The node that owns the service.
    pub owner: String,
    /// The epoch it owns it under.
    pub epoch: u64,
    /// This node prepared to own the service and waits for the commit.
    #[serde(default)]
    pub prepared: Option<Prepared>,
    /// Fleet mode: this node (the owner) was committing a hand-over in the
    /// registry; settled from the registry before it serves again.
    #[serde(default)]
    pub committing: Option<Committing>,
}

/// A hand-over being committed in the fleet's registry: what the source
/// read there and what it writes, so a restart can settle it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committing {
    /// The new owner.
    pub to: String,
    /// Its epoch.
    pub epoch: u64,
    /// The hand-over LSN written with it.
    pub handover_lsn: u64,
    /// The entry read: its owner (this node) ...
    pub from: String,
    /// ... its epoch ...
    pub from_epoch: u64,
    /// ... its hand-over LSN ...
    pub from_handover_lsn: u64,
    /// ... and the key's revision then (the commit's compare).
    pub read_revision: i64,
}

/// A prepared hand-over to this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// The epoch this node will own the service under.
    pub epoch: u64,
    /// The node handing it over (asked when the commit does not arrive).
    pub from: String,
    /// The received snapshot, kept until the hand-over resolves, so a node
    /// restarted meanwhile can rebuild the service from it and its journal.
    pub snapshot_dir: PathBuf,
    /// The LSN the snapshot reflects.
    pub snapshot_lsn: u64,
}

/// The file holding one service's [`OwnershipRecord`].
#[derive(Debug, Clone)]
pub struct OwnershipFile {
    path: PathBuf,
}

impl OwnershipFile {
    /// The record of the service journaled at `journal`.
    pub fn beside(journal: &Path) -> OwnershipFile {
        let mut name = journal.file_name().unwrap_or_default().to_os_string();
        name.push(".ownership");
        OwnershipFile {
            path: journal.with_file_name(name),
        }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved record, or `None` if none was ever saved.
    pub fn load(&self) -> Result<Option<OwnershipRecord>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("unreadable ownership record {}", self.path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// Replaces the record atomically and durably: after `Ok`, a crash
    /// leaves either this record or (never half of it) nothing newer.
    pub fn save(&self, record: &OwnershipRecord) -> Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        serde_json::to_writer_pretty(&mut tmp, record)?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

/// What a prepared destination does after asking its source who owns the
/// service (see [`resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The source committed: own the service.
    Commit,
    /// The source kept (or took back) the service: discard the copy.
    Discard,
    /// Not decided yet (the source is still handing over): ask again.
    Wait,
}

impl Resolution {
    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Resolution::Commit => "commit",
            Resolution::Discard => "discard",
            Resolution::Wait => "wait",
        }
    }
}

/// Decides a prepared hand-over of `prepared_epoch` to node `me` from the
/// source's answer (`owner`, `epoch`, `migrating`).
pub fn resolve(
    me: &str,
    prepared_epoch: u64,
    owner: &str,
    epoch: u64,
    migrating: bool,
) -> Resolution {
    if owner == me && epoch == prepared_epoch {
        Resolution::Commit
    } else if epoch >= prepared_epoch || !migrating {
        // Ownership moved past this hand-over, or the source is no longer
        // handing over and still owns an older epoch: it aborted.
        Resolution::Discard
    } else {
        Resolution::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prepared: bool) -> OwnershipRecord {
        OwnershipRecord {
            owner: "a".into(),
            epoch: 3,
            prepared: prepared.then(|| Prepared {
                epoch: 4,
                from: "a".into(),
                snapshot_dir: "/tmp/snap".into(),
                snapshot_lsn: 17,
            }),
            committing: None,
        }
    }

    #[test]
    fn saves_and_loads_beside_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let file = OwnershipFile::beside(&dir.path().join("redis.journal"));
        assert_eq!(file.path(), dir.path().join("redis.journal.ownership"));
        assert_eq!(file.load().unwrap(), None);
        file.save(&record(true)).unwrap();
        assert_eq!(file.load().unwrap(), Some(record(true)));
        file.save(&record(false)).unwrap();
        assert_eq!(file.load().unwrap(), Some(record(false)));
        // Only the record is left in the directory (no temporary files).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_garbled_record_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = OwnershipFile::beside(&dir.path().join("j"));
        std::fs::write(file.path(), b"{ not json").unwrap();
        let err = file.load().unwrap_err();
        assert!(format!("{err:#}").contains("unreadable ownership record"));
    }

    #[test]
    fn resolves_from_the_sources_answer() {
        use Resolution::*;
        // The source committed to b under 4.
        assert_eq!(resolve("b", 4, "b", 4, false), Commit);
        // The source still owns 3 and is between prepare and commit.
        assert_eq!(resolve("b", 4, "a", 3, true), Wait);
        // The source owns 3 and is not migrating: it aborted or restarted.
        assert_eq!(resolve("b", 4, "a", 3, false), Discard);
        // Ownership went on past this hand-over (or elsewhere).
        assert_eq!(resolve("b", 4, "c", 4, false), Discard);
        assert_eq!(resolve("b", 4, "a", 5, true), Discard);
    }
}
