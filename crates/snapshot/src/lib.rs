//! Snapshots: how a service's state is dumped on one node and restored on
//! another ([`Driver`]), the [`Manifest`] that travels with every snapshot
//! (files, their SHA-256, the driver, and the LSN the snapshot reflects —
//! like a base backup's start WAL position), and shipping a snapshot over
//! the peer link in checksummed, optionally zstd-compressed chunks
//! ([`transfer`]), also while the dump is still being written ([`stream`]).

pub mod delta;
mod driver;
pub mod holder;
mod manifest;
pub mod stream;
pub mod transfer;

pub use driver::{substitute, CriuDriver, Driver, DriverError, ExecDriver, Placeholders, Restored};
pub use manifest::{FileEntry, Manifest, ManifestError, MANIFEST_FILE};
