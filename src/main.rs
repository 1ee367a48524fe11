//! `replaymig`: the one binary. Thin: parses the command line, sets up
//! logging and metrics, and calls the libraries.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use replaymig_journal::{Durability, Journal, JournalOptions, OpenMode};
use replaymig_journal_inspect::stat::JournalStats;
use replaymig_proxy::{metrics::install_prometheus_exporter, Proxy, ProxyConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod journal_dump;
mod journal_export;
mod replay_cmd;

#[derive(Parser)]
#[command(
    name = "replaymig",
    version,
    about = "Move live TCP services between nodes by snapshot + input replay"
)]
struct Cli {
    /// Async runtime threads: 0 runs everything on one thread (the default,
    /// fastest on small machines where the service and its clients share
    /// the cores); N > 0 uses N worker threads.
    #[arg(long, global = true, default_value_t = 0)]
    worker_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the input-journaling proxy in front of one service.
    Proxy(ProxyArgs),
    /// Inspect a journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Replay a journal's client input against a service (debugging:
    /// reproduce what a service saw, from any LSN).
    Replay(replay_cmd::ReplayArgs),
    /// Run a service under a socket holder (the `{holder}` placeholder of a
    /// service started for CRIU with `carry_connections`): it starts the
    /// command as its child and keeps the proxy's ends of the service's
    /// connections across a dump, so CRIU carries them.
    Holder {
        /// The service's name (names the holder's socket).
        #[arg(long)]
        name: String,
        /// The service command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a node agent: its services, the peer link, the admin endpoint.
    Node {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Serve Prometheus metrics on this address (GET /metrics).
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
    /// Move a service from the node behind --admin to another node.
    Migrate {
        /// The service.
        service: String,
        /// The destination node's name.
        #[arg(long)]
        to: String,
        /// The source node's admin endpoint.
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// `replay` (the product: one snapshot + the journaled input) or
        /// `iterative` (the paper's baseline: repeated dumps shipped as
        /// deltas, then a final dump under held input).
        #[arg(long, value_enum, default_value_t = MethodArg::Replay)]
        method: MethodArg,
        /// Iterative: stop pre-copying once the service dirties less than
        /// this many MB per second.
        #[arg(long, default_value_t = 1.0)]
        dirty_threshold: f64,
        /// Iterative: pre-copy rounds at most.
        #[arg(long, default_value_t = 5)]
        max_iterations: u32,
        /// Replay: migrate even though the service's answers are not
        /// journaled (`journal_responses = "off"`), so the destination's
        /// replay cannot be checked against them. Without it such a
        /// migration is refused.
        #[arg(long)]
        unverified: bool,
    },
    /// Services, owners, epochs and journal heads of the node behind --admin.
    Status {
        /// The node's admin endpoint.
        #[command(flatten)]
        admin: AdminArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Fleet mode: every registered node and every service in the
        /// registry (owner, epoch, last hand-over), as that node sees them.
        #[arg(long)]
        fleet: bool,
    },
}

/// Where a node's admin endpoint is, and the token it may require.
#[derive(Args)]
struct AdminArgs {
    /// The node's admin address.
    #[arg(long, default_value = "127.0.0.1:7200")]
    admin: SocketAddr,
    /// File holding the node's admin token (or set REPLAYMIG_ADMIN_TOKEN);
    /// never on the command line.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// The token to send, if one was given.
    fn token(&self) -> Result<Option<String>> {
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
            return Ok(Some(text.trim().to_string()));
        }
        Ok(std::env::var("REPLAYMIG_ADMIN_TOKEN").ok())
    }
}

#[derive(Args)]
struct ProxyArgs {
    /// Address clients connect to (e.g. 127.0.0.1:7000).
    #[arg(long)]
    listen: SocketAddr,
    /// Address of the service (e.g. 127.0.0.1:6379).
    #[arg(long)]
    backend: SocketAddr,
    /// Journal directory (created if missing).
    #[arg(long)]
    journal: PathBuf,
    /// What an append promises before bytes are forwarded: none | batch | sync.
    #[arg(long, default_value = "batch")]
    durability: Durability,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Seconds graceful shutdown waits for open connections.
    #[arg(long, default_value_t = 5.0)]
    drain_timeout: f64,
    /// Connections served at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// What the journal keeps of the service's answers: `off` (only the
    /// counts every record carries), `digest` (a CRC-32 and length per
    /// answer segment, for `replay --compare`) or `full` (the bytes too, up
    /// to 1 MiB per segment: exact divergence offsets, answers in pcaps).
    #[arg(long, value_name = "off|digest|full", default_value = "digest")]
    journal_responses: replaymig_proxy::AnswerJournaling,
    /// The service's name: the `service` label of every metric.
    #[arg(long, default_value = "default")]
    service: String,
    /// The `node` label of every metric (the Grafana dashboard selects by
    /// it, as for a node agent's services); default: this host's name.
    #[arg(long)]
    node: Option<String>,
    /// Refuse client input (closing the client, forwarding nothing) while
    /// the journal's filesystem has fewer free bytes than this, and take
    /// it again once there are; default 5% of the filesystem, 4–64 MiB.
    #[arg(long, value_name = "BYTES")]
    journal_min_free: Option<u64>,
    /// Forward a client record only once the service answered the one
    /// before (at most 2 ms later): the service then executes input in
    /// journal order, so `replay` reproduces it faithfully, at the cost of
    /// one service round trip per record (what a migration turns on while
    /// it catches up; see docs/fidelity.md).
    #[arg(long)]
    settled_forwarding: bool,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Extent, volume and connections of a journal (reads and verifies every record).
    Stat {
        /// Journal directory.
        #[arg(long)]
        journal: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also list every connection (client, records, bytes, LSNs, times).
        #[arg(long)]
        connections: bool,
    },
    /// Records of a journal: a range, filtered, as text, hex or JSON lines.
    Dump(journal_dump::DumpArgs),
    /// The recorded conversations as a capture file (Wireshark, tshark).
    Export(journal_export::ExportArgs),
}

fn main() -> ExitCode {
    replaymig_journal::allocator::tune_for_journal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REPLAYMIG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // No runtime (no threads): CRIU dumps the holder as it is.
    if let Command::Holder { name, command } = &cli.command {
        return match replaymig_snapshot::holder::serve(name, command) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("error: holder for {name}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match build_runtime(cli.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime. The data plane's per-request work is mostly kernel
/// TCP work plus one hand-off to the journal writer task; on one thread
/// that hand-off needs no cross-thread wake-up, which measured faster on
/// two cores than a multi-threaded runtime (see README, benchmark).
fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads == 0 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Proxy(args) => run_proxy(args).await,
        Command::Journal(JournalCommand::Stat {
            journal,
            json,
            connections,
        }) => journal_stat(journal, json, connections).await,
        Command::Journal(JournalCommand::Dump(args)) => journal_dump::run(args).await,
        Command::Journal(JournalCommand::Export(args)) => journal_export::run(args).await,
        Command::Replay(args) => replay_cmd::run(args).await,
        Command::Node { config, metrics } => run_node(config, metrics).await,
        Command::Holder { .. } => unreachable!("run before the runtime"),
        Command::Migrate {
            service,
            to,
            admin,
            json,
            method,
            dirty_threshold,
            max_iterations,
            unverified,
        } => {
            let method = match method {
                MethodArg::Replay => replaymig_node::Method::Replay,
                MethodArg::Iterative => replaymig_node::Method::Iterative {
                    dirty_threshold_bytes_per_second: (dirty_threshold * 1e6) as u64,
                    max_iterations,
                },
            };
            migrate(service, to, admin, json, method, unverified).await
        }
        Command::Status {
            admin,
            json,
            fleet: false,
        } => status(admin, json).await,
        Command::Status {
            admin,
            json,
            fleet: true,
        } => fleet_status(admin, json).await,
    }
}

async fn run_proxy(args: ProxyArgs) -> Result<()> {
    // First, so the journal writer's metric handles go to the exporter.
    if let Some(addr) = args.metrics {
        let node = match &args.node {
            Some(node) => node.clone(),
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "proxy".into()),
        };
        let options = replaymig_proxy::metrics::ExporterOptions {
            global_labels: vec![("node".to_string(), node)],
            ..Default::default()
        };
        install_prometheus_exporter(addr, options)?;
    }
    let journal = Journal::open_for(
        &args.journal,
        JournalOptions {
            durability: args.durability,
            mode: OpenMode::CreateIfMissing,
            min_free_bytes: args.journal_min_free,
        },
        &args.service,
    )
    .with_context(|| format!("cannot open journal {}", args.journal.display()))?;
    let mut config = ProxyConfig::new(args.listen, args.backend);
    config.drain_timeout = Duration::from_secs_f64(args.drain_timeout);
    config.max_connections = args.max_connections;
    config.journal_responses = args.journal_responses;
    config.service = args.service.clone();
    let proxy = Proxy::bind(config, journal.clone()).await?;
    proxy
        .control()
        .set_settled_forwarding(args.settled_forwarding);
    tracing::info!(
        listen = %proxy.local_addr()?,
        backend = %args.backend,
        journal = %args.journal.display(),
        durability = %args.durability,
        journal_responses = args.journal_responses.as_str(),
        last_lsn = journal.last_lsn(),
        "proxy serving"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let report = proxy.run(shutdown).await;
    journal
        .close()
        .await
        .context("final journal flush failed")?;
    tracing::info!(
        drained = report.drained,
        aborted = report.aborted,
        last_lsn = journal.last_lsn(),
        "proxy stopped"
    );
    Ok(())
}

/// SIGINT or SIGTERM starts a graceful shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: shutting down");
    shutdown.cancel();
}

async fn journal_stat(dir: PathBuf, json: bool, connections: bool) -> Result<()> {
    let journal = Journal::open(
        &dir,
        JournalOptions {
            durability: Durability::None,
            mode: OpenMode::MustExist,
            ..JournalOptions::default()
        },
    )
    .with_context(|| format!("cannot open journal {}", dir.display()))?;
    let stats = JournalStats::compute(&journal);
    journal.close().await?;
    let mut stats =
        stats.with_context(|| format!("journal {} failed verification", dir.display()))?;
    if !connections {
        stats.per_connection.clear();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", render_stats(&dir, &stats));
    }
    Ok(())
}

fn render_stats(dir: &std::path::Path, s: &JournalStats) -> String {
    let lsn = |l: Option<u64>| l.map_or("-".to_string(), |l| l.to_string());
    let mut out = format!(
        "journal          {}\nlsn range        {} ..= {}\nrecords          {}\ndata bytes       {}\nanswers kept     {} bytes as digests/bytes, {} verbatim\nconnections      {} ({} open)\nsize on disk     {} bytes\n",
        dir.display(),
        lsn(s.first_lsn),
        lsn(s.last_lsn),
        s.records,
        s.data_bytes,
        s.answer_segment_bytes,
        s.answer_bytes_kept,
        s.connections,
        s.open_connections,
        s.size_on_disk_bytes,
    );
    for (kind, n) in &s.records_by_kind {
        out.push_str(&format!("  {kind:<14} {n}\n"));
    }
    if !s.per_connection.is_empty() {
        out.push_str(&format!(
            "\n{:>10}  {:<22} {:>8} {:>12} {:>12}  {:<21} {:>9}  state\n",
            "conn", "client", "records", "data bytes", "answer bytes", "lsn range", "seconds"
        ));
    }
    for (conn, c) in &s.per_connection {
        out.push_str(&format!(
            "{conn:>10}  {:<22} {:>8} {:>12} {:>12}  {:<21} {:>9.3}  {}\n",
            c.client.as_deref().unwrap_or("?"),
            c.records,
            c.data_bytes,
            c.answer_bytes,
            format!("{} ..= {}", c.first_lsn, c.last_lsn),
            c.last_time_us.saturating_sub(c.first_time_us) as f64 / 1e6,
            if c.open { "open" } else { "closed" },
        ));
    }
    out
}

async fn run_node(config: PathBuf, metrics: Option<SocketAddr>) -> Result<()> {
    replaymig_node::arm_fail_points_from_env();
    let config = replaymig_node::NodeConfig::load(&config)?;
    if let Some(addr) = metrics {
        install_prometheus_exporter(addr, replaymig_node::exporter_options(&config))?;
    }
    let node = replaymig_node::Node::start(config).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone()).await;
    node.shutdown().await;
    Ok(())
}

