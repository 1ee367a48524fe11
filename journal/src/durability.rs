//! What "appended" promises before a record is released to be forwarded.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// How hard the writer pushes each batch towards the disk before it reports
/// the batch's records as appended (and the proxy forwards them).
///
/// What each mode survives (sled 0.34: `flush()` writes its buffers with
/// `pwrite` + `sync_file_range`, and fsyncs only from its background flusher
/// every `flush_every_ms`):
///
/// | mode    | process killed (`kill -9`, panic) | power loss / kernel crash |
/// |---------|-----------------------------------|---------------------------|
/// | `none`  | may lose the records of the last ~`flush_every_ms` (sled's own buffers) | same |
/// | `batch` | loses nothing that was forwarded  | may lose records appended since sled's last background fsync (≤ `flush_every_ms`, default 500 ms): `sync_file_range` does not flush the drive cache or file metadata |
/// | `sync`  | loses nothing that was forwarded  | loses nothing that was forwarded: each batch is also `fdatasync`ed |
///
/// `batch` groups every append that arrived while the previous flush ran
/// into one flush (group commit); `sync` does the same grouping but adds an
/// `fdatasync` of the data file per group, so it is power-loss durable and
/// costs one disk cache flush per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
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
