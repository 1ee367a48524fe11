//! Streaming a dump while it is written: the part of an exec dump that runs
//! after the snapshot point is fixed (a Redis `BGSAVE` child writing its
//! RDB) can take as long as the transfer itself; sending the files as they
//! grow overlaps the two instead of adding them.
//!
//! The sender ([`DumpStream`]) follows every regular file that appears in
//! the snapshot directory by inode (so a temporary file renamed into place
//! stays the same stream) and sends each whole [`CHUNK_BYTES`] piece once
//! it is written. When the dump has finished, [`DumpStream::settle`] maps
//! the streams onto the manifest's files and re-reads what was sent: a
//! piece whose bytes changed afterwards, and everything not sent yet, goes
//! over the link again as ordinary chunks. The receiver ([`StreamedFiles`])
//! keeps the streamed files aside until they are named; the manifest's
//! SHA-256 check at the end proves the result whole either way, so a dump
//! that rewrites its files costs bytes, never correctness.

use crate::delta::Range;
use crate::manifest::{safe_relative, Manifest, MANIFEST_FILE, MAX_SNAPSHOT_BYTES};
use crate::transfer::{Piece, TransferError, TransferStats, CHUNK_BYTES};
use replaymig_peer::Message;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Most files one dump may stream: a bound on what a receiver keeps open.
pub const MAX_STREAMS: usize = 1024;

/// Where a receiver keeps streamed files until they are named.
const STAGING_DIR: &str = ".replaymig-streams";

/// One file being followed.
struct Followed {
    dev: u64,
    ino: u64,
    file: File,
    /// Bytes looked at, from 0 (whole chunks only): sent or passed over.
    sent: u64,
    /// Per chunk looked at, in order: the CRC-32 of what was sent, or
    /// `None` for a chunk passed over (sent after the dump, as a range).
    crcs: Vec<Option<u32>>,
}

/// The sending side: files of a dump in progress, sent as they grow.
pub struct DumpStream {
    dir: PathBuf,
    compress: bool,
    /// Only pieces zstd would not shrink, sent as they are (see
    /// [`DumpStream::incompressible_only`]).
    incompressible_only: bool,
    /// Index = stream number.
    followed: Vec<Followed>,
    buf: Vec<u8>,
    /// Figures of the pieces streamed.
    pub stats: TransferStats,
}

/// What is left once the dump has finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Which stream became which file of the manifest.
    pub names: Vec<(u32, String)>,
    /// Per manifest file, the ranges still to send as chunks.
    pub ranges: Vec<Vec<Range>>,
    /// Bytes streamed that changed afterwards and are sent again.
    pub stale_bytes: u64,
}

impl DumpStream {
    /// Follows the files that appear under `dir`.
    pub fn new(dir: &Path, compress: bool) -> Self {
        DumpStream {
            dir: dir.to_path_buf(),
            compress,
            incompressible_only: false,
            followed: Vec::new(),
            buf: vec![0u8; CHUNK_BYTES],
            stats: TransferStats::default(),
        }
    }

    /// Follows the files under `dir` for a dump that holds the clients
    /// (CRIU's): compressing beside it would take the CPU the dump needs
    /// and lengthen the hold, so only pieces that zstd would not shrink
    /// (memory of random or already compressed data) go, as they are; the
    /// others are passed over and go compressed after the dump.
    pub fn incompressible_only(dir: &Path) -> Self {
        DumpStream {
            incompressible_only: true,
            ..DumpStream::new(dir, false)
        }
    }

    /// The next whole piece written since the last call, if any.
    pub fn next_message(&mut self) -> Result<Option<Message>, TransferError> {
        self.discover()?;
        for (stream, f) in self.followed.iter_mut().enumerate() {
            while f.file.metadata()?.len() >= f.sent + CHUNK_BYTES as u64 {
                let offset = f.sent;
                f.sent += CHUNK_BYTES as u64;
                // Judged on samples read alone: a piece passed over is
                // never read whole.
                if self.incompressible_only && compresses(&f.file, offset)? {
                    f.crcs.push(None);
                    continue;
                }
                std::os::unix::fs::FileExt::read_exact_at(&f.file, &mut self.buf, offset)?;
                let piece = Piece::of(&self.buf, self.compress)?;
                self.stats.count(&piece);
                f.crcs.push(Some(piece.crc32));
                return Ok(Some(Message::SnapshotStreamChunk {
                    stream: stream as u32,
                    offset,
                    compressed: piece.compressed,
                    data: piece.data,
                    crc32: piece.crc32,
                }));
            }
        }
        Ok(None)
    }

