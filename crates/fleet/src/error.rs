//! What can go wrong talking to the registry.

impl FleetError {
    /// Whether this failure leaves a write's outcome unknown.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            FleetError::Unreachable {
                maybe_applied: true,
                ..
            }
        )
    }
}

/// Whether an etcd request that failed with `e` may still have been
/// applied: only a refusal before proposing — no connection to the member,
/// or the member without a leader (the request carries "require leader")
/// — is known not to have been.
pub(crate) fn maybe_applied(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::InvalidArgs(_) => false,
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().to_ascii_lowercase();
            let refused_before_sending = message.contains("no leader")
                || message.contains("tcp connect error")
                || message.contains("connection refused")
                || message.contains("error trying to connect");
            !refused_before_sending
        }
        _ => true,
    }
}

/// A registry operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No member answered before the deadline (every member down, quorum
    /// lost, or the network cut).
    #[error("etcd did not answer {what} within {waited_ms} ms (last error: {last})")]
    Unreachable {
        /// The operation.
        what: String,
        /// How long it was tried.
        waited_ms: u64,
        /// The last member's error.
        last: String,
        /// Whether a write may have been applied anyway: some try reached a
        /// member and got no answer (timed out, or the connection broke
        /// after sending). `false` when every try was refused before it
        /// could be proposed (no connection, or "no leader"): then the
        /// write is known not to have happened.
        maybe_applied: bool,
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
