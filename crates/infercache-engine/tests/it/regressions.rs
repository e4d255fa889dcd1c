//! Regression tests, named after the bug each one caught: races between disk backfill and
//! writes, stale values after failed or dropped writes, waiters' own cache control, and
//! cache-version aliasing. Single-threaded runtimes make the interleavings deterministic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use infercache_core::{CanonicalInput, Epochs, KeyParts, ManualClock, SharedClock};
use infercache_engine::disk::Compression;
use infercache_engine::*;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

const NONE: RequestOptions = RequestOptions {
    max_age: None,
    no_cache: false,
    no_store: false,
    ttl: None,
    stale_while_revalidate: None,
    stale_if_error: None,
};

fn disk_cfg(dir: &std::path::Path, capacity: u64) -> DiskConfig {
    DiskConfig {
        dir: dir.to_owned(),
        capacity,
        segment_size: None,
        compression: Compression::None,
    }
}

fn key(cache: &Cache, input: &str) -> CacheKey {
    let input = CanonicalInput::text(input);
    cache.key(KeyParts {
        namespace: "t",
        model: "m",
        version: "1",
        artifact: None,
        epochs: Epochs::default(),
        input: &input,
        params: b"",
    })
}

fn hit(l: Lookup) -> Option<Bytes> {
    match l {
        Lookup::Hit(f) => Some(f.value),
        Lookup::Miss => None,
    }
}

/// F1: a disk write that fails (here TooLarge; ENOSPC is the same path) leaves the OLD
/// value on disk while memory holds the new one; once memory loses it (eviction, restart),
/// the stale old value is served.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_disk_overwrite_does_not_resurrect_the_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_000);
    let cfg = CacheConfig {
        memory: Some(MemoryConfig {
            shards: Some(1),
            ..MemoryConfig::bytes(8 << 20)
        }),
        disk: Some(disk_cfg(dir.path(), 1 << 20)), // segment 128 KiB
        ..CacheConfig::default()
    };
    let cache = Cache::open(cfg.clone(), Arc::clone(&clock)).unwrap();
    let k = key(&cache, "a");
    cache.insert(&k, Bytes::from_static(b"old"), &NONE).await;
    let big = Bytes::from(vec![7u8; 200 << 10]);
    cache.insert(&k, big.clone(), &NONE).await; // memory: big; disk: refused
    assert_eq!(hit(cache.get(&k, &NONE).await), Some(big));
    // Memory loses the entry (eviction; here: a restart).
    cache.shutdown().await;
    drop(cache);
    let cache = Cache::open(cfg, clock).unwrap();
    let k = key(&cache, "a");
    assert_eq!(
        hit(cache.get(&k, &NONE).await),
        None,
        "stale value served after overwrite"
    );
}

/// F2: write-back queue full -> the Put is dropped, but the older disk value stays and is
/// served later.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_write_back_put_does_not_resurrect_the_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_000);
    let cfg = CacheConfig {
        disk: Some(disk_cfg(dir.path(), 1 << 20)),
        write_policy: WritePolicy::WriteBack { queue: 1 },
        ..CacheConfig::default()
    };
    let cache = Cache::open(cfg, clock).unwrap();
    let (k, other) = (key(&cache, "a"), key(&cache, "b"));
    cache.insert(&k, Bytes::from_static(b"v0"), &NONE).await;
    cache.flush().await;
    // No await in between: the drainer cannot run on this single-threaded runtime.
    cache.insert(&other, Bytes::from_static(b"x"), &NONE).await; // fills the queue
    cache.insert(&k, Bytes::from_static(b"v1"), &NONE).await; // dropped for disk
    assert_eq!(cache.stats().writeback_dropped, 1);
    cache.flush().await;
    cache.memory().unwrap().remove(k.digest()); // memory loses it (eviction)
    assert_eq!(
        hit(cache.get(&k, &NONE).await),
        None,
        "stale v0 served after overwrite with v1"
    );
}

/// F3: a disk backfill races a remove: the removed value is put back into memory, forever.
#[tokio::test(flavor = "current_thread")]
async fn a_backfill_racing_remove_does_not_bring_the_value_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_000);
    let cfg = CacheConfig {
        disk: Some(disk_cfg(dir.path(), 1 << 20)),
        disk_io_concurrency: 1,
        ..CacheConfig::default()
    };
    let cache = Cache::open(cfg, clock).unwrap();
    let k = key(&cache, "a");
    cache.insert(&k, Bytes::from_static(b"v0"), &NONE).await;
    cache.memory().unwrap().remove(k.digest()); // only on disk now
    let (c1, k1) = (cache.clone(), k.clone());
    let reader = tokio::spawn(async move { c1.get(&k1, &NONE).await });
    tokio::task::yield_now().await; // reader is now reading disk
    assert!(
        cache.remove(&k).await.found,
        "remove reports it removed something"
    );
    reader.await.unwrap();
    assert_eq!(
        hit(cache.get(&k, &NONE).await),
        None,
        "removed value served"
    );
}

/// F3b: same with write-back, whose docs promise "a removed value cannot reappear".
#[tokio::test(flavor = "current_thread")]
async fn a_backfill_racing_a_write_back_remove_does_not_bring_the_value_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_000);
    let cfg = CacheConfig {
        disk: Some(disk_cfg(dir.path(), 1 << 20)),
        write_policy: WritePolicy::WriteBack { queue: 16 },
        ..CacheConfig::default()
    };
    let cache = Cache::open(cfg, clock).unwrap();
    let k = key(&cache, "a");
    cache.insert(&k, Bytes::from_static(b"v0"), &NONE).await;
    cache.flush().await;
    cache.memory().unwrap().remove(k.digest());
    let (c1, k1) = (cache.clone(), k.clone());
    let reader = tokio::spawn(async move { c1.get(&k1, &NONE).await });
    tokio::task::yield_now().await;
    cache.remove(&k).await;
    reader.await.unwrap();
    cache.flush().await;
    assert_eq!(
        hit(cache.get(&k, &NONE).await),
        None,
        "removed value served"
    );
}

