//! One client for the whole cluster. The `etcd-client` crate sends a
//! request to one member and, when that member is down, fails at once
//! (and for some seconds after it is back); so each member gets its own
//! connection, a request goes to the member that answered last, and on a
//! failure the next member is tried — until one answers or the request's
//! deadline passes.

use crate::error::FleetError;
use etcd_client::{Client, ConnectOptions};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs of the members (`http://10.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// Bound on one request to one member: a member that lost its quorum
    /// would otherwise hold a write until etcd's own timeout.
    pub request_timeout: Duration,
    /// Bound on connecting to one member.
    pub connect_timeout: Duration,
}

impl EtcdOptions {
    /// The defaults for `endpoints`: 1 s per request, 500 ms per connect.
    pub fn new(endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
        }
    }
}

/// Pause after every member failed once, before the next round.
const ROUND_BACKOFF: Duration = Duration::from_millis(50);

/// The cluster, as one client that fails over between members (cheap to
/// clone: shared).
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    options: EtcdOptions,
    /// Per member, its connection once made (dropped after a failure, so
    /// the next use connects afresh).
    members: Vec<Mutex<Option<Client>>>,
    /// The member that answered last.
    current: AtomicUsize,
}

impl Etcd {
    /// A client for the cluster at `options.endpoints` (connections are
    /// made on first use).
    pub fn new(options: EtcdOptions) -> Result<Etcd, FleetError> {
        if options.endpoints.is_empty() {
            return Err(FleetError::Config("no etcd endpoints".into()));
        }
        let members = options.endpoints.iter().map(|_| Mutex::new(None)).collect();
        Ok(Etcd {
            inner: Arc::new(Inner {
                options,
                members,
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.options.endpoints
    }

    /// Runs `op` on a member, failing over to the next one on an error,
    /// until one succeeds or `deadline` has passed. `op` may run more than
    /// once, on different members: a write must be one that stays correct
    /// when repeated (the ownership commit's compare-and-swap is).
    pub async fn call<T, F, Fut>(
        &self,
        what: &str,
        deadline: Duration,
        mut op: F,
    ) -> Result<T, FleetError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let n = self.inner.members.len();
        let mut failures_in_round = 0;
        let mut maybe_applied = false;
        loop {
            let i = self.inner.current.load(Ordering::Acquire) % n;
            let failure = match self.member(i).await {
                // Bounded here too: a member behind a silent drop would
                // otherwise hold a streaming call (its first answer) until
                // TCP gives up.
                Ok(client) => match tokio::time::timeout(self.op_bound(), op(client)).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(e)) => {
                        maybe_applied |= crate::error::maybe_applied(&e);
                        *self.inner.members[i].lock().await = None;
                        e.to_string()
                    }
                    Err(_) => {
                        maybe_applied = true;
                        *self.inner.members[i].lock().await = None;
                        format!("no answer within {:?}", self.op_bound())
                    }
                },
                // Never connected: nothing was sent.
                Err(e) => e.to_string(),
            };
            let last = format!("{}: {failure}", self.inner.options.endpoints[i]);
            tracing::debug!(what, error = %last, "etcd member failed; trying the next");
            let _ = self.inner.current.compare_exchange(
                i,
                (i + 1) % n,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if started.elapsed() >= deadline {
                return Err(FleetError::Unreachable {
                    what: what.to_string(),
                    waited_ms: started.elapsed().as_millis() as u64,
                    last,
                    maybe_applied,
                });
            }
            failures_in_round += 1;
            if failures_in_round >= n {
                failures_in_round = 0;
                tokio::time::sleep(ROUND_BACKOFF).await;
            }
        }
    }

    /// Bound on one try on one member, beyond the request timeout the
    /// connection applies to unary calls.
    fn op_bound(&self) -> Duration {
        self.inner.options.request_timeout * 2
    }

    /// Member `i`'s connection, made if there is none.
    async fn member(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let mut slot = self.inner.members[i].lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let options = &self.inner.options;
        let connect = ConnectOptions::new()
            .with_timeout(options.request_timeout)
            .with_connect_timeout(options.connect_timeout)
            // A member without a leader refuses at once instead of holding
            // the request until its timeout.
            .with_require_leader(true)
            // A connection whose peer went silent (a partition) fails its
            // streams (watches, lease renewals) within seconds, so they are
            // re-created on a member that answers.
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = Client::connect([options.endpoints[i].as_str()], Some(connect)).await?;
        *slot = Some(client.clone());
        Ok(client)
    }
}
