//! Shipping a snapshot directory over an authenticated peer link: the
//! manifest first, then each file in 1 MiB chunks (each with a CRC-32 of
//! its uncompressed bytes, optionally zstd-compressed), then an end mark.
//! The receiver checks every chunk as it arrives and every file against the
//! manifest at the end; any mismatch is an error naming the file and offset.
//!
//! A chunk says where it goes, and the receiver keeps what its directory
//! already holds: a delta round of an iterative migration sends only the
//! ranges that changed ([`SnapshotChunks::delta`]) into the directory of
//! the previous round; the checksums at the end prove the result whole.

use crate::delta::Range;
use crate::manifest::{safe_relative, Manifest, ManifestError};
use crate::stream::StreamedFiles;
use replaymig_peer::{LinkError, Message, PeerLink};

use std::path::Path;
use std::time::Duration;

/// Uncompressed bytes per chunk (well under the peer frame limit).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Bound on waiting for the next message of a transfer.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Figures of one transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Bytes of the snapshot files.
    pub raw_bytes: u64,
    /// Bytes of chunk payload put on the link (after compression).
    pub wire_bytes: u64,
    /// Chunks sent or received.
    pub chunks: u64,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The link failed or timed out.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A chunk did not match its checksum (or did not decompress).
    #[error("snapshot chunk of {file} at offset {offset} is corrupt: {reason}")]
    CorruptChunk {
        /// The file.
        file: String,
        /// Where the chunk starts.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The files do not match the manifest, or the manifest is bad.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The peer sent something out of order.
    #[error("snapshot transfer protocol error: {0}")]
    Protocol(String),
    /// Local file I/O failed.
    #[error("snapshot file I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The messages of one snapshot, produced one at a time so the caller can
/// interleave other traffic (log batches) between chunks.
pub struct SnapshotChunks<'a> {
    dir: &'a Path,
    manifest: &'a Manifest,
    compress: bool,
    /// Per file (manifest order), the ranges still to send.
    ranges: Vec<std::collections::VecDeque<Range>>,
    /// Next file index; `None` before the manifest was sent.
    file: Option<usize>,
    open: Option<std::fs::File>,
    buf: Vec<u8>,
    ended: bool,
    /// Figures so far.
    pub stats: TransferStats,
}

impl<'a> SnapshotChunks<'a> {
    /// The whole snapshot, starting at the manifest.
    pub fn new(dir: &'a Path, manifest: &'a Manifest, compress: bool) -> Self {
        let whole = manifest
            .files
            .iter()
            .map(|f| {
                if f.size > 0 {
                    vec![(0, f.size)]
                } else {
                    Vec::new()
                }
            })
            .collect();
        Self::delta(dir, manifest, compress, whole)
    }

    /// Only `ranges` of each file (manifest order), for a receiver whose
    /// directory holds the rest already (see [`crate::delta`]).
    pub fn delta(
        dir: &'a Path,
        manifest: &'a Manifest,
        compress: bool,
        ranges: Vec<Vec<Range>>,
    ) -> Self {
        SnapshotChunks {
            dir,
            manifest,
            compress,
            ranges: ranges.into_iter().map(Into::into).collect(),
            file: None,
            open: None,
            buf: vec![0u8; CHUNK_BYTES],
            ended: false,
            stats: TransferStats::default(),
        }
    }

    /// The next message to send; `None` after the end mark.
    pub fn next_message(&mut self) -> Result<Option<Message>, TransferError> {
        let Some(mut index) = self.file else {
            self.file = Some(0);
            return Ok(Some(Message::SnapshotBegin {
                manifest: serde_json::to_vec(self.manifest).expect("a manifest serializes"),
            }));
        };
        if self.ended {
            return Ok(None);
        }
        // The next file with something left to send.
        while self.ranges.get(index).is_some_and(|r| r.is_empty()) {
            index += 1;
            self.open = None;
        }
        self.file = Some(index);
        let (Some(entry), Some(pending)) =
            (self.manifest.files.get(index), self.ranges.get_mut(index))
        else {
            self.ended = true;
            return Ok(Some(Message::SnapshotEnd));
        };
        if self.open.is_none() {
            self.open = Some(std::fs::File::open(
                self.dir.join(safe_relative(&entry.name)?),
            )?);
        }
        let file = self.open.as_ref().expect("opened above");
        let (start, end) = pending.pop_front().expect("a non-empty range list");
        let n = ((end - start) as usize).min(CHUNK_BYTES);
        if start + (n as u64) < end {
            pending.push_front((start + n as u64, end));
        }
        let piece = Piece::read(file, start, &mut self.buf[..n], self.compress)?;
        self.stats.count(&piece);
        Ok(Some(Message::SnapshotChunk {
            file: index as u32,
            offset: start,
            compressed: piece.compressed,
            data: piece.data,
            crc32: piece.crc32,
        }))
    }
}

/// One chunk's payload as it goes on the link.
pub(crate) struct Piece {
    /// The bytes, zstd-compressed if `compressed`.
    pub data: Vec<u8>,
    /// Whether `data` is compressed.
    pub compressed: bool,
    /// CRC-32 of the uncompressed bytes.
    pub crc32: u32,
    /// Uncompressed length.
    pub raw_len: u64,
}

