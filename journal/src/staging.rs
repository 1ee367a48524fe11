//! The staging log: what makes `batch` and `sync` fast. Each group is
//! written here with one `write` (batch: then released, it survives a
//! process kill from that moment) or `write` + `fdatasync` (sync: survives
//! power loss), and inserted into sled in memory. Sled itself is flushed
//! and fsynced in the background at checkpoints, after which the staging
//! files it covers are deleted. Opening a journal replays staging files
//! into sled first, so nothing released is ever missing.
//!
//! Files: `staging/<generation>.log`, frames of
//! `[u32 magic][u64 first LSN][u32 length][segment][u32 crc32]`. A frame that
//! does not verify ends recovery of that file (a write torn by power loss
//! was never acknowledged in `sync` mode).

use crate::error::Result;
use crate::Lsn;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x524d_4a31; // "RMJ1"
const HEADER: usize = 4 + 8 + 4;

/// The staging file being appended to.
pub(crate) struct StagingLog {
    dir: PathBuf,
    sync_dir: bool,
    generation: u64,
    file: File,
    /// Bytes written to the current file (checkpoint trigger).
    pub(crate) bytes: u64,
    frame: Vec<u8>,
}

/// One frame read back during recovery.
pub(crate) struct Frame {
    pub first_lsn: Lsn,
    pub segment: Vec<u8>,
}

impl StagingLog {
    /// Starts a new generation after `last_generation`.
    /// `sync_dir`: make each new file's directory entry durable (the `sync`
    /// mode's power-loss promise needs it; a process kill does not).
    pub(crate) fn create(dir: &Path, last_generation: u64, sync_dir: bool) -> Result<StagingLog> {
        std::fs::create_dir_all(dir)?;
        let generation = last_generation + 1;
        let file = open_generation(dir, generation, sync_dir)?;
        Ok(StagingLog {
            sync_dir,
            dir: dir.to_path_buf(),
            generation,
            file,
            bytes: 0,
            frame: Vec::new(),
        })
    }

    /// Writes one group (one `write` call).
    pub(crate) fn append(&mut self, first_lsn: Lsn, segment: &[u8]) -> Result<()> {
        self.frame.clear();
        self.frame.extend_from_slice(&MAGIC.to_be_bytes());
        self.frame.extend_from_slice(&first_lsn.to_be_bytes());
        self.frame
            .extend_from_slice(&(segment.len() as u32).to_be_bytes());
        self.frame.extend_from_slice(segment);
        let crc = crc32fast::hash(&self.frame);
        self.frame.extend_from_slice(&crc.to_be_bytes());
        if let Err(e) = self.file.write_all(&self.frame) {
            // A partly written frame would hide every later frame from
            // recovery: cut it off, or start a new file if that fails too.
            if self.file.set_len(self.bytes).is_err() {
                self.rotate()?;
            }
            return Err(e.into());
        }
        self.bytes += self.frame.len() as u64;
        Ok(())
    }

    /// A handle to the current file for `fdatasync` off the writer's thread.
    pub(crate) fn file_handle(&self) -> Result<File> {
        Ok(self.file.try_clone()?)
    }

    /// Switches to a new file; returns the path of the one just finished
    /// (to delete once sled has made its groups durable).
    pub(crate) fn rotate(&mut self) -> Result<PathBuf> {
        let finished = path_of(&self.dir, self.generation);
        self.file = open_generation(&self.dir, self.generation + 1, self.sync_dir)?;
        self.generation += 1;
        self.bytes = 0;
        Ok(finished)
    }

    /// Path of the file being written.
    pub(crate) fn current_path(&self) -> PathBuf {
        path_of(&self.dir, self.generation)
    }
}

fn path_of(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation:020}.log"))
}

/// Creates a generation's file; with `sync_dir`, also makes its directory
/// entry durable, so a power loss cannot lose the file `sync` mode relies on.
fn open_generation(dir: &Path, generation: u64, sync_dir: bool) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path_of(dir, generation))?;
    if sync_dir {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

/// Staging files present, oldest first, with their generations.
pub(crate) fn existing(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    if !dir.exists() {
        return Ok(files);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let generation = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(g), Some("log")) = (generation, path.extension().and_then(|e| e.to_str())) {
            files.push((g, path));
        }
    }
    files.sort();
    Ok(files)
}

/// The frames of one staging file, up to the first that does not verify.
pub(crate) fn read_frames(path: &Path) -> Result<Vec<Frame>> {
    let bytes = std::fs::read(path)?;
    let mut frames = Vec::new();
    let mut at = 0;
    while at + HEADER + 4 <= bytes.len() {
        let magic = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4"));
        let first_lsn = u64::from_be_bytes(bytes[at + 4..at + 12].try_into().expect("8"));
        let len = u32::from_be_bytes(bytes[at + 12..at + 16].try_into().expect("4")) as usize;
        let end = at + HEADER + len;
        if magic != MAGIC || end + 4 > bytes.len() {
            break;
        }
        let crc = u32::from_be_bytes(bytes[end..end + 4].try_into().expect("4"));
        if crc32fast::hash(&bytes[at..end]) != crc {
            break;
        }
        frames.push(Frame {
            first_lsn,
            segment: bytes[at + HEADER..end].to_vec(),
        });
        at = end + 4;
    }
    if at != bytes.len() {
        tracing::warn!(file = %path.display(), valid_bytes = at, total = bytes.len(), "staging file ends in a torn frame; ignoring the rest");
    }
    Ok(frames)
}
