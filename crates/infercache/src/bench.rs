//! `infercache bench ...`: measurements of the engine.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use infercache_engine::Policy;
use infercache_engine::replay::{load_trace, replay};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Replay a cache trace through the memory tier and print hit ratios, one line per
    /// policy: `policy=<name> capacity=<N> requests=<R> hit_ratio=<percent>`.
    HitRatio(HitRatioArgs),
}

#[derive(Debug, Args)]
pub struct HitRatioArgs {
    /// Trace file (`START COUNT IGNORED REQNO` lines, optionally zstd-compressed).
    #[arg(long)]
    trace: PathBuf,
    /// Capacity in entries (every key weighs 1). Repeat or comma-separate for several.
    #[arg(long, required = true, value_delimiter = ',')]
    capacity: Vec<u64>,
    /// Eviction policy: s3fifo, lru, lfu, fifo, random, or `all`.
    #[arg(long, default_value = "all")]
    policy: String,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::HitRatio(args) => hit_ratio(&args),
    }
}

fn hit_ratio(args: &HitRatioArgs) -> anyhow::Result<()> {
    let policies: Vec<Policy> = if args.policy.eq_ignore_ascii_case("all") {
        Policy::ALL.to_vec()
    } else {
        args.policy
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("--policy")?
    };
    if let Some(zero) = args.capacity.iter().find(|&&c| c == 0) {
        anyhow::bail!("--capacity must be positive, got {zero}");
    }
    let keys = load_trace(&args.trace)?;
    for &capacity in &args.capacity {
        for &policy in &policies {
            let r = replay(&keys, policy, capacity);
            println!(
                "policy={} capacity={} requests={} hit_ratio={:.2}",
                r.policy,
                r.capacity,
                r.requests,
                r.hit_ratio()
            );
        }
    }
    Ok(())
}