/// Sends one admin request; calls `each` for every JSON line answered.
async fn admin_request(
    admin_args: &AdminArgs,
    mut request: serde_json::Value,
    mut each: impl FnMut(serde_json::Value) -> Result<()>,
) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let admin = admin_args.admin;
    if let (Some(token), Some(obj)) = (admin_args.token()?, request.as_object_mut()) {
        obj.insert("token".into(), token.into());
    }
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("no node admin endpoint at {admin}"))?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{request}\n").as_bytes()).await?;
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        each(serde_json::from_str(&line).context("malformed admin answer")?)?;
    }
    Ok(())
}

/// `--method`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MethodArg {
    Replay,
    Iterative,
}

async fn migrate(
    service: String,
    to: String,
    admin: AdminArgs,
    json: bool,
    method: replaymig_node::Method,
    unverified: bool,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut outcome = None;
    admin_request(
        &admin,
        serde_json::json!({"migrate": {"service": service, "to": to, "method": method, "unverified": unverified}}),
        |line| {
            if let Some(owner) = line.get("forwarded") {
                eprintln!(
                    "this node does not own {service}; {} (its owner in the fleet's registry) runs the migration",
                    owner.as_str().unwrap_or("?")
                );
            } else if let Some(phase) = line.get("phase") {
                eprintln!(
                    "[{:>7.3} s] {}",
                    started.elapsed().as_secs_f64(),
                    phase.as_str().unwrap_or("?")
                );
            } else if let Some(p) = line.get("progress").and_then(|p| p.get("shipping")) {
                let n = |k: &str| p.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                let replay = match n("applied_lsn") {
                    0 => "destination restoring".to_string(),
                    applied => format!(
                        "replayed to LSN {applied}, lag {} records",
                        n("head_lsn").saturating_sub(applied)
                    ),
                };
                eprintln!(
                    "[{:>7.3} s]   snapshot {:.1} MB sent, {} log records shipped, {replay}",
                    started.elapsed().as_secs_f64(),
                    n("snapshot_bytes") as f64 / 1e6,
                    n("log_records"),
                );
            } else if let Some(report) = line.get("report") {
                outcome = Some(Ok(report.clone()));
            } else if let Some(error) = line.get("error") {
                outcome = Some(Err(error.as_str().unwrap_or("?").to_string()));
            }
            Ok(())
        },
    )
    .await?;
    match outcome {
        Some(Ok(report)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let report: replaymig_node::MigrationReport = serde_json::from_value(report)?;
                print!("{report}");
            }
            Ok(())
        }
        Some(Err(e)) => anyhow::bail!("migration failed: {e}"),
        None => anyhow::bail!("the node closed the admin connection without a result"),
    }
}

