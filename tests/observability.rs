//! The metrics as an operator sees them: two real node agents (the binary)
//! on loopback, a real Prometheus (Debian's, installed by tools/setup.sh)
//! scraping both during a replay migration under client load, the Grafana
//! dashboard checked against Grafana's published schema
//! (tools/validate-grafana.sh), and `replaymig status` against the metrics.
//!
//! Checks: every metric name a dashboard expression uses is exported by the
//! two nodes; every exported family is documented in docs/metrics.md;
//! Prometheus's HTTP API shows the migration's phases, a non-zero snapshot
//! byte count and the interruption the report gave; `status --json` says
//! what the metrics say.

mod common;

use common::{replaymig, scrape, start_node, Metrics, StopRedisOnDrop};
use replaymig_testkit::{
    free_port, wait_for_listen, write_node_config, ChildGuard, NodePorts, Reply, RespClient,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The repository root (the test runs from the package root, which is it).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Family of a sample name: without `_bucket`/`_sum`/`_count` when the
/// page declares the base as a histogram.
fn families(page: &Metrics, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    page.0
        .keys()
        .map(|series| {
            let name = series.split('{').next().unwrap().to_string();
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if histograms.contains(base) {
                        return base.to_string();
                    }
                }
            }
            name
        })
        .collect()
}

/// Histogram families declared by `# TYPE name histogram` on a page.
fn histogram_families(addr: SocketAddr) -> BTreeSet<String> {
    let body = http_get(addr, "/metrics");
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .map(str::to_string)
        .collect()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split_once("\r\n\r\n")
        .map_or(body.clone(), |(_, b)| b.to_string())
}

