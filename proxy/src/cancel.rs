//! How a connection is told to end. Two tokens, passed together so each
//! keeps one name through the relay: a graceful shutdown lets the answers
//! finish, a failure of either direction cuts both short.

use tokio_util::sync::CancellationToken;

/// The connection's two cancellation tokens.
pub(crate) struct Cancel {
    /// Cancelled by the proxy's graceful shutdown (a child of the accept
    /// loop's token): take no more client input, half-close the service
    /// side, relay the remaining answers.
    stop: CancellationToken,
    /// Cancelled when either direction fails, and — being `stop`'s child —
    /// by a graceful shutdown too: client input ends between records on
    /// either; only a failure (see [`Cancel::failed`]) abandons a forward or
    /// the answers.
    end: CancellationToken,
}

impl Cancel {
    /// The tokens of a connection that `stop` shuts down gracefully.
    pub fn new(stop: CancellationToken) -> Self {
        let end = stop.child_token();
        Cancel { stop, end }
    }

    /// A direction failed: ends the other one too.
    pub fn fail(&self) {
        self.end.cancel();
    }

    /// Resolves when client input should end (a failure or a graceful
    /// shutdown).
    pub async fn ended(&self) {
        self.end.cancelled().await;
    }

    /// Resolves when a direction failed; never on a graceful shutdown
    /// alone (which also cancels `end`, being its parent).
    pub async fn failed(&self) {
        self.end.cancelled().await;
        if self.stop.is_cancelled() {
            std::future::pending::<()>().await;
        }
    }
}
