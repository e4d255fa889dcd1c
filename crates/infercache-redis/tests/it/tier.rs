//! The Redis tier under the engine's `Cache`, against real redis-server processes: several
//! caches on one Redis stand for several nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use infercache_core::{CanonicalInput, Epochs, KeyParts, SystemClock};
use infercache_engine::{Cache, CacheConfig, CacheKey, RemoteTier, RequestOptions, Scope, Source};
use infercache_redis::testing::{RedisServer, RedisServerOptions};
use infercache_redis::{BreakerState, RedisConfig, RedisTier, Target, WriteMode};
use redis::AsyncCommands;

/// A Redis tier on `url` with test-friendly timings.
pub fn tier(target: Target, tweak: impl FnOnce(&mut RedisConfig)) -> RedisTier {
    let mut config = RedisConfig::new(target);
    config.connect_timeout = Duration::from_millis(100);
    config.command_timeout = Duration::from_millis(200);
    config.breaker_min_open = Duration::from_millis(100);
    config.breaker_max_open = Duration::from_millis(400);
    config.probe_interval = Duration::from_millis(50);
    tweak(&mut config);
    RedisTier::connect(config, SystemClock::shared()).unwrap()
}

/// A node: a cache with only the Redis tier (`memory`: a memory tier above it), once the
/// tier is in use (connected, epochs in sync).
pub async fn node(tier: &RedisTier, memory: bool) -> Cache {
    let cache = node_unready(tier, memory);
    let start = Instant::now();
    while !tier.stats().connected {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the Redis tier never came into use"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cache
}

/// A node, at once (Redis may be down).
pub fn node_unready(tier: &RedisTier, memory: bool) -> Cache {
    let config = CacheConfig {
        memory: memory.then(|| infercache_engine::MemoryConfig::bytes(16 << 20)),
        remote: Some(Arc::new(tier.clone()) as Arc<dyn RemoteTier>),
        ..CacheConfig::default()
    };
    Cache::open(config, SystemClock::shared()).unwrap()
}

pub fn key(cache: &Cache, model: &str, text: &str) -> CacheKey {
    let input = CanonicalInput::text(text);
    cache.key(KeyParts {
        namespace: "tenant",
        model,
        version: "1",
        artifact: None,
        epochs: Epochs::default(),
        input: &input,
        params: b"",
    })
}

/// Computes `text` upper-cased, counting calls.
pub async fn get(cache: &Cache, key: &CacheKey, calls: &AtomicUsize) -> (Bytes, Source) {
    let text = key.digest().to_hex();
    let f = cache
        .get_or_compute(key, &RequestOptions::default(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(text.to_uppercase()))
        })
        .await
        .unwrap();
    (f.value, f.source)
}