    /// Starts following regular files not followed yet.
    fn discover(&mut self) -> Result<(), TransferError> {
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let entry = entry?;
                let path = entry.path();
                // A file gone between listing and stat is a temporary one.
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let known = self
                    .followed
                    .iter()
                    .any(|f| f.dev == meta.dev() && f.ino == meta.ino());
                if !meta.is_file()
                    || known
                    || self.followed.len() >= MAX_STREAMS
                    || entry.file_name() == MANIFEST_FILE
                {
                    continue;
                }
                let Ok(file) = File::open(&path) else {
                    continue;
                };
                self.followed.push(Followed {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    file,
                    sent: 0,
                    crcs: Vec::new(),
                });
            }
        }
        Ok(())
    }

    /// Maps the streams onto `manifest` (built after the dump finished)
    /// and checks what was streamed against the files' final bytes.
    pub fn settle(&mut self, manifest: &Manifest) -> Result<Settled, TransferError> {
        let mut names = Vec::new();
        let mut ranges = Vec::with_capacity(manifest.files.len());
        let mut stale_bytes = 0;
        let mut claimed = HashSet::new();
        for entry in &manifest.files {
            let path = self.dir.join(safe_relative(&entry.name)?);
            let meta = std::fs::metadata(&path)?;
            let stream = self.followed.iter().position(|f| {
                f.dev == meta.dev() && f.ino == meta.ino() && f.crcs.iter().any(Option::is_some)
            });
            let Some(stream) = stream.filter(|s| claimed.insert(*s)) else {
                ranges.push(whole(entry.size));
                continue;
            };
            names.push((stream as u32, entry.name.clone()));
            let f = &self.followed[stream];
            let mut pending: Vec<Range> = Vec::new();
            for (k, crc) in f.crcs.iter().enumerate() {
                let start = k as u64 * CHUNK_BYTES as u64;
                let end = (start + CHUNK_BYTES as u64).min(entry.size);
                if start >= end {
                    break;
                }
                let Some(crc) = crc else {
                    // Passed over while streaming: goes now.
                    push_range(&mut pending, (start, end));
                    continue;
                };
                let now = &mut self.buf[..(end - start) as usize];
                std::os::unix::fs::FileExt::read_exact_at(&f.file, now, start)?;
                if end - start < CHUNK_BYTES as u64 || crc32fast::hash(now) != *crc {
                    stale_bytes += end - start;
                    push_range(&mut pending, (start, end));
                }
            }
            if entry.size > f.sent {
                push_range(&mut pending, (f.sent, entry.size));
            }
            ranges.push(pending);
        }
        Ok(Settled {
            names,
            ranges,
            stale_bytes,
        })
    }
}

fn whole(size: u64) -> Vec<Range> {
    if size > 0 {
        vec![(0, size)]
    } else {
        Vec::new()
    }
}

/// Whether zstd would shrink the whole piece of `file` at `piece_at`
/// noticeably, judged on four 4 KiB samples spread over it (tens of
/// microseconds, not the milliseconds a whole piece takes): a wrong guess
/// costs link bytes or an early send, never correctness.
fn compresses(file: &File, piece_at: u64) -> std::io::Result<bool> {
    const SAMPLE: usize = 4 << 10;
    let mut sample = [0u8; SAMPLE];
    let (mut raw, mut packed) = (0, 0);
    for k in 0..4u64 {
        let at = piece_at + k * CHUNK_BYTES as u64 / 4;
        std::os::unix::fs::FileExt::read_exact_at(file, &mut sample, at)?;
        raw += SAMPLE;
        packed += zstd::bulk::compress(&sample, 1).map_or(SAMPLE, |c| c.len());
    }
    Ok(packed * 10 < raw * 9)
}

/// Appends `range`, merged with the last one if they touch.
fn push_range(ranges: &mut Vec<Range>, range: Range) {
    match ranges.last_mut() {
        Some(last) if last.1 == range.0 => last.1 = range.1,
        _ => ranges.push(range),
    }
}

/// The receiving side: streamed files, kept aside until named.
pub(crate) struct StreamedFiles {
    dir: PathBuf,
    files: HashMap<u32, File>,
    named: bool,
}

impl StreamedFiles {
    /// Nothing streamed yet into `dir`.
    pub(crate) fn new(dir: &Path) -> Self {
        StreamedFiles {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            named: false,
        }
    }

    fn staged(&self, stream: u32) -> PathBuf {
        self.dir.join(STAGING_DIR).join(stream.to_string())
    }

