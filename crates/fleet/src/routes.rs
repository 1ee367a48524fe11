//! The owner map every node keeps: each service's current entry, from a
//! listing of the services' prefix followed by a watch from the revision
//! after it. The `etcd-client` crate does not resume a watch: when the
//! stream breaks (its member died, lost its leader, or the watch was
//! cancelled) it is created again from the last revision seen + 1, on
//! whichever member answers; if that revision was compacted away, the map
//! is listed afresh. Readers never wait on etcd: they see the last map.

use crate::ownership::Owned;
use crate::registry::{parse, Registry};
use etcd_client::{EventType, WatchOptions};
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

/// Services and their owners, as the registry last said (cheap to clone;
/// the watch stops with the last clone).
#[derive(Clone)]
pub struct OwnerMap {
    owners: Arc<RwLock<HashMap<String, Owned>>>,
    /// The store revision the map reflects (0 before the first listing).
    revision: watch::Receiver<i64>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Registry {
    /// Starts keeping an owner map.
    pub fn owner_map(&self) -> OwnerMap {
        let owners = Arc::new(RwLock::new(HashMap::new()));
        let (revision_tx, revision) = watch::channel(0i64);
        let task = tokio::spawn(follow(self.clone(), owners.clone(), revision_tx));
        OwnerMap {
            owners,
            revision,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }
}

impl OwnerMap {
    /// The service's entry, as last seen.
    pub fn get(&self, service: &str) -> Option<Owned> {
        self.owners.read().expect("poisoned").get(service).cloned()
    }

    /// Every service's entry, as last seen.
    pub fn all(&self) -> HashMap<String, Owned> {
        self.owners.read().expect("poisoned").clone()
    }

    /// The store revision the map reflects.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the service's entry satisfies `ready`, at most
    /// `timeout`; the entry then, or `None` on timeout.
    pub async fn wait_for(
        &self,
        service: &str,
        timeout: Duration,
        ready: impl Fn(&Owned) -> bool,
    ) -> Option<Owned> {
        let mut changes = self.revision.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(owned) = self.get(service).filter(|o| ready(o)) {
                    return owned;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .ok()
    }
}

/// Lists, then watches from the listing's revision on; again after any
/// break.
async fn follow(
    registry: Registry,
    owners: Arc<RwLock<HashMap<String, Owned>>>,
    revision: watch::Sender<i64>,
) {
    let prefix = registry.keys.services();
    loop {
        let (listed, at) = match registry.owners(STEP_DEADLINE).await {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(error = %e, "owner map: listing failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        *owners.write().expect("poisoned") = listed.into_iter().collect();
        revision.send_replace(at);
        // Watch (and re-watch) until the history we need is gone.
        let mut seen = at;
        loop {
            match watch_from(&registry, &prefix, seen, &owners, &revision).await {
                Ok(WatchEnd::Compacted) => break,
                Ok(WatchEnd::Broken(last)) | Err(last) => {
                    seen = *revision.borrow();
                    tracing::info!(from = seen + 1, reason = %last, "owner map: watch broke; watching again");
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

/// One watch of `prefix` from `seen + 1`, applied to `owners` until it ends.
async fn watch_from(
    registry: &Registry,
    prefix: &str,
    seen: i64,
    owners: &RwLock<HashMap<String, Owned>>,
    revision: &watch::Sender<i64>,
) -> Result<WatchEnd, String> {
    let mut stream = registry
        .etcd
        .call("the owner watch", STEP_DEADLINE, |mut c| {
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
        let mut map = owners.write().expect("poisoned");
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(name) = crate::Keys::name_in(prefix, kv.key()) else {
                continue;
            };
            match event.event_type() {
                EventType::Put => match parse(kv) {
                    Ok(entry) => {
                        map.insert(
                            name.to_string(),
                            Owned {
                                entry,
                                revision: kv.mod_revision(),
                            },
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "owner map: ignoring a malformed entry"),
                },
                EventType::Delete => {
                    map.remove(name);
                }
            }
        }
        drop(map);
        // Every response wakes the readers if it changed the map: the
        // watch's first answer may already carry the revision of events
        // that come in the next one.
        let at = response.header().map_or(0, |h| h.revision());
        let changed = !response.events().is_empty();
        revision.send_if_modified(|r| {
            let newer = at > *r;
            *r = (*r).max(at);
            newer || changed
        });
    }
}
