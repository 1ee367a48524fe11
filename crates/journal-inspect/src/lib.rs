//! Inspection tools over replaymig's input journal: rendering and
//! filtering records (`replaymig journal dump`), whole-journal statistics
//! (`journal stat`), pcap export (`journal export`) and the client that
//! follows a journal another process holds (`journal dump --follow`).
//!
//! They read only through the journal's public read API (`read_range`,
//! `get`, `size_on_disk`, the follow socket), and live in their own crate
//! so the storage crate, `replaymig-journal`, carries neither this code nor
//! its dependencies (pcap and packet building, JSON, time formatting): a
//! proxy or node links storage only.

pub mod dump;
pub mod follow;
pub mod pcap;
pub mod stat;
