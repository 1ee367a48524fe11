//! Service ownership in the registry: one key per service holding
//! {owner, epoch, hand-over LSN}, with no lease (it outlives every node).
//!
//! A migration's commit is one transaction: *if the key's revision is
//! still the one the source read, write the new owner and epoch*. Retrying
//! it is safe — if an earlier try applied, the compare fails and the key
//! already says the new owner. A try that timed out may still apply later
//! (etcd may have accepted the proposal), so "timed out" is not "failed":
//! before the source serves again it settles the outcome with
//! [`Registry::pin`], which rewrites the key as it was read under the same
//! compare — once that succeeds, the commit can never apply; if it fails,
//! the key says who won.

use crate::error::FleetError;
use crate::registry::{parse, Registry};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the registry says about one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerEntry {
    /// The node that owns the service.
    pub owner: String,
    /// The epoch it owns it under: the fencing token every node checks on
    /// tunnels, log batches and hand-over messages.
    pub epoch: u64,
    /// The journal LSN the service was handed over at (0: never moved).
    #[serde(default)]
    pub handover_lsn: u64,
}

/// An entry with the revision of the key it was read from — what a commit
/// compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// The entry.
    pub entry: OwnerEntry,
    /// The key's modification revision when read.
    pub revision: i64,
}

/// How a commit (or a [`Registry::pin`]) ended; all are definite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The key says the new owner and epoch: the hand-over is committed.
    Committed,
    /// The key moved past what was read to a later epoch under another
    /// entry. Only the owner that was read could move it off that revision,
    /// so this commit applied (its answer was lost) and later hand-overs
    /// built on it: the caller owns nothing any more.
    Superseded {
        /// What the key holds now.
        now: Owned,
    },
    /// The key does not say the new owner and never will by this commit:
    /// it had moved on from what was read, or it was pinned as read.
    NotCommitted {
        /// What the key holds now.
        now: Option<Owned>,
    },
}

