//! Integration tests of the dataset cache on real files: fingerprints, builds, streams,
//! the cap, corruption, bad input, and real pyarrow reading the shards.

mod build;
mod fingerprint;
mod memory;
mod pyarrow;
mod stream;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use infercache_artifact::Policy;
use infercache_core::SystemClock;
use infercache_datasets::{
    BuildOptions, Built, DatasetCache, DatasetConfig, DatasetSource, StepContext, StepSpec,
    StreamOptions,
};

/// A JSON lines file of `rows` rows `{"id": i, "text": "..."}`, with `pad` bytes of
/// filler per row.
pub fn jsonl(dir: &Path, name: &str, rows: usize, pad: usize) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let filler = "x".repeat(pad);
    for i in 0..rows {
        writeln!(f, r#"{{"id": {i}, "text": "row {i} of {name} {filler}"}}"#).unwrap();
    }
    f.flush().unwrap();
    path
}

/// The built-in model's tokenizer (`INFERCACHE_MODEL_DIR`, as `scripts/test` sets it).
pub fn tokenizer() -> PathBuf {
    let dir = std::env::var_os("INFERCACHE_MODEL_DIR")
        .filter(|d| !d.is_empty())
        .expect("INFERCACHE_MODEL_DIR must name the built-in model's files (scripts/test sets it)");
    let path = PathBuf::from(dir).join("tokenizer.json");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The configuration of [`open`]: `disk_size`, `lru`, the default memory tier, the
/// built-in model's tokenizer.
pub fn config(disk_size: u64) -> DatasetConfig {
    DatasetConfig {
        disk_size,
        policy: Policy::Lru,
        steps: StepContext {
            tokenizer: Some(tokenizer()),
            embedders: None,
        },
        ..DatasetConfig::default()
    }
}

pub fn open(dir: &Path, disk_size: u64) -> DatasetCache {
    DatasetCache::open(dir, config(disk_size), SystemClock::shared()).unwrap()
}

pub fn build(
    cache: &DatasetCache,
    name: &str,
    sources: &[PathBuf],
    steps: &[&str],
    shard_rows: usize,
) -> Result<Built, infercache_datasets::DatasetError> {
    let steps: Vec<StepSpec> = steps.iter().map(|s| StepSpec::from(*s)).collect();
    cache.cache_dataset(
        name,
        DatasetSource::Files(sources.to_vec()),
        &steps,
        BuildOptions { shard_rows },
        &mut |_| {},
    )
}

/// Every batch of a stream.
pub fn collect(cache: &DatasetCache, name: &str, options: StreamOptions) -> Vec<RecordBatch> {
    cache
        .stream_dataset(name, options)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// The `id` column of batches, in order.
pub fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}
