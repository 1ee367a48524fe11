//! Fault injection for tests and reliability campaigns: damage a stored
//! record the way a bad disk would, to check that readers name its LSN.
//! Works on a closed journal (it opens the storage itself, through the
//! same store the journal uses: same lock wait, format check and staging
//! recovery, and no sled access of its own).

use crate::error::{JournalError, Result};
use crate::store::{OpenMode, Store};
use crate::{segment, Lsn};
use std::path::Path;

/// Flips one byte inside the record at `lsn` (not its length prefix), so the
/// record fails its checksum. The journal must not be open elsewhere.
pub fn corrupt_record(dir: &Path, lsn: Lsn) -> Result<()> {
    // Opening waits briefly for a lock that sled's I/O threads may still
    // hold after the last handle in this process was dropped.
    let store = Store::open(dir, OpenMode::MustExist)?;
    let missing = || JournalError::Invalid(format!("no record at LSN {lsn}"));
    let (first, mut bytes) = store.raw_segment(lsn)?.ok_or_else(missing)?;
    let (_, offset, body) = segment::raw(first, &bytes)
        .find(|r| matches!(r, Ok((l, _, _)) if *l == lsn))
        .ok_or_else(missing)??;
    let target = offset + 4 + body.len() / 2;
    bytes[target] ^= 0x5a;
    store.insert_segment(first, &bytes)?;
    store.make_durable()
}
