//! Replay migration between nodes (DESIGN.md, paper Algorithm 2): the
//! protocol as two pure state machines — [`source`] and [`destination`],
//! which say what comes next and which message is legal where (the node's
//! drivers carry out their actions; docs/protocol.md draws them) — and
//! [`logship`], streaming a journal from the snapshot point to another
//! node, which journals the records under the same LSNs and acknowledges
//! what it applied.

pub mod destination;
pub mod incoming;
pub mod logship;
pub mod phase;
pub mod source;

pub use incoming::Incoming;
pub use phase::Phase;
