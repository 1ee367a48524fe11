//! The storage underneath the journal: a sled database holding one tree of
//! segments (the records of one group commit, see `segment`) keyed by the
//! big-endian LSN of their first record, plus a few meta keys, and the
//! staging log replayed into it on open. Nothing outside this module and
//! the writer touches sled, so the engine can change if measurements ask.
//!
//! The sled handles sit behind a swappable slot shared by every clone of
//! the store (the writer, readers, tails): once sled hits an I/O error
//! (a full disk) it refuses every later write until it is opened again,
//! so the writer reopens it in place, without the process restarting
//! (see [`Store::reopen`]). While the slot is empty, reads fail with
//! [`JournalError::Reopening`] instead of blocking.

use crate::error::{JournalError, Result};
use crate::record::Record;
use crate::{segment, staging, Lsn};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Marks a sled database as a replaymig journal (and of which layout).
const FORMAT_KEY: &[u8] = b"replaymig.format";
const FORMAT_VALUE: &[u8] = b"replaymig-journal/1";
/// Lowest LSN still kept after a truncation; keeps LSNs from being reused
/// when every record was truncated away.
const TRUNCATED_BEFORE_KEY: &[u8] = b"replaymig.truncated_before";
/// Name of the tree holding the records.
const LOG_TREE: &[u8] = b"log";

/// sled's page cache bound; the journal is mostly written, rarely re-read.
/// Public because it is most of what a proxy's memory grows by while its
/// journal fills (the connection-load campaign bounds RSS with it).
pub const CACHE_CAPACITY_BYTES: u64 = 64 << 20;

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
    /// Empty only while [`Store::reopen`] runs (or after it failed).
    engine: Arc<RwLock<Option<Engine>>>,
    pub(crate) dir: PathBuf,
}

/// One open sled database and its log tree (cheap to clone: handles).
#[derive(Clone)]
struct Engine {
    db: sled::Db,
    log: sled::Tree,
}

impl Store {
    /// Opens the storage in `dir` and puts back what the staging log holds
    /// that sled lost.
    pub(crate) fn open(dir: &Path, mode: OpenMode) -> Result<Store> {
        let engine = Engine::open(dir, mode)?;
        recover_staging(&engine, dir)?;
        Ok(Store {
            engine: Arc::new(RwLock::new(Some(engine))),
            dir: dir.to_path_buf(),
        })
    }

    /// Closes sled and opens it again, staging log recovered first: the
    /// way out after sled failed a write (it keeps refusing every write
    /// until reopened). Every clone of this store sees the new one. The
    /// caller must have closed its staging file (recovery removes the
    /// files it replayed). On failure the slot stays empty and a later
    /// call tries again; nothing staged is removed unless sled made it
    /// durable first.
    pub(crate) fn reopen(&self) -> Result<usize> {
        // Drop our handle first: sled holds a file lock until every handle
        // (and its flusher thread) is gone; `Engine::open` waits for it.
        if let Some(old) = self
            .engine
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            release(old);
        }
        let engine = Engine::open(&self.dir, OpenMode::MustExist).map_err(|e| match e {
            JournalError::Locked { .. } => JournalError::Refusing(format!(
                "the failed storage of {} was not released (sled's final flush is stuck); \
                 restart the process once there is space",
                self.dir.display()
            )),
            e => e,
        })?;
        match recover_staging(&engine, &self.dir) {
            Ok(restored) => {
                *self.engine.write().unwrap_or_else(|e| e.into_inner()) = Some(engine);
                Ok(restored)
            }
            Err(e) => {
                release(engine);
                Err(e)
            }
        }
    }

    /// The current sled handles, or `Reopening` while there are none.
    fn engine(&self) -> Result<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(JournalError::Reopening)
    }

    /// Where the staging log lives.
    pub(crate) fn staging_dir(&self) -> PathBuf {
        staging_dir(&self.dir)
    }

    /// Flushes sled and fsyncs its files: a checkpoint (see
    /// [`make_durable`]).
    pub(crate) fn make_durable(&self) -> Result<()> {
        make_durable(&self.engine()?, &self.dir)
    }
}

impl Engine {
    /// Opens sled in `dir` (waiting briefly for a lock just released) and
    /// checks the format mark; creates an empty journal per `mode`.
    fn open(dir: &Path, mode: OpenMode) -> Result<Engine> {
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
        remove_unfinished_snapshots(dir)?;
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
        Ok(Engine { db, log })
    }
}

/// Removes sled snapshot files whose write never finished. sled writes a
/// snapshot to `snap.<lsn>.generating` and renames it when complete, but
/// on open it reads the *last-sorting* `snap.*` file, which is such a
/// leftover when a write failed (a full disk) or the process died
/// mid-write — and then refuses the whole database as corrupt. A snapshot
/// is only a shortcut (sled rebuilds from its log), so dropping an
/// unfinished one loses nothing.
fn remove_unfinished_snapshots(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %path.display(), "removing an unfinished sled snapshot");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Drops sled handles on a thread of their own: dropping the last one
/// flushes, and after a write failure on a full disk sled's flush can
/// wait forever. The writer must not be the one waiting.
fn release(engine: Engine) {
    let spawned = std::thread::Builder::new()
        .name("journal-release".into())
        .spawn(move || drop(engine));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a thread to release the journal storage; releasing it here");
    }
}

/// Where the staging log of the journal in `dir` lives.
fn staging_dir(dir: &Path) -> PathBuf {
    dir.join("staging")
}

