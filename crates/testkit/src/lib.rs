//! Helpers for replaymig's integration tests: real `redis-server` processes
//! in temp dirs, child processes killed by PID when a test ends (also on
//! panic), free loopback ports, and a small blocking RESP client.

mod etcd;
mod inproc;
pub mod journal_view;
mod load;
mod metrics;
mod netns;
mod nodecfg;
mod peer;
mod process;
mod redis;
mod resp;
pub mod seqsvc;
mod tmpfs;

pub use etcd::EtcdCluster;
pub use inproc::InProcessProxy;
pub use load::IncrLoad;
pub use metrics::{scrape, Metrics};
pub use netns::{in_netns, is_root, StopNetnsListenersOnDrop, Testbed};
pub use nodecfg::{
    toml_string, write_node_config, write_service_node_config, NodePorts, ServiceSpec,
    REDIS_BGSAVE_DUMP,
};
pub use peer::peer_link_pair;
pub use process::{
    free_port, listener_pids, wait_for_listen, wait_for_listen_by, wait_for_port, ChildGuard,
    StopListenersOnDrop, StopRedisOnDrop,
};
pub use redis::RedisServer;
pub use resp::{encode_command, encode_command_bytes, Reply, RespClient};
pub use tmpfs::{fill_up, Tmpfs};

/// `len` pseudo-random bytes from `seed` (xorshift64): what zstd cannot
/// shrink, like memory pages of random data, and made again identically
/// from the same seed when a test checks them.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    // Never 0, where xorshift stays.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0xff51_afd7_ed55_8ccd);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
