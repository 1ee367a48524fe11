//! Node agent configurations for tests: two nodes on loopback (or in a
//! testbed), one redis service, the exec snapshot driver.

use std::net::IpAddr;
use std::path::Path;

/// Ports (and address) of one test node.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    /// The node's address (127.0.0.1 on loopback).
    pub ip: IpAddr,
    /// Peer link.
    pub peer: u16,
    /// Admin endpoint.
    pub admin: u16,
    /// Client-facing proxy.
    pub listen: u16,
    /// The node's redis.
    pub backend: u16,
}

impl NodePorts {
    /// Fresh loopback ports.
    pub fn loopback() -> NodePorts {
        NodePorts {
            ip: [127, 0, 0, 1].into(),
            peer: crate::free_port(),
            admin: crate::free_port(),
            listen: crate::free_port(),
            backend: crate::free_port(),
        }
    }
}

/// The exec driver's dump for Redis: `BGSAVE` fixes the snapshot point at
/// its fork (so client input is held only that long); its child writes
/// the RDB straight into the snapshot directory (`CONFIG SET dir`, which
/// needs `--enable-protected-configs local` in the start command), so the
/// node streams it while it is written; then wait for the child and put
/// the directory back.
pub const REDIS_BGSAVE_DUMP: &str = r#"dump = [
  "printf 'CONFIG SET dir %s\nBGSAVE\n' {snapshot_dir} | redis-cli -p {port} | tr -d '\n' | grep -q '^OKBackground saving started$'",
  "while redis-cli -p {port} INFO persistence | grep -q 'rdb_bgsave_in_progress:1'; do sleep 0.01; done; ok=$(redis-cli -p {port} INFO persistence | grep -c 'rdb_last_bgsave_status:ok'); redis-cli -p {port} CONFIG SET dir {data_dir} >/dev/null; [ \"$ok\" = 1 ]",
]
point_fixed_after = 1"#;

