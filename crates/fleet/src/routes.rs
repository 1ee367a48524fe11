//! The maps every node keeps of the registry — services and their owners
//! ([`OwnerMap`]), nodes and their addresses ([`MemberMap`]): a listing of
//! the prefix followed by a watch from the revision after it. The `etcd-client` crate does not resume a watch: when the
//! stream breaks (its member died, lost its leader, or the watch was
//! cancelled) it is created again from the last revision seen + 1, on
//! whichever member answers; if that revision was compacted away, the map
//! is listed afresh. Readers never wait on etcd: they see the last map.

use crate::membership::NodeInfo;
use crate::ownership::{Owned, OwnerEntry};
use crate::registry::{parse, Registry};
use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long one listing or watch creation may take before it is tried
/// again (the task never gives up).
const STEP_DEADLINE: Duration = Duration::from_secs(5);
/// Pause before trying again after a failure.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A value under a key, with the key's modification revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The key's modification revision.
    pub revision: i64,
}

/// Every key under a prefix, by the name after the prefix, as the registry
/// last said (cheap to clone; the watch stops with the last clone).
pub struct PrefixMap<T> {
    entries: Arc<RwLock<HashMap<String, Versioned<T>>>>,
    /// The store revision the map reflects (0 before the first listing).
    revision: watch::Receiver<i64>,
    _task: Arc<AbortOnDrop>,
}

impl<T> Clone for PrefixMap<T> {
    fn clone(&self) -> Self {
        PrefixMap {
            entries: self.entries.clone(),
            revision: self.revision.clone(),
            _task: self._task.clone(),
        }
    }
}

/// Services and their owners.
pub type OwnerMap = PrefixMap<OwnerEntry>;

/// Nodes that are alive and their addresses.
pub type MemberMap = PrefixMap<NodeInfo>;

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Registry {
    /// Starts keeping a map of the services' owners.
    pub fn owner_map(&self) -> OwnerMap {
        PrefixMap::follow(self.clone(), self.keys.services())
    }

    /// Starts keeping a map of the registered nodes.
    pub fn member_map(&self) -> MemberMap {
        PrefixMap::follow(self.clone(), self.keys.nodes())
    }
}

