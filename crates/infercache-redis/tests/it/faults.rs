//! Redis faults told apart: an error reply fails its command and is counted by kind; only
//! connection errors and timeouts drive the breaker.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use infercache_engine::{RemoteTier, Source};
use infercache_redis::testing::RedisServer;
use infercache_redis::{BreakerState, Target};

use crate::tier::{get, key, node, tier, wait_until};

fn config_set(redis: &RedisServer, name: &str, value: &str) {
    let mut c = redis.client().get_connection().unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(&mut c)
        .unwrap();
}

/// Under `maxmemory` with `noeviction`, every write is refused with `OOM`: it used to
/// open the breaker (and close and open it again, in a loop), switching reads off too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_replies_fail_the_writes_and_leave_the_breaker_closed() {
    let redis = RedisServer::start();
    let (ta, tb) = (
        tier(Target::Single(redis.url()), |_| {}),
        tier(Target::Single(redis.url()), |_| {}),
    );
    let (a, b) = (node(&ta, false).await, node(&tb, false).await);
    let calls = AtomicUsize::new(0);
    let before = key(&a, "m", "stored before");
    get(&a, &before, &calls).await;

    config_set(&redis, "maxmemory-policy", "noeviction");
    config_set(&redis, "maxmemory", "1");
    for i in 0..10 {
        let (_, source) = get(&a, &key(&a, "m", &format!("refused {i}")), &calls).await;
        assert_eq!(source, Source::Computed);
    }
    let stats = ta.stats();
    assert!(
        stats.error_replies.get("oom").copied().unwrap_or(0) >= 10,
        "OOM replies counted: {:?}",
        stats.error_replies
    );
    assert_eq!(
        (stats.breaker, stats.breaker_opened),
        (BreakerState::Closed, 0)
    );
    assert!(stats.connected, "the tier stays in use");
    // Reads still work: what was stored before is a hit on another node.
    assert_eq!(
        get(&b, &key(&b, "m", "stored before"), &calls).await.1,
        Source::Remote
    );

    config_set(&redis, "maxmemory", "0");
    get(&a, &key(&a, "m", "stored after"), &calls).await;
    assert_eq!(
        get(&b, &key(&b, "m", "stored after"), &calls).await.1,
        Source::Remote
    );
}

/// A tier pointed at a replica gets `READONLY` for every write: the breaker used to open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_replies_from_a_replica_leave_the_breaker_closed() {
    let (master, replica) = (RedisServer::start(), RedisServer::start());
    let mut c = replica.client().get_connection().unwrap();
    let () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(master.port())
        .query(&mut c)
        .unwrap();
    let t = tier(Target::Single(replica.url()), |_| {});
    let cache = node(&t, false).await;
    let calls = AtomicUsize::new(0);
    for i in 0..10 {
        get(&cache, &key(&cache, "m", &format!("k{i}")), &calls).await;
    }
    wait_until(
        "READONLY replies counted",
        Duration::from_secs(2),
        async || {
            t.stats()
                .error_replies
                .get("readonly")
                .copied()
                .unwrap_or(0)
                >= 10
        },
    )
    .await;
    let stats = t.stats();
    assert_eq!(
        (stats.breaker, stats.breaker_opened),
        (BreakerState::Closed, 0)
    );
    assert_eq!(stats.errors, 0, "no outage counted");
}

/// A server that does not answer (SIGSTOP) still opens the breaker, and it closes again
/// once the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_still_opens_the_breaker() {
    let redis = RedisServer::start();
    let t = tier(Target::Single(redis.url()), |_| {});
    let cache = node(&t, false).await;
    let calls = AtomicUsize::new(0);
    redis.pause();
    for i in 0..4 {
        get(&cache, &key(&cache, "m", &format!("k{i}")), &calls).await;
    }
    wait_until("the breaker opened", Duration::from_secs(3), async || {
        t.stats().breaker_opened >= 1
    })
    .await;
    redis.resume();
    wait_until(
        "the tier in use again",
        Duration::from_secs(5),
        async || t.stats().connected && t.breaker() == BreakerState::Closed,
    )
    .await;
}
