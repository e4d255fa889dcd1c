//! Streams: shuffle, resume, corruption, and the cap.

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use infercache_core::SystemClock;
use infercache_datasets::{
    BuildOptions, DatasetCache, DatasetConfig, DatasetSource, StreamOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{build, collect, config, ids, jsonl, open};

fn shuffled(seed: u64, epoch: u64) -> StreamOptions {
    StreamOptions {
        shuffle: Some(seed),
        epoch,
        ..StreamOptions::default()
    }
}

#[test]
fn a_shuffle_is_a_deterministic_permutation_per_seed_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 1_000, 0);
    let cache = open(&dir.path().join("cache"), 1 << 30);
    build(&cache, "a", &[src], &[], 128).unwrap();
    let a = ids(&collect(&cache, "a", shuffled(7, 0)));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1_000).collect::<Vec<i64>>());
    assert_ne!(a, (0..1_000).collect::<Vec<i64>>());
    assert_eq!(a, ids(&collect(&cache, "a", shuffled(7, 0))));
    assert_ne!(a, ids(&collect(&cache, "a", shuffled(8, 0))));
    assert_ne!(a, ids(&collect(&cache, "a", shuffled(7, 1))));
}

#[test]
fn resume_with_shuffle_yields_exactly_the_remaining_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 2_000, 0);
    let cache = open(&dir.path().join("cache"), 1 << 30);
    build(&cache, "a", &[src], &[], 300).unwrap();
    let full = collect(&cache, "a", shuffled(3, 2));
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..10 {
        let stop = rng.random_range(0..full.len());
        let mut s = cache.stream_dataset("a", shuffled(3, 2)).unwrap();
        let mut head = Vec::new();
        for _ in 0..stop {
            head.push(s.next().unwrap().unwrap());
        }
        let token = s.resume_token();
        drop(s);
        let rest: Vec<RecordBatch> = cache
            .stream_dataset(
                "a",
                StreamOptions {
                    resume: Some(token),
                    ..StreamOptions::default()
                },
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Batch for batch, bit for bit.
        head.extend(rest);
        assert_eq!(head, full, "resumed after {stop} batches");
    }
    // A token of another dataset is refused.
    let other = jsonl(dir.path(), "b.jsonl", 10, 0);
    build(&cache, "b", &[other], &[], 300).unwrap();
    let s = cache.stream_dataset("b", StreamOptions::default()).unwrap();
    let err = cache
        .stream_dataset(
            "a",
            StreamOptions {
                resume: Some(s.resume_token()),
                ..StreamOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("belongs to dataset"), "{err}");
}

#[test]
fn every_single_byte_corruption_is_caught_before_a_batch_is_yielded() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 600, 20);
    // The disk tier alone: the memory tier would serve its verified copies.
    let cache = DatasetCache::open(
        dir.path().join("cache"),
        DatasetConfig {
            memory_size: 0,
            ..config(1 << 30)
        },
        SystemClock::shared(),
    )
    .unwrap();
    build(&cache, "a", &[src], &["cmd:1:cat"], 100).unwrap();
    let want = collect(&cache, "a", StreamOptions::default());
    let d = cache.get_dataset("a").unwrap().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..12 {
        // One byte of one shard, anywhere in the file.
        let s = d.manifest.shards[rng.random_range(0..d.manifest.shards.len())];
        let path = cache.store().root().join("blobs").join(s.digest.hex());
        let mut bytes = fs::read(&path).unwrap();
        let at = rng.random_range(0..bytes.len());
        bytes[at] ^= 1 << rng.random_range(0..8);
        fs::remove_file(&path).unwrap();
        fs::write(&path, &bytes).unwrap();
        let mut stream = cache.stream_dataset("a", StreamOptions::default()).unwrap();
        let got: Vec<RecordBatch> = stream.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(got, want, "round {round}: corrupt rows were served");
        let stats = stream.stats();
        assert_eq!(
            (stats.corrupt, stats.shards_rebuilt),
            (1, 1),
            "round {round}"
        );
    }
}

