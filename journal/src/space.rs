//! The free-space reserve: the writer refuses appends (writing nothing)
//! while the filesystem under the journal has less free space than the
//! reserve, and takes them again as soon as there is. Stopping *before*
//! the disk is full keeps sled from ever meeting `ENOSPC` in the common
//! case (after which it refuses every write until reopened) and leaves
//! room for the checkpoint of what it already holds in memory — the same
//! idea as a database's flood-stage watermark.

use crate::Lsn;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The reserve when none is configured: 5% of the filesystem, at least
/// 4 MiB (a few of sled's 512 KiB segments: room for its log to roll and
/// clean) and at most 16 MiB. What sled has still to flush is counted on
/// top (see `SLED_AMPLIFICATION`), so the fixed part only has to cover
/// sled's own rollover; a larger cap refused input on shared hosts whose
/// big disks run with tens of MiB free while nothing was at risk.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 16 << 20;
const DEFAULT_MIN_FREE_FLOOR: u64 = 4 << 20;
const DEFAULT_MIN_FREE_SHARE: f64 = 0.05;

/// Disk bytes sled may need per byte it holds in memory when it next
/// flushes (its files take 1.4–3.4× the logical size): what a group costs
/// on top of its staging write until a checkpoint has made it durable.
/// sled must never meet `ENOSPC` itself — it then fails in ways it does
/// not always recover from in place — so this errs high.
const SLED_AMPLIFICATION: u64 = 4;

/// How long a measurement of free space is trusted while there is plenty.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// Free space on a filesystem, as far as an unprivileged writer may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Bytes available.
    pub free: u64,
    /// The filesystem's size in bytes.
    pub total: u64,
}

/// Measures the filesystem holding `path` (`statvfs`); `None` if it
/// cannot be measured (then nothing is refused on its account).
pub fn measure(path: &Path) -> Option<FsSpace> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let unit = st.fragment_size() as u64;
    Some(FsSpace {
        free: (st.blocks_available() as u64).saturating_mul(unit),
        total: (st.blocks() as u64).saturating_mul(unit),
    })
}

/// The reserve for a filesystem of `total` bytes when none is configured.
pub fn default_min_free(total: u64) -> u64 {
    ((total as f64 * DEFAULT_MIN_FREE_SHARE) as u64)
        .clamp(DEFAULT_MIN_FREE_FLOOR, DEFAULT_MIN_FREE_BYTES)
}

/// The writer's view of free space: measured at most every
/// `REFRESH_EVERY` while above twice the reserve, on every group below it.
pub(crate) struct SpaceGuard {
    dir: PathBuf,
    /// The reserve in bytes (resolved from the configuration at open).
    pub(crate) reserve: u64,
    /// Free bytes at the last measurement, minus what was written since.
    free: Option<u64>,
    measured: Instant,
}

/// Why a group may not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LowSpace {
    pub(crate) free: u64,
    pub(crate) reserve: u64,
    /// What the group and sled's next flush would take on top of the reserve.
    pub(crate) pending: u64,
}

impl LowSpace {
    /// What the callers are told.
    pub(crate) fn reason(&self, next_lsn: Lsn) -> String {
        let pending = if self.pending > 0 {
            format!(
                " plus {} bytes for this input and what sled has still to flush",
                self.pending
            )
        } else {
            String::new()
        };
        format!(
            "{} bytes free under the journal, below its {}-byte reserve{pending}; \
             nothing from LSN {next_lsn} on is written until space is freed",
            self.free, self.reserve
        )
    }
}

impl SpaceGuard {
    /// A guard for the journal in `dir`; `min_free` None = the default.
    pub(crate) fn new(dir: &Path, min_free: Option<u64>) -> SpaceGuard {
        let measured = measure(dir);
        let reserve = min_free.unwrap_or_else(|| measured.map_or(0, |m| default_min_free(m.total)));
        SpaceGuard {
            dir: dir.to_path_buf(),
            reserve,
            free: measured.map(|m| m.free),
            measured: Instant::now(),
        }
    }

    /// Free bytes as last known (for the gauge).
    pub(crate) fn free(&self) -> Option<u64> {
        self.free
    }

    /// Whether a group of `bytes` may be written now, with `unflushed`
    /// bytes already appended that sled has not made durable yet (it will
    /// write them at the next checkpoint); counts the group as written
    /// when it may.
    pub(crate) fn admit(&mut self, bytes: u64, unflushed: u64) -> Result<(), LowSpace> {
        let cost = bytes.saturating_add(
            unflushed
                .saturating_add(bytes)
                .saturating_mul(SLED_AMPLIFICATION),
        );
        let tight = self
            .free
            .is_none_or(|f| f < self.reserve.saturating_add(cost).saturating_mul(2));
        if tight || self.measured.elapsed() >= REFRESH_EVERY {
            if let Some(m) = measure(&self.dir) {
                self.free = Some(m.free);
            }
            self.measured = Instant::now();
        }
        let Some(free) = self.free else {
            return Ok(());
        };
        if free < self.reserve.saturating_add(cost) {
            return Err(LowSpace {
                free,
                reserve: self.reserve,
                pending: cost,
            });
        }
        self.free = Some(free - bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_reserve_is_5_percent_between_4_and_16_mib() {
        assert_eq!(default_min_free(1 << 40), 16 << 20);
        assert_eq!(default_min_free(200 << 20), 10 << 20);
        assert_eq!(default_min_free(32 << 20), 4 << 20);
    }

    #[test]
    fn what_sled_will_flush_counts_against_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let free = measure(dir.path()).unwrap().free;
        let mut guard = SpaceGuard::new(dir.path(), Some(0));
        assert!(guard.admit(1, 0).is_ok());
        // Fits on its own, not with a quarter of the disk still unflushed.
        assert!(guard.admit(1, free / 4).is_err());
    }

    #[test]
    fn a_reserve_larger_than_the_free_space_refuses_and_says_how_much_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let free = measure(dir.path())
            .expect("a temp dir's filesystem is measurable")
            .free;
        let mut guard = SpaceGuard::new(dir.path(), Some(free.saturating_mul(4)));
        let refused = guard.admit(1, 0).unwrap_err();
        assert_eq!(refused.reserve, free.saturating_mul(4));
        assert!(refused.reason(7).contains("from LSN 7 on"));
        let mut guard = SpaceGuard::new(dir.path(), Some(0));
        assert!(guard.admit(1, 0).is_ok());
    }
}
