//! Integration tests of infercache-model against the real all-MiniLM-L6-v2 (no mocks).
//!
//! The model comes from `INFERCACHE_MODEL_DIR` if set, else it is fetched once into
//! `<target dir>/model-cache` (`$CARGO_TARGET_DIR` or the workspace's `target/`). A test
//! fails, never skips, when the model cannot be had.

mod bert;
mod embedder;
mod files;
mod pool;

use std::path::PathBuf;

use infercache_model::{Embedder, ModelFiles};

/// The model files for tests; panics (fails the test) if they cannot be had.
pub fn model_files() -> ModelFiles {
    if let Some(dir) = std::env::var_os("INFERCACHE_MODEL_DIR").filter(|d| !d.is_empty()) {
        return ModelFiles::from_dir(PathBuf::from(&dir)).unwrap_or_else(|e| {
            panic!(
                "INFERCACHE_MODEL_DIR={} is not usable: {e}",
                dir.to_string_lossy()
            )
        });
    }
    let cache_dir = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
            PathBuf::from,
        )
        .join("model-cache");
    ModelFiles::ensure(&cache_dir, false).unwrap_or_else(|e| {
        panic!(
            "the model is needed for this test and could not be fetched into {}: {e}; \
             set INFERCACHE_MODEL_DIR to a directory holding it",
            cache_dir.display()
        )
    })
}

pub fn embedder() -> Embedder {
    Embedder::load(&model_files()).expect("loading the model")
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
