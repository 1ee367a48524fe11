//! Fault injection for tests and reliability campaigns: damage a stored
//! record the way a bad disk would, to check that readers name its LSN.
//! Works on a closed journal (it opens the storage itself).

use crate::error::{JournalError, Result};
use crate::{segment, Lsn};
use std::path::Path;

/// Flips one byte inside the record at `lsn` (not its length prefix), so the
/// record fails its checksum. The journal must not be open elsewhere.
pub fn corrupt_record(dir: &Path, lsn: Lsn) -> Result<()> {
    // sled's I/O threads may hold the file lock a moment after the last
    // handle in this process was dropped.
    let mut tries = 0;
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(e) if tries < 100 && e.to_string().contains("could not acquire lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let log = db.open_tree("log")?;
    let (key, value) = log
        .range(..=lsn.to_be_bytes())
        .next_back()
        .ok_or_else(|| JournalError::Invalid(format!("no record at LSN {lsn}")))??;
    let first = u64::from_be_bytes(key.as_ref().try_into().expect("8-byte key"));
    let mut bytes = value.to_vec();
    let (_, offset, body) = segment::raw(first, &value)
        .find(|r| matches!(r, Ok((l, _, _)) if *l == lsn))
        .ok_or_else(|| JournalError::Invalid(format!("no record at LSN {lsn}")))??;
    let target = offset + 4 + body.len() / 2;
    bytes[target] ^= 0x5a;
    log.insert(key, bytes)?;
    db.flush()?;
    Ok(())
}
