//! The proxy's metrics: names in one place, handles registered once (the
//! per-read path only bumps atomics), and the Prometheus exporter setup
//! with real histogram buckets (the exporter would otherwise render
//! summaries, which Grafana cannot aggregate).

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, Counter, Gauge, Unit,
};
use metrics_exporter_prometheus::PrometheusBuilder;
use replaymig_journal::names as journal_names;
use std::net::SocketAddr;

/// Client connections open now (gauge).
pub const CONNECTIONS_ACTIVE: &str = "replaymig_proxy_connections_active";
/// Client connections accepted and connected to the backend (counter).
pub const CONNECTIONS_TOTAL: &str = "replaymig_proxy_connections_total";
/// Bytes relayed, label `direction` = `client_to_service` | `service_to_client`.
pub const BYTES_TOTAL: &str = "replaymig_proxy_bytes_total";
/// Answer segments journaled (`--journal-responses digest|full`) (counter).
pub const ANSWER_SEGMENTS_TOTAL: &str = "replaymig_proxy_answer_segments_total";
/// Journaled client records forwarded before an older one could go
/// (`ordering`: waited `FORWARD_ORDER_WAIT` in vain) (counter).
pub const OUT_OF_ORDER_FORWARDS_TOTAL: &str = "replaymig_proxy_out_of_order_forwards_total";
/// Errors by `kind`; the same family the journal writer uses.
pub const ERRORS_TOTAL: &str = journal_names::ERRORS_TOTAL;
/// Connections a barrier closed instead of carrying them, by `reason`
/// (`unanswered`: input without an answer when the rest was quiet;
/// `in_use`: used before a snapshot its destination cannot continue).
pub const CLOSED_AT_BARRIER_TOTAL: &str = "replaymig_proxy_connections_closed_at_barrier_total";
/// Relayed connections an old owner told to move to a new owner, by
/// `outcome`: `moved`; `refused` (the old owner relays on); `kept` (taken,
/// but the old owner never let go: it relays on); `failed` (closed: the
/// old tunnel ended wrong, or the new owner could not be reached).
pub const RELAY_MOVES_TOTAL: &str = "replaymig_proxy_relay_moves_total";

/// Why a connection or the accept loop failed, as the `kind` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The backend refused or did not answer the connect.
    BackendConnect,
    /// Reading from or writing to the backend failed mid-connection.
    BackendIo,
    /// Reading from or writing to the client failed mid-connection.
    ClientIo,
    /// The journal refused an append (disk full, closed, corrupt).
    JournalAppend,
    /// `accept()` failed (e.g. out of file descriptors).
    Accept,
    /// Connections still open when the drain timeout ran out.
    DrainTimeout,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BackendConnect => "backend_connect",
            ErrorKind::BackendIo => "backend_io",
            ErrorKind::ClientIo => "client_io",
            ErrorKind::JournalAppend => "journal_append",
            ErrorKind::Accept => "accept",
            ErrorKind::DrainTimeout => "drain_timeout",
        }
    }

    const ALL: [ErrorKind; 6] = [
        ErrorKind::BackendConnect,
        ErrorKind::BackendIo,
        ErrorKind::ClientIo,
        ErrorKind::JournalAppend,
        ErrorKind::Accept,
        ErrorKind::DrainTimeout,
    ];
}

/// Handles for everything the data path counts.
pub struct ProxyMetrics {
    /// Open connections.
    pub active: Gauge,
    /// Accepted connections.
    pub total: Counter,
    /// Client→service bytes forwarded.
    pub client_to_service: Counter,
    /// Service→client bytes delivered.
    pub service_to_client: Counter,
    /// Answer segments journaled.
    pub answer_segments: Counter,
    /// Records forwarded out of LSN order.
    pub out_of_order_forwards: Counter,
    /// Connections a barrier closed: input left unanswered.
    pub closed_unanswered: Counter,
    /// Connections a barrier closed: in use before the snapshot.
    pub closed_in_use: Counter,
    /// Relayed connections moved to a new owner.
    pub relay_moves: Counter,
    /// Relayed connections whose move was refused.
    pub relay_moves_refused: Counter,
    /// Relayed connections whose move was taken but not done by the old
    /// owner (they stay on its tunnel).
    pub relay_moves_kept: Counter,
    /// Relayed connections closed because their move failed.
    pub relay_moves_failed: Counter,
    errors: [Counter; ErrorKind::ALL.len()],
}

