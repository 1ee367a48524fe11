//! Where things live in etcd: everything under one prefix, so several
//! fleets (or test runs) can share a cluster.

/// The key layout under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The prefix of every node's registration.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// Node `name`'s registration (under its lease).
    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }

    /// The prefix of every service's ownership key.
    pub fn services(&self) -> String {
        format!("{}/services/", self.prefix)
    }

    /// Service `name`'s ownership key (no lease: it outlives every node).
    pub fn service(&self, name: &str) -> String {
        format!("{}{name}", self.services())
    }

    /// The name a key under `prefix` stands for (`None` for other keys).
    pub fn name_in<'k>(prefix: &str, key: &'k [u8]) -> Option<&'k str> {
        std::str::from_utf8(key).ok()?.strip_prefix(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_under_one_prefix() {
        let keys = Keys::new("/replaymig/");
        assert_eq!(keys.node("a"), "/replaymig/nodes/a");
        assert_eq!(keys.service("redis"), "/replaymig/services/redis");
        assert_eq!(
            Keys::name_in(&keys.services(), b"/replaymig/services/redis"),
            Some("redis")
        );
        assert_eq!(Keys::name_in(&keys.services(), b"/other/x"), None);
    }
}