impl Piece {
    /// Reads `buf.len()` bytes of `file` at `offset` into a piece.
    pub(crate) fn read(
        file: &std::fs::File,
        offset: u64,
        buf: &mut [u8],
        compress: bool,
    ) -> Result<Piece, TransferError> {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)?;
        Piece::of(buf, compress)
    }

    /// A piece of bytes already read.
    pub(crate) fn of(buf: &[u8], compress: bool) -> Result<Piece, TransferError> {
        let crc32 = crc32fast::hash(buf);
        let (data, compressed) = if compress {
            (zstd::bulk::compress(buf, 3)?, true)
        } else {
            (buf.to_vec(), false)
        };
        Ok(Piece {
            data,
            compressed,
            crc32,
            raw_len: buf.len() as u64,
        })
    }

    /// The uncompressed bytes of a received piece of `name` at `offset`,
    /// checked against their CRC-32.
    pub(crate) fn check(
        name: &str,
        offset: u64,
        compressed: bool,
        data: Vec<u8>,
        crc32: u32,
    ) -> Result<Vec<u8>, TransferError> {
        let corrupt = |reason: String| TransferError::CorruptChunk {
            file: name.to_string(),
            offset,
            reason,
        };
        let raw = if compressed {
            zstd::bulk::decompress(&data, CHUNK_BYTES)
                .map_err(|e| corrupt(format!("does not decompress: {e}")))?
        } else {
            data
        };
        if crc32fast::hash(&raw) != crc32 {
            return Err(corrupt("CRC-32 mismatch".into()));
        }
        Ok(raw)
    }
}

impl TransferStats {
    /// Counts a piece sent.
    pub(crate) fn count(&mut self, piece: &Piece) {
        self.wire_bytes += piece.data.len() as u64;
        self.raw_bytes += piece.raw_len;
        self.chunks += 1;
    }
}

/// Sends the snapshot in `dir` described by `manifest`.
pub async fn send(
    link: &mut PeerLink,
    dir: &Path,
    manifest: &Manifest,
    compress: bool,
) -> Result<TransferStats, TransferError> {
    let mut chunks = SnapshotChunks::new(dir, manifest, compress);
    while let Some(msg) = chunks.next_message()? {
        link.send(msg).await?;
    }
    Ok(chunks.stats)
}

/// Receives a snapshot into `dir` (created if missing), verifies it, and
/// writes its manifest there. Files the directory already holds are the
/// base the chunks patch (a delta round); files the manifest does not name
/// are removed.
pub async fn receive(
    link: &mut PeerLink,
    dir: &Path,
) -> Result<(Manifest, TransferStats), TransferError> {
    receive_with(link, dir, |other| {
        Err(TransferError::Protocol(format!(
            "unexpected {} during a snapshot",
            other.name()
        )))
    })
    .await
}

/// [`receive`], handing every message that is not part of the snapshot
/// (log batches interleaved by the sender) to `aside`.
pub async fn receive_with(
    link: &mut PeerLink,
    dir: &Path,
    mut aside: impl FnMut(Message) -> Result<(), TransferError>,
) -> Result<(Manifest, TransferStats), TransferError> {
    std::fs::create_dir_all(dir)?;
    let mut stats = TransferStats::default();
    // Pieces streamed while the dump was still being written come first,
    // under stream numbers; the sender then says which file each became.
    let mut streamed = StreamedFiles::new(dir);
    let manifest: Manifest = loop {
        match link.recv_timeout(STEP_TIMEOUT).await? {
            Message::SnapshotBegin { manifest } => {
                break Manifest::parse(&manifest)
                    .map_err(|e| TransferError::Protocol(format!("malformed manifest: {e}")))?
            }
            Message::SnapshotStreamChunk {
                stream,
                offset,
                compressed,
                data,
                crc32,
            } => {
                stats.wire_bytes += data.len() as u64;
                let raw = streamed.write(stream, offset, compressed, data, crc32)?;
                stats.raw_bytes += raw;
                stats.chunks += 1;
            }
            Message::SnapshotStreamsNamed { names } => streamed.name(&names)?,
            other => aside(other)?,
        }
    };
    streamed.finish()?;
    remove_unnamed(dir, &manifest)?;
    let mut files = Vec::with_capacity(manifest.files.len());
    for entry in &manifest.files {
        let path = dir.join(safe_relative(&entry.name)?);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(entry.size)?;
        files.push(file);
    }
    loop {
        match link.recv_timeout(STEP_TIMEOUT).await? {
            Message::SnapshotChunk {
                file,
                offset,
                compressed,
                data,
                crc32,
            } => {
                let (entry, out) = manifest
                    .files
                    .get(file as usize)
                    .zip(files.get_mut(file as usize))
                    .ok_or_else(|| {
                        TransferError::Protocol(format!("chunk for unknown file #{file}"))
                    })?;
                stats.wire_bytes += data.len() as u64;
                let raw = Piece::check(&entry.name, offset, compressed, data, crc32)?;
                if offset.saturating_add(raw.len() as u64) > entry.size {
                    return Err(TransferError::CorruptChunk {
                        file: entry.name.clone(),
                        offset,
                        reason: "runs past the file size in the manifest".into(),
                    });
                }
                std::os::unix::fs::FileExt::write_all_at(&*out, &raw, offset)?;
                stats.raw_bytes += raw.len() as u64;
                stats.chunks += 1;
            }
            Message::SnapshotEnd => break,
            other => aside(other)?,
        }
    }
    for out in &files {
        out.sync_all()?;
    }
    drop(files);
    manifest.verify(dir)?;
    manifest.save(dir)?;
    Ok((manifest, stats))
}

/// Removes the regular files under `dir` that `manifest` does not name
/// (what an earlier round had and this one does not; the manifest file is
/// rewritten at the end anyway).
fn remove_unnamed(dir: &Path, manifest: &Manifest) -> Result<(), TransferError> {
    let named: std::collections::HashSet<&Path> = manifest
        .files
        .iter()
        .map(|f| safe_relative(&f.name))
        .collect::<Result<_, _>>()?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if !path
                .strip_prefix(dir)
                .is_ok_and(|relative| named.contains(relative))
            {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}