/// A Prometheus on loopback with a temporary config and data dir.
struct Prometheus {
    _guard: ChildGuard,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n\
                 scrape_configs:\n  - job_name: replaymig\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed by tools/setup.sh");
        let guard = ChildGuard::new("prometheus", child);
        wait_for_listen(addr.port(), Duration::from_secs(30)).unwrap();
        // It listens before its storage is open (503 until then).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_get(addr, "/-/ready").contains("Ready") {
            assert!(Instant::now() < deadline, "prometheus never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        Prometheus {
            _guard: guard,
            addr,
        }
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = http_get(self.addr, &format!("/api/v1/query?query={encoded}"));
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("bad answer to {promql}: {e}: {body}"));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `promql` (bounded) until `ok` holds for its result.
    fn wait(
        &self,
        promql: &str,
        ok: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = self.query(promql);
            if ok(&result) {
                return result;
            }
            assert!(Instant::now() < deadline, "{promql}: {result:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

fn status(admin: u16) -> serde_json::Value {
    let out = replaymig()
        .args(["status", "--json", "--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "status failed");
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
}

#[test]
fn prometheus_sees_a_migration_and_the_dashboard_only_uses_exported_metrics() {
    // The dashboard first: valid against Grafana's schema, and its names.
    let names_file = TempDir::new().unwrap();
    let names_path = names_file.path().join("names.txt");
    let out = Command::new("bash")
        .arg(repo().join("tools/validate-grafana.sh"))
        .arg(&names_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validate-grafana: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dashboard_names: BTreeSet<String> = std::fs::read_to_string(&names_path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(dashboard_names.len() > 10, "{dashboard_names:?}");

    // Two nodes with metrics, Prometheus scraping both.
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("secret"), "observability-secret-0123456789").unwrap();
    let (pa, pb) = (NodePorts::loopback(), NodePorts::loopback());
    let ca = write_node_config(dir.path(), "a", &pa, ("b", &pb), "a", None, None);
    let cb = write_node_config(dir.path(), "b", &pb, ("a", &pa), "a", None, None);
    // Declared before the nodes, so dropped after them.
    let _redis = StopRedisOnDrop(vec![pa.backend, pb.backend]);
    let ma: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mb: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _a = start_node(
        dir.path(),
        "a",
        &ca,
        pa.admin,
        &[],
        &["--metrics", &ma.to_string()],
    );
    let _b = start_node(
        dir.path(),
        "b",
        &cb,
        pb.admin,
        &[],
        &["--metrics", &mb.to_string()],
    );
    let prometheus = Prometheus::start(dir.path(), &[ma, mb]);
    prometheus.wait("up", |r| r.len() == 2 && r.iter().all(|s| value(s) == 1.0));

    // Client load on a through the migration: sequential INCRs, each checked.
    let stop = Arc::new(AtomicBool::new(false));
    let listen: SocketAddr = format!("{}:{}", pa.ip, pa.listen).parse().unwrap();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = RespClient::connect(listen).unwrap();
            let mut n = 0i64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                n += 1;
                assert_eq!(c.cmd(&["INCR", "obs"]).unwrap(), Reply::Int(n));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = replaymig()
        .args(["migrate", "redis", "--to", "b", "--json"])
        .args(["--admin", &format!("127.0.0.1:{}", pa.admin)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let acked = load.join().unwrap();
    assert!(acked > 10);

    // Every dashboard name is exported (by a or b), every family documented.
    let (page_a, page_b) = (scrape(ma).unwrap(), scrape(mb).unwrap());
    let exported: BTreeSet<String> = page_a
        .0
        .keys()
        .chain(page_b.0.keys())
        .map(|s| s.split('{').next().unwrap().to_string())
        .collect();
    let missing: Vec<_> = dashboard_names.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard, not exported: {missing:?}"
    );
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let mut histograms = histogram_families(ma);
    histograms.extend(histogram_families(mb));
    let mut all = families(&page_a, &histograms);
    all.extend(families(&page_b, &histograms));
    let undocumented: Vec<_> = all
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
    // Bounded labels: every series names its node, none an address.
    for series in page_a.0.keys().chain(page_b.0.keys()) {
        assert!(series.contains("node=\""), "{series}");
        assert!(
            !series.contains("127.0.0.1"),
            "an address as a label: {series}"
        );
    }

    // Prometheus saw the migration: its phases, its bytes, its interruption.
    let phases = prometheus.wait(
        r#"replaymig_migration_phase_duration_seconds_count{service="redis",method="replay"}"#,
        |r| r.len() >= 7,
    );
    let seen: BTreeSet<String> = phases
        .iter()
        .map(|s| s["metric"]["phase"].as_str().unwrap().to_string())
        .collect();
    for phase in [
        "connecting",
        "quiescing",
        "dumping",
        "transferring",
        "catching_up",
        "handing_over",
        "stopping",
    ] {
        assert!(seen.contains(phase), "phase {phase} missing: {seen:?}");
    }
    let snapshot = prometheus.wait(
        r#"replaymig_migration_link_bytes_total{service="redis",kind="snapshot"}"#,
        |r| r.len() == 1 && value(&r[0]) > 0.0,
    );
    assert_eq!(
        value(&snapshot[0]),
        report["snapshot_bytes"].as_f64().unwrap()
    );
    let interruption = prometheus.wait(
        r#"replaymig_migration_interruption_seconds_sum{service="redis"}"#,
        |r| r.len() == 1,
    );
    let reported = report["interruption_seconds"].as_f64().unwrap();
    assert!(
        (value(&interruption[0]) - reported).abs() < 1e-6,
        "{interruption:?} vs {reported}"
    );
    assert!(reported > 0.0);
    for (node, role) in [("a", "source"), ("b", "destination")] {
        let q = format!(
            r#"replaymig_migration_phase{{service="redis",node="{node}",role="{role}",phase="done"}}"#
        );
        prometheus.wait(&q, |r| r.len() == 1 && value(&r[0]) == 1.0);
    }
    prometheus.wait(r#"replaymig_ownership_epoch{service="redis"}"#, |r| {
        r.len() == 2 && r.iter().all(|s| value(s) == 2.0)
    });
    prometheus.wait(
        r#"replaymig_service_owned{service="redis",node="b"}"#,
        |r| r.len() == 1 && value(&r[0]) == 1.0,
    );

    // `status` says what the metrics say.
    std::thread::sleep(Duration::from_millis(500));
    for (admin, metrics, node) in [(pa.admin, ma, "a"), (pb.admin, mb, "b")] {
        let s = status(admin);
        let page = scrape(metrics).unwrap();
        let label = format!(r#"{{node="{node}",service="redis"}}"#);
        let gauge = |name: &str| {
            page.0
                .iter()
                .find(|(k, _)| {
                    k.starts_with(&format!("{name}{{")) && k.contains(r#"service="redis""#)
                })
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{name}{label} not exported"))
        };
        assert_eq!(s["owner"], "b");
        assert_eq!(
            s["epoch"].as_f64().unwrap(),
            gauge("replaymig_ownership_epoch")
        );
        assert_eq!(
            s["last_lsn"].as_f64().unwrap(),
            gauge("replaymig_journal_last_lsn")
        );
        assert_eq!(
            s["first_lsn"].as_f64().unwrap(),
            gauge("replaymig_journal_first_lsn")
        );
        let role = if node == "a" { "source" } else { "destination" };
        assert_eq!(s["migration"], format!("{role}:done"));
        assert_eq!(s["migrating"], false);
        assert_eq!(gauge("replaymig_migration_in_progress"), 0.0);
    }
    // Every acknowledged INCR is on b (the owner now), reached through a.
    let mut c = RespClient::connect(listen).unwrap();
    assert_eq!(
        c.cmd(&["GET", "obs"]).unwrap(),
        Reply::Bulk(acked.to_string().into_bytes())
    );
}