async fn fleet_status(admin: AdminArgs, json: bool) -> Result<()> {
    let mut fleet = None;
    admin_request(&admin, serde_json::json!({"fleet": {}}), |line| {
        if let Some(error) = line.get("error") {
            anyhow::bail!("{}", error.as_str().unwrap_or("the node refused"));
        }
        fleet = line.get("fleet").cloned();
        Ok(())
    })
    .await?;
    let fleet = fleet.context("no fleet status in the node's answer")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&fleet)?);
        return Ok(());
    }
    let fleet: replaymig_node::FleetStatus = serde_json::from_value(fleet)?;
    println!(
        "nodes (alive: registered under a lease), etcd revision {}",
        fleet.revision
    );
    println!("{:<16} {:<22} {:<22}", "node", "peer", "admin");
    for n in &fleet.nodes {
        println!(
            "{:<16} {:<22} {:<22}",
            n.name,
            n.peer,
            n.admin.as_deref().unwrap_or("-")
        );
    }
    println!();
    println!(
        "{:<16} {:<16} {:>6} {:>14} {:>23}",
        "service", "owner", "epoch", "handover lsn", "owner's journal"
    );
    for s in &fleet.services {
        let owner = if s.owner_alive {
            s.owner.clone()
        } else {
            format!("{} (down)", s.owner)
        };
        let journal = s.journal.map_or("-".to_string(), |(first, last)| {
            format!("{first} ..= {last}")
        });
        println!(
            "{:<16} {:<16} {:>6} {:>14} {:>23}",
            s.name, owner, s.epoch, s.handover_lsn, journal
        );
    }
    Ok(())
}