impl ProxyMetrics {
    /// Registers (and so exports, at zero) every proxy metric, labelled
    /// with the proxy's service.
    pub fn new(service: &str) -> Self {
        let s = || service.to_string();
        ProxyMetrics {
            active: gauge!(CONNECTIONS_ACTIVE, "service" => s()),
            total: counter!(CONNECTIONS_TOTAL, "service" => s()),
            client_to_service: counter!(BYTES_TOTAL, "service" => s(), "direction" => "client_to_service"),
            service_to_client: counter!(BYTES_TOTAL, "service" => s(), "direction" => "service_to_client"),
            answer_segments: counter!(ANSWER_SEGMENTS_TOTAL, "service" => s()),
            out_of_order_forwards: counter!(OUT_OF_ORDER_FORWARDS_TOTAL, "service" => s()),
            closed_unanswered: counter!(CLOSED_AT_BARRIER_TOTAL, "service" => s(), "reason" => "unanswered"),
            closed_in_use: counter!(CLOSED_AT_BARRIER_TOTAL, "service" => s(), "reason" => "in_use"),
            relay_moves: counter!(RELAY_MOVES_TOTAL, "service" => s(), "outcome" => "moved"),
            relay_moves_refused: counter!(RELAY_MOVES_TOTAL, "service" => s(), "outcome" => "refused"),
            relay_moves_kept: counter!(RELAY_MOVES_TOTAL, "service" => s(), "outcome" => "kept"),
            relay_moves_failed: counter!(RELAY_MOVES_TOTAL, "service" => s(), "outcome" => "failed"),
            errors: ErrorKind::ALL
                .map(|k| counter!(ERRORS_TOTAL, "service" => s(), "kind" => k.as_str())),
        }
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].increment(1);
    }
}

/// What a binary adds to the exporter: histogram buckets for its own
/// families (by full name) and labels on every series (e.g. `node`).
#[derive(Debug, Clone, Default)]
pub struct ExporterOptions {
    /// Buckets per histogram family name.
    pub buckets: Vec<(String, Vec<f64>)>,
    /// Labels added to every series.
    pub global_labels: Vec<(String, String)>,
}

/// Installs the global Prometheus recorder with an HTTP listener on `addr`
/// (`GET /metrics`). Must run inside a tokio runtime. Fails clearly if the
/// address is taken.
pub fn install_prometheus_exporter(
    addr: SocketAddr,
    options: ExporterOptions,
) -> anyhow::Result<()> {
    let latency_buckets = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0,
    ];
    let batch_buckets = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];
    let mut builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                journal_names::APPEND_DURATION_SECONDS.into(),
            ),
            &latency_buckets,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(journal_names::BATCH_RECORDS.into()),
            &batch_buckets,
        )?;
    for (name, buckets) in options.buckets {
        builder = builder
            .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(name), &buckets)?;
    }
    for (key, value) in options.global_labels {
        builder = builder.add_global_label(key, value);
    }
    builder
        .install()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    describe();
    Ok(())
}

/// Help texts, so `/metrics` explains itself.
fn describe() {
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections open now");
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Client connections accepted and connected to the backend"
    );
    describe_counter!(BYTES_TOTAL, Unit::Bytes, "Bytes relayed by direction");
    describe_counter!(ERRORS_TOTAL, "Errors by kind");
    describe_counter!(
        ANSWER_SEGMENTS_TOTAL,
        "Answer segments journaled (service answers between two client records)"
    );
    describe_counter!(
        OUT_OF_ORDER_FORWARDS_TOTAL,
        "Journaled client records forwarded before an older one (a replay may then be refused)"
    );
    describe_counter!(
        CLOSED_AT_BARRIER_TOTAL,
        "Client connections a migration's barrier closed (clients reconnect) instead of carrying them, by reason"
    );
    describe_counter!(
        RELAY_MOVES_TOTAL,
        "Relayed connections an old owner told to dial the new owner directly, by outcome"
    );
    describe_counter!(
        journal_names::APPENDS_TOTAL,
        "Records appended to the journal"
    );
    describe_counter!(
        journal_names::APPEND_BYTES_TOTAL,
        Unit::Bytes,
        "Encoded bytes appended to the journal"
    );
    describe_histogram!(
        journal_names::APPEND_DURATION_SECONDS,
        Unit::Seconds,
        "Time from an append call until its record is durable per the durability mode"
    );
    describe_histogram!(
        journal_names::BATCH_RECORDS,
        "Records per journal group commit"
    );
    describe_gauge!(journal_names::LAST_LSN, "Last durable LSN of the journal");
    describe_gauge!(
        journal_names::FIRST_LSN,
        "Oldest LSN the journal still stores (0 while empty)"
    );
    describe_gauge!(
        journal_names::SIZE_BYTES,
        Unit::Bytes,
        "Bytes the journal occupies on disk (refreshed at checkpoints)"
    );
}
