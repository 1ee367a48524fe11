//! The storage underneath the journal: a sled database holding one tree of
//! records keyed by big-endian LSN, plus a few meta keys. Nothing outside
//! this module touches sled, so the engine can change if measurements ask.

use crate::error::{JournalError, Result};
use crate::record::Record;
use crate::Lsn;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Marks a sled database as a replaymig journal (and of which layout).
const FORMAT_KEY: &[u8] = b"replaymig.format";
const FORMAT_VALUE: &[u8] = b"replaymig-journal/1";
/// Lowest LSN still kept after a truncation; keeps LSNs from being reused
/// when every record was truncated away.
const TRUNCATED_BEFORE_KEY: &[u8] = b"replaymig.truncated_before";
/// Name of the tree holding the records.
const LOG_TREE: &[u8] = b"log";

/// sled's page cache bound; the journal is mostly written, rarely re-read.
const CACHE_CAPACITY_BYTES: u64 = 64 << 20;

/// One stored record with its LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its position in the log.
    pub lsn: Lsn,
    /// What it says.
    pub record: Record,
}

/// Whether opening may create a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create an empty journal if the directory holds none (the proxy).
    CreateIfMissing,
    /// Fail unless a journal is already there (inspectors, replay).
    MustExist,
}

/// The sled-backed record store.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) db: sled::Db,
    pub(crate) log: sled::Tree,
    pub(crate) dir: PathBuf,
}

impl Store {
    pub(crate) fn open(dir: &Path, mode: OpenMode) -> Result<Store> {
        let data_file = dir.join("db");
        let exists = data_file.exists();
        if mode == OpenMode::MustExist && !exists {
            return Err(JournalError::NotAJournal {
                dir: dir.to_path_buf(),
                reason: if dir.exists() {
                    "no journal data file (db) in it".into()
                } else {
                    "directory does not exist".into()
                },
            });
        }
        if dir.exists() && !dir.is_dir() {
            return Err(JournalError::NotAJournal {
                dir: dir.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        if !exists && dir.is_dir() && std::fs::read_dir(dir)?.next().is_some() {
            return Err(JournalError::NotAJournal {
                dir: dir.to_path_buf(),
                reason: "directory is not empty and holds no journal".into(),
            });
        }
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()
            .map_err(|e| classify_open_error(dir, e))?;
        match db.get(FORMAT_KEY)? {
            Some(v) if v.as_ref() == FORMAT_VALUE => {}
            Some(v) => {
                return Err(JournalError::NotAJournal {
                    dir: dir.to_path_buf(),
                    reason: format!("unknown format {:?}", String::from_utf8_lossy(&v)),
                })
            }
            None if db.tree_names().len() <= 1 && db.is_empty() => {
                db.insert(FORMAT_KEY, FORMAT_VALUE)?;
                db.flush()?;
            }
            None => {
                return Err(JournalError::NotAJournal {
                    dir: dir.to_path_buf(),
                    reason: "a sled database without the replaymig format mark".into(),
                })
            }
        }
        let log = db.open_tree(LOG_TREE)?;
        Ok(Store {
            db,
            log,
            dir: dir.to_path_buf(),
        })
    }

    /// First LSN still stored, if any.
    pub(crate) fn first_lsn(&self) -> Result<Option<Lsn>> {
        self.log.first()?.map(|(k, _)| key_to_lsn(&k)).transpose()
    }

    /// Last LSN stored, if any.
    pub(crate) fn last_lsn(&self) -> Result<Option<Lsn>> {
        self.log.last()?.map(|(k, _)| key_to_lsn(&k)).transpose()
    }

    /// The next LSN to hand out: never one that was used before.
    pub(crate) fn next_lsn(&self) -> Result<Lsn> {
        let after_last = self.last_lsn()?.map_or(1, |l| l + 1);
        let truncated = self
            .db
            .get(TRUNCATED_BEFORE_KEY)?
            .map(|v| key_to_lsn(&v))
            .transpose()?
            .unwrap_or(1);
        Ok(after_last.max(truncated).max(1))
    }

    /// Reads and verifies the record at `lsn`.
    pub(crate) fn get(&self, lsn: Lsn) -> Result<Option<Entry>> {
        match self.log.get(lsn.to_be_bytes())? {
            Some(v) => Ok(Some(Entry {
                lsn,
                record: Record::decode(lsn, &v)?,
            })),
            None => Ok(None),
        }
    }

    /// Verified records with LSN in `[from, to]`, in order.
    pub(crate) fn range(&self, from: Lsn, to: Lsn) -> impl Iterator<Item = Result<Entry>> {
        self.log
            .range(from.to_be_bytes()..=to.to_be_bytes())
            .map(|item| {
                let (k, v) = item?;
                let lsn = key_to_lsn(&k)?;
                Ok(Entry {
                    lsn,
                    record: Record::decode(lsn, &v)?,
                })
            })
    }

    /// Removes every record below `lsn` and remembers that LSNs below it
    /// are spent.
    pub(crate) fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        self.db.insert(TRUNCATED_BEFORE_KEY, &lsn.to_be_bytes())?;
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..lsn.to_be_bytes()).keys() {
            batch.remove(key?);
            removed += 1;
        }
        self.log.apply_batch(batch)?;
        self.db.flush()?;
        Ok(removed)
    }

    /// Opens the data file once, for per-batch fsync.
    pub(crate) fn data_file(&self) -> Result<File> {
        Ok(File::open(self.dir.join("db"))?)
    }

    /// Bytes the journal occupies on disk (sled uses more than the logical size).
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

fn key_to_lsn(key: &[u8]) -> Result<Lsn> {
    let arr: [u8; 8] = key
        .try_into()
        .map_err(|_| JournalError::BadKey { len: key.len() })?;
    Ok(u64::from_be_bytes(arr))
}

/// Turns sled's open errors into ones an operator can act on.
fn classify_open_error(dir: &Path, e: sled::Error) -> JournalError {
    match &e {
        // sled wraps the failed flock in an io::Error of its own words.
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            JournalError::Locked {
                dir: dir.to_path_buf(),
            }
        }
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => JournalError::NotAJournal {
            dir: dir.to_path_buf(),
            reason: format!("storage is corrupt or foreign: {e}"),
        },
        _ => JournalError::Storage(e),
    }
}
