//! Replay migration between nodes (DESIGN.md, paper Algorithm 2). What is
//! here so far: [`logship`], streaming a journal from the snapshot point to
//! another node, which journals the records under the same LSNs and
//! acknowledges what it applied. The migration state machine, hand-over
//! and tunnelling build on it (not yet written).

pub mod logship;