/// Bytes of shard files on disk (`blobs/`).
fn disk_usage(dir: &std::path::Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_stream_over_ten_times_the_cap_stays_within_cap_plus_one_shard() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "big.jsonl", 4_000, 200);
    // Pinned: a dataset built from rows in memory (the cache holds its only copy).
    let cache_dir = dir.path().join("cache");
    let probe = open(&cache_dir, 1 << 30);
    let built = build(&probe, "probe", std::slice::from_ref(&src), &[], 100).unwrap();
    let shard = probe.get_dataset("probe").unwrap().unwrap().manifest.shards[0].bytes;
    probe.clear().unwrap();
    drop(probe);
    assert_eq!(built.shards, 40);
    let cap = 4 * shard;
    let cache = open(&cache_dir, cap);
    let only = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
        (
            "text",
            Arc::new(StringArray::from(vec!["a", "b", "c"])) as _,
        ),
    ])
    .unwrap();
    cache
        .cache_dataset(
            "only",
            DatasetSource::Batches(vec![only.clone()]),
            &[],
            BuildOptions::default(),
            &mut |_| {},
        )
        .unwrap();
    let only_digest = cache.get_dataset("only").unwrap().unwrap().manifest.shards[0].digest;
    // Built through a cap of 4 shards: most of it is evicted as it is built.
    build(&cache, "big", &[src], &[], 100).unwrap();
    let blobs = cache.store().root().join("blobs");
    let done = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, max, blobs) = (done.clone(), max.clone(), blobs.clone());
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !done.load(Ordering::Relaxed) {
                max.fetch_max(disk_usage(&blobs), Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        })
    };
    // Batch by batch, as a training loop reads: a batch kept alive keeps its shard's
    // mapped pages (on disk too, once evicted), so none is kept here.
    let mut got = Vec::new();
    for batch in cache
        .stream_dataset("big", StreamOptions::default())
        .unwrap()
    {
        got.extend(ids(&[batch.unwrap()]));
    }
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    assert_eq!(got, (0..4_000).collect::<Vec<i64>>());
    let max = max.load(Ordering::Relaxed);
    assert!(samples > 3, "only {samples} samples");
    assert!(
        max <= cap + shard,
        "{max} bytes on disk > cap {cap} + one shard {shard}"
    );
    // The only copy was never evicted, and still streams.
    assert!(cache.store().contains(&only_digest).unwrap());
    assert_eq!(collect(&cache, "only", StreamOptions::default()), [only]);
    let ls = cache.list().unwrap();
    let seen: HashSet<&str> = ls.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(seen, HashSet::from(["only", "big"]));
    assert!(!ls.iter().find(|d| d.name == "only").unwrap().recomputable);
    // A cap below two shards is refused up front.
    drop(cache);
    let tiny = open(&cache_dir, shard + shard / 2);
    let err = tiny
        .stream_dataset("big", StreamOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("below two shards"), "{err}");
}

#[test]
fn a_dataset_whose_source_is_gone_is_pinned_as_the_only_copy() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "gone.jsonl", 300, 200);
    let other = jsonl(dir.path(), "other.jsonl", 2_000, 200);
    let cache_dir = dir.path().join("cache");
    let probe = open(&cache_dir, 1 << 30);
    build(&probe, "p", std::slice::from_ref(&src), &[], 100).unwrap();
    let shard = probe.get_dataset("p").unwrap().unwrap().manifest.shards[0].bytes;
    probe.clear().unwrap();
    drop(probe);
    let cache = open(&cache_dir, 6 * shard);
    build(&cache, "gone", std::slice::from_ref(&src), &[], 100).unwrap();
    let before = collect(&cache, "gone", StreamOptions::default());
    fs::remove_file(&src).unwrap();
    // Building and streaming another dataset through the cap must not evict the only copy.
    build(&cache, "other", &[other], &[], 100).unwrap();
    assert_eq!(
        ids(&collect(&cache, "other", StreamOptions::default())),
        (0..2_000).collect::<Vec<i64>>()
    );
    let d = cache.get_dataset("gone").unwrap().unwrap();
    for s in &d.manifest.shards {
        assert!(
            cache.store().contains(&s.digest).unwrap(),
            "shard {} evicted",
            s.index
        );
    }
    assert_eq!(collect(&cache, "gone", StreamOptions::default()), before);
    assert!(
        cache
            .store()
            .list()
            .unwrap()
            .iter()
            .filter(|b| b
                .pinned
                .as_deref()
                .is_some_and(|r| r.contains("gone.jsonl")))
            .count()
            == d.manifest.shards.len()
    );
}

#[test]
fn shards_their_time_policy_expired_are_recomputed_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 300, 0);
    let clock = infercache_core::ManualClock::new(1_000_000);
    let cache = infercache_datasets::DatasetCache::open(
        dir.path().join("cache"),
        infercache_datasets::DatasetConfig {
            disk_size: 1 << 30,
            policy: infercache_artifact::Policy::Time {
                max_age: Duration::from_secs(60),
            },
            ..infercache_datasets::DatasetConfig::default()
        },
        clock.clone(),
    )
    .unwrap();
    build(&cache, "a", &[src], &[], 100).unwrap();
    let mut fresh = cache.stream_dataset("a", StreamOptions::default()).unwrap();
    let want: Vec<RecordBatch> = fresh.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(fresh.stats().shards_rebuilt, 0);
    clock.advance(Duration::from_secs(60));
    let mut expired = cache.stream_dataset("a", StreamOptions::default()).unwrap();
    let got: Vec<RecordBatch> = expired.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(got, want);
    assert_eq!(
        expired.stats().shards_rebuilt,
        3,
        "an expired shard was served"
    );
    // Recomputed, they live again.
    let mut again = cache.stream_dataset("a", StreamOptions::default()).unwrap();
    again.by_ref().for_each(drop);
    assert_eq!(again.stats().shards_rebuilt, 0);
}

