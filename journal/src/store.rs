//! The storage underneath the journal: a sled database holding one tree of
//! segments (the records of one group commit, see `segment`) keyed by the
//! big-endian LSN of their first record, plus a few meta keys, and the
//! staging log replayed into it on open. Nothing outside this module and
//! the writer touches sled, so the engine can change if measurements ask.

use crate::error::{JournalError, Result};
use crate::record::Record;
use crate::{segment, staging, Lsn};
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
        const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
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
        // A process that just closed the journal (an inspector, a proxy
        // restarting) can hold sled's lock a moment longer: retry briefly
        // before calling it in use.
        let give_up = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(CACHE_CAPACITY_BYTES)
                .open()
                .map_err(|e| classify_open_error(dir, e));
            match opened {
                Err(JournalError::Locked { .. }) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => break other?,
            }
        };
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
        let store = Store {
            db,
            log,
            dir: dir.to_path_buf(),
        };
        store.recover_staging()?;
        Ok(store)
    }

    /// Where the staging log lives.
    pub(crate) fn staging_dir(&self) -> PathBuf {
        self.dir.join("staging")
    }

    /// Puts every staged group that sled lost (process killed before a
    /// checkpoint) back into sled, makes sled durable, and removes the
    /// staging files. Returns the number of groups restored.
    fn recover_staging(&self) -> Result<usize> {
        let files = staging::existing(&self.staging_dir())?;
        if files.is_empty() {
            return Ok(0);
        }
        let spent_below = self.truncated_before()?;
        let mut restored = 0;
        for (_, path) in &files {
            for frame in staging::read_frames(path)? {
                let covered = self.log.contains_key(frame.first_lsn.to_be_bytes())?;
                if !covered && frame.first_lsn >= spent_below {
                    self.log
                        .insert(frame.first_lsn.to_be_bytes(), frame.segment)?;
                    restored += 1;
                }
            }
        }
        self.make_durable()?;
        for (_, path) in &files {
            std::fs::remove_file(path)?;
        }
        if restored > 0 {
            tracing::info!(restored, dir = %self.dir.display(), "journal recovered groups from its staging log");
        }
        Ok(restored)
    }

    /// Flushes sled and fsyncs its files: a checkpoint. Sled writes values
    /// over ~128 KiB to separate files under `blobs/` and never fsyncs them,
    /// so those are synced here too, before any staging file is dropped.
    pub(crate) fn make_durable(&self) -> Result<()> {
        self.db.flush()?;
        File::open(self.dir.join("db"))?.sync_all()?;
        let blobs = self.dir.join("blobs");
        if blobs.is_dir() {
            for entry in std::fs::read_dir(&blobs)? {
                match File::open(entry?.path()) {
                    Ok(file) => file.sync_all()?,
                    // sled removed a blob it no longer needs meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            File::open(&blobs)?.sync_all()?;
        }
        Ok(())
    }

    /// First LSN still stored, if any.
    pub(crate) fn first_lsn(&self) -> Result<Option<Lsn>> {
        self.log.first()?.map(|(k, _)| key_to_lsn(&k)).transpose()
    }

    /// Last LSN stored, if any.
    pub(crate) fn last_lsn(&self) -> Result<Option<Lsn>> {
        match self.log.last()? {
            Some((k, v)) => {
                let first = key_to_lsn(&k)?;
                Ok(Some(first + segment::count(first, &v)? - 1))
            }
            None => Ok(None),
        }
    }

    fn truncated_before(&self) -> Result<Lsn> {
        Ok(self
            .db
            .get(TRUNCATED_BEFORE_KEY)?
            .map(|v| key_to_lsn(&v))
            .transpose()?
            .unwrap_or(1))
    }

    /// The next LSN to hand out: never one that was used before.
    pub(crate) fn next_lsn(&self) -> Result<Lsn> {
        let after_last = self.last_lsn()?.map_or(1, |l| l + 1);
        Ok(after_last.max(self.truncated_before()?).max(1))
    }

    /// The segment holding `lsn`, if any: `(its first LSN, its bytes)`.
    fn segment_holding(&self, lsn: Lsn) -> Result<Option<(Lsn, sled::IVec)>> {
        match self.log.range(..=lsn.to_be_bytes()).next_back() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((key_to_lsn(&k)?, v)))
            }
            None => Ok(None),
        }
    }

    /// Reads and verifies the record at `lsn`.
    pub(crate) fn get(&self, lsn: Lsn) -> Result<Option<Entry>> {
        self.range(lsn, lsn).next().transpose()
    }

    /// Verified records with LSN in `[from, to]`, in order.
    pub(crate) fn range(&self, from: Lsn, to: Lsn) -> impl Iterator<Item = Result<Entry>> {
        let start = match self.segment_holding(from) {
            Ok(found) => Ok(found.map_or(from, |(first, _)| first)),
            Err(e) => Err(e),
        };
        let segments: Box<dyn Iterator<Item = Result<Entry>>> = match start {
            Err(e) => Box::new(std::iter::once(Err(e))),
            Ok(start) => Box::new(
                self.log
                    .range(start.to_be_bytes()..=to.to_be_bytes())
                    .flat_map(|item| -> Vec<Result<Entry>> {
                        match item
                            .map_err(JournalError::from)
                            .and_then(|(k, v)| Ok((key_to_lsn(&k)?, v)))
                        {
                            Ok((first, value)) => segment::entries(first, &value).collect(),
                            Err(e) => vec![Err(e)],
                        }
                    }),
            ),
        };
        // A record's error is reported only for its own LSN: a segment
        // holds several records, and a corrupt neighbour must not hide
        // (or fail the read of) a sound record.
        segments.filter(move |e| match e {
            Ok(e) => e.lsn >= from && e.lsn <= to,
            Err(err) => err.lsn().is_none_or(|lsn| lsn >= from && lsn <= to),
        })
    }

    /// Removes every record below `lsn` and remembers that LSNs below it
    /// are spent. A segment that straddles `lsn` is kept from `lsn` on (its
    /// records keep their bytes: each is checksummed with its own LSN).
    pub(crate) fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        // The spent range only ever grows.
        let lsn = lsn.max(self.truncated_before()?);
        self.db.insert(TRUNCATED_BEFORE_KEY, &lsn.to_be_bytes())?;
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..lsn.to_be_bytes()) {
            let (k, v) = item?;
            let first = key_to_lsn(&k)?;
            batch.remove(k);
            let mut kept_from = None;
            for raw in segment::raw(first, &v) {
                let (record_lsn, offset, _) = raw?;
                if record_lsn >= lsn {
                    kept_from = Some(offset);
                    break;
                }
                removed += 1;
            }
            if let Some(offset) = kept_from {
                batch.insert(&lsn.to_be_bytes(), &v[offset..]);
            }
        }
        self.log.apply_batch(batch)?;
        self.make_durable()?;
        Ok(removed)
    }

    /// Stores one group's segment (in memory; durability is the writer's job).
    pub(crate) fn insert_segment(&self, first_lsn: Lsn, segment: &[u8]) -> Result<()> {
        self.log.insert(first_lsn.to_be_bytes(), segment)?;
        Ok(())
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
