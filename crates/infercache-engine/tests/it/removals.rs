//! A removal sticks: after `Cache::remove` has returned, no tier serves the old value,
//! not through a lookup that was in flight, not after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use infercache_core::{CanonicalInput, Epochs, KeyParts, SystemClock};
use infercache_engine::disk::Compression;
use infercache_engine::*;

fn disk_cfg(dir: &std::path::Path) -> DiskConfig {
    DiskConfig {
        dir: dir.to_owned(),
        capacity: 64 << 20,
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

fn is_hit(l: &Lookup) -> bool {
    matches!(l, Lookup::Hit(_))
}

/// Memory used to be cleared before disk: a lookup that missed memory and read the disk
/// before its record was removed promoted the value back into memory, where it was served
/// after the removal had returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lookup_reading_the_disk_during_a_removal_does_not_promote_the_value_back() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(
        CacheConfig {
            disk: Some(disk_cfg(dir.path())),
            ..CacheConfig::default()
        },
        SystemClock::shared(),
    )
    .unwrap();
    let opts = RequestOptions::default();
    let mut resurrected = 0;
    for round in 0..300 {
        let k = key(&cache, &format!("round {round}"));
        cache.insert(&k, Bytes::from_static(b"old"), &opts).await;
        // Only on disk: every lookup goes to the disk tier.
        cache.memory().unwrap().remove(k.digest());
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (cache, k, stop) = (cache.clone(), k.clone(), Arc::clone(&stop));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        cache.get(&k, &RequestOptions::default()).await;
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(cache.remove(&k).await.found, "the disk held it");
        let after = cache.get(&k, &opts).await;
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.await.unwrap();
        }
        if is_hit(&after) || is_hit(&cache.get(&k, &opts).await) {
            resurrected += 1;
        }
    }
    assert_eq!(resurrected, 0, "removed values served again");
}

/// A write-back drop unindexes the disk's older record without a tombstone; a later
/// removal found nothing indexed and wrote none, so the next open indexed the old record
/// again and served it.
#[tokio::test(flavor = "current_thread")]
async fn a_removal_after_a_dropped_write_back_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || CacheConfig {
        disk: Some(disk_cfg(dir.path())),
        write_policy: WritePolicy::WriteBack { queue: 4 },
        ..CacheConfig::default()
    };
    let opts = RequestOptions::default();
    let cache = Cache::open(config(), SystemClock::shared()).unwrap();
    let k = key(&cache, "removed");
    cache.insert(&k, Bytes::from_static(b"v1"), &opts).await;
    cache.flush().await;
    // The drainer cannot run in between (one thread, no await that yields): the queue
    // fills, and the overwrite of `k` is dropped for the disk.
    for i in 0..8 {
        cache
            .insert(
                &key(&cache, &format!("filler {i}")),
                Bytes::from_static(b"f"),
                &opts,
            )
            .await;
    }
    cache.insert(&k, Bytes::from_static(b"v2"), &opts).await;
    assert!(
        cache.stats().writeback_dropped > 0,
        "the overwrite was dropped"
    );
    let removal = cache.remove(&k).await;
    assert!(removal.found && removal.confirmed);
    cache.shutdown().await;
    drop(cache);

    let cache = Cache::open(config(), SystemClock::shared()).unwrap();
    let k = key(&cache, "removed");
    assert_eq!(
        cache.get(&k, &opts).await,
        Lookup::Miss,
        "served after restart"
    );
}

/// Without a remote tier, a removal is confirmed; a key no tier held is not found.
#[tokio::test]
async fn a_removal_reports_what_it_found() {
    let cache = Cache::open(CacheConfig::default(), SystemClock::shared()).unwrap();
    let opts = RequestOptions::default();
    let k = key(&cache, "x");
    let none = cache.remove(&k).await;
    assert_eq!((none.found, none.confirmed), (false, true));
    cache.insert(&k, Bytes::from_static(b"v"), &opts).await;
    let some = cache.remove(&k).await;
    assert_eq!((some.found, some.confirmed), (true, true));
    assert_eq!(cache.get(&k, &opts).await, Lookup::Miss);
}

/// With a shared tier, a removal reaches the other nodes' own tiers, and one made while
/// the shared tier was unreachable is reported as unconfirmed and replayed when it is back.
#[tokio::test]
async fn a_removal_reaches_other_nodes_and_is_replayed_after_an_outage() {
    let clock = SystemClock::shared();
    let remote_a = testing::MemoryRemote::new(clock.clone(), std::time::Duration::from_millis(50));
    let remote_b = remote_a.node();
    let node = |remote: Arc<testing::MemoryRemote>| {
        Cache::open(
            CacheConfig {
                remote: Some(remote as Arc<dyn RemoteTier>),
                ..CacheConfig::default()
            },
            clock.clone(),
        )
        .unwrap()
    };
    let (a, b) = (node(Arc::clone(&remote_a)), node(Arc::clone(&remote_b)));
    let opts = RequestOptions::default();
    let (ka, kb) = (key(&a, "shared"), key(&b, "shared"));
    a.insert(&ka, Bytes::from_static(b"v"), &opts).await;
    assert!(
        is_hit(&b.get(&kb, &opts).await),
        "B read it (now in its memory)"
    );
    let removal = a.remove(&ka).await;
    assert!(removal.found && removal.confirmed);
    assert_eq!(b.get(&kb, &opts).await, Lookup::Miss, "B dropped its copy");

    a.insert(&ka, Bytes::from_static(b"v"), &opts).await;
    assert!(is_hit(&b.get(&kb, &opts).await));
    remote_a.set_reachable(false).await;
    let removal = a.remove(&ka).await;
    assert!(
        removal.found && !removal.confirmed,
        "not confirmed: {removal:?}"
    );
    assert_eq!(a.stats().remote.unwrap().removals_pending, 1);
    assert!(
        remote_a.contains(ka.digest()),
        "still in the shared tier meanwhile"
    );
    remote_a.set_reachable(true).await;
    assert!(!remote_a.contains(ka.digest()), "replayed");
    assert_eq!(b.get(&kb, &opts).await, Lookup::Miss, "B dropped its copy");
}