async fn status(admin: AdminArgs, json: bool) -> Result<()> {
    let mut services = None;
    admin_request(&admin, serde_json::json!({"status": {}}), |line| {
        if let Some(error) = line.get("error") {
            anyhow::bail!("{}", error.as_str().unwrap_or("the node refused"));
        }
        services = line.get("services").cloned();
        Ok(())
    })
    .await?;
    let services = services.context("no status in the node's answer")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&services)?);
        return Ok(());
    }
    let list: Vec<replaymig_node::ServiceStatus> = serde_json::from_value(services)?;
    println!(
        "{:<16} {:<10} {:>6} {:>21} {:>12} {:>6}  migration",
        "service", "owner", "epoch", "journal lsn range", "journal MB", "conns"
    );
    for s in list {
        let migration = match (&s.migration, s.migrating, s.prepared) {
            (_, _, Some(epoch)) => format!("prepared for epoch {epoch}"),
            (Some(m), true, _) => format!("{m} (running)"),
            (Some(m), false, _) => format!("{m} (last)"),
            (None, _, _) => "-".to_string(),
        };
        println!(
            "{:<16} {:<10} {:>6} {:>21} {:>12.1} {:>6}  {migration}",
            s.name,
            s.owner,
            s.epoch,
            format!("{} ..= {}", s.first_lsn, s.last_lsn),
            s.journal_bytes as f64 / 1e6,
            s.journaled_connections
        );
    }
    Ok(())
}
