//! The peer link between replaymig nodes: TCP carrying length-delimited
//! frames (tokio-util), each `[u8 version][bincode message]`, with a
//! maximum frame size, typed [`Message`]s, and mutual challenge-response
//! authentication with a shared secret (HMAC-SHA256) before anything else
//! is accepted.
//!
//! A peer that fails authentication, sends a malformed or oversized frame,
//! speaks another version, or stays silent past a timeout gets an error
//! (logged and counted by the caller through [`names`]) and is
//! disconnected; nothing it sent is acted upon.

mod auth;
mod codec;
mod link;
mod message;
pub mod names;
mod secret;

pub use auth::{AuthError, Authenticator};
pub use codec::{FrameError, PeerCodec, WireBytes, MAX_FRAME_BYTES, PROTOCOL_VERSION};
pub use link::{LinkError, PeerLink};
pub use message::Message;
pub use secret::{Secret, SecretError};
