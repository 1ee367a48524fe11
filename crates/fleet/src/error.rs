//! What can go wrong talking to the registry.

/// A registry operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No member answered before the deadline (every member down, quorum
    /// lost, or the network cut). For a write, its outcome is unknown.
    #[error("etcd did not answer {what} within {waited_ms} ms (last error: {last})")]
    Unreachable {
        /// The operation.
        what: String,
        /// How long it was tried.
        waited_ms: u64,
        /// The last member's error.
        last: String,
    },
    /// A key holds something that is not what this version writes.
    #[error("registry key {key} holds malformed data: {reason}")]
    Malformed {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration cannot work (no endpoints, a bad URL).
    #[error("fleet configuration: {0}")]
    Config(String),
}
