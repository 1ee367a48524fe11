//! `replaymig-workload`: the deterministic object-detector stand-in
//! (`serve`) and its checking client (`client`).

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use replaymig_workload::{client, server, signals, ClientConfig, ServiceConfig, ServiceState};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Command line.
#[derive(Parser)]
#[command(name = "replaymig-workload", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The two roles.
#[derive(Subcommand)]
enum Command {
    /// Run the service (prints "listening on ADDR" to stderr when ready).
    Serve(ServeArgs),
    /// Send checked requests; prints one summary line, exits 1 on any error.
    Client(ClientArgs),
}

/// `serve` options.
#[derive(Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:7000.
    #[arg(long)]
    listen: String,
    /// Model size in MiB (read-only after start).
    #[arg(long)]
    model_mb: usize,
    /// Nominal CPU time per request in microseconds.
    #[arg(long)]
    cpu_us: u64,
    /// Working memory in KiB rewritten by every request.
    #[arg(long)]
    dirty_kb: usize,
    /// Working set in MiB, rewritten `dirty-kb` at a time in turn (default:
    /// just the `dirty-kb` window, all of it every request).
    #[arg(long, default_value_t = 0)]
    working_mb: usize,
    /// Seed of the model and the initial working memory.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `client` options.
#[derive(Args)]
struct ClientArgs {
    /// Service (or proxy) address.
    #[arg(long)]
    addr: String,
    /// Spacing of a connection's requests in ms (0: back to back).
    #[arg(long)]
    interval_ms: u64,
    /// Requests per connection.
    #[arg(long)]
    requests: u64,
    /// Payload size of each request in KiB.
    #[arg(long)]
    request_kb: usize,
    /// Seed of the payloads.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    connections: u64,
    /// Longest wait for a connect or an answer, in ms, before failing.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Client(args) => run_client(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "replaymig-workload: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the state, binds, announces, serves forever.
fn serve(args: ServeArgs) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    signals::exit_on_termination().context("cannot install signal handlers")?;
    let config = ServiceConfig {
        model_bytes: mib(args.model_mb, 1 << 20).context("--model-mb")?,
        cpu_us: args.cpu_us,
        dirty_bytes: mib(args.dirty_kb, 1 << 10).context("--dirty-kb")?,
        working_bytes: mib(args.working_mb, 1 << 20).context("--working-mb")?,
        seed: args.seed,
    };
    let start = Instant::now();
    let state = ServiceState::new(&config);
    let built = start.elapsed();
    let cpu = server::measure_cpu(&state);
    tracing::info!(
        model_mb = args.model_mb,
        dirty_kb = args.dirty_kb,
        cpu_us = args.cpu_us,
        steps = state.steps(),
        "state built in {} ms; one request's CPU part takes {} us here",
        built.as_millis(),
        cpu.as_micros()
    );
    let srv = server::Server::bind(&args.listen, state)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = srv.local_addr()?;
    let _ = writeln!(std::io::stderr(), "listening on {addr}");
    srv.serve()
}

/// `n` units of `unit` bytes, refusing overflow.
fn mib(n: usize, unit: usize) -> Result<usize> {
    match n.checked_mul(unit) {
        Some(bytes) => Ok(bytes),
        None => bail!("{n} is too large"),
    }
}

/// Runs the client; the summary goes to stdout, failures to stderr.
fn run_client(args: ClientArgs) -> Result<ExitCode> {
    let config = ClientConfig {
        addr: args.addr,
        interval: Duration::from_millis(args.interval_ms),
        requests: args.requests,
        request_bytes: mib(args.request_kb, 1 << 10).context("--request-kb")?,
        seed: args.seed,
        connections: args.connections,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let summary = client::run(&config);
    for e in &summary.errors {
        let _ = writeln!(std::io::stderr(), "replaymig-workload client: {e}");
    }
    println!("{summary}");
    Ok(if summary.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