/// F4: a disk backfill races an insert: memory gets the older disk value back while disk
/// has the new one.
#[tokio::test(flavor = "current_thread")]
async fn a_backfill_racing_insert_does_not_overwrite_the_newer_value() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = ManualClock::new(1_000);
    let cfg = CacheConfig {
        disk: Some(disk_cfg(dir.path(), 1 << 20)),
        disk_io_concurrency: 1,
        ..CacheConfig::default()
    };
    let cache = Cache::open(cfg, clock).unwrap();
    let k = key(&cache, "a");
    cache.insert(&k, Bytes::from_static(b"v0"), &NONE).await;
    cache.memory().unwrap().remove(k.digest());
    let (c1, k1) = (cache.clone(), k.clone());
    let reader = tokio::spawn(async move { c1.get(&k1, &NONE).await });
    tokio::task::yield_now().await;
    cache.insert(&k, Bytes::from_static(b"v1"), &NONE).await;
    reader.await.unwrap();
    assert_eq!(
        hit(cache.get(&k, &NONE).await),
        Some(Bytes::from_static(b"v1")),
        "overwritten value served"
    );
}

/// F5: a waiter with max_age (or no_cache) coalesces onto a leader that found an old disk
/// entry and receives a value older than it accepts.
#[tokio::test(flavor = "current_thread")]
async fn a_waiter_applies_its_own_max_age_and_no_cache() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let cfg = CacheConfig {
        memory: None,
        disk: Some(disk_cfg(dir.path(), 1 << 20)),
        ..CacheConfig::default()
    };
    let cache = Cache::open(cfg, clock.clone()).unwrap();
    let k = key(&cache, "a");
    cache.insert(&k, Bytes::from_static(b"old"), &NONE).await;
    clock.advance(Duration::from_secs(3600));
    let (c1, k1) = (cache.clone(), k.clone());
    let leader = tokio::spawn(async move {
        c1.get_or_compute(&k1, &NONE, || async {
            Ok::<_, Never>(Bytes::from_static(b"new"))
        })
        .await
    });
    tokio::task::yield_now().await; // leader reads disk
    let strict = RequestOptions {
        max_age: Some(Duration::from_secs(1)),
        ..NONE
    };
    let (c2, k2) = (cache.clone(), k.clone());
    let nocache = RequestOptions {
        no_cache: true,
        ..NONE
    };
    let w2 = tokio::spawn(async move {
        c2.get_or_compute(&k2, &nocache, || async {
            Ok::<_, Never>(Bytes::from_static(b"new"))
        })
        .await
    });
    let got = cache
        .get_or_compute(&k, &strict, || async {
            Ok::<_, Never>(Bytes::from_static(b"new"))
        })
        .await
        .unwrap();
    leader.await.unwrap().unwrap();
    let got2 = w2.await.unwrap().unwrap();
    assert_eq!(
        got.value, "new",
        "the max-age=1s caller got a value an hour old ({:?})",
        got.source
    );
    assert_eq!(
        got2.value, "new",
        "the no-cache caller got a stored value ({:?})",
        got2.source
    );
}

/// Write-back without a memory tier would leave values only in the queue: refused.
#[test]
fn write_back_without_a_memory_tier_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CacheConfig {
        memory: None,
        disk: Some(disk_cfg(dir.path(), 1 << 20)),
        write_policy: WritePolicy::WriteBack { queue: 16 },
        ..CacheConfig::default()
    };
    let err = Cache::open(cfg, ManualClock::new(1_000)).unwrap_err();
    assert!(matches!(err, EngineError::InvalidConfig(_)), "{err}");
}

/// F8: cache_version is shifted left by 32: versions equal mod 2^32 share keys.
#[tokio::test]
async fn cache_versions_equal_mod_2_pow_32_do_not_alias() {
    let c0 = Cache::open(
        CacheConfig {
            cache_version: 0,
            ..CacheConfig::default()
        },
        ManualClock::new(1),
    )
    .unwrap();
    let c1 = Cache::open(
        CacheConfig {
            cache_version: 1 << 32,
            ..CacheConfig::default()
        },
        ManualClock::new(1),
    )
    .unwrap();
    assert_ne!(
        key(&c0, "a").digest(),
        key(&c1, "a").digest(),
        "bumping cache_version invalidated nothing"
    );
}

/// With write-back, `remove` of a key only the disk holds reported false (a 404 over
/// HTTP) although it removed it.
#[tokio::test(flavor = "current_thread")]
async fn a_write_back_remove_reports_a_key_only_the_disk_held() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CacheConfig {
        disk: Some(disk_cfg(dir.path(), 1 << 20)),
        write_policy: WritePolicy::WriteBack { queue: 16 },
        ..CacheConfig::default()
    };
    let cache = Cache::open(cfg, ManualClock::new(1_000)).unwrap();
    let k = key(&cache, "a");
    cache.insert(&k, Bytes::from_static(b"v"), &NONE).await;
    cache.flush().await;
    cache.memory().unwrap().remove(k.digest());
    assert!(cache.remove(&k).await.found, "the disk held it");
    cache.flush().await;
    assert_eq!(hit(cache.get(&k, &NONE).await), None);
}