    /// Writes one streamed piece; its uncompressed length.
    pub(crate) fn write(
        &mut self,
        stream: u32,
        offset: u64,
        compressed: bool,
        data: Vec<u8>,
        crc32: u32,
    ) -> Result<u64, TransferError> {
        if self.named {
            return Err(TransferError::Protocol(
                "a streamed piece after the streams were named".into(),
            ));
        }
        let label = format!("stream #{stream}");
        let raw = Piece::check(&label, offset, compressed, data, crc32)?;
        if offset.saturating_add(raw.len() as u64) > MAX_SNAPSHOT_BYTES {
            return Err(TransferError::CorruptChunk {
                file: label,
                offset,
                reason: "beyond the largest snapshot accepted".into(),
            });
        }
        if !self.files.contains_key(&stream) {
            if self.files.len() >= MAX_STREAMS {
                return Err(TransferError::Protocol(format!(
                    "more than {MAX_STREAMS} streamed files"
                )));
            }
            std::fs::create_dir_all(self.dir.join(STAGING_DIR))?;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.staged(stream))?;
            self.files.insert(stream, file);
        }
        let file = &self.files[&stream];
        std::os::unix::fs::FileExt::write_all_at(file, &raw, offset)?;
        Ok(raw.len() as u64)
    }

    /// Puts each named stream in place under its file name.
    pub(crate) fn name(&mut self, names: &[(u32, String)]) -> Result<(), TransferError> {
        if std::mem::replace(&mut self.named, true) {
            return Err(TransferError::Protocol("streams named twice".into()));
        }
        let mut taken = HashSet::new();
        for (stream, name) in names {
            let target = self.dir.join(safe_relative(name)?);
            if !self.files.contains_key(stream) || !taken.insert(name.as_str()) {
                return Err(TransferError::Protocol(format!(
                    "stream #{stream} named {name:?}: unknown stream or name given twice"
                )));
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(self.staged(*stream), target)?;
        }
        Ok(())
    }

    /// Drops what was streamed and not named (temporary files).
    pub(crate) fn finish(self) -> Result<(), TransferError> {
        let staging = self.dir.join(STAGING_DIR);
        drop(self.files);
        match std::fs::remove_dir_all(staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replaymig_testkit::noise;
    use std::io::Write;

    /// Delivers every piece ready; their offsets and whether compressed.
    fn drain(stream: &mut DumpStream, into: &mut StreamedFiles) -> Vec<(u64, bool)> {
        let mut pieces = Vec::new();
        while let Some(msg) = stream.next_message().unwrap() {
            let Message::SnapshotStreamChunk {
                stream,
                offset,
                compressed,
                data,
                crc32,
            } = msg
            else {
                panic!("not a streamed piece")
            };
            into.write(stream, offset, compressed, data, crc32).unwrap();
            pieces.push((offset, compressed));
        }
        pieces
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A file written in steps under a temporary name and renamed into
    /// place, a second one rewritten after part of it streamed, and a third
    /// written only at the end: only whole written pieces stream, the
    /// rename keeps the stream, the rewritten piece and every unsent byte
    /// are left to the ordinary chunks, and applying those gives the exact
    /// files.
    #[test]
    fn streamed_then_settled_files_come_out_exact() {
        let chunk = CHUNK_BYTES;
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut stream = DumpStream::new(src.path(), true);
        let mut staged = StreamedFiles::new(dst.path());

        let rdb = bytes(2 * chunk + 500, 1);
        let tmp = src.path().join("temp-42.rdb");
        let mut w = File::create(&tmp).unwrap();
        w.write_all(&rdb[..chunk - 1]).unwrap();
        assert!(
            drain(&mut stream, &mut staged).is_empty(),
            "no whole piece yet"
        );
        w.write_all(&rdb[chunk - 1..]).unwrap();
        let mut other = bytes(chunk + 10, 2);
        std::fs::write(src.path().join("other.img"), &other).unwrap();
        assert_eq!(drain(&mut stream, &mut staged).len(), 3);
        // Rewritten after streaming; renamed into place; a late file.
        other[7] ^= 0xff;
        std::fs::write(src.path().join("other.img"), &other).unwrap();
        std::fs::rename(&tmp, src.path().join("dump.rdb")).unwrap();
        std::fs::write(src.path().join("late.txt"), b"late").unwrap();

        let manifest = Manifest::build(src.path(), "svc", "exec", 9).unwrap();
        let settled = stream.settle(&manifest).unwrap();
        // Manifest order: dump.rdb, late.txt, other.img.
        assert_eq!(
            settled.ranges,
            vec![
                vec![(2 * chunk as u64, 2 * chunk as u64 + 500)],
                vec![(0, 4)],
                vec![(0, chunk as u64 + 10)],
            ]
        );
        assert_eq!(settled.stale_bytes, chunk as u64);
        assert_eq!(settled.names.len(), 2);

        apply_and_verify(staged, &settled, &manifest, src.path(), dst.path());
    }

    /// What a receiver does after the streams: names them, writes the
    /// ranges still to send from the source's files, checks the result.
    fn apply_and_verify(
        mut staged: StreamedFiles,
        settled: &Settled,
        manifest: &Manifest,
        src: &Path,
        dst: &Path,
    ) {
        staged.name(&settled.names).unwrap();
        staged.finish().unwrap();
        for (entry, ranges) in manifest.files.iter().zip(&settled.ranges) {
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(dst.join(&entry.name))
                .unwrap();
            out.set_len(entry.size).unwrap();
            let data = std::fs::read(src.join(&entry.name)).unwrap();
            for (start, end) in ranges {
                std::os::unix::fs::FileExt::write_all_at(
                    &out,
                    &data[*start as usize..*end as usize],
                    *start,
                )
                .unwrap();
            }
        }
        manifest.verify(dst).unwrap();
        assert!(!dst.join(STAGING_DIR).exists());
    }

    /// Under a hold (CRIU's dump): compressible pieces are passed over
    /// (no compression beside the dump), incompressible ones go as they
    /// are; the passed-over ones come back as ranges, and the result is
    /// exact. A file whose every piece compresses is not a stream at all.
    #[test]
    fn under_a_hold_only_incompressible_pieces_stream_and_the_rest_follows() {
        let chunk = CHUNK_BYTES;
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut stream = DumpStream::incompressible_only(src.path());
        let mut staged = StreamedFiles::new(dst.path());
        // pages: compressible, random, compressible, random, then a tail.
        let mut pages = bytes(chunk, 1);
        pages.extend(noise(chunk, 7));
        pages.extend(bytes(chunk, 3));
        pages.extend(noise(chunk, 9));
        pages.extend(bytes(100, 4));
        std::fs::write(src.path().join("pages-1.img"), &pages).unwrap();
        std::fs::write(src.path().join("core.img"), bytes(2 * chunk, 5)).unwrap();
        let sent = drain(&mut stream, &mut staged);
        assert_eq!(
            sent,
            vec![(chunk as u64, false), (3 * chunk as u64, false)],
            "only the random pieces, uncompressed"
        );
        assert_eq!(stream.stats.raw_bytes, 2 * chunk as u64);

        let manifest = Manifest::build(src.path(), "svc", "criu", 9).unwrap();
        let settled = stream.settle(&manifest).unwrap();
        // Manifest order: core.img, pages-1.img.
        assert_eq!(
            settled.ranges,
            vec![
                vec![(0, 2 * chunk as u64)],
                vec![
                    (0, chunk as u64),
                    (2 * chunk as u64, 3 * chunk as u64),
                    (4 * chunk as u64, 4 * chunk as u64 + 100)
                ],
            ]
        );
        assert_eq!(settled.stale_bytes, 0);
        assert_eq!(settled.names.len(), 1, "core.img streamed nothing");
        apply_and_verify(staged, &settled, &manifest, src.path(), dst.path());
    }

    #[test]
    fn a_receiver_refuses_pieces_it_cannot_place() {
        let dst = tempfile::tempdir().unwrap();
        let mut staged = StreamedFiles::new(dst.path());
        let data = b"abc".to_vec();
        let crc = crc32fast::hash(&data);
        // Wrong checksum.
        assert!(staged.write(1, 0, false, data.clone(), crc ^ 1).is_err());
        // Past the largest snapshot.
        assert!(staged
            .write(1, MAX_SNAPSHOT_BYTES, false, data.clone(), crc)
            .is_err());
        staged.write(1, 0, false, data.clone(), crc).unwrap();
        // Unknown stream, unsafe name, then pieces after naming.
        assert!(staged.name(&[(2, "x".into())]).is_err());
        let mut staged = StreamedFiles::new(dst.path());
        staged.write(1, 0, false, data.clone(), crc).unwrap();
        assert!(staged.name(&[(1, "../escape".into())]).is_err());
        let mut staged = StreamedFiles::new(dst.path());
        staged.write(1, 0, false, data.clone(), crc).unwrap();
        staged.name(&[(1, "state".into())]).unwrap();
        assert!(staged.write(1, 3, false, data, crc).is_err());
        staged.finish().unwrap();
        assert_eq!(std::fs::read(dst.path().join("state")).unwrap(), b"abc");
    }
}
