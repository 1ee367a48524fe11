//! Block-level deltas between two dumps of the same service, for iterative
//! migration (paper Algorithm 1) on a kernel without soft-dirty tracking:
//! every round is a full dump, but only the fixed-size blocks that differ
//! from what the destination already holds go over the link.

use crate::manifest::{safe_relative, Manifest, ManifestError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Bytes per compared block: small enough that a few dirtied pages do not
/// resend megabytes, large enough that the index stays small.
pub const DELTA_BLOCK: u64 = 64 * 1024;

/// A byte range `[start, end)` of one file.
pub type Range = (u64, u64);

/// Per file, a digest of each block: what a dump holds, to compare the next
/// one against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockIndex {
    files: HashMap<String, Vec<[u8; 16]>>,
}

impl BlockIndex {
    /// Digests every file of `manifest` in `dir`, block by block.
    pub fn of(dir: &Path, manifest: &Manifest) -> Result<BlockIndex, ManifestError> {
        let mut files = HashMap::new();
        let mut buf = vec![0u8; DELTA_BLOCK as usize];
        for entry in &manifest.files {
            let path = dir.join(safe_relative(&entry.name)?);
            let io = |source| ManifestError::Io {
                path: path.clone(),
                source,
            };
            let mut file = std::fs::File::open(&path).map_err(io)?;
            let mut blocks = Vec::new();
            loop {
                let n = read_block(&mut file, &mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                let digest = Sha256::digest(&buf[..n]);
                blocks.push(digest[..16].try_into().expect("16 of 32 bytes"));
            }
            files.insert(entry.name.clone(), blocks);
        }
        Ok(BlockIndex { files })
    }

    /// The ranges of each file of `manifest` (in manifest order) that the
    /// holder of `previous` lacks: whole files it does not have, and the
    /// blocks whose digest differs (adjacent blocks merged). With no
    /// previous index, everything. Also returns the total bytes.
    pub fn changed_since(
        &self,
        manifest: &Manifest,
        previous: Option<&BlockIndex>,
    ) -> (Vec<Vec<Range>>, u64) {
        let mut all = Vec::with_capacity(manifest.files.len());
        let mut bytes = 0;
        for entry in &manifest.files {
            let now = self
                .files
                .get(&entry.name)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let before = previous.and_then(|p| p.files.get(&entry.name));
            let mut ranges: Vec<Range> = Vec::new();
            for (i, digest) in now.iter().enumerate() {
                if before.and_then(|b| b.get(i)) == Some(digest) {
                    continue;
                }
                let start = i as u64 * DELTA_BLOCK;
                let end = (start + DELTA_BLOCK).min(entry.size);
                match ranges.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => ranges.push((start, end)),
                }
                bytes += end - start;
            }
            all.push(ranges);
        }
        (all, bytes)
    }
}

fn read_block(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(dir: &Path, files: &[(&str, Vec<u8>)]) -> Manifest {
        for (name, data) in files {
            std::fs::write(dir.join(name), data).unwrap();
        }
        Manifest::build(dir, "svc", "exec", 0).unwrap()
    }

    #[test]
    fn only_changed_blocks_and_new_files_are_sent() {
        let block = DELTA_BLOCK as usize;
        let one = tempfile::tempdir().unwrap();
        let mut pages = vec![7u8; 4 * block + 100];
        let m1 = dump(one.path(), &[("pages.img", pages.clone())]);
        let i1 = BlockIndex::of(one.path(), &m1).unwrap();
        let (all, bytes) = i1.changed_since(&m1, None);
        assert_eq!(
            (all, bytes),
            (vec![vec![(0, 4 * DELTA_BLOCK + 100)]], pages.len() as u64)
        );

        // Dirty block 1 and 2 (merged), grow the tail, add a file.
        pages[block + 5] = 1;
        pages[2 * block] = 1;
        pages.extend_from_slice(&[9u8; 50]);
        let two = tempfile::tempdir().unwrap();
        let m2 = dump(
            two.path(),
            &[("pages.img", pages.clone()), ("core.img", vec![1; 10])],
        );
        let i2 = BlockIndex::of(two.path(), &m2).unwrap();
        let (ranges, bytes) = i2.changed_since(&m2, Some(&i1));
        // Manifest order is by name: core.img first.
        assert_eq!(
            ranges,
            vec![
                vec![(0, 10)],
                vec![
                    (DELTA_BLOCK, 3 * DELTA_BLOCK),
                    (4 * DELTA_BLOCK, 4 * DELTA_BLOCK + 150)
                ]
            ]
        );
        assert_eq!(bytes, 10 + 2 * DELTA_BLOCK + 150);
        // Nothing changed: nothing to send.
        assert_eq!(i2.changed_since(&m2, Some(&i2)).1, 0);
    }
}
