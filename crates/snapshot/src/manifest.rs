//! The manifest: what a snapshot directory holds and what it reflects.

use replaymig_journal::Lsn;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The manifest's file name inside a snapshot directory.
pub const MANIFEST_FILE: &str = "replaymig-manifest.json";

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the snapshot directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
}

/// What a snapshot is: its files with checksums, the driver that made it,
/// and the LSN of the last client record it reflects. A snapshot and its
/// manifest always travel together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The service it belongs to.
    pub service: String,
    /// `exec`, `criu` or `none`.
    pub driver: String,
    /// The snapshot point: replay starts at `lsn + 1`.
    pub lsn: Lsn,
    /// A pre-copy round of an iterative migration: taken while the service
    /// ran on, not restorable; a later round supersedes it.
    #[serde(default)]
    pub precopy: bool,
    /// The files, sorted by name.
    pub files: Vec<FileEntry>,
}

/// Why a manifest could not be built, read or verified.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading or writing failed.
    #[error("snapshot I/O on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest file does not parse.
    #[error("snapshot manifest {0} is malformed: {1}")]
    Malformed(PathBuf, String),
    /// A file's content does not match the manifest.
    #[error("snapshot file {name} does not match its manifest: {reason}")]
    Mismatch {
        /// The file.
        name: String,
        /// Size or checksum difference.
        reason: String,
    },
    /// A manifest names a path outside the snapshot directory.
    #[error("snapshot manifest names an unsafe path {0:?}")]
    UnsafePath(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 (hex) and size of a file.
pub(crate) fn digest_file(path: &Path) -> Result<(String, u64), ManifestError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("{:x}", hasher.finalize()), size))
}

/// Checks that `name` stays inside the snapshot directory.
pub(crate) fn safe_relative(name: &str) -> Result<&Path, ManifestError> {
    let path = Path::new(name);
    let ok = !name.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(path)
    } else {
        Err(ManifestError::UnsafePath(name.to_string()))
    }
}

/// Largest snapshot a manifest may announce (1 TiB): far above any
/// service this moves, far below what would make a receiver's file sizing
/// (sparse files) absurd.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

impl Manifest {
    /// Describes every regular file under `dir` (except the manifest).
    pub fn build(
        dir: &Path,
        service: &str,
        driver: &str,
        lsn: Lsn,
    ) -> Result<Manifest, ManifestError> {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).map_err(io(&d))? {
                let path = entry.map_err(io(&d))?.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = path
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                if name == MANIFEST_FILE {
                    continue;
                }
                let (sha256, size) = digest_file(&path)?;
                files.push(FileEntry { name, size, sha256 });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Manifest {
            service: service.to_string(),
            driver: driver.to_string(),
            lsn,
            precopy: false,
            files,
        })
    }

    /// Bytes of all files (saturating: `parse` refuses totals that do not
    /// fit, but a hand-built manifest must not panic here either).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.size))
    }

    /// Checks every file under `dir` against the manifest.
    pub fn verify(&self, dir: &Path) -> Result<(), ManifestError> {
        for f in &self.files {
            let path = dir.join(safe_relative(&f.name)?);
            let (sha256, size) = digest_file(&path)?;
            if size != f.size {
                return Err(ManifestError::Mismatch {
                    name: f.name.clone(),
                    reason: format!("{size} bytes, manifest says {}", f.size),
                });
            }
            if sha256 != f.sha256 {
                return Err(ManifestError::Mismatch {
                    name: f.name.clone(),
                    reason: "SHA-256 differs".into(),
                });
            }
        }
        Ok(())
    }

    /// Writes the manifest into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        std::fs::write(&path, json).map_err(io(&path))
    }

    /// Reads the manifest from `dir`.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        Self::parse(&bytes).map_err(|e| ManifestError::Malformed(path, e))
    }

    /// Parses a manifest's bytes (what `load` reads; a peer's manifest
    /// arrives the same way); any input gives a manifest or an error.
    /// A manifest announcing more than [`MAX_SNAPSHOT_BYTES`] in all is
    /// refused: the receiver sizes its files from it before any byte comes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let total = manifest
            .files
            .iter()
            .try_fold(0u64, |sum, f| sum.checked_add(f.size));
        match total {
            Some(total) if total <= MAX_SNAPSHOT_BYTES => Ok(manifest),
            _ => Err(format!(
                "the files add up to more than {MAX_SNAPSHOT_BYTES} bytes"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_totals_that_overflow_or_exceed_the_limit() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let mut m = Manifest::build(dir.path(), "redis", "exec", 1).unwrap();
        let ok = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&ok).unwrap(), m);
        let mut second = m.files[0].clone();
        second.name = "b".into();
        for (a, b) in [(u64::MAX, 1), (MAX_SNAPSHOT_BYTES, 1)] {
            m.files[0].size = a;
            second.size = b;
            let mut two = m.clone();
            two.files.push(second.clone());
            let err = Manifest::parse(&serde_json::to_vec(&two).unwrap()).unwrap_err();
            assert!(err.contains("add up to more than"), "{err}");
            assert_eq!(two.total_bytes(), a.saturating_add(b));
        }
    }

    #[test]
    fn build_save_load_verify_and_detect_changes() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("dump.rdb"), b"REDIS0011....").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/extra"), vec![7u8; 3000]).unwrap();
        let m = Manifest::build(dir.path(), "redis", "exec", 41).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.total_bytes(), 13 + 3000);
        m.save(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), m);
        m.verify(dir.path()).unwrap();
        std::fs::write(dir.path().join("sub/extra"), vec![8u8; 3000]).unwrap();
        let err = m.verify(dir.path()).unwrap_err();
        assert!(err.to_string().contains("sub/extra"), "{err}");
        assert!(safe_relative("../etc/passwd").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("a/b").is_ok());
    }
}
