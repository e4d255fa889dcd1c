//! Leases against a real redis-server: the value read with a lease passes the freshness
//! rule; a stale-while-revalidate refresh runs once across two nodes; and leases whose
//! replies come late, on a server whose writes stall past the command timeout (`CLIENT
//! PAUSE … WRITE`: reads are served, every write waits, as behind an AOF fsync stall, and
//! is then applied late). The computed value is still written, and no lease is left
//! behind to make the other nodes wait, cancelled callers included.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use infercache_core::SystemClock;
use infercache_engine::{
    Cache, CacheConfig, FreshnessPolicy, RemoteTier, RequestOptions, Source, Stale,
};
use infercache_redis::testing::RedisServer;
use infercache_redis::{RedisTier, Target};

use crate::tier::{get, key, node, tier};

/// A node with a memory tier over `tier`, model `m` under `policy`, once the tier is in use.
async fn node_with(tier: &RedisTier, policy: FreshnessPolicy) -> Cache {
    node(tier, false).await;
    let config = CacheConfig {
        memory: Some(infercache_engine::MemoryConfig::bytes(16 << 20)),
        remote: Some(Arc::new(tier.clone()) as Arc<dyn RemoteTier>),
        policies: [("m".to_owned(), policy)].into_iter().collect(),
        ..CacheConfig::default()
    };
    Cache::open(config, SystemClock::shared()).unwrap()
}

/// `serve --redis`, a text embedded, then asked again past `max-age` on another node: the
/// value read with the lease is too old, so the lease holder computes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_read_with_the_lease_is_too_old_for_max_age_and_recomputed() {
    let redis = RedisServer::start();
    let (ta, tb) = (
        tier(Target::Single(redis.url()), |_| {}),
        tier(Target::Single(redis.url()), |_| {}),
    );
    let (a, b) = (node(&ta, true).await, node(&tb, true).await);
    let calls = AtomicUsize::new(0);
    get(&a, &key(&a, "m", "x"), &calls).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let strict = RequestOptions {
        max_age: Some(Duration::from_secs(1)),
        ..RequestOptions::default()
    };
    let k = key(&b, "m", "x");
    let got = b
        .get_or_compute(&k, &strict, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from_static(b"again"))
        })
        .await
        .unwrap();
    assert_eq!((got.value, got.source), ("again".into(), Source::Computed));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(tb.stats().leases_granted, 1, "{:?}", tb.stats());
}