pub async fn wait_until(
    what: &str,
    limit: Duration,
    mut cond: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn commandstat(server: &RedisServer, cmd: &str) -> u64 {
    let mut c = server.client().get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_on_one_node_is_a_hit_on_another() {
    let redis = RedisServer::start();
    let (a, b) = (
        node(&tier(Target::Single(redis.url()), |_| {}), true).await,
        node(&tier(Target::Single(redis.url()), |_| {}), true).await,
    );
    let calls = AtomicUsize::new(0);
    let (va, sa) = get(&a, &key(&a, "m", "x"), &calls).await;
    assert_eq!(sa, Source::Computed);
    let (vb, sb) = get(&b, &key(&b, "m", "x"), &calls).await;
    assert_eq!((sb, &vb), (Source::Remote, &va));
    // Promoted to B's memory.
    let (_, again) = get(&b, &key(&b, "m", "x"), &calls).await;
    assert_eq!(again, Source::Memory);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stats = b.stats();
    assert_eq!(stats.remote.as_ref().unwrap().hits, 1);
    assert_eq!(stats.models["m"].remote_hits, 1);
    assert_eq!(stats.remote.unwrap().breaker, BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_mget_and_every_key_has_a_ttl_under_the_prefix() {
    let redis = RedisServer::start();
    let t = tier(Target::Single(redis.url()), |c| {
        c.prefix = "ic-test:".into()
    });
    let (a, b) = (node(&t, false).await, node(&t, false).await);
    let keys: Vec<CacheKey> = (0..20).map(|i| key(&a, "m", &format!("t{i}"))).collect();
    a.get_many_or_compute(&keys, &RequestOptions::default(), |ks| async move {
        Ok::<_, std::io::Error>(
            ks.iter()
                .map(|k| Bytes::from(k.digest().to_hex()))
                .collect(),
        )
    })
    .await
    .unwrap();
    let before = commandstat(&redis, "mget");
    let found = b
        .get_many_or_compute(&keys, &RequestOptions::default(), |_| async {
            Err::<Vec<Bytes>, _>(std::io::Error::other("everything is in Redis"))
        })
        .await
        .unwrap();
    assert!(found.iter().all(|f| f.source == Source::Remote));
    assert_eq!(
        commandstat(&redis, "mget") - before,
        1,
        "one round trip for 20 keys"
    );

    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Vec<String> = c.keys("*").await.unwrap();
    let values: Vec<&String> = stored
        .iter()
        .filter(|k| k.starts_with("ic-test:v:"))
        .collect();
    assert_eq!(values.len(), 20);
    assert!(
        stored.iter().all(|k| k.starts_with("ic-test:")),
        "{stored:?}"
    );
    for k in values {
        let ttl: i64 = c.pttl(k).await.unwrap();
        assert!(ttl > 0, "{k} has no TTL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_foreign_values_are_dropped_and_counted() {
    let redis = RedisServer::start();
    let t = tier(Target::Single(redis.url()), |_| {});
    let a = node(&t, false).await;
    let calls = AtomicUsize::new(0);
    let k1 = key(&a, "m", "one");
    let k2 = key(&a, "m", "two");
    let (v1, _) = get(&a, &k1, &calls).await;
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Flip a payload byte of k1's value; put k1's (intact) value under k2's key.
    let raw: Vec<u8> = c.get(t.value_key(k1.digest())).await.unwrap();
    let mut flipped = raw.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let _: () = c.set(t.value_key(k1.digest()), flipped).await.unwrap();
    let _: () = c.set(t.value_key(k2.digest()), raw).await.unwrap();

    let (again, source) = get(&a, &k1, &calls).await;
    assert_eq!(
        (source, &again),
        (Source::Computed, &v1),
        "recomputed, not served damaged"
    );
    let (_, source) = get(&a, &k2, &calls).await;
    assert_eq!(source, Source::Computed, "another key's value is not a hit");
    assert_eq!(a.stats().remote.unwrap().corrupt, 2);
    // Other data under the prefix is no hit either.
    let k3 = key(&a, "m", "three");
    let _: () = c.set(t.value_key(k3.digest()), "not ours").await.unwrap();
    assert_eq!(get(&a, &k3, &calls).await.1, Source::Computed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_queues_drains_on_flush_and_counts_overflow() {
    let redis = RedisServer::start();
    let t = tier(Target::Single(redis.url()), |c| {
        c.write = WriteMode::Back { queue: 4 };
    });
    let a = node(&t, true).await;
    let keys: Vec<CacheKey> = (0..50).map(|i| key(&a, "m", &format!("t{i}"))).collect();
    a.get_many_or_compute(&keys, &RequestOptions::default(), |ks| async move {
        Ok::<_, std::io::Error>(ks.iter().map(|_| Bytes::from_static(b"v")).collect())
    })
    .await
    .unwrap();
    a.flush().await;
    let stats = t.stats();
    assert!(stats.writeback_dropped > 0, "{stats:?}");
    assert_eq!(stats.writes + stats.writeback_dropped, 50, "{stats:?}");
    assert_eq!(stats.writeback_queued, 0);
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, stats.writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_and_serves_with_redis_down_and_uses_it_once_it_is_up() {
    let mut redis = RedisServer::start();
    redis.kill9();
    let t = tier(Target::Single(redis.url()), |_| {});
    let a = node_unready(&t, false);
    let calls = AtomicUsize::new(0);
    for i in 0..10 {
        let started = Instant::now();
        let (_, source) = get(&a, &key(&a, "m", &format!("t{i}")), &calls).await;
        assert_eq!(source, Source::Computed);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let stats = t.stats();
    assert!(!stats.connected && stats.skipped > 0, "{stats:?}");
    redis.restart();
    wait_until(
        "the tier comes into use",
        Duration::from_secs(5),
        async || {
            let s = t.stats();
            s.connected && s.breaker == BreakerState::Closed
        },
    )
    .await;
    get(&a, &key(&a, "m", "after"), &calls).await;
    let b = node(&tier(Target::Single(redis.url()), |_| {}), false).await;
    assert_eq!(
        get(&b, &key(&b, "m", "after"), &calls).await.1,
        Source::Remote
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_on_one_node_reaches_the_other_within_a_second() {
    let redis = RedisServer::start();
    let (ta, tb) = (
        tier(Target::Single(redis.url()), |_| {}),
        tier(Target::Single(redis.url()), |_| {}),
    );
    let (a, b) = (node(&ta, true).await, node(&tb, true).await);
    let calls = AtomicUsize::new(0);
    get(&a, &key(&a, "m", "x"), &calls).await;
    assert_eq!(get(&b, &key(&b, "m", "x"), &calls).await.1, Source::Remote);
    // Let B's subscription settle before invalidating.
    wait_until("B subscribed", Duration::from_secs(5), async || {
        let mut c = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let n: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("infercache:epochs")
            .query_async(&mut c)
            .await
            .unwrap();
        n[0].1 >= 2
    })
    .await;
    let before = key(&b, "m", "x").digest().to_owned();
    a.invalidate(Scope::Model { model: "m".into() })
        .await
        .unwrap();
    let took = wait_until(
        "B sees the invalidation",
        Duration::from_secs(1),
        async || key(&b, "m", "x").digest() != &before,
    )
    .await;
    assert_eq!(key(&a, "m", "x").digest(), key(&b, "m", "x").digest());
    assert_eq!(
        get(&b, &key(&b, "m", "x"), &calls).await.1,
        Source::Computed
    );
    assert_eq!(tb.stats().epoch_updates, 1);
    eprintln!("invalidation reached the other node in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_an_invalidation_catches_up_when_redis_is_back() {
    let mut redis = RedisServer::start_with(RedisServerOptions { appendonly: true });
    let (ta, tb) = (
        tier(Target::Single(redis.url()), |_| {}),
        tier(Target::Single(redis.url()), |_| {}),
    );
    let (a, b) = (node(&ta, true).await, node(&tb, true).await);
    let before = key(&b, "m", "x").digest().to_owned();
    redis.kill9();
    // Redis is down: A's bump is local only, and B cannot hear of it.
    a.invalidate(Scope::Model { model: "m".into() })
        .await
        .unwrap();
    assert_ne!(key(&a, "m", "x").digest(), &before);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(key(&b, "m", "x").digest(), &before);
    redis.restart();
    wait_until("B catches up", Duration::from_secs(5), async || {
        key(&b, "m", "x").digest() == key(&a, "m", "x").digest()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_on_two_nodes_compute_once() {
    let redis = RedisServer::start();
    let (a, b) = (
        node(&tier(Target::Single(redis.url()), |_| {}), true).await,
        node(&tier(Target::Single(redis.url()), |_| {}), true).await,
    );
    computed_once_across(&a, &b, "round ", Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_holder_died_is_taken_over_after_it_expires() {
    let redis = RedisServer::start();
    let t = tier(Target::Single(redis.url()), |_| {});
    let a = node(&t, false).await;
    let k = key(&a, "m", "x");
    // A node took the lease and died: its lease lives out its TTL.
    let started = Instant::now();
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let lease = format!("infercache:l:{}", k.digest().to_hex());
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("dead-node:0")
        .arg("PX")
        .arg(400)
        .query_async(&mut c)
        .await
        .unwrap();
    let calls = AtomicUsize::new(0);
    let (_, source) = get(&a, &k, &calls).await;
    let waited = started.elapsed();
    assert_eq!(source, Source::Computed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let s = t.stats();
    assert_eq!((s.leases_contended, s.lease_waits_empty), (1, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_write_back_concurrent_misses_on_two_nodes_still_compute_once() {
    let redis = RedisServer::start();
    let write_back = |c: &mut RedisConfig| c.write = WriteMode::Back { queue: 64 };
    let (a, b) = (
        node(&tier(Target::Single(redis.url()), write_back), true).await,
        node(&tier(Target::Single(redis.url()), write_back), true).await,
    );
    computed_once_across(&a, &b, "write-back round ", Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_on_one_node_removes_the_shared_entry() {
    let redis = RedisServer::start();
    let (a, b) = (
        node(&tier(Target::Single(redis.url()), |_| {}), true).await,
        node(&tier(Target::Single(redis.url()), |_| {}), true).await,
    );
    let calls = AtomicUsize::new(0);
    let k = key(&a, "m", "to remove");
    get(&a, &k, &calls).await;
    assert!(a.remove(&k).await.found);
    assert_eq!(
        get(&b, &key(&b, "m", "to remove"), &calls).await.1,
        Source::Computed
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Five rounds of 8 concurrent `get_or_compute`s of one new key, split over nodes `a` and
/// `b`, each computation taking `delay`: every round computes once and every caller gets
/// the value.
async fn computed_once_across(a: &Cache, b: &Cache, label: &str, delay: Duration) {
    for round in 0..5 {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
            let calls = Arc::clone(&calls);
            let text = format!("{label}{round}");
            tasks.push(tokio::spawn(async move {
                let k = key(&cache, "m", &text);
                cache
                    .get_or_compute(&k, &RequestOptions::default(), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::io::Error>(Bytes::from_static(b"the value"))
                    })
                    .await
                    .unwrap()
                    .value
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Bytes::from_static(b"the value"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "round {round}");
    }
}
