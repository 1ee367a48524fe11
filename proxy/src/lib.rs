//! replaymig's data plane: an L4 proxy that appends every client→service
//! byte to the [`replaymig_journal`] before forwarding it, relays the
//! service's answers back while counting them per connection, propagates
//! half-close both ways, keeps memory bounded, and shuts down gracefully.

pub mod answers;
pub mod barrier;
mod cancel;
mod carry;
mod connection;
mod control;
mod downstream;
mod handover;
pub mod metrics;
mod ordering;
mod relay_move;
pub mod route;
mod sent;
mod server;
mod setup;
mod shared;
mod upstream;

pub use answers::AnswerJournaling;
pub use barrier::{CloseAtBarrier, ClosedAtBarrier, QuiesceError, QuiesceOptions, Quiesced};
pub use control::ProxyControl;
pub use handover::HandedOver;
pub use ordering::SETTLE_WAIT;
pub use relay_move::{MoveError, MoveTaken};
pub use route::{
    Adopted, Dialer, Redirect, Redirector, RelayMove, RelayOrigin, Route, Tunnel, TunnelRequest,
};
pub use sent::{bound_tunnel_buffer, ResendError, SENT_KEPT, TUNNEL_SOCKET_BUFFER};
pub use server::{Proxy, ProxyConfig, ShutdownReport};
