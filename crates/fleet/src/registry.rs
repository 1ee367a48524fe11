//! The registry: a cluster client and the key layout it uses.

use crate::client::Etcd;
use crate::error::FleetError;
use crate::keys::Keys;
use etcd_client::KeyValue;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Bound on a registry read or a registration step when the caller has no
/// deadline of its own: a few elections' worth.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// One fleet's registry: an etcd cluster and the prefix the fleet's keys
/// live under (cheap to clone).
#[derive(Clone)]
pub struct Registry {
    /// The cluster.
    pub etcd: Etcd,
    /// Where the fleet's keys are.
    pub keys: Keys,
}

impl Registry {
    /// The fleet under `prefix` on `etcd`.
    pub fn new(etcd: Etcd, prefix: &str) -> Registry {
        Registry {
            etcd,
            keys: Keys::new(prefix),
        }
    }
}

/// A registry value, parsed; a key written by something else is an error
/// naming the key, never a default.
pub(crate) fn parse<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, FleetError> {
    serde_json::from_slice(kv.value()).map_err(|e| FleetError::Malformed {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })
}