#[test]
fn a_shard_is_validated_once_per_cache_and_trusted_streams_yield_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 500, 30);
    let open_maps_only = || {
        DatasetCache::open(
            dir.path().join("cache"),
            DatasetConfig {
                memory_size: 0,
                ..config(1 << 30)
            },
            SystemClock::shared(),
        )
        .unwrap()
    };
    let cache = open_maps_only();
    build(&cache, "a", &[src], &[], 100).unwrap();
    let stream = |cache: &DatasetCache, options: StreamOptions| {
        let mut s = cache.stream_dataset("a", options).unwrap();
        let batches: Vec<RecordBatch> = s.by_ref().collect::<Result<_, _>>().unwrap();
        (batches, s.stats())
    };
    // The first stream validates every shard in full; later ones trust the digests that
    // passed, in order or shuffled, and yield the same batches.
    let (first, stats) = stream(&cache, StreamOptions::default());
    assert_eq!((stats.shards_read, stats.validated), (5, 5));
    assert_eq!(ids(&first), (0..500).collect::<Vec<i64>>());
    let (again, stats) = stream(&cache, StreamOptions::default());
    assert_eq!((stats.shards_read, stats.validated), (5, 0));
    assert!(again == first);
    let (shuffled_once, stats) = stream(&cache, shuffled(4, 0));
    assert_eq!(stats.validated, 0);
    // A cache opened anew (as a new process would) trusts nothing it did not validate.
    let fresh = open_maps_only();
    let (from_fresh, stats) = stream(&fresh, shuffled(4, 0));
    assert_eq!(stats.validated, 5);
    assert!(from_fresh == shuffled_once);
    // Through the memory tier: validated as it enters, then served from memory.
    let tiered = DatasetCache::open(
        dir.path().join("cache"),
        config(1 << 30),
        SystemClock::shared(),
    )
    .unwrap();
    let (tier_first, stats) = stream(&tiered, StreamOptions::default());
    assert_eq!((stats.validated, stats.memory_hits), (5, 0));
    let (tier_again, stats) = stream(&tiered, StreamOptions::default());
    assert_eq!((stats.validated, stats.memory_hits), (0, 5));
    assert!(tier_first == first && tier_again == first);
}

/// The lines of this process's memory maps that map a file under `dir`.
fn maps_under(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn use_mmap_false_streams_the_same_batches_from_plain_reads() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 700, 40);
    let cache_dir = dir.path().join("cache");
    let open_with = |use_mmap| {
        DatasetCache::open(
            &cache_dir,
            DatasetConfig {
                memory_size: 0,
                use_mmap,
                ..config(1 << 30)
            },
            SystemClock::shared(),
        )
        .unwrap()
    };
    let mapped = open_with(true);
    build(&mapped, "a", &[src], &["cmd:1:cat"], 100).unwrap();
    let read = open_with(false);
    // Holding a batch: a read stream maps no file of the cache at all; a mapped one maps
    // its shard.
    let mut s = read.stream_dataset("a", StreamOptions::default()).unwrap();
    let held = s.next().unwrap().unwrap();
    assert_eq!(maps_under(&cache_dir), Vec::<String>::new());
    drop((s, held));
    let mut s = mapped
        .stream_dataset("a", StreamOptions::default())
        .unwrap();
    let held = s.next().unwrap().unwrap();
    let maps = maps_under(&cache_dir);
    assert!(maps.iter().any(|l| l.contains("/blobs/")), "{maps:?}");
    drop((s, held));
    let resume_after = |cache: &DatasetCache, batches: usize| {
        let mut s = cache.stream_dataset("a", shuffled(2, 1)).unwrap();
        for _ in 0..batches {
            s.next().unwrap().unwrap();
        }
        s.resume_token()
    };
    for options in [
        StreamOptions::default(),
        shuffled(5, 0),
        StreamOptions {
            batch_size: 7,
            prefetch: 1,
            ..StreamOptions::default()
        },
        StreamOptions {
            resume: Some(resume_after(&mapped, 9)),
            ..StreamOptions::default()
        },
    ] {
        let want = collect(&mapped, "a", options.clone());
        assert!(!want.is_empty());
        // Twice: validated in full, then trusted.
        for _ in 0..2 {
            assert!(
                collect(&read, "a", options.clone()) == want,
                "{options:?}: the batches differ"
            );
        }
    }
    assert_eq!(resume_after(&mapped, 9), resume_after(&read, 9));
    // `audit` reads the shards with plain reads too, and finds them as the steps make them.
    let audit = read.audit("a", 50, 1).unwrap();
    assert!(
        audit.checked > 0 && audit.mismatched.is_empty(),
        "{audit:?}"
    );
}
