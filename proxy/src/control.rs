//! The proxy's control surface for what lives outside its data path (the
//! node agent, tests): the quiesce barrier, forwarding modes, the route for
//! new clients, adopting tunnels, handing connections over, and status.

use crate::barrier::{QuiesceError, QuiesceOptions, Quiesced};
use crate::handover::HandedOver;
use crate::relay_move::{MoveError, MoveTaken};
use crate::route::{Adopted, Dialer, Redirector, RelayMove, Route};
use crate::shared::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Controls a proxy from outside its data path (the node agent, tests).
#[derive(Clone)]
pub struct ProxyControl {
    shared: Arc<Shared>,
    adopt: mpsc::Sender<Adopted>,
}

impl ProxyControl {
    /// A handle on the proxy's shared state and its adoption queue.
    pub(crate) fn new(shared: Arc<Shared>, adopt: mpsc::Sender<Adopted>) -> Self {
        ProxyControl { shared, adopt }
    }

    /// Fixes a consistent snapshot point: see [`crate::barrier`]. Forwarding
    /// stays held until the returned [`Quiesced`] is dropped.
    pub async fn quiesce(&self, options: QuiesceOptions) -> Result<Quiesced, QuiesceError> {
        crate::barrier::quiesce(&self.shared, options).await
    }

    /// Connections barriers closed since the proxy started, by reason (a
    /// migration reports the difference over its run, failed attempts
    /// included).
    pub fn closed_at_barrier(&self) -> crate::ClosedAtBarrier {
        let counts = &self.shared.closed_at_barrier;
        crate::ClosedAtBarrier {
            unanswered: counts.unanswered.load(std::sync::atomic::Ordering::Acquire) as usize,
            in_use: counts.in_use.load(std::sync::atomic::Ordering::Acquire) as usize,
        }
    }

    /// Settled forwarding on or off (a migration catching up turns it on
    /// at its snapshot point): see `ordering`.
    pub fn set_settled_forwarding(&self, on: bool) {
        self.shared.forwards.set_settled(on);
    }

    /// Whether forwarding is settled now.
    pub fn settled_forwarding(&self) -> bool {
        self.shared.forwards.settled()
    }

    /// Sets where new clients go.
    pub fn set_route(&self, route: Route) {
        *self.shared.route.write().expect("poisoned") = route;
    }

    /// The route new clients take now.
    pub fn route(&self) -> Route {
        self.shared.route.read().expect("poisoned").clone()
    }

    /// Serves a connection that arrived from outside the listener (a
    /// tunnel from another node) as a journaled connection of this proxy.
    pub async fn adopt(&self, adopted: Adopted) -> Result<(), std::io::Error> {
        self.adopt
            .send(adopted)
            .await
            .map_err(|_| std::io::Error::other("the proxy is shutting down"))
    }

    /// Hands every open journaled connection to a new owner: while `hold`
    /// keeps the gate, each connection's service side is replaced by a
    /// tunnel from `dial` (told the connection id and the answer bytes its
    /// client has) and it stops journaling; new clients take the remote
    /// route. A tunnel from another node is offered to that node through
    /// `redirect` first (it dials the new owner itself). A connection whose
    /// tunnel cannot be opened is closed. Returns how many were switched
    /// and redirected (how: `handover`).
    pub async fn hand_over(
        &self,
        hold: &Quiesced,
        dial: Dialer,
        redirect: Option<Redirector>,
    ) -> HandedOver {
        crate::handover::hand_over(&self.shared, hold, dial, redirect).await
    }

    /// Moves relayed connection `relay` to a new owner on its old owner's
    /// word (see the `relay_move` module): `Ok` once it is taken — the rest
    /// runs in the background once the old owner confirms through
    /// [`MoveTaken::go`] — or an error if it cannot be (the old owner keeps
    /// relaying it).
    pub async fn move_relay(&self, relay: u64, order: RelayMove) -> Result<MoveTaken, MoveError> {
        crate::relay_move::begin(&self.shared, relay, order).await
    }

    /// A copy of the proxy's end of every journaled service connection,
    /// for a snapshot that carries them (see the proxy's `carry` module).
    pub async fn service_sockets(
        &self,
        hold: &Quiesced,
    ) -> std::io::Result<Vec<(replaymig_journal::ConnId, std::os::fd::OwnedFd)>> {
        crate::carry::service_sockets(&self.shared, hold).await
    }

    /// Connections that read answer bytes since `hold`'s mark (see
    /// the `carry` module): a carried snapshot taken meanwhile is ambiguous.
    pub fn answers_moved(&self, hold: &Quiesced) -> Vec<replaymig_journal::ConnId> {
        crate::carry::answers_moved(&self.shared, hold)
    }

    /// Answer bytes written by the service and not read by the proxy yet,
    /// over all journaled connections (see the `carry` module).
    pub async fn answers_unread(&self, hold: &Quiesced) -> std::io::Result<u64> {
        crate::carry::answers_unread(&self.shared, hold).await
    }

    /// Client connections journaled now.
    pub fn journaled_connections(&self) -> usize {
        self.shared.open.lock().expect("poisoned").len()
    }

    /// Service→client bytes delivered so far over all journaled
    /// connections (while journaled): the status page's answer count.
    pub fn answer_bytes(&self) -> u64 {
        self.shared
            .answer_bytes_delivered_all_journaled
            .load(Ordering::Acquire)
    }
}
