//! Fleet mode: many nodes and services coordinated through etcd (Debian's
//! `etcd-server` 3.4) instead of statically configured pairs.
//!
//! * [`membership`]: each node registers its addresses under a lease, so
//!   the registry lists the nodes that are alive, and peers need no static
//!   configuration.
//! * [`ownership`]: one key per service holds {owner, epoch, hand-over
//!   LSN}, with no lease; a migration's commit is one transaction that
//!   compares the key's revision with what the source read, and an unknown
//!   outcome (a timeout) is settled by pinning the key before anyone acts.
//! * [`routes`]: an owner map kept by a watch of the services' prefix,
//!   re-created from the last revision seen whenever it breaks.
//!
//! [`Etcd`] is the client every part shares: the `etcd-client` crate does
//! not fail over between members by itself, so each request is tried on
//! the members in turn until one answers or its deadline passes.

mod client;
mod error;
pub mod keys;
pub mod membership;
pub mod ownership;
mod registry;
pub mod routes;

pub use client::{Etcd, EtcdOptions};
pub use error::FleetError;
pub use keys::Keys;
pub use membership::{Membership, NodeInfo};
pub use ownership::{CommitOutcome, Owned, OwnerEntry};
pub use registry::Registry;
pub use routes::{MemberMap, OwnerMap, PrefixMap, Versioned};
