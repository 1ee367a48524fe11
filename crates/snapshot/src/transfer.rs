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

/// Sends the snapshot in `dir` described by `manifest`.
pub async fn send(
    link: &mut PeerLink,
    dir: &Path,
    manifest: &Manifest,
    compress: bool,
) -> Result<TransferStats, TransferError> {
    let mut stats = TransferStats::default();
    link.send(Message::SnapshotBegin {
        manifest: serde_json::to_vec(manifest).expect("a manifest serializes"),
    })
    .await?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    for (index, entry) in manifest.files.iter().enumerate() {
        let mut file = std::fs::File::open(dir.join(safe_relative(&entry.name)?))?;
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            let raw = &buf[..n];
            let crc32 = crc32fast::hash(raw);
            let (data, compressed) = if compress {
                (zstd::bulk::compress(raw, 3)?, true)
            } else {
                (raw.to_vec(), false)
            };
            stats.wire_bytes += data.len() as u64;
            stats.raw_bytes += n as u64;
            stats.chunks += 1;
            link.send(Message::SnapshotChunk {
                file: index as u32,
                offset,
                compressed,
                data,
                crc32,
            })
            .await?;
            offset += n as u64;
        }
    }
    link.send(Message::SnapshotEnd).await?;
    Ok(stats)
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
            other => {
                return Err(TransferError::Protocol(format!(
                    "unexpected {} during a snapshot",
                    other.name()
                )))
            }
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
