//! A deterministic stand-in for the paper's service (a YOLOv3 detector
//! answering image requests): a large read-only "model", a small working
//! memory rewritten by every request, a CPU cost per request, fixed-size
//! answers — and a client that checks every answer. Answers depend only on
//! the configuration and the order of the requests, so a replay of the
//! journaled input reproduces them byte for byte.
//!
//! ```text
//! replaymig-workload serve --listen ADDR --model-mb N --cpu-us N --dirty-kb N [--seed S]
//! replaymig-workload client --addr ADDR --interval-ms I --requests N --request-kb K
//!                           [--seed S] [--connections C] [--timeout-ms T]
//! ```
//!
//! Per request the service hashes its way through the model ([`model`]),
//! rewrites its whole working memory and counts ([`state`]); the wire
//! format is in [`protocol`]. Under CRIU, run it as the init of its own PID
//! namespace: [`signals`] makes it stoppable there.

pub mod client;
pub mod model;
pub mod protocol;
pub mod rng;
pub mod server;
pub mod signals;
pub mod state;

pub use client::{ClientConfig, Summary};
pub use protocol::{Answer, ANSWER_LEN, MAX_FRAME};
pub use server::Server;
pub use state::{ServiceConfig, ServiceState};
