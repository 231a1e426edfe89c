//! Load generator and benchmark: sse-gateway and Nchan side by side, each server in its own
//! process, subscribers in worker processes of their own, publishers in this one.
//!
//! ```text
//! cargo build --release --bins
//! target/release/loadgen all                  # every scenario, one Markdown table (~5 min)
//! target/release/loadgen fanout --subscribers 1000 --channels 1 --knee --rates 1200000
//! target/release/loadgen idle --streams 10000
//! target/release/loadgen ingest --mode unary --concurrency 64
//! cargo run -q --bin loadgen -- --quick       # every scenario, tiny, gateway only (CI)
//! ```
//!
//! Latency is publish time (the due time of the event, carried in its payload) to the time a
//! subscriber reads it, from an HDR histogram; deliveries are counted at the subscribers. The
//! knee and a sustained step are defined in `scenario.rs` and printed by `--help`.

mod hist;
mod publish;
mod scenario;
mod target;
mod worker;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

const KNEE: &str = "A step publishes at one offered rate for --warmup seconds, then counts deliveries \
and records latencies for --window seconds. It is sustained when, over the window, subscribers received \
≥ 95 % of the offered deliveries, the publisher had ≥ 95 % of its events acknowledged, p99 ≤ \
--knee-p99-ms and no stream was closed. The knee is the highest sustained offered rate: step up from \
--knee-from by --knee-factor until a step fails, then bisect --knee-refine times; the figure is the \
delivery rate measured at that step.";

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "sse-gateway benchmark, with Nchan side by side (loopback; bounded)",
    after_help = KNEE
)]
struct Cli {
    /// Tiny sizes and sub-second windows, gateway only: checks every scenario runs (CI).
    /// Without a command: `all --quick`.
    #[arg(long, global = true)]
    quick: bool,
    /// Hard bound on the whole command, seconds.
    #[arg(long, global = true, default_value_t = 900)]
    max_secs: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Fan-out: N subscribers over C channels; latency at fixed rates and/or the knee.
    Fanout(scenario::FanoutArgs),
    /// Idle streams: server RSS per stream.
    Idle(scenario::IdleArgs),
    /// Ingest: events/s one publisher gets acknowledged (no subscribers).
    Ingest(scenario::IngestArgs),
    /// Every README row, gateway and Nchan in turn, one Markdown table.
    All(scenario::AllArgs),
    /// A subscriber worker process (spawned by the scenarios).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

/// The soft open-files limit up to the hard one (children inherit it).
pub fn raise_open_files() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(Command::Worker(args)) => return worker::main(args),
        Some(c) => c,
        None if cli.quick => Command::All(scenario::AllArgs::parse_default()),
        None => {
            eprintln!(
                "loadgen: a command is needed (fanout, idle, ingest, all), or --quick; see --help"
            );
            return ExitCode::from(2);
        }
    };
    raise_open_files();
    sse_gateway::app::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let quick = cli.quick;
    let mut rows = Vec::new();
    let run = async {
        let mut more = match command {
            Command::Fanout(a) => scenario::fanout(&if quick { a.quick() } else { a }).await?,
            Command::Idle(a) => scenario::idle(&if quick { a.quick() } else { a }).await?,
            Command::Ingest(a) => scenario::ingest(&if quick { a.quick() } else { a }).await?,
            Command::All(a) => {
                scenario::all(&a, quick, &mut rows).await?;
                Vec::new()
            }
            Command::Worker(_) => Vec::new(),
        };
        rows.append(&mut more);
        anyhow::Ok(())
    };
    let started = std::time::Instant::now();
    // Ctrl-C drops the run like --max-secs does: servers are stopped on drop.
    let result = runtime.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(cli.max_secs), run) => r,
            _ = tokio::signal::ctrl_c() => Ok(Err(anyhow::anyhow!("interrupted"))),
        }
    });
    let mut failed = false;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("loadgen: {e:#}");
            failed = true;
        }
        Err(_) => {
            eprintln!("loadgen: stopped after --max-secs {}", cli.max_secs);
            failed = true;
        }
    }
    // Servers and workers are children with kill-on-drop: dropping the runtime ends them.
    drop(runtime);
    println!(
        "sse-gateway loadgen: {} build, {} cores, {:.0} s{}\n",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64(),
        if quick {
            ", --quick (sizes are not the README's)"
        } else {
            ""
        }
    );
    print!("{}", scenario::table(&rows));
    if failed || rows.iter().any(scenario::Row::failed) {
        eprintln!("loadgen: some measurements failed (see the table)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