/// Puts every staged group that sled lost (process killed, or sled
/// failed, before a checkpoint) back into sled, makes sled durable, and
/// removes the staging files. Returns the number of groups restored.
fn recover_staging(engine: &Engine, dir: &Path) -> Result<usize> {
    let files = staging::existing(&staging_dir(dir))?;
    if files.is_empty() {
        return Ok(0);
    }
    let spent_below = truncated_before(&engine.db)?;
    let mut restored = 0;
    for (_, path) in &files {
        for frame in staging::read_frames(path)? {
            let covered = engine.log.contains_key(frame.first_lsn.to_be_bytes())?;
            if !covered && frame.first_lsn >= spent_below {
                engine
                    .log
                    .insert(frame.first_lsn.to_be_bytes(), frame.segment)?;
                restored += 1;
            }
        }
    }
    make_durable(engine, dir)?;
    for (_, path) in &files {
        std::fs::remove_file(path)?;
    }
    if restored > 0 {
        tracing::info!(restored, dir = %dir.display(), "journal recovered groups from its staging log");
    }
    Ok(restored)
}

/// Flushes sled and fsyncs its files: a checkpoint. Sled writes values
/// over ~128 KiB to separate files under `blobs/` and never fsyncs them,
/// so those are synced here too, before any staging file is dropped.
fn make_durable(engine: &Engine, dir: &Path) -> Result<()> {
    engine.db.flush()?;
    File::open(dir.join("db"))?.sync_all()?;
    let blobs = dir.join("blobs");
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

/// The lowest LSN not spent by a truncation (1 if none).
fn truncated_before(db: &sled::Db) -> Result<Lsn> {
    Ok(db
        .get(TRUNCATED_BEFORE_KEY)?
        .map(|v| key_to_lsn(&v))
        .transpose()?
        .unwrap_or(1))
}

impl Store {
    /// First LSN still stored, if any.
    pub(crate) fn first_lsn(&self) -> Result<Option<Lsn>> {
        self.engine()?
            .log
            .first()?
            .map(|(k, _)| key_to_lsn(&k))
            .transpose()
    }

    /// Last LSN stored, if any.
    pub(crate) fn last_lsn(&self) -> Result<Option<Lsn>> {
        match self.engine()?.log.last()? {
            Some((k, v)) => {
                let first = key_to_lsn(&k)?;
                Ok(Some(first + segment::count(first, &v)? - 1))
            }
            None => Ok(None),
        }
    }

    /// The next LSN to hand out: never one that was used before.
    pub(crate) fn next_lsn(&self) -> Result<Lsn> {
        let after_last = self.last_lsn()?.map_or(1, |l| l + 1);
        Ok(after_last.max(truncated_before(&self.engine()?.db)?).max(1))
    }

    /// The segment holding `lsn`, if any: `(its first LSN, its bytes)`.
    fn segment_holding(log: &sled::Tree, lsn: Lsn) -> Result<Option<(Lsn, sled::IVec)>> {
        match log.range(..=lsn.to_be_bytes()).next_back() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((key_to_lsn(&k)?, v)))
            }
            None => Ok(None),
        }
    }

    /// The stored bytes of the segment holding `lsn`, with its first LSN,
    /// unverified (fault injection rewrites them; readers use `range`).
    pub(crate) fn raw_segment(&self, lsn: Lsn) -> Result<Option<(Lsn, Vec<u8>)>> {
        let found = Self::segment_holding(&self.engine()?.log, lsn)?;
        Ok(found.map(|(first, bytes)| (first, bytes.to_vec())))
    }

    /// Reads and verifies the record at `lsn`.
    pub(crate) fn get(&self, lsn: Lsn) -> Result<Option<Entry>> {
        self.range(lsn, lsn).next().transpose()
    }

    /// Verified records with LSN in `[from, to]`, in order.
    pub(crate) fn range(&self, from: Lsn, to: Lsn) -> impl Iterator<Item = Result<Entry>> {
        let start = self.engine().and_then(|engine| {
            let found = Self::segment_holding(&engine.log, from)?;
            Ok((engine.log, found.map_or(from, |(first, _)| first)))
        });
        let segments: Box<dyn Iterator<Item = Result<Entry>>> = match start {
            Err(e) => Box::new(std::iter::once(Err(e))),
            Ok((log, start)) => {
                Box::new(log.range(start.to_be_bytes()..=to.to_be_bytes()).flat_map(
                    |item| -> Vec<Result<Entry>> {
                        match item
                            .map_err(JournalError::from)
                            .and_then(|(k, v)| Ok((key_to_lsn(&k)?, v)))
                        {
                            Ok((first, value)) => segment::entries(first, &value).collect(),
                            Err(e) => vec![Err(e)],
                        }
                    },
                ))
            }
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
        let engine = self.engine()?;
        // The spent range only ever grows.
        let lsn = lsn.max(truncated_before(&engine.db)?);
        engine.db.insert(TRUNCATED_BEFORE_KEY, &lsn.to_be_bytes())?;
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for item in engine.log.range(..lsn.to_be_bytes()) {
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
        engine.log.apply_batch(batch)?;
        make_durable(&engine, &self.dir)?;
        Ok(removed)
    }

    /// Stores one group's segment (in memory; durability is the writer's job).
    pub(crate) fn insert_segment(&self, first_lsn: Lsn, segment: &[u8]) -> Result<()> {
        self.engine()?
            .log
            .insert(first_lsn.to_be_bytes(), segment)?;
        Ok(())
    }

    /// Bytes the journal occupies on disk (sled uses more than the logical size).
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        Ok(self.engine()?.db.size_on_disk()?)
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