impl Registry {
    /// The service's entry (a linearizable read), or `None` if it has none.
    pub async fn owner(
        &self,
        service: &str,
        deadline: Duration,
    ) -> Result<Option<Owned>, FleetError> {
        let key = self.keys.service(service);
        let mut response = self
            .etcd
            .call("the ownership read", deadline, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        response.take_kvs().first().map(owned).transpose()
    }

    /// Every service's entry, and the store revision they were read at.
    pub async fn owners(
        &self,
        deadline: Duration,
    ) -> Result<(Vec<(String, Owned)>, i64), FleetError> {
        let prefix = self.keys.services();
        let mut response = self
            .etcd
            .call("the services listing", deadline, |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut all = Vec::new();
        for kv in response.take_kvs() {
            if let Some(name) = crate::Keys::name_in(&prefix, kv.key()) {
                all.push((name.to_string(), owned(&kv)?));
            }
        }
        Ok((all, revision))
    }

    /// Creates the service's entry as `initial` if it has none; returns
    /// what the key holds either way (a node that starts up with a service
    /// in its configuration claims it only if nobody did before).
    pub async fn claim(
        &self,
        service: &str,
        initial: &OwnerEntry,
        deadline: Duration,
    ) -> Result<Owned, FleetError> {
        let key = self.keys.service(service);
        let absent = Compare::version(key.clone(), CompareOp::Equal, 0);
        let response = self
            .put_if(&key, absent, initial, "the ownership claim", deadline)
            .await?;
        if response.succeeded() {
            let revision = response.header().map_or(0, |h| h.revision());
            return Ok(Owned {
                entry: initial.clone(),
                revision,
            });
        }
        match got(&response)? {
            Some(now) => Ok(now),
            // Deleted between the compare and the read (by hand): one more
            // try, not a loop.
            None => Err(FleetError::Malformed {
                key: self.keys.service(service),
                reason: "deleted while being claimed; start again".into(),
            }),
        }
    }

    /// The hand-over's commit point: `next` replaces `read` if the key is
    /// still at `read`'s revision. `Err(Unreachable)` means the outcome is
    /// unknown — settle it with [`Registry::pin`] before acting on it.
    pub async fn commit(
        &self,
        service: &str,
        read: &Owned,
        next: &OwnerEntry,
        deadline: Duration,
    ) -> Result<CommitOutcome, FleetError> {
        let what = "the ownership commit";
        Ok(
            match self.swap_if_at(service, read, next, what, deadline).await? {
                Swap::Written => CommitOutcome::Committed,
                Swap::Moved(now) => moved(read, next, now),
            },
        )
    }

    /// Settles a commit of `next` over `read` whose outcome is unknown:
    /// rewrites `read`'s entry under the same compare, so the commit can no
    /// longer apply; or finds that it did.
    pub async fn pin(
        &self,
        service: &str,
        read: &Owned,
        next: &OwnerEntry,
        deadline: Duration,
    ) -> Result<CommitOutcome, FleetError> {
        let what = "the ownership pin";
        Ok(
            match self
                .swap_if_at(service, read, &read.entry, what, deadline)
                .await?
            {
                // Rewritten as read: the commit's compare can never hold now.
                Swap::Written => CommitOutcome::NotCommitted {
                    now: self.owner(service, deadline).await?,
                },
                Swap::Moved(now) => moved(read, next, now),
            },
        )
    }

    /// Writes `write` if the key is at `read.revision`; otherwise reads it.
    async fn swap_if_at(
        &self,
        service: &str,
        read: &Owned,
        write: &OwnerEntry,
        what: &str,
        deadline: Duration,
    ) -> Result<Swap, FleetError> {
        let key = self.keys.service(service);
        let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, read.revision);
        let response = self.put_if(&key, unchanged, write, what, deadline).await?;
        if response.succeeded() {
            Ok(Swap::Written)
        } else {
            Ok(Swap::Moved(got(&response)?))
        }
    }
}

impl Registry {
    /// One transaction on `key`: if `compare` holds, write `entry`;
    /// otherwise read the key (in the same revision).
    async fn put_if(
        &self,
        key: &str,
        compare: Compare,
        entry: &OwnerEntry,
        what: &str,
        deadline: Duration,
    ) -> Result<TxnResponse, FleetError> {
        let value = to_json(entry);
        self.etcd
            .call(what, deadline, |mut c| {
                let txn = Txn::new()
                    .when([compare.clone()])
                    .and_then([TxnOp::put(key, value.clone(), None)])
                    .or_else([TxnOp::get(key, None)]);
                async move { c.txn(txn).await }
            })
            .await
    }
}

/// What a compare-and-swap on a service's key did.
enum Swap {
    /// The key was at the expected revision and now holds the write.
    Written,
    /// The key had moved on; what it holds.
    Moved(Option<Owned>),
}

/// What it means that the key moved off `read` before a commit of `next`
/// (or its pin) could compare: an earlier try of the commit applied (the
/// key holds `next`, or a later epoch built on it), or the key was pinned
/// as read (or edited by hand).
fn moved(read: &Owned, next: &OwnerEntry, now: Option<Owned>) -> CommitOutcome {
    match now {
        Some(now) if now.entry == *next => CommitOutcome::Committed,
        Some(now) if now.entry.epoch > read.entry.epoch && now.entry != read.entry => {
            CommitOutcome::Superseded { now }
        }
        now => CommitOutcome::NotCommitted { now },
    }
}

fn to_json(entry: &OwnerEntry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("an entry serializes")
}

fn owned(kv: &etcd_client::KeyValue) -> Result<Owned, FleetError> {
    Ok(Owned {
        entry: parse(kv)?,
        revision: kv.mod_revision(),
    })
}

/// The entry an `or_else` get of a transaction returned.
fn got(response: &TxnResponse) -> Result<Option<Owned>, FleetError> {
    for op in response.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            return get.kvs().first().map(owned).transpose();
        }
    }
    Ok(None)
}