impl OwnerMap {
    /// The service's entry, as last seen.
    pub fn owner(&self, service: &str) -> Option<Owned> {
        self.get(service).map(|v| Owned {
            entry: v.value,
            revision: v.revision,
        })
    }
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> PrefixMap<T> {
    fn follow(registry: Registry, prefix: String) -> PrefixMap<T> {
        let entries = Arc::new(RwLock::new(HashMap::new()));
        let (revision_tx, revision) = watch::channel(0i64);
        let task = tokio::spawn(follow(registry, prefix, entries.clone(), revision_tx));
        PrefixMap {
            entries,
            revision,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }
}

impl<T: Clone> PrefixMap<T> {
    /// The entry named `name`, as last seen.
    pub fn get(&self, name: &str) -> Option<Versioned<T>> {
        self.entries.read().expect("poisoned").get(name).cloned()
    }

    /// Every entry, as last seen.
    pub fn all(&self) -> HashMap<String, Versioned<T>> {
        self.entries.read().expect("poisoned").clone()
    }

    /// A receiver that wakes whenever the map changes (its value: the
    /// store revision the map reflects).
    pub fn changes(&self) -> watch::Receiver<i64> {
        self.revision.clone()
    }

    /// The store revision the map reflects (0: not listed yet).
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until entry `name` satisfies `ready`, at most `timeout`; the
    /// entry then, or `None` on timeout.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        ready: impl Fn(&Versioned<T>) -> bool,
    ) -> Option<Versioned<T>> {
        let mut changes = self.revision.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(entry) = self.get(name).filter(|e| ready(e)) {
                    return entry;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .ok()
    }

    /// Waits until the map has been listed once, at most `timeout`.
    pub async fn listed_within(&self, timeout: Duration) -> bool {
        let mut changes = self.revision.clone();
        tokio::time::timeout(timeout, changes.wait_for(|r| *r > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

type Entries<T> = RwLock<HashMap<String, Versioned<T>>>;

fn versioned<T: DeserializeOwned>(kv: &KeyValue) -> Result<Versioned<T>, crate::FleetError> {
    Ok(Versioned {
        value: parse(kv)?,
        revision: kv.mod_revision(),
    })
}

/// Lists `prefix`, then watches it from the listing's revision on; again
/// after any break.
async fn follow<T: DeserializeOwned>(
    registry: Registry,
    prefix: String,
    entries: Arc<Entries<T>>,
    revision: watch::Sender<i64>,
) {
    loop {
        let listing = registry
            .etcd
            .call("a registry listing", STEP_DEADLINE, |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await;
        let mut listing = match listing {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "registry map: listing failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let at = listing.header().map_or(0, |h| h.revision());
        let mut listed = HashMap::new();
        for kv in listing.take_kvs() {
            let Some(name) = crate::Keys::name_in(&prefix, kv.key()) else {
                continue;
            };
            match versioned(&kv) {
                Ok(v) => {
                    listed.insert(name.to_string(), v);
                }
                Err(e) => tracing::warn!(error = %e, "registry map: ignoring a malformed entry"),
            }
        }
        *entries.write().expect("poisoned") = listed;
        revision.send_replace(at);
        // Watch (and re-watch) until the history we need is gone.
        // The last revision whose events are all applied: a new watch
        // resumes after it (not after a response header's revision, which
        // a watch's first answer and its catch-up batches put ahead of the
        // events still to come).
        let mut applied = at;
        loop {
            let seen = applied;
            match watch_from(&registry, &prefix, &mut applied, &entries, &revision).await {
                Ok(WatchEnd::Compacted) => break,
                Ok(WatchEnd::Broken(why)) | Err(why) => {
                    tracing::info!(%prefix, from = seen + 1, reason = %why, "registry map: watch broke; watching again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

/// Why a watch ended.
enum WatchEnd {
    /// The revision to resume from was compacted: list again.
    Compacted,
    /// The stream ended or failed (why); resume from the last revision.
    Broken(String),
}

/// One watch of `prefix` from `applied + 1`, applied to `entries` until it
/// ends; `applied` follows the events (and progress notifications).
async fn watch_from<T: DeserializeOwned>(
    registry: &Registry,
    prefix: &str,
    applied: &mut i64,
    entries: &Entries<T>,
    revision: &watch::Sender<i64>,
) -> Result<WatchEnd, String> {
    let seen = *applied;
    let mut stream = registry
        .etcd
        .call("a registry watch", STEP_DEADLINE, |mut c| {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(seen + 1)
                .with_progress_notify();
            let prefix = prefix.to_string();
            async move { c.watch(prefix, Some(options)).await }
        })
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(WatchEnd::Broken("the stream ended".into())),
            Err(e) => return Ok(WatchEnd::Broken(e.to_string())),
        };
        if response.compact_revision() > 0 {
            return Ok(WatchEnd::Compacted);
        }
        if response.canceled() {
            return Ok(WatchEnd::Broken(format!(
                "cancelled: {}",
                response.cancel_reason()
            )));
        }
        let mut map = entries.write().expect("poisoned");
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(name) = crate::Keys::name_in(prefix, kv.key()) else {
                continue;
            };
            match event.event_type() {
                EventType::Put => match versioned(kv) {
                    Ok(v) => {
                        map.insert(name.to_string(), v);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "registry map: ignoring a malformed entry")
                    }
                },
                EventType::Delete => {
                    map.remove(name);
                }
            }
        }
        drop(map);
        let at = response.header().map_or(0, |h| h.revision());
        match response
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .map(|kv| kv.mod_revision())
            .max()
        {
            Some(last) => *applied = (*applied).max(last),
            // A progress notification: everything up to its revision was
            // sent. (A created answer says nothing of what follows.)
            None if !response.created() => *applied = (*applied).max(at),
            None => {}
        }
        // Every response wakes the readers if it changed the map: the
        // watch's first answer may already carry the revision of events
        // that come in the next one.
        let changed = !response.events().is_empty();
        revision.send_if_modified(|r| {
            let newer = at > *r;
            *r = (*r).max(at);
            newer || changed
        });
    }
}
