//! A small disk for tests of what happens when the journal's disk fills.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted for a test or campaign (a disk that can be
/// filled and grown); unmounted on drop, also on panic. Needs root.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `32m`) at `at`; `None` if mounting
    /// is not allowed here.
    pub fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
    /// Changes its size in place (`mount -o remount,size=`).
    pub fn resize(&self, size: &str) -> anyhow::Result<()> {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()?;
        anyhow::ensure!(status.success(), "remounting {} failed", self.0.display());
        Ok(())
    }
}

/// Writes zeros to a new file at `path` until its filesystem is full
/// (someone else filling the disk); returns how many bytes it took.
pub fn fill_up(path: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => return Ok(written),
            Err(e) => return Err(e),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: sled's threads may hold a file a moment longer.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
