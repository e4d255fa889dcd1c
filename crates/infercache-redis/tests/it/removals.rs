//! A removal sticks on every node: written after the values queued before it, replayed
//! when Redis was unreachable, applied by the other nodes to their own tiers, and caught
//! up by a node that was away.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use infercache_core::SystemClock;
use infercache_engine::disk::Compression;
use infercache_engine::{
    Cache, CacheConfig, DiskConfig, Lookup, RemoteEntry, RemoteRemoval, RemoteTier, RequestOptions,
    Source,
};
use infercache_redis::testing::RedisServer;
use infercache_redis::{Target, WriteMode};
use redis::AsyncCommands;

use crate::tier::{get, key, node, tier, wait_until};

async fn raw_get(redis: &RedisServer, key: &str) -> Option<Vec<u8>> {
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    c.get(key).await.unwrap()
}

fn is_hit(l: &Lookup) -> bool {
    matches!(l, Lookup::Hit(_))
}

/// A value still queued for write-back used to be written after the `DEL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_queued_for_write_back_is_not_written_after_its_removal() {
    let redis = RedisServer::start();
    let t = tier(Target::Single(redis.url()), |c| {
        c.write = WriteMode::Back { queue: 20_000 };
    });
    let cache = node(&t, false).await;
    let keys: Vec<_> = (0..5_000)
        .map(|i| key(&cache, "m", &format!("k{i}")))
        .collect();
    let entries = keys
        .iter()
        .map(|k| {
            let entry = RemoteEntry {
                value: Bytes::from_static(b"queued"),
                created_ms: SystemClock::shared().now_ms(),
                expires_ms: None,
            };
            (*k.digest(), entry)
        })
        .collect();
    t.put_many(entries).await;
    let last = keys.last().unwrap();
    assert_eq!(
        t.remove(*last.digest()).await,
        RemoteRemoval::Removed { found: true },
        "removed after the queued write of it"
    );
    t.flush().await;
    assert!(
        raw_get(&redis, &t.value_key(keys[0].digest()))
            .await
            .is_some()
    );
    assert_eq!(raw_get(&redis, &t.value_key(last.digest())).await, None);
}

/// A `DEL` while Redis was unreachable used to be dropped, yet the removal answered as
/// done; now it is reported unconfirmed and replayed once Redis answers, and the other
/// node drops its own copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_while_redis_is_stalled_is_reported_and_replayed() {
    let redis = RedisServer::start();
    let ta = tier(Target::Single(redis.url()), |_| {});
    let (a, b) = (
        node(&ta, true).await,
        node(&tier(Target::Single(redis.url()), |_| {}), true).await,
    );
    let calls = AtomicUsize::new(0);
    let (ka, kb) = (key(&a, "m", "x"), key(&b, "m", "x"));
    get(&a, &ka, &calls).await;
    assert_eq!(get(&b, &kb, &calls).await.1, Source::Remote);

    redis.pause();
    let removal = a.remove(&ka).await;
    assert!(!removal.confirmed, "Redis did not take it: {removal:?}");
    assert_eq!(a.stats().remote.unwrap().removals_pending, 1);
    assert_eq!(a.get(&ka, &RequestOptions::default()).await, Lookup::Miss);
    redis.resume();

    wait_until("the removal replayed", Duration::from_secs(5), async || {
        ta.stats().removals_replayed == 1
    })
    .await;
    assert_eq!(raw_get(&redis, &ta.value_key(ka.digest())).await, None);
    wait_until("B dropped its copy", Duration::from_secs(2), async || {
        !is_hit(&b.get(&kb, &RequestOptions::default()).await)
    })
    .await;
}

/// Another node's memory copy used to be served forever after a removal elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_on_one_node_reaches_the_memory_of_another() {
    let redis = RedisServer::start();
    let tb = tier(Target::Single(redis.url()), |_| {});
    let (a, b) = (
        node(&tier(Target::Single(redis.url()), |_| {}), true).await,
        node(&tb, true).await,
    );
    let calls = AtomicUsize::new(0);
    let (ka, kb) = (key(&a, "m", "x"), key(&b, "m", "x"));
    get(&a, &ka, &calls).await;
    get(&b, &kb, &calls).await;
    assert_eq!(get(&b, &kb, &calls).await.1, Source::Memory);
    assert!(a.remove(&ka).await.confirmed);
    wait_until("B dropped its copy", Duration::from_secs(2), async || {
        !is_hit(&b.get(&kb, &RequestOptions::default()).await)
    })
    .await;
    assert_eq!(tb.stats().removals_received, 1);
}

/// A node that was stopped while another removed a key used to serve it from its disk
/// after it started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_away_drops_what_was_removed_meanwhile() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let with_disk = async || {
        let t = tier(Target::Single(redis.url()), |_| {});
        let config = CacheConfig {
            disk: Some(DiskConfig {
                dir: dir.path().to_owned(),
                capacity: 16 << 20,
                segment_size: None,
                compression: Compression::None,
            }),
            remote: Some(Arc::new(t.clone()) as Arc<dyn RemoteTier>),
            ..CacheConfig::default()
        };
        let cache = Cache::open(config, SystemClock::shared()).unwrap();
        wait_until("B's tier in use", Duration::from_secs(5), async || {
            t.stats().connected
        })
        .await;
        cache
    };
    let a = node(&tier(Target::Single(redis.url()), |_| {}), true).await;
    let calls = AtomicUsize::new(0);
    let b = with_disk().await;
    let kb = key(&b, "m", "x");
    get(&b, &kb, &calls).await;
    b.shutdown().await;
    drop(b);

    assert!(a.remove(&key(&a, "m", "x")).await.confirmed);

    let b = with_disk().await;
    let kb = key(&b, "m", "x");
    assert_eq!(b.get(&kb, &RequestOptions::default()).await, Lookup::Miss);
}
