use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use infercache_core::{CanonicalInput, ManualClock};
use rand::{Rng, SeedableRng};

use super::*;
use crate::disk::{Compression, DiskConfig};
use crate::memory::MemoryConfig;

#[derive(Debug, thiserror::Error)]
#[error("model failed: {0}")]
struct ModelFailed(String);

fn disk_config(dir: &std::path::Path, capacity: u64) -> DiskConfig {
    DiskConfig {
        dir: dir.to_owned(),
        capacity,
        segment_size: None,
        compression: Compression::None,
    }
}

fn config(memory: u64, disk: Option<&std::path::Path>) -> CacheConfig {
    CacheConfig {
        memory: Some(MemoryConfig::bytes(memory)),
        disk: disk.map(|d| disk_config(d, 64 << 20)),
        ..CacheConfig::default()
    }
}

fn key(cache: &Cache, model: &str, input: &str) -> CacheKey {
    let input = CanonicalInput::text(input);
    cache.key(KeyParts {
        namespace: "tenant",
        model,
        version: "1",
        artifact: None,
        epochs: infercache_core::Epochs::default(),
        input: &input,
        params: b"",
    })
}

/// The value a deterministic "model" gives for a key.
fn value_of(k: &CacheKey) -> Bytes {
    Bytes::from(format!("value-of-{}", k.digest()))
}

const NONE: RequestOptions = RequestOptions {
    max_age: None,
    no_cache: false,
    no_store: false,
    ttl: None,
    stale_while_revalidate: None,
    stale_if_error: None,
};

