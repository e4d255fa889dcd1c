//! The bulk job's overhead, measured side by side in one process:
//!
//! 1. `direct`: the upstream stub (5 ms per call) called with the job's batches of 32
//!    rows, 4 calls in flight, through the same upstream client, no cache and no job;
//! 2. `job`: the same rows as a bulk job (fresh memory and disk tiers, journal, output
//!    file), batch size 32, concurrency 4;
//! 3. `cached`: a job of 100,000 rows, then the same job again in the same process,
//!    every row a hit from the memory tier.
//!
//! ```text
//! cargo run -p infercache-jobs --example bulk_bench -- [UNIQUE_ROWS] [ROUNDS] [CACHED_ROWS]
//! ```
//!
//! Prints one line per measurement and the ratio direct/job (1.0: no overhead).
//! `CACHED_ROWS` (default 100,000) sizes step 3; 0 leaves it out (to profile steps 1
//! and 2 alone).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use infercache_backend::{BackendKind, Inputs, ModelConfig};
use infercache_core::SystemClock;
use infercache_engine::{Cache, CacheConfig, DiskConfig, MemoryConfig};
use infercache_infer::{Infer, Models};
use infercache_jobs::{CallCounter, Format, InferModel, JobOptions, Mode, NoProgress};
use serde_json::{Value, json};

const BATCH: usize = 32;
const CONCURRENCY: usize = 4;
const STUB_DELAY: Duration = Duration::from_millis(5);

fn model_config(url: &str) -> ModelConfig {
    ModelConfig::new(
        "stub",
        BackendKind::HttpJson,
        Some(&format!("{url}/predict")),
    )
}

fn job_model(dir: &Path, url: &str, disk: bool) -> InferModel {
    let config = CacheConfig {
        memory: Some(MemoryConfig::bytes(1 << 30)),
        disk: disk.then(|| DiskConfig::new(dir.join("disk"), 4 << 30)),
        ..CacheConfig::default()
    };
    let cache = Cache::open(config, SystemClock::shared()).expect("opening the cache");
    let client = infercache_upstream::Pool::new(256 << 20).expect("an HTTP client");
    let models = Models::configured(&[model_config(url)], None, None, |m| {
        infercache_upstream::backend(m, &client).expect("an upstream model")
    })
    .expect("a registry");
    let counter = Arc::new(CallCounter::default());
    let infer = Infer::new(
        Some(cache),
        models,
        Duration::from_secs(60),
        Arc::clone(&counter) as _,
    )
    .with_call_limit(CONCURRENCY);
    let model = Arc::clone(infer.models().get("stub").expect("the stub model"));
    InferModel::new(infer, model, "default", None, counter).expect("a job model")
}

fn options(dir: &Path, input: &Path) -> JobOptions {
    JobOptions {
        input: input.to_owned(),
        output: Some(dir.join("out.jsonl")),
        errors: None,
        format: Format::Jsonl,
        column: None,
        tenant: "default".into(),
        parameters: None,
        batch_size: BATCH,
        concurrency: CONCURRENCY,
        mode: Mode::Auto,
        jobs_dir: dir.join("jobs"),
        max_input_chars: 1 << 20,
    }
}

fn rows(n: usize, salt: &str) -> Vec<Value> {
    (0..n).map(|i| json!({ "id": i, "salt": salt })).collect()
}

fn write_input(path: &Path, rows: &[Value]) {
    let text: String = rows
        .iter()
        .map(|r| format!("{}\n", json!({ "input": r })))
        .collect();
    std::fs::write(path, text).expect("writing the input");
}