/// Within the stale-while-revalidate window, callers on two nodes get the stale value at
/// once; one refresh runs for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_while_revalidate_refreshes_once_across_two_nodes() {
    let redis = RedisServer::start();
    let policy = FreshnessPolicy {
        ttl: Some(Duration::from_secs(1)),
        stale_while_revalidate: Duration::from_secs(60),
        ..FreshnessPolicy::default()
    };
    let (ta, tb) = (
        tier(Target::Single(redis.url()), |_| {}),
        tier(Target::Single(redis.url()), |_| {}),
    );
    let (a, b) = (node_with(&ta, policy).await, node_with(&tb, policy).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let ask = |cache: &Cache, value: &'static [u8]| {
        let (cache, calls) = (cache.clone(), Arc::clone(&calls));
        async move {
            let k = key(&cache, "m", "x");
            cache
                .get_many_or_refresh(&[k], &RequestOptions::default(), move |keys| {
                    let calls = Arc::clone(&calls);
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::io::Error>(vec![Bytes::from_static(value); keys.len()])
                    }
                })
                .await
                .unwrap()
                .remove(0)
        }
    };
    assert_eq!(ask(&a, b"v1").await.value, "v1");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| tokio::spawn(ask(if i % 2 == 0 { &a } else { &b }, b"v2")))
        .collect();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(
            (got.value, got.stale),
            ("v1".into(), Some(Stale::WhileRevalidate))
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in [&a, &b] {
        let got = node
            .get(&key(node, "m", "x"), &RequestOptions::default())
            .await;
        assert!(
            matches!(&got, infercache_engine::Lookup::Hit(f) if f.value == "v2"),
            "{got:?}"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one computation, one refresh"
    );
}

/// Stalls every write on `redis` for `ms` milliseconds (reads go on).
fn stall_writes(redis: &RedisServer, ms: u64) -> Instant {
    let mut c = redis.client().get_connection().unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query(&mut c)
        .unwrap();
    Instant::now() + Duration::from_millis(ms)
}

fn exists(redis: &RedisServer, key: &str) -> bool {
    let mut c = redis.client().get_connection().unwrap();
    redis::cmd("EXISTS").arg(key).query::<u64>(&mut c).unwrap() == 1
}

async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_computed_under_a_late_lease_is_written_and_the_lease_released() {
    let redis = RedisServer::start();
    let (ta, tb) = (
        tier(Target::Single(redis.url()), |_| {}),
        tier(Target::Single(redis.url()), |_| {}),
    );
    let (a, b) = (node(&ta, false).await, node(&tb, false).await);
    let k = key(&a, "m", "x");
    let lease = format!("infercache:l:{}", k.digest().to_hex());
    let value = ta.value_key(k.digest());

    // A's lookup is served; its lease (SET NX) waits out the stall, past the timeout, and
    // is applied after it.
    let stall_ends = stall_writes(&redis, 1_000);
    let calls = AtomicUsize::new(0);
    let (computed, source) = get(&a, &k, &calls).await;
    assert_eq!(source, Source::Computed);
    assert_eq!(ta.stats().lease_replies_lost, 1, "{:?}", ta.stats());
    tokio::time::sleep(stall_ends.saturating_duration_since(Instant::now())).await;

    until("A's value is in Redis", Duration::from_secs(3), || {
        exists(&redis, &value)
    })
    .await;
    until("A's late lease is released", Duration::from_secs(1), || {
        !exists(&redis, &lease)
    })
    .await;
    // Another node finds the value at once rather than waiting for the lease to expire.
    let started = Instant::now();
    let (got, source) = get(&b, &key(&b, "m", "x"), &calls).await;
    assert_eq!((got, source), (computed, Source::Remote));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cancelled_while_its_lease_reply_is_late_leaves_no_lease() {
    let redis = RedisServer::start();
    let ta = tier(Target::Single(redis.url()), |_| {});
    let a = node(&ta, false).await;
    let k = key(&a, "m", "x");
    let lease = format!("infercache:l:{}", k.digest().to_hex());

    let stall_ends = stall_writes(&redis, 600);
    let task = tokio::spawn({
        let (a, k) = (a.clone(), k.clone());
        async move {
            a.get_or_compute(&k, &RequestOptions::default(), || async {
                Ok::<_, std::io::Error>(Bytes::from_static(b"never asked"))
            })
            .await
        }
    });
    // Gave up while its SET NX waits in Redis.
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    tokio::time::sleep(stall_ends.saturating_duration_since(Instant::now())).await;
    // The lease was applied late, then released (its TTL is 3 s).
    until("the late lease is released", Duration::from_secs(1), || {
        !exists(&redis, &lease)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cancelled_while_computing_leaves_no_lease() {
    let redis = RedisServer::start();
    let ta = tier(Target::Single(redis.url()), |_| {});
    let a = node(&ta, false).await;
    let k = key(&a, "m", "x");
    let lease = format!("infercache:l:{}", k.digest().to_hex());
    let task = tokio::spawn({
        let (a, k) = (a.clone(), k.clone());
        async move {
            a.get_or_compute(&k, &RequestOptions::default(), || async {
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(Bytes::new())
            })
            .await
        }
    });
    until("A holds the lease", Duration::from_secs(2), || {
        exists(&redis, &lease)
    })
    .await;
    task.abort();
    let _ = task.await;
    until("the lease is released", Duration::from_millis(500), || {
        !exists(&redis, &lease)
    })
    .await;
}
