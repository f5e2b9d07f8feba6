//! `keyless-bench`: measures keyless's quality bars (docs/benchmarks.md) on this machine, by hand (`scripts/bench`),
//! never as a timed test. It starts `keyless emulate` and `keyless serve` against it (two
//! processes, so keyless's memory is its own), a bare hyper server per endpoint answering a body of
//! the size keyless answers, and drives both with the same load generator in the same run.
#![forbid(unsafe_code)]

mod bare;
mod bench;
mod callgrind;
mod cold;
mod endpoints;
mod fleet;
mod fleet_node;
mod fleet_procs;
mod fleet_procs_report;
mod fleet_report;
mod hostile;
mod load;
mod procs;
mod report;
mod stack;
mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "cannot run {path}: {source}; build it first (scripts/bench does: cargo build --release -p keyless) or pass --keyless"
    )]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("{what} did not get ready within a minute or exited; its log: {}", log.display())]
    NotReady { what: &'static str, log: PathBuf },
    #[error("cannot reach {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Request(String),
    #[error("the emulator's control API failed: {0}")]
    Emulator(String),
    #[error("cannot read {path}: {source} (the benchmark reads /proc: it runs on Linux only)")]
    Proc { path: String, source: std::io::Error },
    #[error("cannot use {}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error("goals missed: {0}")]
    Goals(String),
}

#[derive(Debug, Parser)]
#[command(
    name = "keyless-bench",
    about = "Load benchmark of keyless's cached-credential path against a bare hyper server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
    #[command(flatten)]
    options: Options,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// User-space instructions per request of keyless and of the bare server, counted by
    /// valgrind's callgrind (deterministic where req/s is noisy); needs valgrind.
    Callgrind(callgrind::CallgrindOptions),
    /// A rollout of many pods against token services with a quota (docs/fleet.md): the real
    /// keyless-core cache per pod on tokio's paused clock, today's schedule and the jittered one.
    Fleet(fleet::FleetOptions),
    /// The simulated fleet with one keyless per pod (sidecars) against one per node (node mode):
    /// exchanges per hour and memory (docs/fleet.md, "Sidecar or node mode").
    FleetNode(fleet_node::FleetNodeOptions),
    /// The fleet with real processes: one `keyless serve` per pod against `keyless emulate` with
    /// quotas, credentials capped short so three refresh cycles take minutes (docs/benchmarks.md).
    FleetProcs(fleet_procs::FleetProcsOptions),
    /// `keyless webhook` with 1 000 hostile connections open (stalled bodies, silent TLS, slow
    /// heads): a review's latency, alone and under them (docs/benchmarks.md, "Webhook").
    WebhookHostile(webhook::WebhookOptions),
    /// `keyless webhook`'s peak RSS under the largest review the API server accepts (3 MiB), alone
    /// and 16 at once (docs/benchmarks.md, "Webhook").
    WebhookMemory(webhook::WebhookOptions),
    /// Normal clients' latency while the credential listener is attacked (oversized heads,
    /// slowloris, a connection flood), beside none (docs/benchmarks.md).
    Hostile(hostile::HostileOptions),
    /// The baseline server (started by the benchmark itself).
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        body_len: usize,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The keyless binary to measure (a release build) [default: `keyless` beside this binary].
    #[arg(long)]
    keyless: Option<PathBuf>,
    /// The keyless binary that runs `keyless emulate` [default: --keyless]. Give a full build here
    /// to measure the image's sidecar build (built without the emulator) with --keyless.
    #[arg(long)]
    emulator: Option<PathBuf>,
    /// Concurrent keep-alive connections of the load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time of each run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured load before each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Runs of each server on each endpoint, alternating which goes first.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Cold starts of `keyless serve` to measure (spawn to the first 200 of /readyz).
    #[arg(long, default_value_t = 5)]
    cold_starts: usize,
    /// Concurrent first requests for a key nothing has asked for yet.
    #[arg(long, default_value_t = 1000)]
    cold_requests: usize,
    /// Endpoints to load (all five when absent).
    #[arg(long, value_delimiter = ',', value_parser = endpoints::parser())]
    only: Vec<endpoints::Endpoint>,
    /// Record a `perf` CPU profile of each server during its first run on each endpoint, into
    /// DIR/<endpoint>.{keyless,bare}.perf.data (needs `perf`; build with symbols to read them).
    #[arg(long, value_name = "DIR")]
    perf: Option<PathBuf>,
    /// `perf record --call-graph` mode: `fp` (needs keyless built with frame pointers) or `dwarf`
    /// (bigger files, also unwinds through libc).
    #[arg(long, default_value = "fp", value_name = "MODE")]
    perf_call_graph: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Mode::BareServer { listen, body_len }) => {
            // The runtime keyless uses: multi-threaded, one worker per core.
            return block_on_multi_thread(bare::serve(listen, body_len));
        }
        Some(Mode::Callgrind(options)) => {
            // One connection at a time: the client needs one thread.
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
            };
            return match runtime.block_on(callgrind::callgrind(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            };
        }
        Some(Mode::FleetProcs(options)) => {
            return block_on_multi_thread(fleet_procs_report::report(&options));
        }
        Some(Mode::WebhookHostile(options)) => {
            return block_on_multi_thread(webhook::hostile_report(&options));
        }
        Some(Mode::WebhookMemory(options)) => {
            return block_on_multi_thread(webhook::memory_report(&options));
        }
        Some(Mode::Hostile(options)) => {
            return block_on_multi_thread(hostile::report(&options));
        }
        Some(Mode::Fleet(options)) => {
            return match fleet_report::report(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            };
        }
        Some(Mode::FleetNode(options)) => {
            return match fleet_node::report(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            };
        }
        None => {}
    }
    let options = cli.options;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.client_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(bench::bench(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn block_on_multi_thread(run: impl std::future::Future<Output = Result<(), BenchError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

#[allow(clippy::print_stderr)] // the reason the benchmark could not run
fn fail(message: &str) -> ExitCode {
    eprintln!("keyless-bench: {message}");
    ExitCode::FAILURE
}