/// CPU time this process (every thread) has used so far, from `/proc/self/stat` (Linux;
/// `utime + stime` in USER_HZ ticks, 100 a second): on a shared machine, what a
/// measurement cost, where its wall time also counts waiting for a core.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The stub called with `rows` in batches of [`BATCH`], [`CONCURRENCY`] at once.
async fn direct(url: &str, rows: Vec<Value>) -> Duration {
    let client = infercache_upstream::Pool::new(256 << 20).expect("an HTTP client");
    let backend = infercache_upstream::backend(&model_config(url), &client).expect("a backend");
    let inputs = Inputs::Json {
        rows: rows
            .iter()
            .map(|r| {
                infercache_backend::JsonText::new(r.to_string().into()).expect("one JSON value")
            })
            .collect(),
        parameters: None,
    };
    let indices: Vec<usize> = (0..inputs.len()).collect();
    let started = Instant::now();
    let mut calls = futures_util::stream::iter(indices.chunks(BATCH))
        .map(|chunk| backend.compute(&inputs, chunk))
        .buffered(CONCURRENCY);
    while let Some(r) = calls.next().await {
        r.expect("the stub answers");
    }
    started.elapsed()
}

async fn job(url: &str, rows: &[Value]) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let input = dir.path().join("in.jsonl");
    write_input(&input, rows);
    let model = job_model(dir.path(), url, true);
    let started = Instant::now();
    let s = infercache_jobs::run(
        &model,
        &options(dir.path(), &input),
        &AtomicBool::new(false),
        &NoProgress,
    )
    .await
    .expect("the job runs");
    let took = started.elapsed();
    assert_eq!(s.computed as usize, rows.len());
    took
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let unique: usize = args
        .next()
        .map_or(20_000, |a| a.parse().expect("UNIQUE_ROWS"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("ROUNDS"));
    let cached: usize = args
        .next()
        .map_or(100_000, |a| a.parse().expect("CACHED_ROWS"));
    let (url, up) = infercache_upstream::testing::start().await;
    up.delay(STUB_DELAY);

    let mut ratios = Vec::new();
    for round in 0..rounds {
        let at = cpu();
        let d = direct(&url, rows(unique, &format!("d{round}"))).await;
        let (at, d_cpu) = (cpu(), cpu().saturating_sub(at));
        let j = job(&url, &rows(unique, &format!("j{round}"))).await;
        let j_cpu = cpu().saturating_sub(at);
        let ratio = d.as_secs_f64() / j.as_secs_f64();
        println!(
            "round {round}: {unique} rows, batch {BATCH}, concurrency {CONCURRENCY}, stub {STUB_DELAY:?}/call: direct {:.3} s ({:.0} rows/s, {:.2} s CPU), job {:.3} s ({:.0} rows/s, {:.2} s CPU), direct/job {ratio:.3}",
            d.as_secs_f64(),
            unique as f64 / d.as_secs_f64(),
            d_cpu.as_secs_f64(),
            j.as_secs_f64(),
            unique as f64 / j.as_secs_f64(),
            j_cpu.as_secs_f64(),
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median direct/job throughput ratio: {:.3}",
        ratios[ratios.len() / 2]
    );

    if cached == 0 {
        return;
    }
    // A fully cached re-run of `cached` rows, from the memory tier.
    up.delay(Duration::ZERO);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let input = dir.path().join("in.jsonl");
    write_input(&input, &rows(cached, "cached"));
    let model = job_model(dir.path(), &url, false);
    let opts = options(dir.path(), &input);
    let first = Instant::now();
    infercache_jobs::run(&model, &opts, &AtomicBool::new(false), &NoProgress)
        .await
        .expect("the first run");
    let first = first.elapsed();
    let (again, cpu_before) = (Instant::now(), cpu());
    let s = infercache_jobs::run(&model, &opts, &AtomicBool::new(false), &NoProgress)
        .await
        .expect("the re-run");
    let (again, cpu_again) = (again.elapsed(), cpu().saturating_sub(cpu_before));
    assert_eq!((s.computed, s.hits), (0, cached as u64));
    println!(
        "{cached} rows: first run {:.3} s, fully cached re-run {:.3} s wall, {:.2} s CPU (memory tier, output rewritten)",
        first.as_secs_f64(),
        again.as_secs_f64(),
        cpu_again.as_secs_f64()
    );
}
