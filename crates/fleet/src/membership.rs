//! Node membership: each node's addresses under a key bound to a lease it
//! keeps alive. The key disappears when the node stops keeping it (dies,
//! or loses etcd for longer than the lease), so the registry lists the
//! nodes that are alive, and a node that comes back registers again.
//! Liveness only: membership never decides ownership.

use crate::error::FleetError;
use crate::registry::{parse, Registry, DEFAULT_DEADLINE};
use etcd_client::{GetOptions, PutOptions};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its name.
    pub name: String,
    /// Where its peer listener is (links stay authenticated by the
    /// fleet's secret: an address here grants nothing).
    pub peer: String,
    /// Where its admin endpoint is, if reachable from other nodes.
    #[serde(default)]
    pub admin: Option<String>,
}

/// A node's registration, kept alive by a task until dropped or left.
pub struct Membership {
    task: JoinHandle<()>,
    registered: watch::Receiver<bool>,
    registry: Registry,
    lease: watch::Receiver<i64>,
}

impl Registry {
    /// Registers `info` under a lease of `ttl` and keeps it alive (renewed
    /// every third of it; after a lapse, registered again under a new one).
    pub fn register(&self, info: NodeInfo, ttl: Duration) -> Membership {
        let (registered_tx, registered) = watch::channel(false);
        let (lease_tx, lease) = watch::channel(0i64);
        let registry = self.clone();
        let task = tokio::spawn(async move {
            loop {
                match registry.register_once(&info, ttl, &lease_tx).await {
                    Ok(()) => {
                        let _ = registered_tx.send(true);
                        registry.keep_alive(&lease_tx, ttl).await;
                        tracing::warn!(node = %info.name, "fleet registration lapsed; registering again");
                    }
                    Err(e) => {
                        tracing::warn!(node = %info.name, error = %e, "fleet registration failed; retrying")
                    }
                }
                let _ = registered_tx.send(false);
                tokio::time::sleep(ttl / 4).await;
            }
        });
        Membership {
            task,
            registered,
            registry: self.clone(),
            lease,
        }
    }

    /// One registration: a fresh lease and the node's key under it.
    async fn register_once(
        &self,
        info: &NodeInfo,
        ttl: Duration,
        lease_tx: &watch::Sender<i64>,
    ) -> Result<(), FleetError> {
        let seconds = ttl.as_secs().max(1) as i64;
        let grant = self
            .etcd
            .call("a membership lease", ttl, |mut c| async move {
                c.lease_grant(seconds, None).await
            })
            .await?;
        let id = grant.id();
        let key = self.keys.node(&info.name);
        let value = serde_json::to_vec(info).expect("node info serializes");
        self.etcd
            .call("the membership key", ttl, |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    c.put(key, value, Some(PutOptions::new().with_lease(id)))
                        .await
                }
            })
            .await?;
        let _ = lease_tx.send(id);
        Ok(())
    }

    /// Renews the current lease every third of `ttl` until a renewal finds
    /// it expired or none succeeds for a whole `ttl`.
    async fn keep_alive(&self, lease: &watch::Sender<i64>, ttl: Duration) {
        let id = *lease.borrow();
        loop {
            tokio::time::sleep(ttl / 3).await;
            let renewed = self
                .etcd
                .call("a membership renewal", ttl, |mut c| async move {
                    // Opening the stream reads the first answer: the crate
                    // reports an expired lease (TTL 0) as this error.
                    match c.lease_keep_alive(id).await {
                        Ok(_) => Ok(true),
                        Err(etcd_client::Error::LeaseKeepAliveError(why))
                            if why.contains("not found") =>
                        {
                            Ok(false)
                        }
                        Err(e) => Err(e),
                    }
                })
                .await;
            match renewed {
                Ok(true) => continue,
                // Expired, or etcd gone for a whole TTL: register again.
                _ => return,
            }
        }
    }

    /// The nodes registered now.
    pub async fn members(&self) -> Result<Vec<NodeInfo>, FleetError> {
        let prefix = self.keys.nodes();
        let mut response = self
            .etcd
            .call("the members listing", DEFAULT_DEADLINE, |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        response.take_kvs().iter().map(parse).collect()
    }
}

impl Membership {
    /// Whether the node's key is in the registry now (as far as this node
    /// knows: a renewal lapsed means no).
    pub fn is_registered(&self) -> bool {
        *self.registered.borrow()
    }

    /// Waits until the node is registered, at most `timeout`.
    pub async fn registered_within(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.registered.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Leaves the fleet now: stops renewing and revokes the lease, so the
    /// key goes at once rather than when the lease runs out.
    pub async fn leave(self) -> Result<(), FleetError> {
        self.task.abort();
        let id = *self.lease.borrow();
        if id == 0 {
            return Ok(());
        }
        self.registry
            .etcd
            .call(
                "the membership revoke",
                DEFAULT_DEADLINE,
                |mut c| async move { c.lease_revoke(id).await },
            )
            .await
            .map(|_| ())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}
