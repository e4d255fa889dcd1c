//! Measures model load, a single-sentence embedding and a batch of 32 on this machine.
//!
//! `cargo run --release -p infercache-model --example timings [MODEL_DIR]`; without an
//! argument the model comes from `default_cache_dir()` (fetched if need be).

use std::time::Instant;

use infercache_model::{Embedder, ModelFiles, default_cache_dir};

fn main() -> Result<(), infercache_model::ModelError> {
    let dir = std::env::args_os().nth(1).map(std::path::PathBuf::from);
    let started = Instant::now();
    let files = ModelFiles::locate(dir.as_deref(), default_cache_dir(), true)?;
    println!("locate + verify files: {:?}", started.elapsed());

    let started = Instant::now();
    let embedder = Embedder::load(&files)?;
    println!("Embedder::load:        {:?}", started.elapsed());

    let sentence = "The weather is lovely today.";
    embedder.embed(&[sentence])?; // warm-up
    let runs = 50;
    let started = Instant::now();
    for _ in 0..runs {
        embedder.embed(&[sentence])?;
    }
    println!(
        "one sentence:          {:?} per call",
        started.elapsed() / runs
    );

    let batch: Vec<String> = (0..32)
        .map(|i| format!("Sentence number {i} about the weather, the stadium and the sun."))
        .collect();
    let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
    embedder.embed(&batch)?;
    let runs = 10;
    let started = Instant::now();
    for _ in 0..runs {
        embedder.embed(&batch)?;
    }
    println!(
        "batch of 32:           {:?} per call",
        started.elapsed() / runs
    );
    Ok(())
}
