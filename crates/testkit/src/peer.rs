//! An authenticated pair of peer links on loopback.

use replaymig_peer::{Authenticator, PeerLink, Secret};
use tokio::net::TcpListener;

/// Nodes "a" (dialer) and "b" (listener) sharing `secret`, linked.
pub async fn peer_link_pair(secret: &str) -> (PeerLink, PeerLink) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    let secret_b = Secret::new(secret).expect("a long enough secret");
    let accept = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        PeerLink::accept(s, &Authenticator::new("b", secret_b))
            .await
            .expect("b authenticates a")
    });
    let a = PeerLink::connect(
        addr,
        &Authenticator::new("a", Secret::new(secret).expect("secret")),
    )
    .await
    .expect("a authenticates b");
    (a, accept.await.expect("accept task"))
}
