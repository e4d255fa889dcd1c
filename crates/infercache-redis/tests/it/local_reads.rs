//! Invalidation reaches every tier of every node: a node that missed an invalidation and
//! starts while Redis is down does not serve its own disk entries from before it.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use infercache_core::SystemClock;
use infercache_engine::disk::Compression;
use infercache_engine::{Cache, CacheConfig, DiskConfig, RemoteTier, Scope, Source};
use infercache_redis::testing::{RedisServer, RedisServerOptions};
use infercache_redis::{RedisTier, Target};

use crate::tier::{get, key, node, tier, wait_until};

fn with_disk(t: &RedisTier, dir: &std::path::Path) -> Cache {
    let config = CacheConfig {
        disk: Some(DiskConfig {
            dir: dir.to_owned(),
            capacity: 16 << 20,
            segment_size: None,
            compression: Compression::None,
        }),
        remote: Some(Arc::new(t.clone()) as Arc<dyn RemoteTier>),
        ..CacheConfig::default()
    };
    Cache::open(config, SystemClock::shared()).unwrap()
}

/// B caches a value on disk and stops; A invalidates; Redis goes down; B starts. B used to
/// serve its disk entry from before the invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_an_invalidation_and_starts_while_redis_is_down_computes() {
    let mut redis = RedisServer::start_with(RedisServerOptions { appendonly: true });
    let dir = tempfile::tempdir().unwrap();
    let calls = AtomicUsize::new(0);
    let tb = tier(Target::Single(redis.url()), |_| {});
    let b = with_disk(&tb, dir.path());
    wait_until("B in sync", Duration::from_secs(5), async || {
        tb.stats().connected
    })
    .await;
    assert_eq!(
        get(&b, &key(&b, "m", "x"), &calls).await.1,
        Source::Computed
    );
    assert_eq!(get(&b, &key(&b, "m", "x"), &calls).await.1, Source::Memory);
    b.shutdown().await;
    drop(b);

    let a = node(&tier(Target::Single(redis.url()), |_| {}), false).await;
    a.invalidate(Scope::Model { model: "m".into() })
        .await
        .unwrap();
    // The AOF is written every second: the bump must survive the kill.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    redis.kill9();

    let tb = tier(Target::Single(redis.url()), |_| {});
    let b = with_disk(&tb, dir.path());
    let (_, source) = get(&b, &key(&b, "m", "x"), &calls).await;
    assert_eq!(
        source,
        Source::Computed,
        "not served from before the invalidation"
    );
    let sync = b.stats().sync.unwrap();
    assert!(!sync.in_sync && !sync.local_reads && sync.unsynced_ms.is_none());
    assert!(sync.local_reads_skipped >= 1);

    let stale_key = *key(&b, "m", "x").digest();
    redis.restart();
    wait_until("B in sync again", Duration::from_secs(5), async || {
        tb.stats().connected
    })
    .await;
    assert_ne!(
        *key(&b, "m", "x").digest(),
        stale_key,
        "B's epochs caught up with the invalidation"
    );
    assert!(b.stats().sync.unwrap().in_sync);
}