#[tokio::test]
async fn miss_then_memory_hit() {
    let cache = Cache::open(config(1 << 20, None), ManualClock::new(1)).unwrap();
    let k = key(&cache, "m", "a");
    let calls = AtomicUsize::new(0);
    let compute = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ModelFailed>(Bytes::from_static(b"v"))
    };
    let first = cache.get_or_compute(&k, &NONE, compute).await.unwrap();
    assert_eq!(first.source, Source::Computed);
    let second = cache.get_or_compute(&k, &NONE, compute).await.unwrap();
    assert_eq!(second.source, Source::Memory);
    assert_eq!(second.value, "v");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!(s.models["m"].misses, 1);
    assert_eq!(s.models["m"].memory_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_compute_once_and_share_the_value() {
    let cache = Cache::open(config(1 << 20, None), ManualClock::new(1)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let cache = cache.clone();
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                let k = key(&cache, "m", "same");
                cache
                    .get_or_compute(&k, &NONE, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, ModelFailed>(Bytes::from_static(b"shared"))
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().value, "shared");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().models["m"].misses, 1);
    assert!(cache.stats().coalesced > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_reaches_every_waiter_and_is_not_cached() {
    let cache = Cache::open(config(1 << 20, None), ManualClock::new(1)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let cache = cache.clone();
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                let k = key(&cache, "m", "boom");
                cache
                    .get_or_compute(&k, &NONE, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<Bytes, _>(ModelFailed("out of memory".into()))
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert_eq!(
            err.downcast_ref::<ModelFailed>().unwrap().0,
            "out of memory"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Not cached: the next call computes.
    let k = key(&cache, "m", "boom");
    let ok = cache
        .get_or_compute(&k, &NONE, || async {
            Ok::<_, ModelFailed>(Bytes::from_static(b"fine"))
        })
        .await
        .unwrap();
    assert_eq!(
        (ok.source, ok.value),
        (Source::Computed, Bytes::from_static(b"fine"))
    );
}

#[tokio::test]
async fn batches_dedupe_compute_only_missing_and_keep_order() {
    let cache = Cache::open(config(1 << 20, None), ManualClock::new(1)).unwrap();
    let ks: Vec<CacheKey> = ["a", "b", "c", "d"]
        .iter()
        .map(|s| key(&cache, "m", s))
        .collect();
    cache.insert(&ks[1], value_of(&ks[1]), &NONE).await;
    let batch = vec![
        ks[0].clone(),
        ks[1].clone(),
        ks[2].clone(),
        ks[0].clone(),
        ks[3].clone(),
        ks[2].clone(),
    ];
    let mut seen = Vec::new();
    let out = cache
        .get_many_or_compute(&batch, &NONE, |missing| {
            seen.push(missing.iter().map(|k| *k.digest()).collect::<Vec<_>>());
            async move { Ok::<_, ModelFailed>(missing.iter().map(value_of).collect()) }
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        vec![vec![*ks[0].digest(), *ks[2].digest(), *ks[3].digest()]]
    );
    let values: Vec<Bytes> = out.iter().map(|f| f.value.clone()).collect();
    assert_eq!(values, batch.iter().map(value_of).collect::<Vec<_>>());
    assert_eq!(out[1].source, Source::Memory);
    assert_eq!(out[0].source, Source::Computed);
}

#[tokio::test]
async fn a_wrong_batch_length_is_an_error() {
    let cache = Cache::open(config(1 << 20, None), ManualClock::new(1)).unwrap();
    let ks = vec![key(&cache, "m", "a"), key(&cache, "m", "b")];
    let err = cache
        .get_many_or_compute(&ks, &NONE, |_| async {
            Ok::<_, ModelFailed>(vec![Bytes::new()])
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<EngineError>(),
        Some(EngineError::BatchLength {
            expected: 2,
            got: 1
        })
    ));
}

#[tokio::test]
async fn disk_hits_survive_restart_and_are_promoted_to_memory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    {
        let cache = Cache::open(config(1 << 20, Some(dir.path())), clock.clone()).unwrap();
        let k = key(&cache, "m", "persist");
        cache
            .insert(&k, Bytes::from_static(b"on disk"), &NONE)
            .await;
        cache.shutdown().await;
    }
    let cache = Cache::open(config(1 << 20, Some(dir.path())), clock.clone()).unwrap();
    let k = key(&cache, "m", "persist");
    let Lookup::Hit(hit) = cache.get(&k, &NONE).await else {
        panic!("expected a disk hit")
    };
    assert_eq!(
        (hit.source, &hit.value[..], hit.created_ms),
        (Source::Disk, &b"on disk"[..], 1_000)
    );
    let Lookup::Hit(hit) = cache.get(&k, &NONE).await else {
        panic!("expected a memory hit")
    };
    assert_eq!(hit.source, Source::Memory);
}

#[tokio::test]
async fn ttls_per_cache_model_and_entry_are_honoured_in_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(10_000);
    let mut cfg = config(1 << 20, Some(dir.path()));
    cfg.default_ttl = Some(Duration::from_secs(100));
    cfg.policies.insert(
        "short".into(),
        FreshnessPolicy {
            ttl: Some(Duration::from_secs(10)),
            ..FreshnessPolicy::default()
        },
    );
    let cache = Cache::open(cfg.clone(), clock.clone()).unwrap();
    let default = key(&cache, "m", "x");
    let model = key(&cache, "short", "x");
    let entry = key(&cache, "m", "y");
    cache
        .insert(&default, Bytes::from_static(b"d"), &NONE)
        .await;
    cache.insert(&model, Bytes::from_static(b"s"), &NONE).await;
    cache
        .insert(
            &entry,
            Bytes::from_static(b"e"),
            &RequestOptions {
                ttl: Some(Duration::from_secs(1)),
                ..NONE
            },
        )
        .await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.get(&entry, &NONE).await, Lookup::Miss, "entry TTL");
    assert!(matches!(cache.get(&model, &NONE).await, Lookup::Hit(_)));
    clock.advance(Duration::from_secs(9));
    assert_eq!(cache.get(&model, &NONE).await, Lookup::Miss, "model TTL");
    assert!(matches!(cache.get(&default, &NONE).await, Lookup::Hit(_)));
    // After a restart the disk tier still honours the expiry.
    drop(cache);
    let cache = Cache::open(cfg, clock.clone()).unwrap();
    let default = key(&cache, "m", "x");
    assert!(matches!(
        cache.get(&default, &NONE).await,
        Lookup::Hit(Fetched {
            source: Source::Disk,
            ..
        })
    ));
    clock.advance(Duration::from_secs(90));
    cache.memory().unwrap().clear();
    assert_eq!(
        cache.get(&default, &NONE).await,
        Lookup::Miss,
        "default TTL on disk"
    );
    assert!(cache.purge_expired().await <= 3);
}

#[tokio::test]
async fn invalidation_by_scope_makes_old_entries_unreachable_even_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1);
    let cfg = config(1 << 20, Some(dir.path()));
    let cache = Cache::open(cfg.clone(), clock.clone()).unwrap();
    let a = key(&cache, "m", "a");
    let other = key(&cache, "other", "a");
    cache.insert(&a, Bytes::from_static(b"old"), &NONE).await;
    cache
        .insert(&other, Bytes::from_static(b"kept"), &NONE)
        .await;
    cache
        .invalidate(Scope::Model { model: "m".into() })
        .await
        .unwrap();
    let a2 = key(&cache, "m", "a");
    assert_ne!(a.digest(), a2.digest());
    assert_eq!(cache.get(&a2, &NONE).await, Lookup::Miss);
    assert!(matches!(
        cache.get(&key(&cache, "other", "a"), &NONE).await,
        Lookup::Hit(_)
    ));
    drop(cache);
    let cache = Cache::open(cfg.clone(), clock.clone()).unwrap();
    assert_eq!(cache.get(&key(&cache, "m", "a"), &NONE).await, Lookup::Miss);
    assert!(matches!(
        cache.get(&key(&cache, "other", "a"), &NONE).await,
        Lookup::Hit(_)
    ));
    // Bumping the cache version invalidates everything.
    drop(cache);
    let cache = Cache::open(
        CacheConfig {
            cache_version: 2,
            ..cfg
        },
        clock,
    )
    .unwrap();
    assert_eq!(
        cache.get(&key(&cache, "other", "a"), &NONE).await,
        Lookup::Miss
    );
}

#[tokio::test]
async fn remove_and_clear_reach_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, Some(dir.path()));
    let cache = Cache::open(cfg.clone(), ManualClock::new(1)).unwrap();
    let (a, b) = (key(&cache, "m", "a"), key(&cache, "m", "b"));
    cache.insert(&a, Bytes::from_static(b"a"), &NONE).await;
    cache.insert(&b, Bytes::from_static(b"b"), &NONE).await;
    assert!(cache.remove(&a).await.found);
    assert_eq!(cache.get(&a, &NONE).await, Lookup::Miss);
    cache.clear().await;
    assert_eq!(cache.get(&b, &NONE).await, Lookup::Miss);
    drop(cache);
    let cache = Cache::open(cfg, ManualClock::new(1)).unwrap();
    assert_eq!(cache.get(&key(&cache, "m", "a"), &NONE).await, Lookup::Miss);
    assert_eq!(cache.get(&key(&cache, "m", "b"), &NONE).await, Lookup::Miss);
}

