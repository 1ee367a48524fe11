//! Journal errors. Every variant that concerns one record names its LSN, so an
//! operator can find it with `replaymig journal dump --from LSN`.

use crate::Lsn;
use std::path::PathBuf;

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A stored record's checksum does not match its bytes: storage corruption.
    #[error("journal record at LSN {lsn} is corrupt: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Where the corrupt record lives.
        lsn: Lsn,
        /// The checksum kept with the record.
        stored: u32,
        /// The checksum of the bytes as read.
        computed: u32,
    },
    /// A record's bytes do not parse (truncated, unknown kind, bad lengths).
    #[error("journal record at LSN {lsn} is malformed: {reason}")]
    Malformed {
        /// Where the bad record lives.
        lsn: Lsn,
        /// What was wrong with it.
        reason: String,
    },
    /// The record was written by a newer (or unknown) format version.
    #[error("journal record at LSN {lsn} has unsupported format version {version}")]
    UnsupportedVersion {
        /// Where the record lives.
        lsn: Lsn,
        /// The version byte found.
        version: u8,
    },
    /// A key in the log tree is not an 8-byte big-endian LSN.
    #[error("journal key of {len} bytes is not an LSN (expected 8)")]
    BadKey {
        /// Length of the odd key.
        len: usize,
    },
    /// The directory holds no journal (and we were told not to create one).
    #[error("{} is not a replaymig journal: {reason}", dir.display())]
    NotAJournal {
        /// The directory given.
        dir: PathBuf,
        /// What is missing or foreign there.
        reason: String,
    },
    /// Another process holds the journal open (sled keeps an exclusive lock).
    #[error("journal at {} is in use by another process (a running proxy?)", dir.display())]
    Locked {
        /// The directory given.
        dir: PathBuf,
    },
    /// The storage engine failed (I/O error, full disk, corruption it detected).
    /// Once sled hit an I/O error it refuses further writes: the writer
    /// then refuses appends ([`JournalError::Refusing`]) and reopens sled
    /// in place until that succeeds.
    #[error("journal storage error: {0}")]
    Storage(sled::Error),
    /// The storage is being reopened after a write failure: reads fail
    /// for that moment instead of blocking; retry.
    #[error("journal storage is being reopened after a write failure; retry")]
    Reopening,
    /// Appends are refused, nothing written, until the storage recovers:
    /// the free space under the journal is below its reserve, or sled
    /// failed a write and is being reopened. Says which and what to do.
    #[error("journal refuses appends: {0}")]
    Refusing(String),
    /// Plain I/O around the storage (staging log, fsync, creating the dir).
    #[error("journal I/O error: {0}")]
    Io(std::io::Error),
    /// A group commit failed; every append in the group gets this.
    #[error("{0}")]
    GroupFailed(String),
    /// The journal was closed; no more appends are accepted.
    #[error("journal is closed")]
    Closed,
    /// A caller asked for something the journal cannot hold.
    #[error("invalid journal request: {0}")]
    Invalid(String),
}

impl JournalError {
    /// The record the error is about, if it concerns one.
    pub fn lsn(&self) -> Option<Lsn> {
        match self {
            JournalError::Checksum { lsn, .. }
            | JournalError::Malformed { lsn, .. }
            | JournalError::UnsupportedVersion { lsn, .. } => Some(*lsn),
            _ => None,
        }
    }
}

// Written out instead of `#[from]` so the wrapped error is shown once (in
// the message) rather than again as a `source` by error-chain printers.
impl From<sled::Error> for JournalError {
    fn from(e: sled::Error) -> Self {
        JournalError::Storage(e)
    }
}

impl From<std::io::Error> for JournalError {
    fn from(e: std::io::Error) -> Self {
        JournalError::Io(e)
    }
}

/// Result alias for journal operations.
pub type Result<T, E = JournalError> = std::result::Result<T, E>;
