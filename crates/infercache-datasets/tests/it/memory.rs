//! The memory tier (`memory_size`): its charge stays within its cap while a stream reads
//! a dataset ten times its size, it serves exactly the disk's batches, and a dataset that
//! fits is read from memory alone.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow_array::RecordBatch;
use infercache_artifact::Policy;
use infercache_core::SystemClock;
use infercache_datasets::{DatasetCache, DatasetConfig, StreamOptions};

use crate::{build, collect, config, jsonl};

fn open_with(dir: &std::path::Path, memory_size: u64, policy: Policy) -> DatasetCache {
    DatasetCache::open(
        dir,
        DatasetConfig {
            memory_size,
            policy,
            ..config(1 << 30)
        },
        SystemClock::shared(),
    )
    .unwrap()
}

#[test]
fn a_stream_ten_times_memory_size_keeps_the_tier_in_its_cap_and_serves_the_disks_batches() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "big.jsonl", 4_000, 200);
    let cache_dir = dir.path().join("cache");
    // The disk's batches: a cache without a memory tier.
    let disk = open_with(&cache_dir, 0, Policy::Lru);
    let built = build(&disk, "big", &[src], &[], 100).unwrap();
    assert_eq!(built.shards, 40);
    let plain = collect(&disk, "big", StreamOptions::default());
    let shuffled = StreamOptions {
        shuffle: Some(9),
        epoch: 1,
        ..StreamOptions::default()
    };
    let plain_shuffled = collect(&disk, "big", shuffled.clone());
    assert_eq!(disk.memory().bytes, 0);
    let total: u64 = disk
        .get_dataset("big")
        .unwrap()
        .unwrap()
        .manifest
        .shards
        .iter()
        .map(|s| s.bytes)
        .sum();
    drop(disk);

    for policy in [Policy::Lru, Policy::Fifo, Policy::Size] {
        let cap = total / 10;
        let cache = open_with(&cache_dir, cap, policy);
        let done = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (done, max, cache) = (done.clone(), max.clone(), cache.clone());
            std::thread::spawn(move || {
                let mut samples = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let m = cache.memory();
                    assert!(m.bytes <= m.cap, "{policy}: {m:?}");
                    max.fetch_max(m.bytes, Ordering::Relaxed);
                    samples += 1;
                    std::thread::yield_now();
                }
                samples
            })
        };
        // Two epochs in order and one shuffled, batch by batch as a training loop reads,
        // the tier sampled after every batch too (the sampler thread may be scheduled
        // rarely on a busy machine).
        let mut samples = 0u64;
        let mut read = |options: StreamOptions| -> Vec<RecordBatch> {
            let mut got = Vec::new();
            for batch in cache.stream_dataset("big", options).unwrap() {
                got.push(batch.unwrap());
                let m = cache.memory();
                assert!(m.bytes <= m.cap, "{policy}: {m:?}");
                max.fetch_max(m.bytes, Ordering::Relaxed);
                samples += 1;
            }
            got
        };
        for _ in 0..2 {
            let got = read(StreamOptions::default());
            assert!(got == plain, "{policy}: the batches differ from the disk's");
        }
        let got = read(shuffled.clone());
        assert!(got == plain_shuffled, "{policy}: shuffled batches differ");
        done.store(true, Ordering::Relaxed);
        samples += sampler.join().unwrap();
        let m = cache.memory();
        assert!(samples > 10, "{policy}: only {samples} samples");
        assert!(
            m.bytes <= cap && max.load(Ordering::Relaxed) <= cap,
            "{policy}: {m:?}"
        );
        // It was used: filled close to its cap, and evicting to stay within it.
        assert!(m.bytes >= cap / 2, "{policy}: {m:?}");
        assert!(m.inserted > 40 && m.evicted > 0, "{policy}: {m:?}");
        assert_eq!(m.inserted - m.evicted, m.shards, "{policy}: {m:?}");
    }
}

#[test]
fn a_dataset_that_fits_in_memory_is_read_from_memory_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 1_000, 50);
    let cache = open_with(&dir.path().join("cache"), 1 << 30, Policy::Lru);
    build(&cache, "a", &[src], &[], 100).unwrap();
    let mut first = cache.stream_dataset("a", StreamOptions::default()).unwrap();
    let want: Vec<RecordBatch> = first.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(first.stats().memory_hits, 0);
    let shards = cache.get_dataset("a").unwrap().unwrap().manifest.shards;
    let bytes: u64 = shards.iter().map(|s| s.bytes).sum();
    assert_eq!(
        (cache.memory().shards, cache.memory().bytes),
        (10, bytes),
        "charged by the shards' bytes"
    );
    // With every shard file gone from the store, the memory tier still serves them all,
    // bit for bit.
    for s in &shards {
        fs::remove_file(cache.store().root().join("blobs").join(s.digest.hex())).unwrap();
    }
    let mut again = cache.stream_dataset("a", StreamOptions::default()).unwrap();
    let got: Vec<RecordBatch> = again.by_ref().collect::<Result<_, _>>().unwrap();
    assert!(got == want);
    let stats = again.stats();
    assert_eq!((stats.memory_hits, stats.shards_rebuilt), (10, 0));
    // Removing the dataset empties the tier; `clear` too.
    cache.remove("a").unwrap();
    assert_eq!(cache.memory().bytes, 0);
}