#[tokio::test]
async fn request_options_max_age_no_cache_no_store() {
    let clock = ManualClock::new(1_000);
    let cache = Cache::open(config(1 << 20, None), clock.clone()).unwrap();
    let k = key(&cache, "m", "a");
    let compute =
        |v: &'static [u8]| move || async move { Ok::<_, ModelFailed>(Bytes::from_static(v)) };
    cache
        .get_or_compute(&k, &NONE, compute(b"one"))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let young = RequestOptions {
        max_age: Some(Duration::from_secs(2)),
        ..NONE
    };
    let got = cache
        .get_or_compute(&k, &young, compute(b"two"))
        .await
        .unwrap();
    assert_eq!(
        (got.source, &got.value[..]),
        (Source::Computed, &b"two"[..]),
        "too old: recomputed"
    );
    let fresh = RequestOptions {
        no_cache: true,
        ..NONE
    };
    let got = cache
        .get_or_compute(&k, &fresh, compute(b"three"))
        .await
        .unwrap();
    assert_eq!(got.value, "three");
    assert_eq!(
        cache.get(&k, &NONE).await,
        Lookup::Hit(Fetched {
            value: Bytes::from_static(b"three"),
            source: Source::Memory,
            created_ms: 6_000,
            stale: None,
        })
    );
    let k2 = key(&cache, "m", "b");
    let no_store = RequestOptions {
        no_store: true,
        ..NONE
    };
    cache
        .get_or_compute(&k2, &no_store, compute(b"x"))
        .await
        .unwrap();
    assert_eq!(cache.get(&k2, &NONE).await, Lookup::Miss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_hands_over_to_a_waiter() {
    let cache = Cache::open(config(1 << 20, None), ManualClock::new(1)).unwrap();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let k = key(&cache, "m", "k");
            cache
                .get_or_compute(&k, &NONE, || async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, ModelFailed>(Bytes::from_static(b"never"))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let k = key(&cache, "m", "k");
            cache
                .get_or_compute(&k, &NONE, || async {
                    Ok::<_, ModelFailed>(Bytes::from_static(b"took over"))
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.source, &got.value[..]),
        (Source::Computed, &b"took over"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_reaches_disk_on_flush_and_removals_stay_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1 << 20, Some(dir.path()));
    cfg.write_policy = WritePolicy::WriteBack { queue: 1024 };
    let cache = Cache::open(cfg.clone(), ManualClock::new(1)).unwrap();
    let ks: Vec<CacheKey> = (0..100).map(|i| key(&cache, "m", &i.to_string())).collect();
    for k in &ks {
        cache.insert(k, value_of(k), &NONE).await;
    }
    assert!(cache.remove(&ks[0]).await.found);
    cache.memory().unwrap().clear();
    assert_eq!(cache.get(&ks[0], &NONE).await, Lookup::Miss);
    cache.shutdown().await;
    assert_eq!(cache.disk().unwrap().entries(), 99);
    drop(cache);
    let cache = Cache::open(cfg, ManualClock::new(1)).unwrap();
    for (i, k) in ks.iter().enumerate() {
        let got = cache.get(&key(&cache, "m", &i.to_string()), &NONE).await;
        if i == 0 {
            assert_eq!(got, Lookup::Miss);
        } else {
            assert!(
                matches!(got, Lookup::Hit(Fetched { ref value, source: Source::Disk, .. }) if *value == value_of(k))
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_back_queue_drops_lower_tier_writes_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(64 << 20, Some(dir.path()));
    cfg.write_policy = WritePolicy::WriteBack { queue: 1 };
    let cache = Cache::open(cfg, ManualClock::new(1)).unwrap();
    let ks: Vec<CacheKey> = (0..2000)
        .map(|i| key(&cache, "m", &i.to_string()))
        .collect();
    let batch: Vec<(CacheKey, Found)> = ks
        .iter()
        .map(|k| {
            (
                k.clone(),
                Found {
                    value: value_of(k),
                    created_ms: 1,
                    expires_ms: crate::memory::NEVER,
                    computed: true,
                    store: true,
                },
            )
        })
        .collect();
    cache.store(batch).await;
    cache.shutdown().await;
    let s = cache.stats();
    assert!(s.writeback_dropped > 0, "{s:?}");
    assert_eq!(s.disk.unwrap().entries + s.writeback_dropped, 2000);
    // Memory has every value regardless.
    for k in &ks {
        assert!(matches!(
            cache.get(k, &NONE).await,
            Lookup::Hit(Fetched {
                source: Source::Memory,
                ..
            })
        ));
    }
}

/// Many tasks, overlapping keys, every tier, tiers big enough that nothing is evicted:
/// every key is computed exactly once and every read is the key's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_concurrent_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(config(64 << 20, Some(dir.path())), ManualClock::new(1)).unwrap();
    let computed: Arc<DashMap<Digest, usize>> = Arc::new(DashMap::new());
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let cache = cache.clone();
            let computed = Arc::clone(&computed);
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for _ in 0..200 {
                    let n = rng.random_range(1..8);
                    let ks: Vec<CacheKey> = (0..n)
                        .map(|_| key(&cache, "m", &rng.random_range(0..300).to_string()))
                        .collect();
                    let computed = Arc::clone(&computed);
                    let out = cache
                        .get_many_or_compute(&ks, &NONE, move |missing| {
                            for k in &missing {
                                *computed.entry(*k.digest()).or_insert(0) += 1;
                            }
                            async move {
                                tokio::task::yield_now().await;
                                Ok::<_, ModelFailed>(missing.iter().map(value_of).collect())
                            }
                        })
                        .await
                        .unwrap();
                    for (k, f) in ks.iter().zip(out) {
                        assert_eq!(f.value, value_of(k));
                    }
                    if rng.random_bool(0.05) {
                        cache.memory().unwrap().clear();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(!computed.is_empty());
    for e in computed.iter() {
        assert_eq!(
            *e.value(),
            1,
            "key {:?} computed {} times",
            e.key(),
            e.value()
        );
    }
}

/// Small tiers, constant eviction: every read is still the key's value, and no tier goes
/// over its byte bound at any point.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_concurrent_under_eviction_respects_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mem_cap = 32 << 10;
    let disk_cap = 256 << 10;
    let cfg = CacheConfig {
        memory: Some(MemoryConfig::bytes(mem_cap)),
        disk: Some(disk_config(dir.path(), disk_cap)),
        ..CacheConfig::default()
    };
    let cache = Cache::open(cfg, ManualClock::new(1)).unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(100 + t);
                for _ in 0..300 {
                    let k = key(&cache, "m", &rng.random_range(0..2000).to_string());
                    let len = rng.random_range(0..2048);
                    let f = cache
                        .get_or_compute(&k, &NONE, || {
                            let v = value_of(&k);
                            async move {
                                Ok::<_, ModelFailed>(Bytes::from(
                                    v.iter()
                                        .copied()
                                        .cycle()
                                        .take(len.max(v.len()))
                                        .collect::<Vec<u8>>(),
                                ))
                            }
                        })
                        .await
                        .unwrap();
                    let expect = value_of(&k);
                    assert!(f.value.starts_with(&expect), "wrong value for {k:?}");
                    assert!(cache.memory().unwrap().weight() <= mem_cap);
                    assert!(cache.disk().unwrap().bytes() <= disk_cap);
                    if rng.random_bool(0.02) {
                        cache.remove(&k).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = cache.stats();
    assert!(s.memory.unwrap().evictions > 0);
    assert!(s.disk.unwrap().evictions > 0);
}

#[tokio::test(start_paused = true)]
async fn the_cleanup_task_reclaims_expired_entries_on_its_interval() {
    let clock = ManualClock::new(0);
    let mut cfg = config(1 << 20, None);
    cfg.cleanup_interval = Duration::from_secs(30);
    cfg.default_ttl = Some(Duration::from_secs(5));
    let cache = Cache::open(cfg, clock.clone()).unwrap();
    for i in 0..10 {
        cache
            .insert(
                &key(&cache, "m", &i.to_string()),
                Bytes::from_static(b"v"),
                &NONE,
            )
            .await;
    }
    assert_eq!(cache.memory().unwrap().entries(), 10);
    clock.advance(Duration::from_secs(6));
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(cache.memory().unwrap().entries(), 0);
    assert_eq!(cache.stats().memory.unwrap().expirations, 10);
}

#[test]
fn capacities_resolve_bytes_and_fractions_of_ram() {
    use infercache_core::Capacity;
    assert_eq!(
        crate::resolve_capacity(Capacity::Bytes(4096)).unwrap(),
        4096
    );
    let ram = crate::total_ram().expect("Linux reports its RAM");
    let third = crate::resolve_capacity("0.3".parse().unwrap()).unwrap();
    assert!(third > ram / 4 && third < ram / 3 + 1, "{third} of {ram}");
}

#[test]
fn opening_a_foreign_directory_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("thesis.tex"), b"precious").unwrap();
    let err = Cache::open(config(1 << 20, Some(dir.path())), ManualClock::new(0)).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Disk(crate::disk::DiskError::NotOurDirectory { .. })
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("thesis.tex")).unwrap(),
        b"precious"
    );
}

/// After `n` inserts: the memory tier and the disk tier's index together within the
/// memory tier's capacity, and the reservation at least the index.
async fn the_disk_index_is_charged_to_memory(policy: WritePolicy) {
    let dir = tempfile::tempdir().unwrap();
    let memory = 4 << 20;
    let mut cfg = config(memory, Some(dir.path()));
    cfg.write_policy = policy;
    let bound = |cache: &Cache| {
        let (m, d) = (cache.memory().unwrap(), cache.disk().unwrap());
        let index = d.index_bytes();
        assert!(index > 0);
        assert!(m.reserved() >= index, "{} < {index}", m.reserved());
        assert!(
            m.weight() + index <= memory,
            "memory tier {} + disk index {index} > {memory}",
            m.weight()
        );
        assert_eq!(cache.stats().memory.unwrap().reserved_bytes, m.reserved());
    };
    let n = 20_000;
    {
        let cache = Cache::open(cfg.clone(), ManualClock::new(1)).unwrap();
        for i in 0..n {
            let k = key(&cache, "m", &i.to_string());
            cache.insert(&k, value_of(&k), &NONE).await;
            if i % 5_000 == 4_999 {
                cache.flush().await;
                bound(&cache);
            }
        }
        cache.flush().await;
        bound(&cache);
        // The index holds a good part of the budget, so the memory tier was held under it.
        assert!(cache.disk().unwrap().index_bytes() > memory / 4);
        assert!(cache.memory().unwrap().stats().evictions > 0);
        cache.shutdown().await;
    }
    // A recovered index is charged before the first request.
    let write_through = matches!(cfg.write_policy, WritePolicy::WriteThrough);
    let cache = Cache::open(cfg, ManualClock::new(1)).unwrap();
    if write_through {
        // (Write-back may have dropped writes its full queue could not take.)
        assert_eq!(cache.disk().unwrap().entries(), n);
    }
    bound(&cache);
    // A clear gives the memory tier its whole capacity back (up to the empty index).
    cache.clear().await;
    assert!(cache.memory().unwrap().reserved() < memory / 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_index_is_charged_to_the_memory_budget_write_through() {
    the_disk_index_is_charged_to_memory(WritePolicy::WriteThrough).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_index_is_charged_to_the_memory_budget_write_back() {
    the_disk_index_is_charged_to_memory(WritePolicy::WriteBack { queue: 1024 }).await;
}
