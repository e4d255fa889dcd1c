//! The `infercache` command. Parses flags, sets up logging and hands off to the library
//! crates; no cache logic lives here.
//!
//! - `serve`: the HTTP server ([`infercache_server`]) with the built-in model ([`serve`]).
//! - `bulk`: a file of inputs through a model, resumable ([`bulk`], over
//!   [`infercache_jobs`]).
//! - `stats`, `warm`, `invalidate`: admin commands that talk to a running server over
//!   HTTP ([`client`] for the connection, one file per command).
//! - `bench`: measurements of the engine ([`mod@bench`]).
//! - `weights`: chunk, verify, serve and stream model weights by layer ([`weights`]).
//! - `datasets`, `artifacts`: the local dataset cache and artifact store ([`datasets`],
//!   [`artifacts`]).

mod artifacts;
mod bench;
mod bulk;
mod client;
mod datasets;
mod invalidate;
mod listing;
mod serve;
mod stats;
mod warm;
mod weights;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc, configured in `.cargo/config.toml` (one arena, freed pages returned within
/// about a second). glibc's malloc kept the inference threads' per-batch buffers and the
/// I/O threads' freed blocks in per-thread arenas, about 12 MiB more resident under the
/// soak's load for the same cached bytes (BENCHMARKS.md, "Soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// infercache: a cache that makes inference never do the same work twice.
#[derive(Debug, Parser)]
#[command(name = "infercache", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the embedding API (OpenAI- and Smally-compatible) through the cache, with the
    /// built-in all-MiniLM-L6-v2 model. Stops gracefully on SIGTERM or Ctrl-C.
    Serve(Box<serve::ServeCommand>),
    /// Run a whole file of inputs through a model: each unique input computed once, output
    /// in input order, resumable after a crash or a stop.
    Bulk(Box<bulk::BulkCommand>),
    /// Print a running server's cache statistics, per tier and per model.
    Stats(stats::StatsCommand),
    /// Precompute and store the embeddings of a file of inputs on a running server.
    Warm(warm::WarmCommand),
    /// Make every cached entry of a scope unreachable on a running server.
    Invalidate(invalidate::InvalidateCommand),
    /// Measure the cache engine.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Model weights by layer: chunk a model, verify chunks, serve them, embed with a
    /// model streamed from a weight server.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
    /// Build, stream and manage cached datasets.
    Datasets(datasets::DatasetsCommand),
    /// Manage the local artifact store (model files, weight chunks).
    Artifacts(artifacts::ArtifactsCommand),
}

/// `error`, or, when it is the disk tier's lock held by another process (a running
/// `infercache serve` on the same tiers), `error` with a message saying what to do: run
/// `command` through that server with `--url`, or stop the server first. `bulk` and
/// `datasets build` open `serve`'s tiers in their own process and share this answer.
fn tier_in_use(error: infercache_server::ServerError, command: &str) -> anyhow::Error {
    use infercache_engine::EngineError;
    use infercache_engine::disk::DiskError;
    let dir = match &error {
        infercache_server::ServerError::Engine(EngineError::Disk(DiskError::Locked {
            path,
            ..
        })) => path.parent().unwrap_or(path).to_owned(),
        _ => return error.into(),
    };
    anyhow::Error::new(error).context(format!(
        "the prediction cache's disk tier {} is in use by another process (a running \
         `infercache serve`?): pass `--url http://HOST:PORT` to run `{command}` through \
         that server, or stop it first",
        dir.display()
    ))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INFERCACHE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(cmd) => serve::run(&cmd),
        Command::Bulk(cmd) => bulk::run(&cmd),
        Command::Stats(cmd) => stats::run(&cmd),
        Command::Warm(cmd) => warm::run(&cmd),
        Command::Invalidate(cmd) => invalidate::run(&cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Weights(cmd) => weights::run(cmd),
        Command::Datasets(cmd) => datasets::run(&cmd),
        Command::Artifacts(cmd) => artifacts::run(&cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