/// Writes `dir/NAME.toml` for node `name` (peer `other`), redis with the
/// exec driver; `restore` overrides the restore commands (fault tests).
/// Returns the path. The secret file is `dir/secret` unless `secret_file`
/// names another.
pub fn write_node_config(
    dir: &Path,
    name: &str,
    me: &NodePorts,
    other: (&str, &NodePorts),
    owner: &str,
    secret_file: Option<&Path>,
    restore: Option<&str>,
) -> std::path::PathBuf {
    let data = dir.join(format!("{name}-data"));
    std::fs::create_dir_all(&data).expect("data dir");
    let secret = secret_file.map_or_else(|| dir.join("secret"), Path::to_path_buf);
    let restore = restore.unwrap_or(r#"["cp {snapshot_dir}/dump.rdb {data_dir}/dump.rdb"]"#);
    let text = format!(
        r#"name = "{name}"
peer_listen = "{ip}:{peer}"
admin_listen = "127.0.0.1:{admin}"
secret_file = "{secret}"
work_dir = "{work}"
[peers]
{other_name} = "{other_ip}:{other_peer}"
[[service]]
name = "redis"
listen = "{ip}:{listen}"
backend = "127.0.0.1:{backend}"
journal = "{journal}"
owner = "{owner}"
data_dir = "{data}"
# The tests' redis clients keep no per-connection state.
connection_state = "none"
start = "redis-server --port {{port}} --bind 127.0.0.1 --dir {{data_dir}} --save '' --appendonly no --enable-protected-configs local"
ready = "redis-cli -p {{port}} PING | grep -q PONG"
[service.snapshot]
driver = "exec"
{dump}
restore = {restore}
"#,
        ip = me.ip,
        peer = me.peer,
        admin = me.admin,
        secret = secret.display(),
        work = dir.join(format!("{name}-work")).display(),
        other_name = other.0,
        other_ip = other.1.ip,
        other_peer = other.1.peer,
        listen = me.listen,
        backend = me.backend,
        journal = dir.join(format!("{name}-journal")).display(),
        data = data.display(),
        dump = REDIS_BGSAVE_DUMP,
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Any TCP service, for [`write_service_node_config`].
#[derive(Debug, Clone, Default)]
pub struct ServiceSpec<'a> {
    /// The service's name (the same on both nodes; `replaymig migrate NAME`).
    pub name: &'a str,
    /// The `start` command (placeholders `{port}`, `{backend}`,
    /// `{data_dir}`, substituted shell-quoted by the node).
    pub start: &'a str,
    /// The `ready` command; `None`: the backend accepting a connection.
    pub ready: Option<&'a str>,
    /// The body of the `[service.snapshot]` table, TOML lines, e.g.
    /// `driver = "none"` or `driver = "exec"` with `dump` and `restore`.
    pub snapshot: &'a str,
    /// `journal_responses` (`off`, `digest`, `full`); `None`: the default.
    pub journal_responses: Option<&'a str>,
    /// `quiet_ms`; `None`: the default.
    pub quiet_ms: Option<u64>,
    /// `connection_state` (`none`, `unknown`); `None`: the default
    /// (`unknown`).
    pub connection_state: Option<&'a str>,
}

/// A TOML basic string holding `s`.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Like [`write_node_config`], for an arbitrary service (`spec`): writes
/// `dir/NAME.toml` for node `name` (peer `other`), its data dir
/// `dir/NAME-data`, work dir `dir/NAME-work`, journal `dir/NAME-journal`
/// and the secret file `dir/secret` (which the caller writes). Returns the
/// path.
pub fn write_service_node_config(
    dir: &Path,
    name: &str,
    me: &NodePorts,
    other: (&str, &NodePorts),
    owner: &str,
    spec: &ServiceSpec<'_>,
) -> std::path::PathBuf {
    let data = dir.join(format!("{name}-data"));
    std::fs::create_dir_all(&data).expect("data dir");
    let mut optional = String::new();
    if let Some(ready) = spec.ready {
        optional.push_str(&format!("ready = {}\n", toml_string(ready)));
    }
    if let Some(answers) = spec.journal_responses {
        optional.push_str(&format!("journal_responses = {}\n", toml_string(answers)));
    }
    if let Some(quiet) = spec.quiet_ms {
        optional.push_str(&format!("quiet_ms = {quiet}\n"));
    }
    if let Some(state) = spec.connection_state {
        optional.push_str(&format!("connection_state = {}\n", toml_string(state)));
    }
    let text = format!(
        r#"name = {node}
peer_listen = "{ip}:{peer}"
admin_listen = "127.0.0.1:{admin}"
secret_file = {secret}
work_dir = {work}
[peers]
{other_name} = "{other_ip}:{other_peer}"
[[service]]
name = {service}
listen = "{ip}:{listen}"
backend = "127.0.0.1:{backend}"
journal = {journal}
owner = {owner}
data_dir = {data}
start = {start}
{optional}[service.snapshot]
{snapshot}
"#,
        node = toml_string(name),
        ip = me.ip,
        peer = me.peer,
        admin = me.admin,
        secret = toml_string(&dir.join("secret").display().to_string()),
        work = toml_string(&dir.join(format!("{name}-work")).display().to_string()),
        other_name = other.0,
        other_ip = other.1.ip,
        other_peer = other.1.peer,
        service = toml_string(spec.name),
        listen = me.listen,
        backend = me.backend,
        journal = toml_string(&dir.join(format!("{name}-journal")).display().to_string()),
        owner = toml_string(owner),
        data = toml_string(&data.display().to_string()),
        start = toml_string(spec.start),
        snapshot = spec.snapshot,
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape_what_they_must() {
        assert_eq!(toml_string("plain"), "\"plain\"");
        assert_eq!(
            toml_string(r#"printf 'a\n' "b""#),
            r#""printf 'a\\n' \"b\"""#
        );
        assert_eq!(toml_string("a\nb\u{1}"), "\"a\\nb\\u0001\"");
    }
}
