//! Leases whose replies come late: a real redis-server whose writes stall past the command
//! timeout (`CLIENT PAUSE … WRITE`: reads are served, every write waits, as behind an AOF
//! fsync stall, and is then applied late). The computed value is still written, and no
//! lease is left behind to make the other nodes wait, cancelled callers included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use infercache_engine::{RemoteTier, RequestOptions, Source};
use infercache_redis::Target;
use infercache_redis::testing::RedisServer;

use crate::tier::{get, key, node, tier};

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
