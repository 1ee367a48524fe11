//! What "appended" promises before a record is released to be forwarded.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// How hard the writer pushes each group of records towards the disk
/// before it reports them appended (and the proxy forwards them).
///
/// Each group commit is one sled insert (in memory) plus, in `batch` and
/// `sync`, one `write` of the group to the staging log (`staging/*.log`);
/// `sync` adds an `fdatasync` of that file. Every 250 ms a background
/// checkpoint flushes sled and fsyncs its data file, then deletes the
/// staging files it covers; opening a journal replays leftover staging
/// files into sled. What each mode survives:
///
/// | mode    | process killed (`kill -9`, panic, OOM) | power loss / kernel crash |
/// |---------|-----------------------------------|---------------------------|
/// | `none`  | may lose records from the last ~0.5 s (sled's own buffers, flushed by its background flusher) | same |
/// | `batch` | loses nothing that was forwarded: the group is in the kernel's page cache before release | may lose records since the last checkpoint (≤ ~250 ms plus the checkpoint's own duration) |
/// | `sync`  | loses nothing that was forwarded  | loses nothing that was forwarded: the staging write is `fdatasync`ed before release |
///
/// Sled alone could not give `batch` cheaply: its `flush()` is `pwrite` +
/// `sync_file_range` (a wait for the device, ~0.3 ms here) yet not a
/// power-loss guarantee (no drive-cache flush, no metadata). The staging
/// log gives each mode exactly its promise at the cost of one `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Records are released as soon as sled accepted them in memory.
    None,
    /// Group commit: released after the batch holding them was flushed.
    #[default]
    Batch,
    /// Group commit plus an fsync of the data file per batch.
    Sync,
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Durability::None),
            "batch" => Ok(Durability::Batch),
            "sync" => Ok(Durability::Sync),
            other => Err(format!(
                "unknown durability {other:?} (expected none, batch or sync)"
            )),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::None => "none",
            Durability::Batch => "batch",
            Durability::Sync => "sync",
        })
    }
}
