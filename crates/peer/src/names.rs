//! Metric names of the peer link.

/// Handshakes refused (wrong secret, bad proof, timeout), label `side`.
pub const AUTH_FAILURES_TOTAL: &str = "replaymig_peer_auth_failures_total";
/// Frames that could not be decoded (malformed, oversized, wrong version).
pub const BAD_FRAMES_TOTAL: &str = "replaymig_peer_bad_frames_total";
/// Frames sent and received, label `direction` = `sent` | `received`.
pub const FRAMES_TOTAL: &str = "replaymig_peer_frames_total";
/// Bytes on the wire (framing included) sent and received, label `direction`.
pub const BYTES_TOTAL: &str = "replaymig_peer_bytes_total";
