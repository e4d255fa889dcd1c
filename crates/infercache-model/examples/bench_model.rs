//! Throughput of the built-in model in-process, for `scripts/bench-model` (a benchmark,
//! not a test).
//!
//! `cargo run --release -p infercache-model --example bench_model -- MODEL_DIR TEXTS_FILE
//! THREADS BATCH[,BATCH...] [SECONDS]` embeds the texts of `TEXTS_FILE` (one per line) in
//! batches of each size, in order, on `THREADS` forward threads, after one warm-up pass,
//! repeating the whole list until at least `SECONDS` (default 5) have passed, and prints one
//! line per batch size: `batch=B texts=N seconds=S texts_per_s=R tokens_per_text=T`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use infercache_model::bert::Threads;
use infercache_model::{Embedder, ModelFiles};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_model MODEL_DIR TEXTS_FILE THREADS BATCH[,BATCH...] [SECONDS]";
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let texts = std::fs::read_to_string(args.next().ok_or(usage)?)?;
    let threads: usize = args.next().ok_or(usage)?.parse()?;
    let batches: Vec<usize> = args
        .next()
        .ok_or(usage)?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let seconds: f64 = args.next().map_or(Ok(5.0), |s| s.parse())?;
    let texts: Vec<&str> = texts.lines().filter(|l| !l.is_empty()).collect();

    let embedder = Embedder::load_with(&ModelFiles::from_dir(dir)?, Threads::new(threads)?)?;
    let tokens = embedder.tokenize(&texts)?;
    let per_text = tokens.ids().len() as f64 / texts.len() as f64;
    for &batch in &batches {
        for chunk in texts.chunks(batch).take(4) {
            embedder.embed(chunk)?;
        }
        let started = Instant::now();
        let mut done = 0usize;
        while started.elapsed() < Duration::from_secs_f64(seconds) {
            for chunk in texts.chunks(batch) {
                embedder.embed(chunk)?;
                done += chunk.len();
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "batch={batch} texts={done} seconds={elapsed:.3} texts_per_s={:.1} tokens_per_text={per_text:.1}",
            done as f64 / elapsed
        );
    }
    Ok(())
}
