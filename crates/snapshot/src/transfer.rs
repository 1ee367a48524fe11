//! Shipping a snapshot directory over an authenticated peer link: the
//! manifest first, then each file in 1 MiB chunks (each with a CRC-32 of
//! its uncompressed bytes, optionally zstd-compressed), then an end mark.
//! The receiver checks every chunk as it arrives and every file against the
//! manifest at the end; any mismatch is an error naming the file and offset.

use crate::manifest::{safe_relative, Manifest, ManifestError};
use replaymig_peer::{LinkError, Message, PeerLink};
use std::io::{Read, Write};
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
    /// Next file index; `None` before the manifest was sent.
    file: Option<usize>,
    open: Option<(std::fs::File, u64)>,
    buf: Vec<u8>,
    ended: bool,
    /// Figures so far.
    pub stats: TransferStats,
}

impl<'a> SnapshotChunks<'a> {
    /// Starts at the manifest.
    pub fn new(dir: &'a Path, manifest: &'a Manifest, compress: bool) -> Self {
        SnapshotChunks {
            dir,
            manifest,
            compress,
            file: None,
            open: None,
            buf: vec![0u8; CHUNK_BYTES],
            ended: false,
            stats: TransferStats::default(),
        }
    }

    /// The next message to send; `None` after the end mark.
    pub fn next_message(&mut self) -> Result<Option<Message>, TransferError> {
        let Some(index) = self.file else {
            self.file = Some(0);
            return Ok(Some(Message::SnapshotBegin {
                manifest: serde_json::to_vec(self.manifest).expect("a manifest serializes"),
            }));
        };
        if self.ended {
            return Ok(None);
        }
        let Some(entry) = self.manifest.files.get(index) else {
            self.ended = true;
            return Ok(Some(Message::SnapshotEnd));
        };
        if self.open.is_none() {
            let file = std::fs::File::open(self.dir.join(safe_relative(&entry.name)?))?;
            self.open = Some((file, 0));
        }
        let (file, offset) = self.open.as_mut().expect("opened above");
        let n = read_full(file, &mut self.buf)?;
        if n == 0 {
            // This file is done: on to the next one.
            self.open = None;
            self.file = Some(index + 1);
            return self.next_message();
        }
        let raw = &self.buf[..n];
        let crc32 = crc32fast::hash(raw);
        let (data, compressed) = if self.compress {
            (zstd::bulk::compress(raw, 3)?, true)
        } else {
            (raw.to_vec(), false)
        };
        let chunk_offset = *offset;
        *offset += n as u64;
        self.stats.wire_bytes += data.len() as u64;
        self.stats.raw_bytes += n as u64;
        self.stats.chunks += 1;
        Ok(Some(Message::SnapshotChunk {
            file: index as u32,
            offset: chunk_offset,
            compressed,
            data,
            crc32,
        }))
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

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Receives a snapshot into `dir` (created; must be empty), verifies it,
/// and writes its manifest there.
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
    let manifest: Manifest = match link.recv_timeout(STEP_TIMEOUT).await? {
        Message::SnapshotBegin { manifest } => serde_json::from_slice(&manifest)
            .map_err(|e| TransferError::Protocol(format!("malformed manifest: {e}")))?,
        other => {
            return Err(TransferError::Protocol(format!(
                "expected snapshot_begin, got {}",
                other.name()
            )))
        }
    };
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::with_capacity(manifest.files.len());
    for entry in &manifest.files {
        let path = dir.join(safe_relative(&entry.name)?);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        files.push((std::fs::File::create(path)?, 0u64));
    }
    let mut stats = TransferStats::default();
    loop {
        match link.recv_timeout(STEP_TIMEOUT).await? {
            Message::SnapshotChunk {
                file,
                offset,
                compressed,
                data,
                crc32,
            } => {
                let (entry, (out, written)) = manifest
                    .files
                    .get(file as usize)
                    .zip(files.get_mut(file as usize))
                    .ok_or_else(|| {
                        TransferError::Protocol(format!("chunk for unknown file #{file}"))
                    })?;
                let corrupt = |reason: String| TransferError::CorruptChunk {
                    file: entry.name.clone(),
                    offset,
                    reason,
                };
                if offset != *written {
                    return Err(corrupt(format!("out of order (expected offset {written})")));
                }
                stats.wire_bytes += data.len() as u64;
                let raw = if compressed {
                    zstd::bulk::decompress(&data, CHUNK_BYTES)
                        .map_err(|e| corrupt(format!("does not decompress: {e}")))?
                } else {
                    data
                };
                if crc32fast::hash(&raw) != crc32 {
                    return Err(corrupt("CRC-32 mismatch".into()));
                }
                if *written + raw.len() as u64 > entry.size {
                    return Err(corrupt("runs past the file size in the manifest".into()));
                }
                out.write_all(&raw)?;
                *written += raw.len() as u64;
                stats.raw_bytes += raw.len() as u64;
                stats.chunks += 1;
            }
            Message::SnapshotEnd => break,
            other => aside(other)?,
        }
    }
    for (out, _) in &files {
        out.sync_all()?;
    }
    drop(files);
    manifest.verify(dir)?;
    manifest.save(dir)?;
    Ok((manifest, stats))
}
